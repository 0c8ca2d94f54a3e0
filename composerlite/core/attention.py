"""One attention function where score modifications stack (ALiBi, sliding windows), and where
queries and keys can be transformed first (rotary position embeddings, QK-norm).

A GPT-2 layer computes  softmax(q·kᵀ · scaling + mask) · v.  Methods that change the scores before
the softmax are `ScoreModifier`s. `add_score_modifier(model, modifier)` attaches one to a model
(per model, never global) and switches the model to the single attention function registered here
with transformers' public extension point:

    transformers.AttentionInterface.register("composerlite", attention_forward)
    model.set_attn_implementation("composerlite")

so no private GPT2Attention method is replaced, and two methods never overwrite each other: they
stack in the order they were added (the engine's deterministic algorithm order at Event.INIT).

Two paths, picked per call:
  * every modifier is additive (a bias, or a mask with -inf): their biases are summed in order with
    the causal part into one float mask, cached per (shape, device, dtype), and passed to
    `torch.nn.functional.scaled_dot_product_attention` as `attn_mask` (SDPA cannot combine
    `is_causal=True` with a mask, so the causal part lives in the mask);
  * any modifier needs the raw scores (`needs_scores = True`, e.g. soft-capping): an eager path
    computes the scores, applies every modifier in order, then the causal/padding mask.
With no modifier the call is handed to transformers' own "sdpa" function unchanged.

Before any of that, the model's `QueryKeyTransform`s (added with `add_query_key_transform`) map the
queries and keys, in the order they were added, on every path (transformers' sdpa included): this
is where rotary position embeddings and QK-norm act. Position schemes that live in attention drop
GPT-2's learned position table with `drop_learned_positions`.

The mask builder registered for this attention name returns no mask at all for plain causal
self-attention without padding or a KV cache (SDPA then runs `is_causal=True`: the flash kernel,
half the score tiles skipped). Transformers' own sdpa builder only does that outside tracing in the
releases before 5.2x: under torch.compile it materializes a [batch, 1, seq, seq] boolean mask,
which rules out the flash kernel and computes the masked upper triangle too. `route_attention`
puts a model on this path without adding a modifier (the `flash_attention` algorithm does).
"""

from __future__ import annotations

import collections
import contextlib
from typing import ClassVar

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function

ATTENTION_NAME = "composerlite"

# Combined masks kept per model: the training length and the eval length. More would only hold
# masks of lengths that sequence-length warmup has already left behind ([heads, T, T] each).
MASK_CACHE_SIZE = 2


