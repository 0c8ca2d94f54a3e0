"""Rotary position embeddings (Su et al., 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding", arXiv:2104.09864).

Removes GPT-2's learned position table and instead rotates every query and key, in each head, by
angles proportional to its position: pairs of dimensions (i, i + n) turn by  position * base^(-2i/d).
A rotated query and key then have a dot product that depends on their content and on the distance
between them only, so attention sees relative positions and nothing is looked up in a table: the
model runs at any length. In the GPT-2 speedrun (modded-nanogpt), rotary embeddings with a tuned
learning rate took the time to GPT-2-small quality from 45 to 31.4 minutes on 8xH100.

Built on the core attention hook (`composerlite.core.attention`): the rotation is a query/key transform,
so it runs on every attention path (transformers' SDPA with its flash kernel included) and stacks
with QK-norm and with score modifiers such as a sliding window.
"""

from __future__ import annotations

from typing import ClassVar

import pydantic
import torch

from composerlite import ModelConverter, Order, State
from composerlite.core.attention import QueryKeyTransform, add_query_key_transform, drop_learned_positions, query_key_transforms
from composerlite.errors import ConfigError


class RotaryOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    base: float = pydantic.Field(10000.0, gt=1, description="frequency base: pair i turns by position * base^(-2i/d) (RoFormer: 10000)")
    fraction: float = pydantic.Field(
        1.0, gt=0, le=1,
        description="fraction of each head's dimensions that are rotated, the rest pass unchanged (RoFormer: 1; GPT-NeoX: 0.25)",
    )
    max_sequence_length: int = pydantic.Field(
        8192, ge=1,
        description="the length the model advertises as config.n_positions; the rotation itself has no length limit",
    )


def rotated_dimensions(head_dim: int, fraction: float) -> int:
    """How many of a head's dimensions are rotated: the fraction, rounded down to whole pairs."""
    rotated = int(head_dim * fraction) // 2 * 2
    if rotated < 2:
        raise ConfigError(f"rotary: fraction {fraction} of head_dim {head_dim} leaves no pair of dimensions to rotate")
    return rotated


def rotate(x: torch.Tensor, positions: torch.Tensor, rotated: int, base: float) -> torch.Tensor:
    """Rotate x [..., seq, head_dim] by its positions [seq]: dimension i and i + n (n = rotated / 2,
    the GPT-NeoX/Llama half split) turn by the angle position * base^(-2i/rotated); dimensions from
    `rotated` on are returned unchanged. Angles and products in fp32, the result in x's dtype."""
    n = rotated // 2
    inverse_frequencies = base ** (-torch.arange(n, device=x.device, dtype=torch.float32) * 2 / rotated)
    angles = positions.to(torch.float32)[:, None] * inverse_frequencies[None, :]  # [seq, n]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :n].float(), x[..., n:rotated].float()
    turned = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)
    return torch.cat((turned, x[..., rotated:]), dim=-1) if rotated < x.shape[-1] else turned


class RotaryEmbedding(QueryKeyTransform):
    """Queries and keys rotated by their absolute positions. The angles are computed per call: a
    [seq, d/2] outer product, negligible next to attention, and nothing cached to go stale across
    lengths and devices or for torch.compile to guard on."""

    name: ClassVar[str] = "rotary"

    def __init__(self, rotated: int, base: float):
        self.rotated, self.base = rotated, base

    def __call__(self, module, query, key, query_positions, key_positions):
        return rotate(query, query_positions, self.rotated, self.base), rotate(key, key_positions, self.rotated, self.base)


def apply_rotary(model: torch.nn.Module, base: float = 10000.0, fraction: float = 1.0,
                 max_sequence_length: int = 8192) -> torch.nn.Module:
    """Convert a Hugging Face GPT-2 model to rotary position embeddings in place (and return it):
    drop the learned position table, set config.n_positions, rotate queries and keys in every layer."""
    if any(transform.name == RotaryEmbedding.name for transform in query_key_transforms(model)):
        raise ValueError("the model already uses rotary position embeddings")
    head_dim = model.config.n_embd // model.config.n_head
    transform = RotaryEmbedding(rotated_dimensions(head_dim, fraction), base)
    drop_learned_positions(model, max_sequence_length)
    add_query_key_transform(model, transform)
    return model


class Rotary(ModelConverter):
    """Replace learned position embeddings with rotary position embeddings on queries and keys (at INIT)."""

    name = "rotary"
    Options = RotaryOptions
    # The model's position scheme: ALiBi provides it too, so the two are refused together.
    provides = ("position_embedding",)
    order = Order.SURGERY
    exportable_to_hf = False  # plain GPT2LMHeadModel has a learned position table and no rotation

    def convert(self, state: State) -> None:
        o = self.options
        apply_rotary(state.model, base=o.base, fraction=o.fraction, max_sequence_length=o.max_sequence_length)
