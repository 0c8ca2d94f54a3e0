"""Layer freezing (Brock et al., 2017, "FreezeOut: Accelerate Training by Progressively Freezing
Layers", arXiv:1706.04983). Composer's `LayerFreezing`.

From `freeze_start` (a fraction of training) on, the earliest transformer blocks stop training,
and more follow linearly until `freeze_level` of them are frozen at the end. Early layers settle
first, so late in training their updates buy little; a frozen block needs no weight gradients and
no optimizer update. The tied token embedding (which is also the output layer) keeps training, so
the backward pass still runs through frozen blocks to reach it: the saving is the weight-gradient
GEMMs and optimizer work of the frozen blocks, not their whole backward.

Works with the optimizer the trainer builds after INIT: a frozen block's parameters get
`requires_grad = False`, so their gradients stay None and AdamW skips them (no update, no weight
decay, state kept). Freezing only ever grows, and follows the run's timestamp, so a resumed run
freezes exactly what the uninterrupted run did.
"""

from __future__ import annotations

import math

import pydantic
import torch.nn as nn

from composerlite import Algorithm, Event, Logger, State


class LayerFreezingOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    freeze_start: float = pydantic.Field(0.5, ge=0, lt=1, description="fraction of training before any block freezes")
    freeze_level: float = pydantic.Field(1.0, gt=0, le=1, description="fraction of blocks frozen by the end")


def freeze_fraction(fraction_done: float, freeze_start: float, freeze_level: float) -> float:
    """Composer's schedule: 0 until freeze_start, then linear up to freeze_level at the end."""
    if fraction_done <= freeze_start:
        return 0.0
    return freeze_level * (fraction_done - freeze_start) / (1.0 - freeze_start)


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of blocks: its first ModuleList (GPT-2's `transformer.h`)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    raise ValueError(f"{type(model).__name__} has no ModuleList of blocks to freeze")


def freeze_layers(model: nn.Module, fraction: float) -> int:
    """Freeze the first floor(fraction * n_blocks) blocks; returns how many are frozen."""
    blocks = transformer_blocks(model)
    n_frozen = math.floor(fraction * len(blocks) + 1e-9)
    for block in blocks[:n_frozen]:
        block.requires_grad_(False)
    return n_frozen


class LayerFreezing(Algorithm):
    """Progressively freeze the earliest transformer blocks in the second part of training."""

    name = "layer_freezing"
    Options = LayerFreezingOptions

    def match(self, event: Event, state: State) -> bool:
        return event is Event.BATCH_START  # before the forward, so autograd sees the frozen blocks

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        fraction = freeze_fraction(state.fraction_done, self.options.freeze_start, self.options.freeze_level)
        frozen = freeze_layers(state.model, fraction)
        logger.log_metrics({"layer_freezing/frozen_blocks": frozen})
