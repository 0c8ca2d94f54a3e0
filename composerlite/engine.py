"""The `Engine` runs algorithms, then callbacks, at each event, and times each algorithm."""

from __future__ import annotations

import collections
import time

from composerlite.algorithm import Algorithm, Callback
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
            if algorithm.match(event, state):
                start = time.perf_counter()
                algorithm.apply(event, state, self.logger)
                self.seconds_per_algorithm[algorithm_label(algorithm)] += time.perf_counter() - start
        for callback in state.callbacks:
            callback.run_event(event, state, self.logger)
        for destination in self.logger.destinations:
            if isinstance(destination, Callback):
                destination.run_event(event, state, self.logger)


def algorithm_label(algorithm: Algorithm) -> str:
    return algorithm.name or type(algorithm).__name__
