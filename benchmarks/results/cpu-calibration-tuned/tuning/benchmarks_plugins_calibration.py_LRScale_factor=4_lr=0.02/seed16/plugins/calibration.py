"""Two plugins with known answers, to check that benchmark verdicts tell noise from effect:

- `NoOp` changes nothing: a bench must call it "no different" on every axis (exactly 1x on tokens
  and FLOPs, which are deterministic; within the timing noise on wall-clock).
- `Sleeper` trains exactly like the baseline but sleeps for `fraction` of each step (by default
  30%: it times the step's own work and sleeps 0.3/0.7 of that), so it is slower on wall-clock
  (about 1/0.7 = 1.43x the time) and no different on tokens and FLOPs.
- `LRScale` trains like the baseline at `factor` times its learning rate: its only difference is a
  rescaling of the hyperparameter `--tune lr` varies. Untuned it looks faster or slower (it runs at
  another LR); tuned over a grid that holds both optima it must come out no different. With a
  power-of-two factor and a grid whose values differ by that factor (`--tune lr=...` doubling, say),
  its run at lr/factor computes bit for bit what the baseline's at lr does.

    composerlite bench --algos baseline,benchmarks/plugins/calibration.py:NoOp,benchmarks/plugins/calibration.py:Sleeper
"""

from __future__ import annotations

import dataclasses
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


class LRScaleOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    factor: float = pydantic.Field(4.0, gt=0, description="multiplier on every optimizer group's scheduled LR")


@dataclasses.dataclass
class ScaledLR:
    """A schedule after the run's own: multiplies the LR each group was just given by `factor`."""

    factor: float

    def step(self, optimizer, start, end, max_duration) -> None:
        for group in optimizer.param_groups:
            group["lr"] *= self.factor

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LRScale(Algorithm):
    name = "lr_scale"
    Options = LRScaleOptions

    def __init__(self, **options):
        self.options = LRScaleOptions(**options)

    def match(self, event: Event, state: State) -> bool:
        return event is Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        # At INIT, before a resumed run loads its schedules' state, so the count matches the checkpoint's.
        state.schedulers.append(ScaledLR(self.options.factor))
