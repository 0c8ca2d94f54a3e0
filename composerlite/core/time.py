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


# TimeUnit.DURATION under a plain name for the per-step checks: an attribute of an Enum class is
# looked up through the enum's metaclass, several times slower than a module name (Python 3.11).
_DURATION = TimeUnit.DURATION
_SECONDS_PER = {TimeUnit.SECOND: 1.0, TimeUnit.MINUTE: 60.0, TimeUnit.HOUR: 3600.0}
_WALL_CLOCK = frozenset(_SECONDS_PER)
_INTEGRAL = frozenset({TimeUnit.EPOCH, TimeUnit.BATCH, TimeUnit.SAMPLE, TimeUnit.TOKEN})
_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ep|ba|sp|tok|dur|s|min|h)\s*$")


@dataclasses.dataclass(frozen=True, eq=False)
class Time:
    """A quantity of training time, with Composer's `Time` API: `.value` and `.unit`; comparison
    with a `Time` of the same unit or with a bare number (read in this unit, so
    `state.timestamp.batch < 42` works); `+`, `-` and `%` likewise; `*` and `/` by a number scale it;
    a `Time` divided by one of the same unit is a `dur` fraction; `int()` and `float()` give the value.
    Mixing units is an error, as in Composer."""

    value: float
    unit: TimeUnit

    def __post_init__(self):
        if type(self.unit) is not TimeUnit:  # Composer accepts "ba" as well as TimeUnit.BATCH
            object.__setattr__(self, "unit", TimeUnit(self.unit))

    @classmethod
    def parse(cls, text: str | Time) -> Time:
        """A time a user typed ("1000ba"): checked to be non-negative, and a `dur` at most 1."""
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
        if unit is TimeUnit.DURATION and value > 1:
            raise ValueError(f"a 'dur' time is a fraction of training in [0, 1], got {value}dur")
        return cls(value, unit)

    from_timestring = parse  # Composer's name

    def seconds(self) -> float:
        return self.value * _SECONDS_PER[self.unit]

    def _value_of(self, other: Time | float | str) -> float:
        """`other`'s value in this unit: a bare number is taken to be in it, as Composer does."""
        if isinstance(other, str):
            other = Time.parse(other)
        if isinstance(other, Time):
            if other.unit is not self.unit:
                raise ValueError(f"cannot combine {self} with {other}: the units differ")
            return other.value
        if isinstance(other, (int, float)):
            return other
        raise TypeError(f"cannot combine {self} with {type(other).__name__}")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            other = Time.parse(other)
        if isinstance(other, Time):
            return other.unit is self.unit and other.value == self.value
        if isinstance(other, (int, float)):
            return self.value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.value, self.unit))

    def __lt__(self, other: Time | float | str) -> bool:
        return self.value < self._value_of(other)

    def __le__(self, other: Time | float | str) -> bool:
        return self.value <= self._value_of(other)

    def __gt__(self, other: Time | float | str) -> bool:
        return self.value > self._value_of(other)

    def __ge__(self, other: Time | float | str) -> bool:
        return self.value >= self._value_of(other)

    def __add__(self, other: Time | float | str) -> Time:
        return Time(self.value + self._value_of(other), self.unit)

    __radd__ = __add__

    def __sub__(self, other: Time | float | str) -> Time:
        return Time(self.value - self._value_of(other), self.unit)

    def __rsub__(self, other: Time | float | str) -> Time:
        return Time(self._value_of(other) - self.value, self.unit)

    def __mod__(self, other: Time | float | str) -> Time:
        return Time(self.value % self._value_of(other), self.unit)

    def __mul__(self, factor: float | Time) -> Time:
        """Scaled by a number or a `dur` fraction. A whole-unit time rounds, and a positive one
        never to zero (a budget scaled by 0.1 still trains)."""
        if isinstance(factor, Time):
            if factor.unit is not TimeUnit.DURATION:
                raise ValueError(f"cannot multiply {self} by {factor}: only by a number or a 'dur' fraction")
            factor = factor.value
        value = self.value * factor
        if self.unit in _INTEGRAL:
            value = max(1, int(round(value))) if self.value > 0 and value > 0 else 0
        return Time(value, self.unit)

    __rmul__ = __mul__

    def __truediv__(self, other: Time | float) -> Time:
        """By a `Time` of the same unit: the fraction, in `dur`. By a number: scaled, as `*`."""
        if isinstance(other, Time):
            return Time(self.value / self._value_of(other), TimeUnit.DURATION)
        return self * (1 / other)

    def __int__(self) -> int:
        return int(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)  # `if timestamp.batch % 10:` means what it says

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        value = int(self.value) if float(self.value).is_integer() else self.value
        return f"{value}{self.unit.value}"


def parse_budget(text: str | Time) -> Time:
    """A training budget (`max_duration`) as given: a `Time` that 'dur' fractions are taken of, so
    not itself in 'dur', and more than zero. The messages name no setting: the caller says which."""
    budget = Time.parse(text)
    if budget.unit is _DURATION:
        raise ValueError("cannot be in 'dur' (it is what 'dur' is a fraction of)")
    if budget.value == 0:
        raise ValueError("must be greater than zero")
    return budget


