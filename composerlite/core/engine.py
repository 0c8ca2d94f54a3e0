"""The `Engine` runs algorithms, then callbacks, at each event, and times each algorithm."""

from __future__ import annotations

import collections
import functools
import time
from typing import Callable

from composerlite.core.algorithm import Algorithm
from composerlite.core.callback import Callback
from composerlite.core.event import Event
from composerlite.core.logger import Logger, LoggerDestination, destination_failed
from composerlite.core.state import State
from composerlite.errors import ConfigError, PluginError

Handler = Callable[[State, Logger], None]


class Engine:
    def __init__(self, state: State, logger: Logger):
        self.state = state
        self.logger = logger
        self.seconds_per_algorithm: dict[str, float] = collections.defaultdict(float)
        self._handlers: dict[Event, list[Handler]] | None = None  # per event, once `fix_observers` ran

    def fix_observers(self) -> None:
        """Look up every callback's and logger destination's handler for each event once, now (the
        trainer does at FIT_START), instead of per event per step: observers added later are not
        called."""
        self._handlers = {event: self._observer_handlers(event) for event in Event}

    def run_event(self, event: Event) -> None:
        state = self.state
        if state.algorithms:
            self._run_algorithms(event)
        # Thirteen events a step, most with nothing to run: this is kept to a lookup and a loop.
        handlers = self._handlers[event] if self._handlers is not None else self._observer_handlers(event)
        for handler in handlers:
            handler(state, self.logger)

    def _run_algorithms(self, event: Event) -> None:
        state = self.state
        for algorithm in state.algorithms:
            try:
                if algorithm.match(event, state):
                    start = time.perf_counter()
                    algorithm.apply(event, state, self.logger)
                    self.seconds_per_algorithm[algorithm_label(algorithm)] += time.perf_counter() - start
            except Exception as error:
                # At INIT nothing has trained yet, so a failure is the plugin's: name it in one line.
                # Later events keep their exceptions (an out-of-memory error there is handled).
                if event is not Event.INIT or isinstance(error, ConfigError):
                    raise
                raise PluginError(f"algorithm '{algorithm_label(algorithm)}' failed at {event.name}: "
                                  f"{type(error).__name__}: {error}") from error

    def _observer_handlers(self, event: Event) -> list[Handler]:
        """The callbacks', then the logger destinations', handlers for `event`: the method named
        after it, or `run_event` itself for an observer that dispatches on its own."""
        observers = [*self.state.callbacks, *(d for d in self.logger.destinations if isinstance(d, Callback))]
        handlers = []
        for observer in observers:
            if type(observer).run_event is not Callback.run_event:
                handler = functools.partial(observer.run_event, event)
            elif (handler := getattr(observer, event.value, None)) is None:
                continue
            handlers.append(_named_on_failure(observer, event, handler) if isinstance(observer, LoggerDestination) else handler)
        return handlers


def _named_on_failure(destination: LoggerDestination, event: Event, handler: Handler) -> Handler:
    """`handler`, but an exception it raises becomes a one-line `PluginError` naming the logger, as
    one raised in the destination's `log` or `open` does (a logger plugin's bug is not the run's)."""
    def reported(state: State, logger: Logger) -> None:
        try:
            handler(state, logger)
        except Exception as error:
            raise destination_failed(destination, event.value, error) from error

    return reported


def algorithm_label(algorithm: Algorithm) -> str:
    return algorithm.name or type(algorithm).__name__
