"""Scale schedule: stretch or shrink the whole training schedule by one ratio. Composer's
`scale_schedule_ratio` (and its older `ScaleSchedule` algorithm); the budget-ablation knob of Li
et al., 2020, "Budgeted Training: Rethinking Deep Neural Network Training Under Resource
Constraints", arXiv:1905.04753.

Multiplies `max_duration` and every absolute time in the LR schedules (warmup "90ba" becomes
"45ba" at ratio 0.5) by `ratio`, so a run at 0.5 is the same recipe in half the steps, with its
LR decayed fully by the new end. That is the fair way to ask "what quality do I get for fewer
steps", and the axis a speedup's quality-versus-time curve is drawn along. Times in "dur" are
fractions of the budget and scale by themselves. Eval and save intervals in absolute units are
measurement choices and are left alone (give them in "dur" to have them follow). Applied at INIT,
before any other algorithm (Order.SCHEDULE), so everything sees the scaled budget.
"""

from __future__ import annotations

from typing import Any

import dataclasses

import pydantic

from composerlite import ModelConverter, Order, State, Time, TimeUnit
from composerlite.errors import ConfigError


class ScaleScheduleOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    ratio: float = pydantic.Field(1.0, gt=0, description="multiplier for max_duration and every absolute schedule time")


def scale_time(time: Time, ratio: float) -> Time:
    """`time` * ratio; fractions of the run ('dur') already follow the budget."""
    return time if time.unit is TimeUnit.DURATION else time * ratio


def scale_scheduler(scheduler, ratio: float) -> None:
    """Scale, in place, every `Time` field of a dataclass scheduler (e.g. WarmupDecaySchedule.warmup)."""
    if not dataclasses.is_dataclass(scheduler):
        raise ConfigError(
            f"scale_schedule cannot scale {type(scheduler).__name__}: only dataclass schedules with Time fields"
        )
    for field in dataclasses.fields(scheduler):
        value = getattr(scheduler, field.name)
        if isinstance(value, Time):
            setattr(scheduler, field.name, scale_time(value, ratio))


def apply_scale_schedule(state: State, ratio: float) -> None:
    state.max_duration = scale_time(state.max_duration, ratio)
    for scheduler in state.schedulers:
        scale_scheduler(scheduler, ratio)


class ScaleSchedule(ModelConverter):
    """Multiply max_duration and every absolute LR-schedule time by `ratio` (quality-vs-steps ablations)."""

    name = "scale_schedule"
    Options = ScaleScheduleOptions
    provides = ("max_duration",)  # two ratios would compound silently
    order = Order.SCHEDULE

    def convert(self, state: State) -> dict[str, Any]:
        apply_scale_schedule(state, self.options.ratio)
        return {"max_duration": str(state.max_duration)}
