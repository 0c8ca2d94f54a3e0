"""Which algorithms may run together, and in what order. Checked once, before training starts.

Each algorithm class declares (all optional, see `Algorithm`):
    provides   capabilities it takes over exclusively, e.g. ("position_embedding",)
    requires   names or capabilities that some other algorithm in the run must provide
    conflicts  names or capabilities it cannot run beside
    order      an `Order` priority class

The rules:
  0. A bundle (fused_kernels) counts as the members it applies on this device and precision
     (`Algorithm.expand`), each with its own declarations and order, as if the user had listed
     them in the bundle's place; a member it skips (with the reason it reports) claims nothing.
     Messages name a member as `bundle/member`.
  1. Two algorithms that provide the same capability are rejected (both would replace the same
     thing, and the second would silently undo or break the first). Listing one algorithm twice
     is rejected the same way when it provides anything.
  2. An algorithm whose `requires` entry is neither the name nor a capability of another
     algorithm in the run is rejected.
  3. An algorithm whose `conflicts` entry is the name or a capability of another is rejected.
  4. The survivors run sorted by `order` (SCHEDULE, SURGERY, DEFAULT, WRAP); within one class
     they keep the order the user listed them in (a stable sort). The same order holds at every
     event, so at INIT surgery runs before torch.compile wraps the model.

Capability names in use include: "position_embedding" (alibi, rotary), "mlp" (gated_linear_units),
"layernorm" (low_precision_layernorm), "eval_weights" (ema), "max_duration" (scale_schedule),
"sequence_length" (seq_len_warmup) and "batch_size" (batch_size_warmup): alibi takes both of
these last two too when it reshapes training batches (`train_sequence_length_scaling` other than 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from composerlite.core.algorithm import Algorithm
from composerlite.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class Declaration:
    """What an algorithm declares about the others in its run. `label` is the name `requires` and
    `conflicts` match; `shown` the one messages use (a bundle's member: `fused_kernels/fused_layernorm`).
    Read from built algorithms (`of`) or, before any is built, from their classes
    (`composerlite.registry.declaration`)."""

    label: str
    provides: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    shown: str = ""

    @property
    def name(self) -> str:
        return self.shown or self.label

    @classmethod
    def of(cls, algorithm: Algorithm, shown: str = "") -> Declaration:
        # Imported here: the engine imports torch, which a check from the classes alone must not.
        from composerlite.core.engine import algorithm_label

        return cls(algorithm_label(algorithm), tuple(algorithm.provides), tuple(algorithm.requires),
                   tuple(algorithm.conflicts), shown)


def check_composition(declarations: list[Declaration]) -> None:
    """Raise ConfigError (one line, naming both algorithms) for an impossible combination."""
    provider: dict[str, str] = {}
    for declaration in declarations:
        for capability in declaration.provides:
            if capability in provider:
                first = provider[capability]
                who = (f"algorithm '{declaration.name}' is listed twice and takes" if first == declaration.name
                       else f"algorithms '{first}' and '{declaration.name}' both take")
                raise ConfigError(f"{who} over {capability}, so one would undo the other; keep only one")
            provider[capability] = declaration.name
    for index, declaration in enumerate(declarations):
        others = [other for i, other in enumerate(declarations) if i != index]
        for wanted in declaration.requires:
            if not any(wanted == other.label or wanted in other.provides for other in others):
                raise ConfigError(
                    f"algorithm '{declaration.name}' requires '{wanted}', which no other algorithm in this run provides"
                )
        for excluded in declaration.conflicts:
            for other in others:
                if excluded == other.label or excluded in other.provides:
                    reason = "" if excluded == other.label else f" (both touch {excluded})"
                    raise ConfigError(f"algorithm '{declaration.name}' cannot run with '{other.name}'{reason}; keep only one")


def ordered(algorithms: Iterable[Algorithm]) -> list[Algorithm]:
    """Sorted by `order`; `sorted` is stable, so ties keep the user's order."""
    return sorted(algorithms, key=lambda algorithm: int(algorithm.order))


def compose(algorithms: Iterable[Algorithm], device: torch.device | None = None, precision: str = "fp32") -> list[Algorithm]:
    """The run's algorithms, bundles expanded into the members they apply on `device` at
    `precision` (in the bundle's place in the user's list), checked and in the order the engine
    will run them. The trainer passes its device and precision; a check without one plans as a
    CPU run in fp32."""
    import torch

    from composerlite.core.engine import algorithm_label

    device = device if device is not None else torch.device("cpu")
    expanded: list[Algorithm] = []
    declarations: list[Declaration] = []
    for algorithm in algorithms:
        for part in algorithm.expand(device, precision):
            shown = f"{algorithm_label(algorithm)}/{algorithm_label(part)}" if part is not algorithm else ""
            expanded.append(part)
            declarations.append(Declaration.of(part, shown))
    check_composition(declarations)
    return ordered(expanded)
