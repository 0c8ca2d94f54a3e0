"""The fused-kernels bundle: every fused method the current device and precision can use, at once.

The bundle is data: `MEMBERS` lists the member algorithms, in the order they are applied at INIT,
with the options each takes from the bundle's. They are built through the registry, like any
`--algo`, and the bundle forwards every later event to the members it applied (compile reports
its graph breaks after the first step). Each one is skipped where it cannot help, and the bundle
says which and why (on the console, in metrics.jsonl as `fused_kernels/...` and in its
state_dict, which `composerlite throughput` writes to its JSON):
  * flash_attention: CUDA only (PyTorch has no flash / memory-efficient SDPA kernels on CPU);
  * fused_layernorm: only under bf16/fp16 autocast (in fp32 LayerNorm is already one kernel);
  * compile: CUDA by default (on CPU the first step compiles for minutes; `compile=true` forces it);
  * fused_adamw: wherever PyTorch has the kernel (CUDA, and CPU since PyTorch 2.4).
`exclude` turns any of them off by name. The bundle runs in the WRAP order class (after other
algorithms' surgery, e.g. ALiBi, which the lean blocks keep honouring).
"""

from __future__ import annotations

from typing import Any, Callable

import pydantic
import torch

from composerlite import Algorithm, Event, Logger, Order, State
from composerlite.registry import build_algorithm


class FusedKernelsOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    exclude: list[str] = pydantic.Field(default_factory=list, description="members to leave off, by name")
    compile: bool | None = pydantic.Field(None, description="torch.compile the forward: default on CUDA only")
    compile_mode: str | None = pydantic.Field(None, description="torch.compile mode (default: Inductor's default)")
    compile_backend: str = pydantic.Field("inductor", description="torch.compile backend (eager: trace only, for checks)")
    chunk_elements: int | None = pydantic.Field(None, ge=2**12, description="fused cross-entropy: logit elements per chunk (default by device)")

    @pydantic.field_validator("exclude")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(MEMBERS))
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(MEMBERS)}")
        return names


# member algorithm -> its options, from the bundle's; in the order they are applied at INIT.
MEMBERS: dict[str, Callable[[FusedKernelsOptions], dict[str, Any]]] = {
    "fused_gpt2_blocks": lambda options: {},
    "fused_layernorm": lambda options: {},
    "pad_vocab": lambda options: {},
    "fused_cross_entropy": lambda options: {"chunk_elements": options.chunk_elements},
    "flash_attention": lambda options: {},
    "fused_adamw": lambda options: {},
    # the loss too: the fused cross-entropy then takes its traceable form (one fused graph)
    "compile": lambda options: {"mode": options.compile_mode, "backend": options.compile_backend},
}


def plan(device: torch.device, precision: str, options: FusedKernelsOptions) -> tuple[list[str], dict[str, str]]:
    """(members to apply, {skipped member: why}) for this device and precision."""
    reasons: dict[str, str] = {}
    if device.type != "cuda":
        reasons["flash_attention"] = "no flash / memory-efficient SDPA kernels on CPU (HF's SDPA path stays)"
    if precision == "fp32":
        reasons["fused_layernorm"] = "fp32: LayerNorm is already one kernel; the gain is skipping autocast's fp32 round trip"
    if not (options.compile if options.compile is not None else device.type == "cuda"):
        reasons["compile"] = "off on CPU by default (minutes of first-step compilation); pass compile=true to force"
    if "fused" not in torch.optim.AdamW.__init__.__code__.co_varnames:
        reasons["fused_adamw"] = "this PyTorch has no fused AdamW"
    for name in options.exclude:
        reasons[name] = "excluded by the user"
    return [name for name in MEMBERS if name not in reasons], reasons


class FusedKernels(Algorithm):
    """Bundle: lean blocks, fused LayerNorm, padded vocab, fused CE, flash SDPA, fused AdamW, compile."""

    name = "fused_kernels"
    Options = FusedKernelsOptions
    provides = ("gpt2_block", "layernorm", "vocab_size", "loss", "optimizer_kernel", "compile")
    conflicts = ("mlp",)
    order = Order.WRAP

    def __init__(self, **options):
        self.options = FusedKernelsOptions(**options)
        # Built now, so a bad member option (compile_mode=bogus) is refused with the others.
        self.members = {name: build_algorithm(name, member_options(self.options))
                        for name, member_options in MEMBERS.items()}
        self.applied: list[str] = []
        self.skipped: dict[str, str] = {}

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT or any(self.members[name].match(event, state) for name in self.applied)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.INIT:
            self.applied, self.skipped = plan(state.device, state.precision, self.options)
            logger.log_metrics({"fused_kernels/applied": ",".join(self.applied),
                                **{f"fused_kernels/skipped/{name}": why for name, why in self.skipped.items()}})
        for name in self.applied:
            member = self.members[name]
            if member.match(event, state):
                member.apply(event, state, logger)

    def state_dict(self) -> dict[str, Any]:
        compiled = "compile" in self.applied
        return {"applied": self.applied, "skipped": self.skipped,
                "compile": self.members["compile"].report if compiled else {}}
