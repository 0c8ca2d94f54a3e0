"""Muon: momentum orthogonalised by Newton-Schulz, for the hidden weight matrices (Jordan et al.,
2024, "Muon: An optimizer for hidden layers in neural networks", kellerjordan.github.io/posts/muon;
reference implementation github.com/KellerJordan/Muon). The optimizer of the modded-nanogpt GPT-2
speedrun records (24.9 -> 22.3 minutes at its introduction, 8xH100).

For each hidden 2-D weight W with gradient G, one step is
    B <- momentum * B + (1 - momentum) * G                    (B: the momentum buffer)
    U <- (1 - momentum) * G + momentum * B                    (Nesterov)
    O <- NS5(U) * sqrt(max(1, rows / cols))                   (rows x cols: W as (out, in))
    W <- W - lr * O
where NS5 is five quintic Newton-Schulz iterations with coefficients (3.4445, -4.7750, 2.0315) in
bf16, which maps U's singular values to about [0.7, 1.2] while keeping its singular vectors: an
approximately orthogonal update. Embeddings, the lm_head, LayerNorm gains and every bias stay on
the run's own AdamW (its LR, betas and weight decay), inside the same optimizer object.

Why not `torch.optim.Muon` (PyTorch >= 2.9): it orthogonalises each parameter as stored. HF GPT-2's
`Conv1D` stores its weight as [in, out], so its sqrt(rows / cols) scale would be computed on the
transposed shape (1 instead of 2 for the MLP's c_fc), and `c_attn` packs Q, K and V into one
[in, 3 * in] matrix that must be orthogonalised as three separate (out, in) blocks. It also holds
only the Muon parameters, while the trainer, its LR schedule, gradient scaler and checkpoints
work on one optimizer. `MuonWithAdamW` is one optimizer with both kinds of parameter group.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Literal

import pydantic
import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor
from torch.optim.adam import adam
from transformers.pytorch_utils import Conv1D

from composerlite import Algorithm, Event, Logger, State
from composerlite.errors import ConfigError
from composerlite.system.distributed import unwrap_model

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the reference's quintic: maximal slope at zero
NS_EPS = 1e-7
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class MuonOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = pydantic.Field(0.02, gt=0, description="peak LR of the Muon (hidden matrix) groups; the AdamW "
                               "groups keep the run's `lr`. Both follow the run's LR schedule")
    momentum: float = pydantic.Field(0.95, ge=0, lt=1, description="momentum coefficient")
    nesterov: bool = pydantic.Field(True, description="Nesterov momentum (the reference's default)")
    ns_steps: int = pydantic.Field(5, ge=1, le=20, description="Newton-Schulz iterations")
    ns_dtype: Literal["bfloat16", "float32"] = pydantic.Field(
        "bfloat16", description="dtype of the Newton-Schulz matmuls: bfloat16 (the reference), or float32 on "
        "CPUs without native bf16, where bf16 matmuls are emulated and several times slower")
    weight_decay: float = pydantic.Field(0.0, ge=0, description="decoupled weight decay of the Muon groups")
    momentum_warmup_steps: int = pydantic.Field(
        0, ge=0, description="raise momentum linearly from momentum_warmup_start to momentum over the first "
        "this many steps (0: constant momentum, as the reference; the speedrun used 300, later 500)")
    momentum_warmup_start: float = pydantic.Field(0.85, ge=0, lt=1, description="momentum at step 0 of the warmup")


# -- the update ----------------------------------------------------------------------------------


def newton_schulz(matrices: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> torch.Tensor:
    """Approximately orthogonalise each [..., rows, cols] matrix: the reference's quintic
    Newton-Schulz iteration, run on the wide orientation (the Gram matrix is the smaller one) after
    scaling to Frobenius norm 1, so every singular value starts in (0, 1]."""
    a, b, c = coefficients
    x = matrices.to(dtype)
    tall = matrices.size(-2) > matrices.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def orthogonalized_update(update: torch.Tensor, transposed: bool, blocks: int, steps: int = 5,
                          dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Muon's update for one stored weight, in its stored layout and dtype.

    `transposed`: the weight is stored [in, out] (HF `Conv1D`); it is orthogonalised as (out, in).
    `blocks`: the weight packs this many projections along its output dimension (GPT-2's `c_attn`:
    Q, K, V), each orthogonalised on its own and scaled by sqrt(max(1, rows / cols)) of its own shape.
    """
    logical = update.mT if transposed else update  # (out, in)
    out_features, in_features = logical.shape
    pieces = logical.reshape(blocks, out_features // blocks, in_features)
    rows, cols = pieces.shape[-2:]
    ortho = newton_schulz(pieces, steps, dtype) * math.sqrt(max(1.0, rows / cols))
    ortho = ortho.reshape(out_features, in_features)
    return (ortho.mT if transposed else ortho).to(update.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer, two kinds of parameter group: groups with `use_muon=True` step with Muon
    (keys lr, momentum, nesterov, ns_steps, ns_dtype, weight_decay, and the layout keys `transposed`
    and `blocks`, see `orthogonalized_update`); the others step with PyTorch's own AdamW kernel
    (`torch.optim.adam.adam` with decoupled weight decay; keys lr, betas, eps, weight_decay, fused,
    foreach), so they compute exactly what the baseline's `torch.optim.AdamW` computes. Every group's `lr` is
    the trainer's to schedule; the momentum warmup sets the Muon groups' `momentum`."""

    def __init__(self, param_groups: list[dict[str, Any]], fused: bool | None = None):
        """`fused` selects AdamW's fused kernel for AdamW groups that do not say (what `fused_adamw`
        passes when it rebuilds the run's optimizer)."""
        super().__init__(param_groups, defaults={"fused": fused, "foreach": None})
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups hold 2-D weight matrices only")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        momentum, lr = group["momentum"], group["lr"]
        for param in group["params"]:
            if param.grad is None:
                continue
            buffer = self.state[param].setdefault("momentum_buffer", torch.zeros_like(param))
            buffer.lerp_(param.grad, 1 - momentum)
            # Not in place on .grad (as the reference does): whatever reads gradients after the step sees them unchanged.
            update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
            ortho = orthogonalized_update(update, group["transposed"], group["blocks"], group["ns_steps"],
                                          NS_DTYPES[group["ns_dtype"]])
            param.mul_(1 - lr * group["weight_decay"])
            param.add_(ortho, alpha=-lr)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:  # what torch.optim.AdamW creates on a parameter's first step
                # The fused kernel reads the step count on the parameter's device; the others on the host.
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device if group["fused"] else "cpu")
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=group["foreach"], fused=group["fused"],
             decoupled_weight_decay=True, amsgrad=False,
             beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
             maximize=False)


