"""Flash attention: GPT-2 attention through `scaled_dot_product_attention`'s fused kernels.

On CUDA, SDPA is restricted to the FlashAttention-2 and memory-efficient (xFormers) kernels, so
attention never silently falls back to the math path that materializes the seq x seq scores (an
unsupported case raises instead). The model is routed through composerlite's attention hook
(`composerlite.core.attention.route_attention`), which is transformers' SDPA function with a mask builder
that never builds the causal mask for unpadded training batches: transformers releases before 5.2x
build it whenever torch.compile traces the model, and an explicit mask rules out the flash kernel
and its causal tile skipping. Attention routed through composerlite's score-modifier hook (e.g. ALiBi) keeps its route:
that hook passes the bias to SDPA as an additive mask, which the memory-efficient kernel takes.

When it helps: always on GPU (O(T) memory instead of O(T^2), fewer HBM passes); the longer the
sequence, the more. On CPU there are no such kernels (PyTorch's CPU SDPA is a fused math/flash-CPU
kernel chosen automatically), so this algorithm only switches eager attention to SDPA there.
Sources: Dao et al., 2022, "FlashAttention" (arXiv:2205.14135); Dao, 2023, "FlashAttention-2"
(arXiv:2307.08691); Rabe & Staats, 2021, "Self-attention Does Not Need O(n^2) Memory".
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from composerlite import ModelConverter, State
from composerlite.core.attention import route_attention

FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def _with_fused_kernels(forward: Callable, model: torch.nn.Module, batch: dict) -> Any:
    with sdpa_kernel(FUSED_BACKENDS):
        return forward(model, batch)


def apply_flash_attention(model: torch.nn.Module, forward_fn: Callable, device: torch.device) -> Callable:
    """Route `model`'s attention through composerlite's attention hook (SDPA, no causal mask built
    when `is_causal` can stand in for it) unless another custom function is already routed, and,
    on CUDA, return `forward_fn` wrapped to allow only the fused SDPA kernels."""
    if getattr(model.config, "_attn_implementation", "sdpa") in ("eager", "sdpa"):
        route_attention(model)
    if device.type != "cuda":
        return forward_fn
    return functools.partial(_with_fused_kernels, forward_fn)


class FlashAttention(ModelConverter):
    """Attention through SDPA's flash / memory-efficient kernels on GPU (composes with ALiBi)."""

    name = "flash_attention"

    def convert(self, state: State) -> dict[str, Any]:
        state.forward_fn = apply_flash_attention(state.model, state.forward_fn, state.device)
        kernels = [b.name for b in FUSED_BACKENDS] if state.device.type == "cuda" else ["cpu-default"]
        return {"sdpa_kernels": ",".join(kernels)}
