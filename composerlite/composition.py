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

Capability names in use: "position_embedding" (alibi), "mlp" (gated_linear_units),
"layernorm" (low_precision_layernorm), "eval_weights" (ema), "max_duration" (scale_schedule).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from composerlite.algorithm import Algorithm
from composerlite.engine import algorithm_label
from composerlite.errors import ConfigError


def check_composition(algorithms: list[Algorithm], shown: dict[int, str] | None = None) -> None:
    """Raise ConfigError (one line, naming both algorithms) for an impossible combination.
    `shown` maps `id(algorithm)` to the name messages use for it (a bundle's member:
    `fused_kernels/fused_layernorm`); `requires` and `conflicts` still match plain names."""
    labels = [algorithm_label(algorithm) for algorithm in algorithms]
    shown_labels = [(shown or {}).get(id(algorithm), label) for algorithm, label in zip(algorithms, labels)]
    provider: dict[str, str] = {}
    for algorithm, label in zip(algorithms, shown_labels):
        for capability in algorithm.provides:
            if capability in provider:
                first = provider[capability]
                who = f"algorithm '{label}' is listed twice and takes" if first == label else f"algorithms '{first}' and '{label}' both take"
                raise ConfigError(f"{who} over {capability}, so one would undo the other; keep only one")
            provider[capability] = label
    for index, (algorithm, label) in enumerate(zip(algorithms, shown_labels)):
        others = [(other, name, other_shown) for i, (other, name, other_shown) in enumerate(zip(algorithms, labels, shown_labels))
                  if i != index]
        for wanted in algorithm.requires:
            if not any(wanted == name or wanted in other.provides for other, name, _ in others):
                raise ConfigError(
                    f"algorithm '{label}' requires '{wanted}', which no other algorithm in this run provides"
                )
        for excluded in algorithm.conflicts:
            for other, name, other_shown in others:
                if excluded == name or excluded in other.provides:
                    reason = "" if excluded == name else f" (both touch {excluded})"
                    raise ConfigError(f"algorithm '{label}' cannot run with '{other_shown}'{reason}; keep only one")


def ordered(algorithms: Iterable[Algorithm]) -> list[Algorithm]:
    """Sorted by `order`; `sorted` is stable, so ties keep the user's order."""
    return sorted(algorithms, key=lambda algorithm: int(algorithm.order))


def compose(algorithms: Iterable[Algorithm], device: torch.device = torch.device("cpu"),
            precision: str = "fp32") -> list[Algorithm]:
    """The run's algorithms, bundles expanded into the members they apply on `device` at
    `precision` (in the bundle's place in the user's list), checked and in the order the engine
    will run them. The trainer passes its device and precision; a check without one plans as a
    CPU run in fp32."""
    expanded: list[Algorithm] = []
    shown: dict[int, str] = {}
    for algorithm in algorithms:
        for part in algorithm.expand(device, precision):
            if part is not algorithm:
                shown[id(part)] = f"{algorithm_label(algorithm)}/{algorithm_label(part)}"
            expanded.append(part)
    check_composition(expanded, shown)
    return ordered(expanded)
