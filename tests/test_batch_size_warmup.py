"""batch_size_warmup: the size staircase, growth by accumulated microbatches of one shape, token and
sample counts and the LR schedule under a token budget, determinism, exact resume mid-warmup,
refusal when listed twice, export to transformers."""

from __future__ import annotations

import json

import pytest
from method_checks import assert_exact_resume_after_stop, assert_exported_logits_match_training, assert_same_seed_runs_match
from tinyrun import tiny_trainer

from composerlite import Algorithm, Event
from composerlite.algorithms.batch_size_warmup import BatchSizeWarmup, batch_size_at, default_min_batch_size
from composerlite.core.schedule import WarmupDecaySchedule
from composerlite.core.time import Time, Timestamp
from composerlite.errors import ConfigError


def test_batch_size_grows_in_a_staircase_to_full_at_duration():
    sizes = [batch_size_at(fraction, 0.5, 2, 8) for fraction in (0.0, 0.1, 0.2, 0.3, 0.4, 0.49, 0.5, 0.9)]
    assert sizes == [2, 2, 4, 4, 6, 6, 8, 8]
    assert batch_size_at(0.0, 0.0, 2, 8) == 8 and batch_size_at(0.0, 0.5, 8, 8) == 8
    assert batch_size_at(0.3, 0.5, 3, 8) == 6 and batch_size_at(0.6, 0.5, 3, 8) == 8  # full at the end even off-grid
    assert default_min_batch_size(32, 8) == 8  # accumulating: one microbatch
    assert default_min_batch_size(32, 32) == 2 and default_min_batch_size(4, 4) == 1  # else 1/16, at least one


class Forwards(Algorithm):
    """Records the shape of every microbatch forward, grouped by step."""

    name = "forwards"

    def __init__(self):
        self.steps = [[]]

    def match(self, event, state):
        return event in (Event.BEFORE_FORWARD, Event.BATCH_END)

    def apply(self, event, state, logger):
        if event is Event.BEFORE_FORWARD:
            self.steps[-1].append(tuple(state.batch["input_ids"].shape))
        else:
            self.steps.append([])


def test_growth_by_accumulation_with_tokens_and_lr_schedule_counted_right(tmp_path):
    forwards = Forwards()
    tiny_trainer(tmp_path, [BatchSizeWarmup(duration=0.5), forwards], max_duration="384tok", batch_size=4,
                 microbatch_size=1, seq_len=16, warmup="0.25dur", vocab_size=512, evaluate=False).fit()
    records = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["event"] == "train"]
    sizes = [r["batch_size_warmup/batch_size"] for r in records]
    assert sizes[0] == 1 and sizes[-1] == 4 and sizes == sorted(sizes) and {2, 3} <= set(sizes)
    assert [len(step) for step in forwards.steps[:-1]] == sizes  # one accumulated microbatch per sequence
    assert {shape for step in forwards.steps for shape in step} == {(1, 16)}  # every forward has one shape
    assert [r["tokens"] for r in records] == [16 * sum(sizes[: i + 1]) for i in range(len(sizes))]
    assert [r["samples"] for r in records] == [sum(sizes[: i + 1]) for i in range(len(sizes))]
    assert records[-2]["tokens"] < 384 <= records[-1]["tokens"]  # the budget ends the run at the first step past it
    assert len(records) > 384 // 64  # more, smaller steps than full batches would take
    schedule = WarmupDecaySchedule(warmup=Time.parse("0.25dur"))  # the LR follows the tokens actually trained
    before = Timestamp()
    for r in records:
        after = Timestamp(batch=r["step"], token=r["tokens"], sample=r["samples"])
        expected = 1e-3 * schedule.multiplier(before, after, Time.parse("384tok"))
        assert r["lr"] == pytest.approx(expected, rel=1e-12)
        before = after


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [BatchSizeWarmup(duration=0.9)], max_duration="3ba",
                                microbatch_size=1)


def test_resume_after_a_stop_is_exact_mid_warmup(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [BatchSizeWarmup(duration=0.9)], batch_size=4, microbatch_size=1)


def test_listed_twice_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'batch_size_warmup' is listed twice and takes over batch_size") as error:
        tiny_trainer(tmp_path, [BatchSizeWarmup(), BatchSizeWarmup()], vocab_size=512)
    assert "\n" not in str(error.value)


def test_export_gives_a_model_transformers_loads_with_the_trained_logits(tmp_path, text_file):
    assert_exported_logits_match_training(text_file, tmp_path, "batch_size_warmup:duration=0.9")
