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

Built on the core attention hook (`composerlite.core.attention`): the bias is a score modifier, so it
stacks with other score modifications instead of replacing GPT2Attention's private methods.

Composer's `Alibi` also trains on shorter sequences: with `train_sequence_length_scaling` s it
reshapes every training batch from (batch, seq) to (batch / s, seq * s) (Composer's default 0.25:
four times the rows, a quarter the length; evaluation untouched). Here s defaults to 1.0, no
reshaping, so this algorithm's benchmark verdicts measure ALiBi alone; s = 0.25 is Composer's.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pydantic
import torch

from composerlite import Event, Logger, ModelConverter, Order, State
from composerlite.core.attention import ScoreModifier, add_score_modifier, drop_learned_positions, score_modifiers
from composerlite.errors import ConfigError


class AlibiOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    max_sequence_length: int = pydantic.Field(
        8192, ge=1,
        description="the length the model advertises as config.n_positions (Composer's option); "
                    "the bias itself has no length limit",
    )
    train_sequence_length_scaling: float = pydantic.Field(
        1.0, gt=0,
        description="reshape each training batch from (batch, seq) to (batch / s, seq * s) (Composer's option; "
                    "its default is 0.25, ours 1.0: no reshaping)",
    )


def scaled_shape(rows: int, length: int, scaling: float) -> tuple[int, int]:
    """The (rows, length) a (rows, length) batch is reshaped to: Composer's (int(rows / s),
    int(length * s)), refused (ValueError) where that does not hold the same tokens, or leaves
    sequences too short to predict a next token."""
    new_rows, new_length = int(rows / scaling), int(length * scaling)
    if new_rows * new_length != rows * length or new_length < 2:
        raise ValueError(f"train_sequence_length_scaling={scaling} cannot reshape a batch of {rows} x {length} tokens "
                         f"(to {new_rows} x {new_length}); choose one that divides it into sequences of 2 tokens or more")
    return new_rows, new_length


def reshape_for_training(batch: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Every [rows, length] tensor of `batch` reshaped to `scaled_shape`: the same tokens, cut into
    sequences of length * scaling (each row's tokens stay in order)."""
    rows, length = batch["input_ids"].shape
    shape = scaled_shape(rows, length, scaling)
    return {key: tensor.reshape(shape) for key, tensor in batch.items()}


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

    def __init__(self, **options):
        super().__init__(**options)
        self.reshapes = self.options.train_sequence_length_scaling != 1
        if self.reshapes:
            # Reshaping sets every training batch's length and rows: a second method that sets either
            # (seq_len_warmup, batch_size_warmup) would act on the reshaped batch, or be undone by it.
            self.provides = (*self.provides, "sequence_length", "batch_size")

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT or (event is Event.AFTER_DATALOADER and self.reshapes)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.INIT:
            super().apply(event, state, logger)
        else:
            state.batch = reshape_for_training(state.batch, self.options.train_sequence_length_scaling)

    def convert(self, state: State) -> None:
        if self.reshapes:
            try:  # refused before training (and before the run writes anything), not at its first batch
                scaled_shape(state.batch_size, state.seq_len, self.options.train_sequence_length_scaling)
            except ValueError as error:
                raise ConfigError(f"algorithm 'alibi': {error}") from None
        apply_alibi(state.model, max_sequence_length=self.options.max_sequence_length)
