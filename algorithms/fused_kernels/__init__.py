"""The fused-kernels bundle: every fused method the current device and precision can use, at once.

The bundle is data: `MEMBERS` lists the member algorithms with the options each takes from the
bundle's. They are built through the registry, like any `--algo` (a bad member option is refused
up front). Before training, the bundle expands into the members it applies on this device and
precision (`expand`), and those compose and run exactly as if the user had listed them in its
place: each with its own event order (the lean blocks and fused LayerNorm are surgery, compile
wraps last), its own `provides`/`requires`/`conflicts`, and its own line in the run's time per
algorithm. A member is skipped where it cannot help, and then claims nothing; the bundle says which
and why (on the console, in metrics.jsonl as `fused_kernels/...` and in its state_dict, which
`composerlite throughput` writes to its JSON):
  * flash_attention: CUDA only (PyTorch has no flash / memory-efficient SDPA kernels on CPU);
  * fused_layernorm: only under bf16/fp16 autocast (in fp32 LayerNorm is already one kernel);
  * compile: CUDA by default (on CPU the first step compiles for minutes; `compile=true` forces it);
  * fused_adamw: wherever PyTorch has the kernel (CUDA, and CPU since PyTorch 2.4).
`exclude` turns any of them off by name.
"""

from __future__ import annotations

from typing import Any, Callable

import pydantic
import torch

from composerlite import Algorithm, Event, Logger, State
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


# member algorithm -> its options, from the bundle's; within one order class, applied in this order.
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

    def __init__(self, **options):
        super().__init__(**options)
        # Built now, so a bad member option (compile_mode=bogus) is refused with the others.
        self.members = {name: build_algorithm(name, member_options(self.options))
                        for name, member_options in MEMBERS.items()}
        self.applied: list[str] = []
        self.skipped: dict[str, str] = {}

    def expand(self, device: torch.device, precision: str) -> list[Algorithm]:
        self.applied, self.skipped = plan(device, precision, self.options)
        return [self, *(self.members[name] for name in self.applied)]

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        # The members do the work, each in its own place in the run's order; the bundle reports.
        logger.log_metrics({"fused_kernels/applied": ",".join(self.applied),
                            **{f"fused_kernels/skipped/{name}": why for name, why in self.skipped.items()}})

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "skipped": self.skipped}
