"""ReLU² MLP activation (So et al., 2021, "Primer: Searching for Efficient Transformers for
Language Modeling", arXiv:2109.08668; used in the GPT-2 speedrun, modded-nanogpt).

Replaces GPT-2's MLP activation, GELU (tanh form), with the square of a ReLU: act(x) = max(x, 0)².
Primer's authors attribute most of its gain over the Transformer to this and one other change (a
depthwise convolution after the Q, K, V projections, not part of this algorithm); it is as cheap as
a ReLU and sparse (negative inputs give exactly zero). In modded-nanogpt it came with QK-norm, zero-initialised projections and a padded
vocabulary in the step from 22.3 to 15.2 minutes on 8xH100. The weights and their shapes are
unchanged; only the function between the MLP's two matrices is.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.activations import ACT2FN

from composerlite import ModelConverter, Order, State
from composerlite.core.surgery import replace_modules

# transformers' own name for ReLU² (its ReLUSquaredActivation), so the config says what the MLP computes
RELU_SQUARED = "relu2"


def apply_relu_squared(model: torch.nn.Module) -> int:
    """Replace the activation of every GPT-2 MLP (`...mlp.act`) with ReLU², and record it as the
    config's `activation_function`; returns how many MLPs changed."""
    replaced = replace_modules(model, lambda name, module: ACT2FN[RELU_SQUARED] if name.endswith("mlp.act") else None,
                               what="the GPT-2 MLP activations (mlp.act)")
    # Read by whatever rebuilds or re-implements the MLP from the config (fused_gpt2_blocks' lean
    # MLP picks its activation by this name).
    model.config.activation_function = RELU_SQUARED
    return len(replaced)


class ReLUSquared(ModelConverter):
    """Replace the GPT-2 MLP activation (GELU) with ReLU(x)² (at INIT)."""

    name = "relu_squared"
    provides = ("mlp_activation",)
    # A replaced MLP (gated_linear_units provides "mlp") brings its own activation and drops this one.
    conflicts = ("mlp",)
    # Before the other surgery: modules that wrap or re-implement the MLP (fused_gpt2_blocks) then
    # find the new activation in place and in the config.
    order = Order.SURGERY - 10
    # transformers has the activation under the same name: an exported config that says so loads
    # into GPT2LMHeadModel and computes what training computed.
    hf_config_overrides = {"activation_function": RELU_SQUARED}

    def convert(self, state: State) -> dict[str, Any]:
        return {"replaced": apply_relu_squared(state.model)}
