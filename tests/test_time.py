"""Time units: parsing, arithmetic, and how far a Timestamp is through a budget."""

import pytest

from composerlite.schedule import WarmupDecaySchedule
from composerlite.time import Time, Timestamp, TimeUnit


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
    with pytest.raises(ValueError):
        timestamp.fraction_of(Time.parse("0.5dur"))


def test_timestamp_state_roundtrip():
    timestamp = Timestamp(epoch=2, batch=7, sample=56, token=7168, batch_in_epoch=3, wall_clock_s=1.25)
    restored = Timestamp()
    restored.load_state_dict(timestamp.state_dict())
    assert restored == timestamp


def test_warmup_then_cosine_in_mixed_units():
    budget = Time.parse("1000tok")
    schedule = WarmupDecaySchedule(warmup=Time.parse("2ba"))
    assert schedule.multiplier(Timestamp(batch=1, token=100), budget) == 0.5
    assert schedule.multiplier(Timestamp(batch=2, token=200), budget) == 1.0  # decay starts at 20%
    assert schedule.multiplier(Timestamp(batch=6, token=600), budget) == pytest.approx(0.5)
    assert schedule.multiplier(Timestamp(batch=10, token=1000), budget) == pytest.approx(0.0)


@pytest.mark.parametrize("decay, midpoint", [("cosine", 0.5), ("linear", 0.5), ("constant", 1.0)])
def test_decay_shapes_with_dur_warmup(decay, midpoint):
    budget = Time.parse("100ba")
    schedule = WarmupDecaySchedule(warmup=Time.parse("0.1dur"), decay=decay, alpha_f=0.0)
    assert schedule.multiplier(Timestamp(batch=5), budget) == pytest.approx(0.5)
    assert schedule.multiplier(Timestamp(batch=10), budget) == 1.0
    assert schedule.multiplier(Timestamp(batch=55), budget) == pytest.approx(midpoint)
    assert schedule.multiplier(Timestamp(batch=100), budget) == pytest.approx(0.0 if decay != "constant" else 1.0)