# -- which parameters Muon takes -------------------------------------------------------------------


def muon_layouts(model: nn.Module) -> dict[int, tuple[bool, int]]:
    """The hidden weight matrices and how each is laid out: {id(weight): (transposed, blocks)}.

    Hidden: the weights of `Conv1D` (stored [in, out]: transposed) and `nn.Linear` modules, except
    the output head. Embeddings (wte, wpe), the lm_head (tied to wte or not), LayerNorm gains and
    biases are not in it. An attention module's `c_attn` packs out / in projections (Q, K, V in
    self-attention), orthogonalised block by block.
    """
    model = unwrap_model(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    excluded = {id(p) for module in model.modules() if isinstance(module, nn.Embedding) for p in module.parameters()}
    if head is not None:
        excluded |= {id(p) for p in head.parameters()}
    layouts: dict[int, tuple[bool, int]] = {}
    for module in model.modules():
        if module is head:
            continue
        if isinstance(module, Conv1D) and id(module.weight) not in excluded:
            layouts[id(module.weight)] = (True, 1)
        elif isinstance(module, nn.Linear) and id(module.weight) not in excluded:
            layouts[id(module.weight)] = (False, 1)
    for module in model.modules():
        packed = getattr(module, "c_attn", None)
        if isinstance(packed, Conv1D) and id(packed.weight) in layouts:
            in_features, out_features = packed.weight.shape
            layouts[id(packed.weight)] = (True, out_features // in_features)
    return layouts


def muon_param_groups(adamw: torch.optim.Optimizer, layouts: dict[int, tuple[bool, int]],
                      options: MuonOptions) -> list[dict[str, Any]]:
    """`adamw`'s groups with the hidden matrices moved into Muon groups (one per layout); what
    remains keeps its AdamW settings. Every group gets `initial_lr`, which the LR schedule scales."""
    muon: dict[tuple[bool, int], list[nn.Parameter]] = {}
    remaining = []
    for group in adamw.param_groups:
        kept = []
        for param in group["params"]:
            if id(param) in layouts:
                muon.setdefault(layouts[id(param)], []).append(param)
            else:
                kept.append(param)
        if kept:
            remaining.append({"params": kept, "use_muon": False, "lr": group["lr"],
                              "initial_lr": group.get("initial_lr", group["lr"]), "betas": tuple(group["betas"]),
                              "eps": group["eps"], "weight_decay": group["weight_decay"],
                              "fused": group.get("fused"), "foreach": group.get("foreach")})
    muon_groups = [
        {"params": params, "use_muon": True, "lr": options.lr, "initial_lr": options.lr,
         "momentum": options.momentum, "nesterov": options.nesterov, "ns_steps": options.ns_steps,
         "ns_dtype": options.ns_dtype, "weight_decay": options.weight_decay, "transposed": transposed,
         "blocks": blocks}
        for (transposed, blocks), params in sorted(muon.items())
    ]
    return remaining + muon_groups  # AdamW first: param_groups[0]["lr"] (the logged lr) stays the run's `lr`


def build_muon(adamw_factory: Callable[[nn.Module], torch.optim.Optimizer], options: MuonOptions,
               model: nn.Module) -> MuonWithAdamW:
    """The run's optimizer with Muon on the hidden matrices: `adamw_factory` (the run's own) says
    which parameters train and with what AdamW settings; Muon takes the hidden matrices from it."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ConfigError("muon cannot run under `parallel=fsdp`: FSDP shards each weight matrix across processes and "
                          "Newton-Schulz needs whole matrices; use `parallel=ddp`")
    adamw = adamw_factory(model)
    if not isinstance(adamw, torch.optim.AdamW):
        raise ConfigError(f"muon takes over the run's AdamW, but the run's optimizer is {type(adamw).__name__}")
    groups = muon_param_groups(adamw, muon_layouts(model), options)
    if not any(group["use_muon"] for group in groups):
        raise ConfigError("muon found no hidden weight matrix (Conv1D or Linear) to optimise in this model")
    return MuonWithAdamW(groups)


def momentum_at(step: int, momentum: float, warmup_steps: int, warmup_start: float) -> float:
    """Momentum for optimizer step `step` (0 for the first): linear from `warmup_start` to `momentum`
    over `warmup_steps` steps, as the speedrun's schedule."""
    if warmup_steps == 0:
        return momentum
    fraction = min(step / warmup_steps, 1.0)
    return (1 - fraction) * warmup_start + fraction * momentum


class Muon(Algorithm):
    """Muon (Newton-Schulz-orthogonalised momentum) for hidden matrices; AdamW for the rest."""

    name = "muon"
    Options = MuonOptions
    provides = ("optimizer",)  # fused_adamw still composes: its kernel steps the AdamW groups

    def match(self, event: Event, state: State) -> bool:
        if event is Event.INIT:
            return True
        return event is Event.BATCH_START and self.options.momentum_warmup_steps > 0

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        o = self.options
        if event is Event.INIT:
            state.optimizer_factory = functools.partial(build_muon, state.optimizer_factory, o)
            return
        # From the step count, not from stored state: a resumed run sets exactly what it would have.
        momentum = momentum_at(state.timestamp.batch.value, o.momentum, o.momentum_warmup_steps, o.momentum_warmup_start)
        for group in state.optimizer.param_groups:
            if group["use_muon"]:
                group["momentum"] = momentum
        logger.log_metrics({"muon/momentum": momentum})
