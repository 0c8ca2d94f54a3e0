"""Fused AdamW: the whole optimizer step for all parameters in a few kernel launches.

PyTorch's default (foreach) AdamW launches a handful of multi-tensor kernels per step; the fused
implementation does the moment updates, bias correction and weight update in one pass per tensor
list. Same arithmetic, fewer launches and memory passes: a few percent of step time on GPU for
small models. Source: PyTorch's `torch.optim.AdamW(fused=True)` (NVIDIA Apex FusedAdam lineage).

Works by wrapping the run's optimizer factory (`State.optimizer_factory`) at INIT: whatever
optimizer the run builds is rebuilt with the same parameter groups and settings, fused.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from composerlite import ModelConverter, State


def apply_fused_adamw(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer (class, groups, hyperparameters) with its fused kernel switched on.
    Call before the first step: a fresh optimizer has no state to carry over."""
    if optimizer.state:
        raise ValueError("apply_fused_adamw needs a fresh optimizer (this one has already stepped)")
    groups = [{**group, "fused": True, "foreach": None} for group in optimizer.param_groups]
    return type(optimizer)(groups, fused=True)


def _build_fused(factory: Callable[[torch.nn.Module], torch.optim.Optimizer], model: torch.nn.Module) -> torch.optim.Optimizer:
    return apply_fused_adamw(factory(model))


def fused_optimizer_factory(factory: Callable[[torch.nn.Module], torch.optim.Optimizer]) -> Callable:
    """An optimizer factory that builds what `factory` builds, fused (for `State.optimizer_factory`)."""
    return functools.partial(_build_fused, factory)


class FusedAdamW(ModelConverter):
    """Build the run's AdamW with PyTorch's fused kernel (fused=True)."""

    name = "fused_adamw"
    provides = ("optimizer_kernel",)

    def convert(self, state: State) -> None:
        state.optimizer_factory = fused_optimizer_factory(state.optimizer_factory)
