"""Fused LayerNorm: every LayerNorm as one native kernel on the autocast dtype.

Composer's `fused_layernorm` swapped in NVIDIA Apex's FusedLayerNorm. PyTorch's own LayerNorm is
now that single fused kernel (fp32 statistics even for 16-bit inputs), so what is left to fuse
under mixed precision is the dtype round trip: autocast runs layer_norm in fp32 and writes fp32,
which the next matmul casts back to bf16. Here each LayerNorm reads its input in the autocast
dtype and writes the autocast dtype directly (half the memory traffic, one cast kernel fewer per
norm). Without autocast (fp32) it is the plain kernel, i.e. nothing changes. This is the same
numerics as MosaicML's later low-precision LayerNorm, so the two conflict (both provide
"layernorm"). Parameters and state_dict keys are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from composerlite import ModelConverter, Order, State
from composerlite.core.surgery import replace_modules_by_type


class FusedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in the autocast dtype (fp32 statistics inside the kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            weight = self.weight.to(dtype) if self.weight is not None else None
            bias = self.bias.to(dtype) if self.bias is not None else None
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


def _fused(module: nn.LayerNorm, name: str) -> FusedLayerNorm:
    fused = FusedLayerNorm(module.normalized_shape, eps=module.eps, elementwise_affine=module.elementwise_affine,
                           bias=module.bias is not None, device=module.weight.device, dtype=module.weight.dtype)
    fused.weight, fused.bias = module.weight, module.bias  # the same Parameters: nothing is copied
    return fused


def apply_fused_layernorm(model: nn.Module) -> int:
    """Replace every nn.LayerNorm in `model` in place; returns how many."""
    return len(replace_modules_by_type(model, {nn.LayerNorm: _fused}))


class FusedLayerNormAlgorithm(ModelConverter):
    """LayerNorm as one native kernel on the autocast dtype (no fp32 round trip); no-op in fp32."""

    name = "fused_layernorm"
    provides = ("layernorm",)
    order = Order.SURGERY

    def convert(self, state: State) -> dict[str, Any]:
        return {"replaced": apply_fused_layernorm(state.model)}
