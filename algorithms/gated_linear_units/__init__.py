"""Gated linear units in the MLP (Shazeer, 2020, "GLU Variants Improve Transformer",
arXiv:2002.05202; Dauphin et al., 2017, arXiv:1612.08083). Composer's `GatedLinearUnits`.

Replaces each GPT-2 MLP, down(act(x W1)), with a gated one, down(act(x W_gate) * (x W_up)). The
gated MLP has three matrices instead of two, so its hidden width is scaled by 2/3 to keep the
parameter count (and so the FLOPs per token) about the same: any gain is from the architecture,
not from a bigger model. Shazeer measured lower perplexity at equal compute (GEGLU, SwiGLU).
Applied at INIT, before the optimizer is built.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import pydantic
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

from composerlite import ModelConverter, Order, State
from composerlite.core.surgery import replace_modules_by_type

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's own gelu_new: GEGLU
    "gelu": F.gelu,
    "silu": F.silu,  # SwiGLU
    "relu": F.relu,  # ReGLU
}
# What `act_fn` takes: a name (from YAML or the command line), a callable (from Python), or None
# for the MLP's own activation (Composer's default, which for GPT-2 is gelu_new).
ActivationChoice = Literal["gelu_tanh", "gelu", "silu", "relu"] | Callable[[torch.Tensor], torch.Tensor] | None


class GatedLinearUnitsOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    # Composer's option names; `activation` is this algorithm's earlier name for act_fn.
    act_fn: ActivationChoice = pydantic.Field(
        "gelu_tanh", validation_alias=pydantic.AliasChoices("act_fn", "activation"),
        description="gate activation: gelu_tanh (GEGLU, GPT-2's gelu), gelu, silu (SwiGLU), relu, null (the MLP's own, "
                    "Composer's default), or from Python a callable; also read as `activation`",
    )
    d_ff_ratio: float = pydantic.Field(2 / 3, gt=0, description="hidden width / the MLP's (2/3 keeps parameters equal)")
    gated_layer_bias: bool = pydantic.Field(True, description="a bias on the gate projection (Composer's default: false)")
    non_gated_layer_bias: bool = pydantic.Field(True, description="a bias on the up projection (Composer's default: false)")
    output_layer_bias: bool = pydantic.Field(True, description="a bias on the down projection (Composer's always has one)")

    @pydantic.field_validator("act_fn", mode="before")
    @classmethod
    def _known_activation(cls, value: Any) -> Any:
        # Checked here, so a bad name is one message, not one per member of the union.
        if value is None or callable(value) or value in ACTIVATIONS:
            return value
        raise ValueError(f"{value!r} is not one of {', '.join(ACTIVATIONS)}, null (the MLP's own activation) "
                         "or, from Python, a callable")

    @pydantic.field_serializer("act_fn")
    def _activation_name(self, value: Any) -> str | None:
        """A callable is recorded by its qualified name: checkpoints hold plain data."""
        if value is None or isinstance(value, str):
            return value
        return f"{getattr(value, '__module__', None) or ''}.{getattr(value, '__qualname__', None) or repr(value)}".lstrip(".")


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), then the original MLP's dropout."""

    def __init__(self, d_model: int, d_ff: int, act: Callable[[torch.Tensor], torch.Tensor], dropout: nn.Module,
                 gated_layer_bias: bool = True, non_gated_layer_bias: bool = True, output_layer_bias: bool = True):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=gated_layer_bias)
        self.up = nn.Linear(d_model, d_ff, bias=non_gated_layer_bias)
        self.down = nn.Linear(d_ff, d_model, bias=output_layer_bias)
        self.act = act  # a module (the MLP's own activation) registers as a parameter-free submodule
        self.dropout = dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gated = self.act(self.gate(hidden_states)) * self.up(hidden_states)
        return self.dropout(self.down(gated))


def gated_mlp_from(mlp: GPT2MLP, d_ff_ratio: float, act_fn: str | Callable | None, init_std: float, n_layer: int,
                   **biases: bool) -> GatedMLP:
    """A GatedMLP shaped like `mlp`, initialised the way GPT-2 initialises its MLP: N(0, std) weights,
    zero biases, and the residual (down) projection scaled by 1/sqrt(2 * n_layer). `act_fn` is a
    name in ACTIVATIONS, a callable, or None for `mlp`'s own activation; `biases` are
    GatedMLP's `*_bias` switches."""
    d_model, d_ff = mlp.c_fc.weight.shape  # HF Conv1D stores [in, out]
    act = mlp.act if act_fn is None else ACTIVATIONS[act_fn] if isinstance(act_fn, str) else act_fn
    glu = GatedMLP(d_model, max(1, round(d_ff * d_ff_ratio)), act, mlp.dropout, **biases)
    glu.to(device=mlp.c_fc.weight.device, dtype=mlp.c_fc.weight.dtype)
    with torch.no_grad():
        for layer, std in ((glu.gate, init_std), (glu.up, init_std), (glu.down, init_std / math.sqrt(2 * n_layer))):
            layer.weight.normal_(0.0, std)
            if layer.bias is not None:
                layer.bias.zero_()
    return glu


def apply_gated_linear_units(model: nn.Module, d_ff_ratio: float = 2 / 3, act_fn: str | Callable | None = "gelu_tanh",
                             gated_layer_bias: bool = True, non_gated_layer_bias: bool = True,
                             output_layer_bias: bool = True) -> int:
    """Replace every GPT2MLP in `model` with a GatedMLP; returns how many were replaced."""
    config = getattr(model, "config", None)
    init_std = getattr(config, "initializer_range", 0.02)
    n_layer = getattr(config, "n_layer", 1)
    biases = {"gated_layer_bias": gated_layer_bias, "non_gated_layer_bias": non_gated_layer_bias,
              "output_layer_bias": output_layer_bias}
    replaced = replace_modules_by_type(
        model, {GPT2MLP: lambda mlp, name: gated_mlp_from(mlp, d_ff_ratio, act_fn, init_std, n_layer, **biases)}
    )
    return len(replaced)


class GatedLinearUnits(ModelConverter):
    """Replace the GPT-2 MLP with a gated linear unit (GEGLU/SwiGLU) of equal parameter count."""

    name = "gated_linear_units"
    Options = GatedLinearUnitsOptions
    provides = ("mlp",)
    exportable_to_hf = False  # a gated MLP is not a GPT2MLP: plain GPT-2 cannot load these weights
    order = Order.SURGERY

    def convert(self, state: State) -> dict[str, Any]:
        o = self.options
        return {"replaced": apply_gated_linear_units(state.model, o.d_ff_ratio, o.act_fn, o.gated_layer_bias,
                                                     o.non_gated_layer_bias, o.output_layer_bias)}
