"""`Callback`: code that observes the training loop's events without changing training (logging,
monitoring), as Composer's does; an `Algorithm` (composerlite.core.algorithm) is the kind that changes it.
A module of its own because the loggers, the speed monitor and the benchmark's observers are
callbacks and need nothing of the algorithm API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from composerlite.core.event import Event

if TYPE_CHECKING:
    from composerlite.core.logger import Logger
    from composerlite.core.state import State


class Callback:
    """Base class for observers: define a method named after an event (`batch_end`, `fit_end`, ...),
    or override `run_event` to see every event. The trainer looks the methods up once, at
    FIT_START: add callbacks and logger destinations before training starts."""

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        handler = getattr(self, event.value, None)
        if handler is not None:
            handler(state, logger)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
