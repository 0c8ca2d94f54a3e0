"""Which algorithms may run together, and in what order. Checked once, before training starts.

Each algorithm class declares (all optional, see `Algorithm`):
    provides   capabilities it takes over exclusively, e.g. ("position_embedding",)
    requires   names or capabilities that some other algorithm in the run must provide
    conflicts  names or capabilities it cannot run beside
    order      an `Order` priority class

The rules:
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

from composerlite.algorithm import Algorithm
from composerlite.engine import algorithm_label
from composerlite.errors import ConfigError


def check_composition(algorithms: list[Algorithm]) -> None:
    """Raise ConfigError (one line, naming both algorithms) for an impossible combination."""
    labels = [algorithm_label(algorithm) for algorithm in algorithms]
    provider: dict[str, str] = {}
    for algorithm, label in zip(algorithms, labels):
        for capability in algorithm.provides:
            if capability in provider:
                first = provider[capability]
                who = f"algorithm '{label}' is listed twice and takes" if first == label else f"algorithms '{first}' and '{label}' both take"
                raise ConfigError(f"{who} over {capability}, so one would undo the other; keep only one")
            provider[capability] = label
    for index, (algorithm, label) in enumerate(zip(algorithms, labels)):
        others = [(other, other_label) for i, (other, other_label) in enumerate(zip(algorithms, labels)) if i != index]
        for wanted in algorithm.requires:
            if not any(wanted == other_label or wanted in other.provides for other, other_label in others):
                raise ConfigError(
                    f"algorithm '{label}' requires '{wanted}', which no other algorithm in this run provides"
                )
        for excluded in algorithm.conflicts:
            for other, other_label in others:
                if excluded == other_label or excluded in other.provides:
                    reason = "" if excluded == other_label else f" (both touch {excluded})"
                    raise ConfigError(f"algorithm '{label}' cannot run with '{other_label}'{reason}; keep only one")


def ordered(algorithms: Iterable[Algorithm]) -> list[Algorithm]:
    """Sorted by `order`; `sorted` is stable, so ties keep the user's order."""
    return sorted(algorithms, key=lambda algorithm: int(algorithm.order))


def compose(algorithms: Iterable[Algorithm]) -> list[Algorithm]:
    """The run's algorithms, checked and in the order the engine will run them."""
    algorithms = list(algorithms)
    check_composition(algorithms)
    return ordered(algorithms)
