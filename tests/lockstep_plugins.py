"""Plugins for the lockstep tests (loaded by path, as a user's plugin would be)."""

from __future__ import annotations

import os
import signal
import time

import pydantic

from composerlite import Algorithm, Event, Logger, State


class StepLogOptions(pydantic.BaseModel):
    path: str


class StepLog(Algorithm):
    """Appends `pid start_ns end_ns` for each of its run's training steps to `path`."""

    name = "step_log"
    Options = StepLogOptions

    def __init__(self, **options):
        self.options = StepLogOptions(**options)
        self._started = 0

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.BATCH_START, Event.BATCH_END)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.BATCH_START:
            self._started = time.monotonic_ns()
            return
        with open(self.options.path, "a") as log:
            log.write(f"{os.getpid()} {self._started} {time.monotonic_ns()}\n")


class AtStepOptions(pydantic.BaseModel):
    step: int
    pid: int = 0


class AtStep(Algorithm):
    """Acts once, at the end of step `step`."""

    Options = AtStepOptions

    def __init__(self, **options):
        self.options = AtStepOptions(**options)

    def match(self, event: Event, state: State) -> bool:
        return event is Event.BATCH_END and state.timestamp.batch == self.options.step


class SignalAt(AtStep):
    """Sends SIGTERM to process `pid` (the benchmark) at the end of step `step`."""

    name = "signal_at"

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        os.kill(self.options.pid, signal.SIGTERM)


class CrashAt(AtStep):
    """Raises at the end of step `step`: a plugin bug in the middle of a run."""

    name = "crash_at"

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        raise ValueError("a bug at this step")
