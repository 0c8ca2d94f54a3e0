"""The `Engine` runs algorithms, then callbacks, at each event, and times each algorithm."""

from __future__ import annotations

import collections
import time

from composerlite.algorithm import Algorithm, Callback
from composerlite.errors import ConfigError, PluginError
from composerlite.event import Event
from composerlite.loggers import Logger
from composerlite.state import State


class Engine:
    def __init__(self, state: State, logger: Logger):
        self.state = state
        self.logger = logger
        self.seconds_per_algorithm: dict[str, float] = collections.defaultdict(float)

    def run_event(self, event: Event) -> None:
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
        for callback in state.callbacks:
            callback.run_event(event, state, self.logger)
        for destination in self.logger.destinations:
            if isinstance(destination, Callback):
                destination.run_event(event, state, self.logger)


def algorithm_label(algorithm: Algorithm) -> str:
    return algorithm.name or type(algorithm).__name__
