"""Training time: Composer's units (ep, ba, sp, tok, dur) plus wall-clock units (s, min, h).

`Time` is a quantity with a unit ("1000ba", "4.6e9tok", "0.3dur", "10min"); `Timestamp` counts how
far training has gone in every unit at once, so any `Time` can be compared against it. A wall-clock
`max_duration` is a real budget: `Timestamp.fraction_of(max_duration)` is the fraction of the
budget used, which is what LR schedules and `dur`-relative algorithms follow.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re


class TimeUnit(str, enum.Enum):
    EPOCH = "ep"
    BATCH = "ba"
    SAMPLE = "sp"
    TOKEN = "tok"
    DURATION = "dur"
    SECOND = "s"
    MINUTE = "min"
    HOUR = "h"


_SECONDS_PER = {TimeUnit.SECOND: 1.0, TimeUnit.MINUTE: 60.0, TimeUnit.HOUR: 3600.0}
_WALL_CLOCK = frozenset(_SECONDS_PER)
_INTEGRAL = frozenset({TimeUnit.EPOCH, TimeUnit.BATCH, TimeUnit.SAMPLE, TimeUnit.TOKEN})
_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ep|ba|sp|tok|dur|s|min|h)\s*$")


@dataclasses.dataclass(frozen=True)
class Time:
    value: float
    unit: TimeUnit

    def __post_init__(self):
        if self.value < 0:
            raise ValueError(f"time must be non-negative, got {self.value}{self.unit.value}")
        if self.unit is TimeUnit.DURATION and self.value > 1:
            raise ValueError(f"a 'dur' time is a fraction of training in [0, 1], got {self.value}dur")

    @classmethod
    def parse(cls, text: str | Time) -> Time:
        if isinstance(text, Time):
            return text
        match = _TIME_RE.match(str(text))
        if not match:
            raise ValueError(
                f"cannot parse time {text!r}: expected a number and a unit, one of "
                "ep, ba, sp, tok, dur, s, min, h (e.g. '1000ba', '4.6e9tok', '0.3dur', '10min')"
            )
        value, unit = float(match.group(1)), TimeUnit(match.group(2))
        if not math.isfinite(value):
            raise ValueError(f"{text!r}: {match.group(1)} is too large to be a number of {unit.value}")
        if unit in _INTEGRAL:
            if value != int(value):
                raise ValueError(f"{text!r}: {unit.value} counts whole units")
            value = int(value)
        return cls(value, unit)

    @property
    def is_wall_clock(self) -> bool:
        return self.unit in _WALL_CLOCK

    def seconds(self) -> float:
        return self.value * _SECONDS_PER[self.unit]

    def __mul__(self, factor: float) -> Time:
        value = self.value * factor
        if self.unit in _INTEGRAL:
            value = max(1, int(round(value))) if self.value > 0 else 0
        return Time(value, self.unit)

    def __str__(self) -> str:
        value = int(self.value) if float(self.value).is_integer() else self.value
        return f"{value}{self.unit.value}"


@dataclasses.dataclass
class Timestamp:
    """How far training has gone, in every unit. Mutated only by the trainer."""

    epoch: int = 0
    batch: int = 0
    sample: int = 0
    token: int = 0
    batch_in_epoch: int = 0
    wall_clock_s: float = 0.0

    def get(self, unit: TimeUnit) -> float:
        if unit in _WALL_CLOCK:
            return self.wall_clock_s / _SECONDS_PER[unit]
        return {
            TimeUnit.EPOCH: self.epoch,
            TimeUnit.BATCH: self.batch,
            TimeUnit.SAMPLE: self.sample,
            TimeUnit.TOKEN: self.token,
        }[unit]

    def fraction_of(self, max_duration: Time) -> float:
        """Fraction of `max_duration` elapsed, in [0, 1]. This is what 'dur' means."""
        if max_duration.unit is TimeUnit.DURATION:
            raise ValueError("max_duration cannot itself be in 'dur'")
        if max_duration.value == 0:
            return 1.0
        return min(1.0, self.get(max_duration.unit) / max_duration.value)

    def reached(self, time: Time, max_duration: Time) -> bool:
        if time.unit is TimeUnit.DURATION:
            return self.fraction_of(max_duration) >= time.value
        return self.get(time.unit) >= time.value

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, type(getattr(self, field.name))(state[field.name]))
