"""Zero-initialised output projections: every block's attention and MLP `c_proj` starts at zero, so
each residual branch starts as the identity and the network starts as its embeddings plus the head.
From the modded-nanogpt GPT-2 speedrun (record history: with ReLU², QK-norm and a padded vocabulary,
22.3 -> 15.2 minutes on 8xH100); the same idea as Fixup / SkipInit / ReZero (Zhang et al., 2019,
arXiv:1901.09321; De & Smith, 2020, arXiv:2002.10444; Bachlechner et al., 2020, arXiv:2003.04887).

Only the initial values change (the biases are already zero in GPT-2's init): the model is plain
GPT-2 and exports as one. Applied at INIT after any module replacement, before the optimizer exists.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from composerlite import ModelConverter, Order, State
from composerlite.errors import ConfigError


def output_projections(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of each transformer block's attention and MLP output projection (`c_proj`).
    Raises ConfigError naming the first block part without one (replaced by a different module)."""
    found = []
    for index, block in enumerate(model.transformer.h):
        for part in ("attn", "mlp"):
            projection = getattr(getattr(block, part, None), "c_proj", None)
            if projection is None:
                raise ConfigError(f"zero_init_projections: block {index}'s {part} has no c_proj output projection "
                                 "(another algorithm replaced it)")
            found.append((f"transformer.h.{index}.{part}.c_proj", projection))
    return found


@torch.no_grad()
def zero_init_projections(model: nn.Module) -> int:
    """Zero the weights and biases of every block's attention and MLP output projection; returns how
    many projections were zeroed."""
    projections = output_projections(model)
    for _, projection in projections:
        projection.weight.zero_()
        if projection.bias is not None:
            projection.bias.zero_()
    return len(projections)


class ZeroInitProjections(ModelConverter):
    """Zero-initialise every attention and MLP output projection (c_proj): residual branches start as identity."""

    name = "zero_init_projections"
    provides = ("output_projection_init",)
    conflicts = ("mlp",)  # a replaced MLP (gated_linear_units) has its own output projection and init
    order = Order.SURGERY + 10  # after the modules it initialises are in place

    def convert(self, state: State) -> dict[str, Any]:
        return {"zeroed": zero_init_projections(state.model)}
