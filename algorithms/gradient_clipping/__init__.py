"""Gradient clipping: bound the gradients before each optimizer step, by total norm, by value, or
adaptively per unit relative to the weights (AGC: Brock et al., 2021, "High-Performance
Large-Scale Image Recognition Without Normalization", arXiv:2102.06171; norm clipping: Pascanu et
al., 2013, arXiv:1211.5063).

Stabilises training against loss spikes from rare huge gradients, which lets a higher learning
rate or a lower-precision run survive. It is not a speedup by itself: it buys stability that other
speedups (higher LR, bf16, larger batches) spend. Runs at AFTER_TRAIN_BATCH, where every
microbatch's gradient has been accumulated and fp16 gradients are already unscaled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import pydantic
import torch

from composerlite import Algorithm, Event, Logger, State

# AGC's floor on a weight's unit norm (the paper's epsilon): without it a zero-initialised bias
# has a clipping limit of zero and could never move.
AGC_EPS = 1e-3


class GradientClippingOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    clipping_type: Literal["norm", "value", "adaptive"] = pydantic.Field(
        "norm", description="norm: total L2 norm; value: each element; adaptive: per-unit grad/weight norm ratio (AGC)"
    )
    clipping_threshold: float = pydantic.Field(
        1.0, gt=0, description="max total norm (norm), max |g| (value), or max grad/weight norm ratio (adaptive)"
    )


def unitwise_norm(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm per unit (per row along dim 0 for matrices, whole tensor for vectors and scalars),
    shaped to broadcast against `tensor`. Composer's convention: dim 0 is the unit."""
    if tensor.ndim <= 1:
        return torch.linalg.vector_norm(tensor, ord=2)
    return torch.linalg.vector_norm(tensor, ord=2, dim=tuple(range(1, tensor.ndim)), keepdim=True)


def apply_agc(parameters: Iterable[torch.Tensor], clipping_threshold: float) -> None:
    """Adaptive gradient clipping: scale each unit's gradient by min(1, threshold * max(|w|, eps) / |g|)."""
    for param in parameters:
        if param.grad is None:
            continue
        max_norm = unitwise_norm(param.detach()).clamp_min(AGC_EPS) * clipping_threshold
        grad_norm = unitwise_norm(param.grad.detach())
        # Where the gradient is zero the ratio is inf or nan: leave those units untouched.
        coefficient = (max_norm / grad_norm).nan_to_num(nan=1.0, posinf=1.0).clamp(max=1.0)
        param.grad.detach().mul_(coefficient)


def apply_gradient_clipping(model: torch.nn.Module, clipping_type: str = "norm", clipping_threshold: float = 1.0) -> None:
    """Clip the gradients of `model`'s parameters in place. Call after backward, before step."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    if clipping_type == "norm":
        torch.nn.utils.clip_grad_norm_(parameters, max_norm=clipping_threshold)
    elif clipping_type == "value":
        torch.nn.utils.clip_grad_value_(parameters, clip_value=clipping_threshold)
    elif clipping_type == "adaptive":
        apply_agc(parameters, clipping_threshold)
    else:
        raise ValueError(f"clipping_type must be 'norm', 'value' or 'adaptive', not {clipping_type!r}")


class GradientClipping(Algorithm):
    """Clip gradients by total norm, by value, or adaptively (AGC) before each optimizer step."""

    name = "gradient_clipping"
    Options = GradientClippingOptions

    def match(self, event: Event, state: State) -> bool:
        return event is Event.AFTER_TRAIN_BATCH

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        apply_gradient_clipping(state.model, self.options.clipping_type, self.options.clipping_threshold)
