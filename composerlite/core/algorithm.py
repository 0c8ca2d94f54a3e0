"""`Algorithm`: code attached to the training loop's events that changes training (the model, the
batch, the loss, the optimizer); a `Callback` (composerlite.core.callback) only observes it (logging,
monitoring). The API is Composer's: a Composer algorithm that uses the part of
Composer's `State` and `Time` that composerlite has ports by changing its imports (the README's
"Composer algorithms port" paragraph lists that part and what does not port).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

from composerlite.core.event import Event

if TYPE_CHECKING:
    import torch

    from composerlite.core.logger import Logger
    from composerlite.core.state import State


class NoOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class Order(enum.IntEnum):
    """Priority classes for `Algorithm.order`. The engine runs algorithms sorted by `order`, and
    in the user's order within a class (see `composerlite.core.composition`). Gaps leave room between."""

    SCHEDULE = 0  # rewrites the run's time budget (scale_schedule) before anything reads it
    SURGERY = 100  # replaces modules at INIT (GLU, low-precision LayerNorm, ALiBi)
    DEFAULT = 500  # batch, loss, gradient, optimizer and eval-time methods
    WRAP = 900  # wraps the finished model (torch.compile): sees every other conversion


class Algorithm:
    """Base class for speedup methods.

    Subclasses implement `match` (should this algorithm run at this event?) and `apply` (do it).
    Class attributes a subclass may set:
      name           the name users type after `--algo`
      Options        a pydantic model of the algorithm's options (`--algo name:key=value`)
      dynamic_seq_len  True if the algorithm shortens sequences; the trainer then runs one
                     full-length step first so the allocator's peak is reached up front, and
                     marks the sequence dimension dynamic for torch.compile
      provides       capabilities this algorithm takes over exclusively ("position_embedding",
                     "mlp", "layernorm", ...): two algorithms providing one capability conflict
      requires       names or capabilities some *other* algorithm in the run must provide
      conflicts      names or capabilities this algorithm cannot run beside
      order          an `Order` class; the engine runs algorithms sorted by it, then as listed

    Options arrive as keyword arguments and are validated once, here, into `self.options` (an
    `Options`). A subclass that sets up more takes `**options` and calls `super().__init__(**options)`
    first. A Composer-style `__init__(self, max_seq_len=64)` that keeps its own attributes works
    too: the registry reads its options from the signature (see `registry.options_model`).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[pydantic.BaseModel]] = NoOptions
    dynamic_seq_len: ClassVar[bool] = False
    exportable_to_hf: ClassVar[bool] = True  # False if its INIT changes leave a model plain GPT-2 cannot load
    # GPT2Config fields an exported model needs to compute what training computed (`export --to hf`)
    hf_config_overrides: ClassVar[dict[str, Any]] = {}
    provides: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    conflicts: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = Order.DEFAULT

    def __init__(self, **options: Any):
        self.options = self.Options(**options)

    def match(self, event: Event, state: State) -> bool:
        raise NotImplementedError

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        raise NotImplementedError

    def expand(self, device: torch.device, precision: str) -> list[Algorithm]:
        """The algorithms this one runs as on `device` at `precision`: itself. A bundle
        (fused_kernels) returns itself and the members it applies there, which then compose and
        run as if listed one by one, each with its own order, provides, requires and conflicts."""
        return [self]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        options = getattr(self, "options", None)  # a Composer-style __init__ keeps attributes of its own
        dumped = options.model_dump() if isinstance(options, pydantic.BaseModel) else {}
        shown = ", ".join(f"{key}={value!r}" for key, value in dumped.items())
        return f"{type(self).__name__}({shown})"


class ModelConverter(Algorithm):
    """An algorithm that acts once, at INIT, before the optimizer is built: model surgery, a new
    forward or loss, an optimizer factory, a rescaled budget (as torchtitan's model converters).
    A subclass sets `name` and `Options` and implements `convert(state)`, which returns what it
    did ({"replaced": 12}, or None): logged as `<name>/<key>` into the first step's metrics record
    and kept in the state_dict with the options."""

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.report: dict[str, Any] = {}

    def convert(self, state: State) -> dict[str, Any] | None:
        raise NotImplementedError

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        self.report = self.convert(state) or {}
        if self.report:
            logger.log_metrics({f"{self.name}/{key}": value for key, value in self.report.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"options": self.options.model_dump(), **self.report}