def _count(value: int, unit: TimeUnit) -> Time:
    """`Time(value, unit)` for an int and a `TimeUnit`, built without `__init__` and its coercion
    (a third of the cost: the trainer makes four a step)."""
    time = object.__new__(Time)
    fields = time.__dict__
    fields["value"], fields["unit"] = value, unit
    return time


# Timestamp counters and their units: each is a `Time` (Composer's API); numbers assigned to them
# become one.
_COUNTERS = {"epoch": TimeUnit.EPOCH, "batch": TimeUnit.BATCH, "sample": TimeUnit.SAMPLE,
             "token": TimeUnit.TOKEN, "batch_in_epoch": TimeUnit.BATCH}
_COUNTER_OF_UNIT = {TimeUnit.EPOCH: "epoch", TimeUnit.BATCH: "batch", TimeUnit.SAMPLE: "sample", TimeUnit.TOKEN: "token"}


@dataclasses.dataclass
class Timestamp:
    """How far training has gone, in every unit. Mutated only by the trainer.

    The counters are `Time`s, as in Composer (`timestamp.batch.value`, `timestamp.batch < 42`);
    `timestamp.batch += 1` and `Timestamp(batch=3)` take plain numbers too."""

    epoch: Time = Time(0, TimeUnit.EPOCH)
    batch: Time = Time(0, TimeUnit.BATCH)
    sample: Time = Time(0, TimeUnit.SAMPLE)
    token: Time = Time(0, TimeUnit.TOKEN)
    batch_in_epoch: Time = Time(0, TimeUnit.BATCH)
    wall_clock_s: float = 0.0

    def __setattr__(self, name: str, value) -> None:
        unit = _COUNTERS.get(name)
        if unit is not None:
            if isinstance(value, Time) and value.unit is not unit:
                raise ValueError(f"timestamp.{name} counts {unit.value}, not {value.unit.value}")
            if not (isinstance(value, Time) and type(value.value) is int):  # a whole count is kept as it is (Times are immutable)
                value = Time(int(value), unit)
        super().__setattr__(name, value)

    def copy(self) -> Timestamp:
        """This timestamp as it is now. Shallow: its counters are immutable `Time`s. (The trainer
        keeps the time before each step for the LR schedule; `dataclasses.replace` cost ~8x more.)"""
        copied = object.__new__(Timestamp)
        copied.__dict__.update(self.__dict__)
        return copied

    def add_batch(self, samples: int, tokens: int) -> None:
        """Count one more batch, of `samples` sequences and `tokens` tokens: the trainer's update
        after each step. The new counters are whole counts in their own units, so they are stored
        without `__setattr__`'s checks (the update was the largest piece of the loop's own work)."""
        batch, in_epoch, sample, token = self.batch, self.batch_in_epoch, self.sample, self.token
        counters = self.__dict__
        counters["batch"] = _count(batch.value + 1, batch.unit)
        counters["batch_in_epoch"] = _count(in_epoch.value + 1, in_epoch.unit)
        counters["sample"] = _count(sample.value + samples, sample.unit)
        counters["token"] = _count(token.value + tokens, token.unit)

    def get(self, unit: TimeUnit) -> Time:
        """How far training has gone in `unit` (Composer's `Timestamp.get`)."""
        counter = _COUNTER_OF_UNIT.get(unit)  # "ba" finds it too: a TimeUnit hashes and compares as its text
        if counter is not None:
            return getattr(self, counter)
        unit = TimeUnit(unit)
        if unit in _WALL_CLOCK:
            return Time(self.wall_clock_s / _SECONDS_PER[unit], unit)
        raise ValueError("the timestamp does not know the budget: use State.get_elapsed_duration() for 'dur'")

    def fraction_of(self, max_duration: Time) -> float:
        """Fraction of `max_duration` elapsed, in [0, 1]. This is what 'dur' means. A 'dur' budget has
        no such fraction; `parse_budget` refuses one where budgets come in (the Trainer, the settings),
        so it is not checked again here, on every step."""
        if max_duration.value == 0:
            return 1.0
        return min(1.0, self.get(max_duration.unit).value / max_duration.value)

    def reached(self, time: Time, max_duration: Time) -> bool:
        if time.unit is _DURATION:
            return self.fraction_of(max_duration) >= time.value
        return self.get(time.unit).value >= time.value

    def state_dict(self) -> dict:
        """Plain numbers, the checkpoint format: {"epoch": 0, "batch": 7, ..., "wall_clock_s": 1.25}."""
        return {**{name: getattr(self, name).value for name in _COUNTERS}, "wall_clock_s": self.wall_clock_s}

    def load_state_dict(self, state: dict) -> None:
        for name in _COUNTERS:
            setattr(self, name, state[name])
        self.wall_clock_s = float(state["wall_clock_s"])