class ScoreModifier:
    """A change to a layer's attention scores  s = q·kᵀ · scaling  before the softmax.

    Additive modifiers implement `bias` only and stay on SDPA. A modifier that must see the raw
    scores sets `needs_scores = True` and overrides `apply_to_scores`; the model then runs the
    eager path. Biases are functions of the positions (not learned): they are cached. A bias that
    changes during training (a growing window) returns a new `cache_key()` whenever it changes.
    """

    name: ClassVar[str] = ""
    needs_scores: ClassVar[bool] = False
    per_layer: ClassVar[bool] = False  # True if `bias` depends on module.layer_idx (part of the cache key)

    def cache_key(self) -> object:
        """A hashable that changes whenever `bias` would; part of the mask cache's key."""
        return None

    def bias(self, module: torch.nn.Module, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """An fp32 tensor broadcastable to [heads, queries, keys], added to the scores; -inf blocks a key."""
        raise NotImplementedError

    def apply_to_scores(self, module: torch.nn.Module, scores: torch.Tensor, query_positions: torch.Tensor,
                        key_positions: torch.Tensor) -> torch.Tensor:
        """The eager path's step for this modifier: `scores` is [batch, heads, queries, keys]."""
        return scores + self.bias(module, query_positions, key_positions).to(scores.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class QueryKeyTransform:
    """A change to a layer's queries and keys before the scores are computed (rotary position
    embeddings, QK-norm). Transforms apply in the order they were added, before any score modifier,
    on every attention path; they see [batch, heads, seq, head_dim] tensors and the absolute
    positions of the queries and keys (with a KV cache, the queries are the last positions)."""

    name: ClassVar[str] = ""

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 query_positions: torch.Tensor, key_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class AttentionChanges:
    """The ordered score modifiers and query/key transforms of one model, shared by all its
    attention layers, with the modifiers' mask cache."""

    def __init__(self):
        self.modifiers: list[ScoreModifier] = []
        self.query_key_transforms: list[QueryKeyTransform] = []
        self._masks: collections.OrderedDict[tuple, torch.Tensor] = collections.OrderedDict()

    def add_query_key_transform(self, transform: QueryKeyTransform) -> None:
        if not transform.name:
            raise ValueError(f"{type(transform).__name__} needs a name")
        if any(existing.name == transform.name for existing in self.query_key_transforms):
            raise ValueError(f"the model already has a '{transform.name}' query/key transform")
        self.query_key_transforms.append(transform)

    def transform_queries_and_keys(self, module: torch.nn.Module, query: torch.Tensor,
                                   key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query_positions, key_positions = positions(query.shape[2], key.shape[2], query.device)
        for transform in self.query_key_transforms:
            query, key = transform(module, query, key, query_positions, key_positions)
        return query, key

    def add(self, modifier: ScoreModifier) -> None:
        if not modifier.name:
            raise ValueError(f"{type(modifier).__name__} needs a name")
        if any(existing.name == modifier.name for existing in self.modifiers):
            raise ValueError(f"the model already has a '{modifier.name}' score modifier")
        self.modifiers.append(modifier)
        self._masks.clear()

    def remove(self, name: str) -> ScoreModifier:
        for index, modifier in enumerate(self.modifiers):
            if modifier.name == name:
                self._masks.clear()
                return self.modifiers.pop(index)
        raise KeyError(f"no '{name}' score modifier on this model")

    @property
    def needs_scores(self) -> bool:
        return any(modifier.needs_scores for modifier in self.modifiers)

    def additive_mask(self, module: torch.nn.Module, q_length: int, kv_length: int, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
        """Sum of every modifier's bias plus the causal part, [heads or 1, q, kv], finite (blocked =
        the dtype's minimum, as HF does, so a fully blocked padding row gives no NaN)."""
        is_causal = getattr(module, "is_causal", True)
        if torch.compiler.is_compiling():
            # Traced into the graph instead of cached: the compiled graph is already specialised
            # per shape, and storing graph tensors in a Python dict is a side effect dynamo must
            # not replay. (torch._dynamo.explain on an ALiBi gpt2-tiny: 1 graph, 0 breaks.)
            return self._build_mask(module, q_length, kv_length, device, dtype, is_causal)
        layer = getattr(module, "layer_idx", None) if any(m.per_layer for m in self.modifiers) else None
        key = (q_length, kv_length, device, dtype, is_causal, layer, tuple(m.cache_key() for m in self.modifiers))
        mask = self._masks.get(key)
        if mask is not None:
            self._masks.move_to_end(key)
            return mask
        # A mask first built inside torch.inference_mode() could not be used later by autograd.
        with torch.inference_mode(False), torch.no_grad():
            mask = self._build_mask(module, q_length, kv_length, device, dtype, is_causal)
        self._masks[key] = mask
        if len(self._masks) > MASK_CACHE_SIZE:
            self._masks.popitem(last=False)
        return mask

    def _build_mask(self, module, q_length, kv_length, device, dtype, is_causal) -> torch.Tensor:
        query_positions, key_positions = positions(q_length, kv_length, device)
        total = torch.zeros((), device=device)
        for modifier in self.modifiers:
            total = total + modifier.bias(module, query_positions, key_positions)
        if is_causal:
            total = total + causal_bias(query_positions, key_positions)
        mask = total.to(dtype).clamp_min(torch.finfo(dtype).min)
        return mask.unsqueeze(0) if mask.dim() == 2 else mask


def positions(q_length: int, kv_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions of the queries and keys: with a KV cache the queries are the last q_length."""
    key_positions = torch.arange(kv_length, device=device)
    return key_positions[kv_length - q_length :], key_positions


def causal_bias(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """0 where a query may see a key (the key is not in its future), -inf elsewhere; fp32 [q, kv]."""
    future = key_positions[None, :] > query_positions[:, None]
    return torch.zeros(future.shape, device=future.device).masked_fill(future, float("-inf"))


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's attention layers: the modules transformers hands to the attention function
    (HF attention modules carry an integer `layer_idx` and an `is_causal` flag)."""
    return [
        module for module in model.modules()
        if isinstance(getattr(module, "layer_idx", None), int) and hasattr(module, "is_causal")
    ]


def score_modifiers(model: torch.nn.Module) -> list[ScoreModifier]:
    """The model's modifiers in the order they apply (a copy; change them with add/remove)."""
    layers = attention_layers(model)
    container = getattr(layers[0], "attention_changes", None) if layers else None
    return list(container.modifiers) if container is not None else []


def query_key_transforms(model: torch.nn.Module) -> list[QueryKeyTransform]:
    """The model's query/key transforms in the order they apply (a copy)."""
    layers = attention_layers(model)
    container = getattr(layers[0], "attention_changes", None) if layers else None
    return list(container.query_key_transforms) if container is not None else []


def _shared_container(model: torch.nn.Module) -> AttentionChanges:
    """The model's one AttentionChanges, created and attached to every attention layer if needed."""
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layers (modules with layer_idx and is_causal)")
    container = getattr(layers[0], "attention_changes", None) or AttentionChanges()
    for layer in layers:
        layer.attention_changes = container
    return container


def add_score_modifier(model: torch.nn.Module, modifier: ScoreModifier) -> None:
    """Attach `modifier` after the model's existing ones and route the model's attention through
    this module's function. Call it at Event.INIT (before compile or distributed wrapping)."""
    _shared_container(model).add(modifier)
    route_attention(model)


def add_query_key_transform(model: torch.nn.Module, transform: QueryKeyTransform) -> None:
    """Attach `transform` after the model's existing ones and route the model's attention through
    this module's function. Call it at Event.INIT (before compile or distributed wrapping)."""
    _shared_container(model).add_query_key_transform(transform)
    route_attention(model)


def route_attention(model: torch.nn.Module) -> None:
    """Send `model`'s attention through this module's function (transformers' sdpa when the model
    has no score modifier) and its mask builder, which skips the causal mask whenever SDPA's
    `is_causal` can stand in for it, compiled or not."""
    model.set_attn_implementation(ATTENTION_NAME)


def has_attention_changes(module: torch.nn.Module) -> bool:
    """Whether the hook changes this layer's attention (a score modifier or a query/key transform):
    a replacement attention module must then call the registered function, not SDPA directly."""
    container = getattr(module, "attention_changes", None)
    return bool(container is not None and (container.modifiers or container.query_key_transforms))


def remove_score_modifier(model: torch.nn.Module, name: str) -> ScoreModifier:
    """Detach the modifier called `name`; with none left the hook runs transformers' sdpa unchanged."""
    layers = attention_layers(model)
    container = getattr(layers[0], "attention_changes", None) if layers else None
    if container is None:
        raise KeyError(f"no '{name}' score modifier on this model")
    return container.remove(name)


class NoPositionEmbedding(torch.nn.Module):
    """Stands in for GPT-2's `wpe` once positions live in attention: zeros for any number of
    positions, without parameters.

    Transformers' GPT2Model always adds `wpe(position_ids)`; a zeroed nn.Embedding would still
    index out of range past its size. The zero is a buffer so it follows `model.to(dtype)`, and
    `expand` allocates nothing.
    """

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.zero.expand(*position_ids.shape, self.embedding_dim)


def drop_learned_positions(model: torch.nn.Module, n_positions: int) -> None:
    """Replace a GPT-2 model's learned position table with `NoPositionEmbedding` and advertise
    `n_positions` in its config, for a position scheme that lives in attention (ALiBi's bias,
    rotary's rotation). The model then runs at any length."""
    transformer = getattr(model, "transformer", model)
    if not isinstance(getattr(transformer, "wpe", None), torch.nn.Embedding):
        raise ValueError(f"{type(model).__name__} has no learned position embeddings (wpe) to replace")
    transformer.wpe = NoPositionEmbedding(model.config.n_embd).to(transformer.wte.weight.device)
    model.config.n_positions = n_positions


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The registered attention function; the signature is transformers' (`sdpa_attention_forward`):
    query/key/value are [batch, heads, seq, head_dim]; `attention_mask` is None (plain causal) or
    the bool [batch, 1, q, kv] mask HF's sdpa mask builder makes for padding (True = attend), or a
    user's float 4-D mask; `scaling` already folds in GPT-2's scale_attn_weights and
    scale_attn_by_inverse_layer_idx. Returns ([batch, seq, heads, head_dim], weights or None)."""
    container: AttentionChanges | None = getattr(module, "attention_changes", None)
    if container is not None and container.query_key_transforms:
        query, key = container.transform_queries_and_keys(module, query, key)
    if container is None or not container.modifiers:
        return _HF_SDPA(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if container.needs_scores:
        return _eager_attention(container, module, query, key, value, attention_mask, dropout, scaling)
    q_length, kv_length = query.shape[2], key.shape[2]
    mask = container.additive_mask(module, q_length, kv_length, query.device, query.dtype)
    mask = _with_padding(mask, attention_mask)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return output.transpose(1, 2).contiguous(), None


def _with_padding(mask: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return mask
    blocked = torch.finfo(mask.dtype).min
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, mask, blocked)
    return (mask + attention_mask.to(mask.dtype)).clamp_min(blocked)


def _eager_attention(container: AttentionChanges, module, query, key, value, attention_mask, dropout, scaling):
    """Scores materialized, for modifiers that transform them. Mirrors transformers' eager GPT-2
    attention, including `reorder_and_upcast_attn` (scores and softmax in fp32, autocast off)."""
    upcast = getattr(module, "reorder_and_upcast_attn", False)
    with torch.autocast(query.device.type, enabled=False) if upcast else contextlib.nullcontext():
        if upcast:
            query, key = query.float(), key.float()
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        query_positions, key_positions = positions(query.shape[2], key.shape[2], query.device)
        for modifier in container.modifiers:
            scores = modifier.apply_to_scores(module, scores, query_positions, key_positions)
        if getattr(module, "is_causal", True):
            scores = scores + causal_bias(query_positions, key_positions).to(scores.dtype)
        scores = _with_padding(scores.clamp_min(torch.finfo(scores.dtype).min), attention_mask)
        weights = F.softmax(scores, dim=-1)
    weights = weights.type(value.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)
    return output.transpose(1, 2).contiguous(), weights


def causal_mask_unless_plain(**kwargs) -> torch.Tensor | None:
    """The registered mask builder: None for plain causal self-attention (no padding mask, queries
    = keys, no cache offset), decided from Python values only, so it holds under torch.compile;
    otherwise transformers' sdpa builder (a bool mask, True = attend, for padding or a KV cache)."""
    q_offset = kwargs.get("q_offset", 0)
    plain_causal = (
        kwargs.get("allow_is_causal_skip", True)
        and kwargs.get("attention_mask") is None
        and kwargs.get("local_size") is None
        and kwargs.get("mask_function", causal_mask_function) is causal_mask_function
        and isinstance(q_offset, int) and q_offset == 0 and kwargs.get("kv_offset", 0) == 0
        and kwargs["q_length"] == kwargs["kv_length"]
    )
    return None if plain_causal else _HF_SDPA_MASK(**kwargs)


_HF_SDPA = AttentionInterface()["sdpa"]
_HF_SDPA_MASK = AttentionMaskInterface()["sdpa"]
AttentionInterface.register(ATTENTION_NAME, attention_forward)
# Without a mask function of its own, transformers gives a custom attention name no mask at all
# (padding would be silently dropped).
AttentionMaskInterface.register(ATTENTION_NAME, causal_mask_unless_plain)
