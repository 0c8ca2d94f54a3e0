"""The fused-kernels bundle: every fused method the current device and precision can use, at once.

Applied at INIT, in this order: fused_gpt2_blocks (lean blocks), fused_layernorm, pad_vocab,
fused_cross_entropy, flash_attention, fused_adamw, compile. Each one is skipped where it cannot
help, and the bundle says which and why (on the console, in metrics.jsonl as `fused_kernels/...`
and in its state_dict, which `composerlite throughput` writes to its JSON):
  * flash_attention: CUDA only (PyTorch has no flash / memory-efficient SDPA kernels on CPU);
  * fused_layernorm: only under bf16/fp16 autocast (in fp32 LayerNorm is already one kernel);
  * compile: CUDA by default (on CPU the first step compiles for minutes; `compile=true` forces it);
  * fused_adamw: wherever PyTorch has the kernel (CUDA, and CPU since PyTorch 2.4).
`exclude` turns any of them off by name. The bundle runs in the WRAP order class (after other
algorithms' surgery, e.g. ALiBi, which the lean blocks keep honouring).
"""

from __future__ import annotations

from typing import Any

import pydantic
import torch

from composerlite import Algorithm, Event, Logger, Order, State
from composerlite.algorithms.compile import CompileBackend, CompileMode, apply_compile, dynamo_counts
from composerlite.algorithms.flash_attention import apply_flash_attention
from composerlite.algorithms.fused_adamw import fused_optimizer_factory
from composerlite.algorithms.fused_cross_entropy import apply_fused_cross_entropy
from composerlite.algorithms.fused_gpt2_blocks import apply_fused_gpt2_blocks
from composerlite.algorithms.fused_layernorm import apply_fused_layernorm
from composerlite.algorithms.pad_vocab import apply_pad_vocab

METHODS = ("fused_gpt2_blocks", "fused_layernorm", "pad_vocab", "fused_cross_entropy", "flash_attention",
           "fused_adamw", "compile")


class FusedKernelsOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    exclude: list[str] = pydantic.Field(default_factory=list, description=f"methods to leave off, of: {', '.join(METHODS)}")
    compile: bool | None = pydantic.Field(None, description="torch.compile the forward: default on CUDA only")
    compile_mode: CompileMode = pydantic.Field(None, description="torch.compile mode (default: Inductor's default)")
    compile_backend: CompileBackend = pydantic.Field("inductor", description="torch.compile backend (eager: trace only, for checks)")
    chunk_elements: int | None = pydantic.Field(None, ge=2**12, description="fused cross-entropy: logit elements per chunk (default by device)")

    @pydantic.field_validator("exclude")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        return names


def plan(device: torch.device, precision: str, options: FusedKernelsOptions) -> tuple[list[str], dict[str, str]]:
    """(methods to apply, {skipped method: why}) for this device and precision."""
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
    return [name for name in METHODS if name not in reasons], reasons


class FusedKernels(Algorithm):
    """Bundle: lean blocks, fused LayerNorm, padded vocab, fused CE, flash SDPA, fused AdamW, compile."""

    name = "fused_kernels"
    Options = FusedKernelsOptions
    provides = ("gpt2_block", "layernorm", "vocab_size", "loss", "optimizer_kernel", "compile")
    conflicts = ("mlp",)
    order = Order.WRAP

    def __init__(self, exclude: list[str] | None = None, compile: bool | None = None, compile_mode: str | None = None,
                 compile_backend: str = "inductor", chunk_elements: int | None = None):
        self.options = FusedKernelsOptions(exclude=exclude or [], compile=compile, compile_mode=compile_mode,
                                           compile_backend=compile_backend, chunk_elements=chunk_elements)
        self.applied: list[str] = []
        self.skipped: dict[str, str] = {}
        self.compile_report: dict[str, int] = {}
        self._before: dict[str, int] | None = None

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT or (event is Event.BATCH_END and self._before is not None)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.BATCH_END:  # first step done: report what compilation found
            after = dynamo_counts()
            self.compile_report = {key: after[key] - self._before[key] for key in after}
            self._before = None
            logger.log_metrics({f"compile/{key}": value for key, value in self.compile_report.items()})
            return
        methods, self.skipped = plan(state.device, state.precision, self.options)
        model = state.model
        for method in methods:
            if method == "fused_gpt2_blocks":
                apply_fused_gpt2_blocks(model)
            elif method == "fused_layernorm":
                apply_fused_layernorm(model)
            elif method == "pad_vocab":
                apply_pad_vocab(model)
            elif method == "fused_cross_entropy":
                apply_fused_cross_entropy(state, chunk_elements=self.options.chunk_elements)
            elif method == "flash_attention":
                state.forward_fn = apply_flash_attention(model, state.forward_fn, state.device)
            elif method == "fused_adamw":
                state.optimizer_factory = fused_optimizer_factory(state.optimizer_factory)
            elif method == "compile":
                self._before = dynamo_counts()
                # the loss too: the fused cross-entropy then takes its traceable form (one fused graph)
                apply_compile(state, mode=self.options.compile_mode, backend=self.options.compile_backend)
        self.applied = methods
        logger.log_metrics({"fused_kernels/applied": ",".join(methods),
                            **{f"fused_kernels/skipped/{name}": why for name, why in self.skipped.items()}})

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "skipped": self.skipped, "compile": self.compile_report}
