"""Two plugins with known answers, to check that benchmark verdicts tell noise from effect:

- `NoOp` changes nothing: a bench must call it "no different" on every axis (exactly 1x on tokens
  and FLOPs, which are deterministic; within the timing noise on wall-clock).
- `Sleeper` trains exactly like the baseline but sleeps for `fraction` of each step (by default
  30%: it times the step's own work and sleeps 0.3/0.7 of that), so it is slower on wall-clock
  (about 1/0.7 = 1.43x the time) and no different on tokens and FLOPs.

    composerlite bench --algos baseline,benchmarks/plugins/calibration.py:NoOp,benchmarks/plugins/calibration.py:Sleeper
"""

from __future__ import annotations

import time

import pydantic

from composerlite import Algorithm, Event, Logger, State


class NoOp(Algorithm):
    name = "noop"

    def match(self, event: Event, state: State) -> bool:
        return False

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        raise AssertionError("never matched")


class SleeperOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    fraction: float = pydantic.Field(0.3, gt=0, lt=1, description="share of each step spent sleeping")


class Sleeper(Algorithm):
    name = "sleeper"
    Options = SleeperOptions

    def __init__(self, **options):
        self.options = SleeperOptions(**options)
        self._started = 0.0

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.BATCH_START, Event.BATCH_END)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.BATCH_START:
            self._started = time.perf_counter()
            return
        work = time.perf_counter() - self._started
        time.sleep(work * self.options.fraction / (1 - self.options.fraction))
