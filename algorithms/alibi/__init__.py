"""ALiBi: Attention with Linear Biases (Press, Smith and Lewis, 2021, "Train Short, Test Long",
arXiv:2108.12409).

Removes the learned position embeddings and instead adds  -slope_h * (i - j)  to the attention
score of query i on key j in head h, with a fixed geometric slope per head. Nothing about position
is learned, so a model trained on short sequences evaluates on longer ones (and past the
n_positions its embedding table would have allowed). It helps when training at a shorter length
than you need at inference, which is the cheap way to train (attention cost grows with length):
the paper's 1.3B model trained on 1024 tokens and evaluated on 2048 matched the perplexity of a
sinusoidal model trained on 2048, training 11% faster. It costs an additive attention mask,
which keeps SDPA's math/memory-efficient kernels but not the flash kernel.

Built on the core attention hook (`composerlite.attention`): the bias is a score modifier, so it
stacks with other score modifications instead of replacing GPT2Attention's private methods.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pydantic
import torch

from composerlite import ModelConverter, Order, State
from composerlite.attention import ScoreModifier, add_score_modifier, drop_learned_positions, score_modifiers


class AlibiOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    max_sequence_length: int = pydantic.Field(
        8192, ge=1,
        description="the length the model advertises as config.n_positions (Composer's option); "
                    "the bias itself has no length limit",
    )


def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head slopes, Composer's (and the paper's) rule: for a power of two n, 2^(-8i/n) for
    i = 1..n; otherwise those of the largest power of two m below n, then every other slope of 2m
    (the ones that fall between them) until there are n."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    if math.log2(n_heads).is_integer():
        return [2.0 ** (-8.0 * i / n_heads) for i in range(1, n_heads + 1)]
    m = 2 ** math.floor(math.log2(n_heads))
    return alibi_slopes(m) + alibi_slopes(2 * m)[0::2][: n_heads - m]


class AlibiBias(ScoreModifier):
    """The bias  -slope_h * |i - j|  (keys after the query are masked by causality anyway)."""

    name: ClassVar[str] = "alibi"

    def __init__(self, slopes: torch.Tensor):
        self.slopes = torch.as_tensor(slopes, dtype=torch.float32)

    def bias(self, module, query_positions, key_positions):
        distance = (query_positions[:, None] - key_positions[None, :]).abs().float()
        return -self.slopes.to(distance.device)[:, None, None] * distance


def apply_alibi(model: torch.nn.Module, max_sequence_length: int = 8192) -> torch.nn.Module:
    """Convert a Hugging Face GPT-2 model to ALiBi in place (and return it): drop the learned
    position embeddings, set config.n_positions, and attach the per-head bias to every layer."""
    transformer = getattr(model, "transformer", model)
    if not isinstance(getattr(transformer, "wpe", None), torch.nn.Module):
        raise ValueError(f"apply_alibi expects a GPT-2 model with position embeddings (wpe); got {type(model).__name__}")
    if any(m.name == AlibiBias.name for m in score_modifiers(model)):
        raise ValueError("the model already uses ALiBi")
    drop_learned_positions(model, max_sequence_length)
    add_score_modifier(model, AlibiBias(torch.tensor(alibi_slopes(model.config.n_head))))
    return model


class Alibi(ModelConverter):
    """Replace learned position embeddings with per-head linear attention biases (at INIT)."""

    name = "alibi"
    Options = AlibiOptions
    # ALiBi takes over the model's position scheme (a second one, e.g. RoPE, is rejected). It does
    # not take over the attention function: its bias is a score modifier on the core hook, so it
    # stacks with other modifiers and with kernels that run the hook.
    provides = ("position_embedding",)
    order = Order.SURGERY
    exportable_to_hf = False  # plain GPT2LMHeadModel has neither the bias nor a missing wpe

    def convert(self, state: State) -> None:
        apply_alibi(state.model, max_sequence_length=self.options.max_sequence_length)
