"""Time units: parsing, arithmetic, and how far a Timestamp is through a budget."""

import math

import pytest

from composerlite.core.schedule import WarmupDecaySchedule
from composerlite.core.time import Time, Timestamp, TimeUnit, parse_budget


@pytest.mark.parametrize(
    "text, value, unit",
    [
        ("1000ba", 1000, TimeUnit.BATCH),
        ("4.6e9tok", 4_600_000_000, TimeUnit.TOKEN),
        ("0.3dur", 0.3, TimeUnit.DURATION),
        ("10min", 10, TimeUnit.MINUTE),
        ("2ep", 2, TimeUnit.EPOCH),
        ("512sp", 512, TimeUnit.SAMPLE),
        ("1.5h", 1.5, TimeUnit.HOUR),
        ("90s", 90, TimeUnit.SECOND),
        (" 7 ba ", 7, TimeUnit.BATCH),
    ],
)
def test_parse(text, value, unit):
    time = Time.parse(text)
    assert time == Time(value, unit)
    assert Time.parse(str(time)) == time


@pytest.mark.parametrize("text", ["", "10", "ba", "1.5ba", "-3ba", "2dur", "10 minutes", "3e", "1e3parsecs"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        Time.parse(text)


def test_wall_clock_seconds_and_scaling():
    assert Time.parse("10min").seconds() == 600
    assert Time.parse("2h").seconds() == 7200
    assert Time.parse("100ba") * 0.5 == Time(50, TimeUnit.BATCH)
    assert Time.parse("3ba") * 0.1 == Time(1, TimeUnit.BATCH)  # never rounds a positive time to zero
    assert Time.parse("1min") * 2 == Time(2, TimeUnit.MINUTE)


def test_timestamp_fraction_in_each_unit():
    timestamp = Timestamp(epoch=1, batch=30, sample=240, token=30_720, wall_clock_s=90)
    assert timestamp.fraction_of(Time.parse("60ba")) == 0.5
    assert timestamp.fraction_of(Time.parse("960sp")) == 0.25
    assert timestamp.fraction_of(Time.parse("30720tok")) == 1.0
    assert timestamp.fraction_of(Time.parse("3min")) == 0.5
    assert timestamp.fraction_of(Time.parse("4ep")) == 0.25
    assert timestamp.fraction_of(Time.parse("10ba")) == 1.0  # clipped
    assert timestamp.reached(Time.parse("0.5dur"), Time.parse("60ba"))
    assert not timestamp.reached(Time.parse("0.6dur"), Time.parse("60ba"))


@pytest.mark.parametrize("text, message", [
    ("0.5dur", "cannot be in 'dur' (it is what 'dur' is a fraction of)"),
    ("0ba", "must be greater than zero"),
    ("0min", "must be greater than zero"),
    ("2dur", "a 'dur' time is a fraction of training"),  # what Time.parse refuses, a budget refuses too
])
def test_a_budget_is_a_positive_time_not_in_dur(text, message):
    with pytest.raises(ValueError) as error:
        parse_budget(text)
    assert str(error.value).startswith(message)


def test_a_budget_parses_as_a_time():
    assert parse_budget("10min") == Time(10, TimeUnit.MINUTE)
    assert parse_budget(Time(3, TimeUnit.BATCH)) == Time(3, TimeUnit.BATCH)


def test_timestamp_state_roundtrip():
    timestamp = Timestamp(epoch=2, batch=7, sample=56, token=7168, batch_in_epoch=3, wall_clock_s=1.25)
    restored = Timestamp()
    restored.load_state_dict(timestamp.state_dict())
    assert restored == timestamp


def multipliers(schedule: WarmupDecaySchedule, budget: Time, steps: int, tokens_per_step: int = 0) -> list[float]:
    """The multiplier of each step 1..steps, from the timestamps before and after it, as the trainer asks."""
    return [schedule.multiplier(Timestamp(batch=k - 1, token=(k - 1) * tokens_per_step),
                                Timestamp(batch=k, token=k * tokens_per_step), budget)
            for k in range(1, steps + 1)]


def test_warmup_then_cosine_in_mixed_units():
    budget = Time.parse("1000tok")
    lrs = multipliers(WarmupDecaySchedule(warmup=Time.parse("2ba")), budget, 10, tokens_per_step=100)
    assert lrs[:2] == [0.5, 1.0]  # warmup counts the step itself: the first step is not at LR 0
    # Decay follows the fraction before each step, from 10% (the start of step 2) to 100%.
    assert lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.4 / 0.9)))  # step 6 starts at 50%
    assert lrs[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.8 / 0.9)))  # step 10 starts at 90%
    assert lrs[9] > 0.02  # the last step trains


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_decay_shapes_with_dur_warmup(decay):
    lrs = multipliers(WarmupDecaySchedule(warmup=Time.parse("0.1dur"), decay=decay, alpha_f=0.0), Time.parse("100ba"), 100)
    assert lrs[:10] == pytest.approx([k / 10 for k in range(1, 10)] + [1.0])
    progress = [(k - 1 - 9) / 91 for k in range(10, 101)]  # step 10 starts at 9%: decay spans 9%..100%
    shape = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p, "constant": lambda p: 1.0}[decay]
    assert lrs[9:] == pytest.approx([shape(p) for p in progress])
    assert lrs[-1] > 0 and lrs[9:] == sorted(lrs[9:], reverse=True)


def test_two_step_run_trains_both_steps():
    """A 2-batch cosine run: step 2 starts half-way, so it trains at half the LR (it was 0)."""
    assert multipliers(WarmupDecaySchedule(warmup=Time.parse("0.05dur")), Time.parse("2ba"), 2) == pytest.approx([1.0, 0.5])
