"""The training loop: event order, loss falling, determinism, duration accounting, microbatching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from composerlite import Algorithm, Callback, Event
from composerlite.core.logger import Logger
from composerlite.data import BatchStream, prepare_corpus
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.observe.loggers import JSONLinesLogger
from composerlite.run.loop import Trainer, seed_everything
from composerlite.run.settings import validated


def make_trainer(tmp_path, text_file, *, max_duration="6ba", batch_size=4, seq_len=32, seed=0,
                 run_name="run", lr=3e-3, warmup="0ba", **kwargs) -> Trainer:
    corpus = prepare_corpus(str(text_file), cache_dir=tmp_path / "cache")
    train = BatchStream(corpus.train, seq_len=seq_len, batch_size=batch_size, seed=seed)
    evaluation = BatchStream(corpus.eval, seq_len=seq_len, batch_size=2, seed=0, shuffle=False)
    seed_everything(seed)
    run_dir = tmp_path / run_name
    objects = {key: kwargs.pop(key) for key in ("algorithms", "callbacks", "load_path") if key in kwargs}
    settings = {"max_duration": max_duration, "run_dir": str(run_dir), "lr": lr, "warmup": warmup, "seed": seed,
                "device": "cpu", "precision": "fp32", "eval_interval": None, **kwargs}
    return Trainer(settings, model=build_model("gpt2-tiny", dropout=0.1), train_data=train, eval_data=evaluation,
                   logger=Logger([JSONLinesLogger(run_dir / "metrics.jsonl")]), **objects)


def records(trainer: Trainer, event: str) -> list[dict]:
    lines = (Path(trainer.state.run_dir.local_path()) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


class Recorder(Callback):
    def __init__(self):
        self.events: list[Event] = []

    def run_event(self, event, state, logger):
        self.events.append(event)


def test_events_fire_in_the_documented_order_with_microbatch_repetition(tmp_path, text_file):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, text_file, max_duration="2ba", microbatch_size=2, callbacks=[recorder],
                           eval_interval="1ba", eval_batches=1, save_interval="1ba")
    assert recorder.events == [Event.INIT]
    trainer.fit()
    E = Event
    microbatch = [E.BEFORE_FORWARD, E.AFTER_FORWARD, E.BEFORE_LOSS, E.AFTER_LOSS, E.BEFORE_BACKWARD, E.AFTER_BACKWARD]
    batch = [E.BEFORE_DATALOADER, E.AFTER_DATALOADER, E.BATCH_START, E.BEFORE_TRAIN_BATCH, *microbatch, *microbatch,
             E.AFTER_TRAIN_BATCH, E.BATCH_END]
    evaluation = [E.EVAL_START, E.EVAL_BATCH_START, E.EVAL_BEFORE_FORWARD, E.EVAL_AFTER_FORWARD, E.EVAL_BATCH_END,
                  E.EVAL_END]
    # A step's evaluation comes before its checkpoint. The last batch's eval and save are the final
    # ones, run once after the loop.
    expected = [E.INIT, E.BEFORE_LOAD, E.AFTER_LOAD, E.FIT_START, E.EPOCH_START, *batch, *evaluation, E.BATCH_CHECKPOINT,
                *batch, E.BATCH_CHECKPOINT, *evaluation, E.FIT_END]
    assert recorder.events == expected
    assert [r["step"] for r in records(trainer, "eval")] == [1, 2]
    checkpoints = sorted(p.name for p in (Path(trainer.state.run_dir.local_path()) / "checkpoints").iterdir())
    assert checkpoints == ["ba00000001", "ba00000002"]


def test_epoch_events_wrap_each_pass_over_the_data(tmp_path, text_file):
    # A quarter of the corpus (its held-out split still fills an eval batch): whole passes cost less.
    short = tmp_path / "short.txt"
    short.write_text(text_file.read_text()[: len(text_file.read_text()) // 4])
    recorder = Recorder()
    trainer = make_trainer(tmp_path, short, max_duration="2ep", batch_size=32, seq_len=32, callbacks=[recorder])
    per_epoch = len(trainer.train_data)
    assert per_epoch > 1
    trainer.fit()
    assert trainer.state.timestamp.epoch == 2
    assert trainer.state.timestamp.batch == 2 * per_epoch
    assert recorder.events.count(Event.EPOCH_START) == 2
    assert recorder.events.count(Event.EPOCH_END) == 2
    assert recorder.events.count(Event.BATCH_END) == 2 * per_epoch


def test_loss_falls_on_a_tiny_model(tmp_path, text_file):
    trainer = make_trainer(tmp_path, text_file, max_duration="40ba", lr=5e-3, warmup="4ba")
    summary = trainer.fit()
    losses = [r["loss"] for r in records(trainer, "train")]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    assert summary["eval_loss"] < losses[0]


def test_same_seed_same_loss_curve_bit_for_bit(tmp_path, text_file):
    curves = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        trainer = make_trainer(tmp_path, text_file, max_duration="8ba", seed=seed, run_name=name)
        trainer.fit()
        curves.append([r["loss"] for r in records(trainer, "train")])
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


@pytest.mark.parametrize(
    "max_duration, expected_batches",
    [("5ba", 5), ("20sp", 5), ("640tok", 5), ("650tok", 6)],
)
def test_duration_is_counted_in_every_unit(tmp_path, text_file, max_duration, expected_batches):
    trainer = make_trainer(tmp_path, text_file, max_duration=max_duration, batch_size=4, seq_len=32)
    trainer.fit()
    timestamp = trainer.state.timestamp
    assert timestamp.batch == expected_batches
    assert timestamp.sample == 4 * expected_batches
    assert timestamp.token == 4 * 32 * expected_batches
    train = records(trainer, "train")
    assert [r["tokens"] for r in train] == [128 * (i + 1) for i in range(expected_batches)]
    assert train[-1]["fraction"] == 1.0


@pytest.mark.parametrize("max_duration", ["0.5dur", "0ba", "10 parsecs"])
def test_a_bad_budget_reads_the_same_from_a_trainer_as_from_the_settings(tmp_path, max_duration):
    with pytest.raises(ConfigError) as from_settings:
        validated({"max_duration": max_duration})
    with pytest.raises(ConfigError) as from_trainer:  # refused before the model or the data are looked at
        Trainer({"max_duration": max_duration, "run_dir": str(tmp_path)}, model=torch.nn.Linear(1, 1), train_data=None,
                logger=Logger([]))
    assert str(from_trainer.value) == str(from_settings.value)


def test_wall_clock_budget_drives_the_schedule(tmp_path, text_file, monkeypatch):
    # A fake clock that advances 0.05 s per reading: each batch then "takes" 0.05 s, so the test
    # does not depend on how busy the machine is.
    readings = iter(range(10**6))
    monkeypatch.setattr("composerlite.run.loop.time.perf_counter", lambda: next(readings) * 0.05)
    trainer = make_trainer(tmp_path, text_file, max_duration="1s", warmup="0.1dur")
    trainer.fit()
    train = records(trainer, "train")
    assert train[-1]["wall_s"] >= 1.0 > train[-2]["wall_s"]  # stopped at the first batch past the budget
    # A batch's LR is set before its duration is known: from the wall-clock fraction at its start.
    lrs = [r["lr"] for r in train]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert lrs[-1] < 0.1 * lrs[peak]
    fractions = [r["fraction"] for r in train]
    assert fractions == sorted(fractions)


def test_microbatches_accumulate_to_the_full_batch_gradient(tmp_path, text_file):
    results = []
    for name, microbatch_size in (("whole", None), ("split", 1)):
        trainer = make_trainer(tmp_path, text_file, max_duration="3ba", run_name=name,
                               microbatch_size=microbatch_size)
        for module in trainer.state.model.modules():  # dropout draws differ per microbatch
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        trainer.fit()
        results.append(([r["loss"] for r in records(trainer, "train")], trainer.state.model.state_dict()))
    (losses_a, weights_a), (losses_b, weights_b) = results
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=1e-4, atol=1e-5)


def test_eval_and_save_intervals_in_dur(tmp_path, text_file):
    trainer = make_trainer(tmp_path, text_file, max_duration="8ba", eval_interval="0.25dur", eval_batches=1,
                           save_interval="0.5dur")
    trainer.fit()
    assert [r["step"] for r in records(trainer, "eval")] == [2, 4, 6, 8]
    assert sorted(p.name for p in (Path(trainer.state.run_dir.local_path()) / "checkpoints").iterdir()) == ["ba00000004", "ba00000008"]


def test_eval_line_fields(tmp_path, text_file):
    trainer = make_trainer(tmp_path, text_file, max_duration="2ba", eval_batches=1)
    trainer.fit()
    (line,) = records(trainer, "eval")
    assert {"event", "step", "tokens", "wall_s", "eval_loss", "eval_ppl"} <= set(line)
    assert line["eval_ppl"] == pytest.approx(math.exp(line["eval_loss"]))
    for train_line in records(trainer, "train"):
        assert {"event", "step", "tokens", "samples", "seq_len", "loss", "lr", "wall_s"} <= set(train_line)


class ShortenEveryOther(Algorithm):
    name = "shorten_every_other"
    dynamic_seq_len = True

    def match(self, event, state):
        return event is Event.AFTER_DATALOADER

    def apply(self, event, state, logger):
        if state.timestamp.batch % 2:
            state.batch = {k: v[:, :8] for k, v in state.batch.items()}


def test_preallocation_pass_leaves_weights_grads_and_rng_untouched(tmp_path, text_file):
    trainer = make_trainer(tmp_path, text_file, algorithms=[ShortenEveryOther()])
    before = {k: v.clone() for k, v in trainer.state.model.state_dict().items()}
    rng = torch.get_rng_state()
    trainer.preallocate_full_length()
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in trainer.state.model.parameters())
    for key, value in trainer.state.model.state_dict().items():
        assert torch.equal(value, before[key])


def test_algorithm_time_is_reported(tmp_path, text_file):
    trainer = make_trainer(tmp_path, text_file, max_duration="4ba", algorithms=[ShortenEveryOther()])
    summary = trainer.fit()
    assert set(summary["seconds_per_algorithm"]) == {"shorten_every_other"}
    assert [r["seq_len"] for r in records(trainer, "train")] == [32, 8, 32, 8]


def test_tenth_of_duration_evals_land_evenly(tmp_path, text_file):
    trainer = make_trainer(tmp_path, text_file, max_duration="30ba", eval_interval="0.1dur", eval_batches=1)
    trainer.fit()
    assert [r["step"] for r in records(trainer, "eval")] == list(range(3, 31, 3))


def test_the_last_step_of_a_cosine_run_still_trains(tmp_path, text_file):
    """It used to get LR 0: a 2-batch run's eval loss was the same after steps 1 and 2."""
    trainer = make_trainer(tmp_path, text_file, max_duration="2ba", warmup="0.05dur", eval_interval="1ba", eval_batches=1)
    trainer.fit()
    assert [r["lr"] for r in records(trainer, "train")] == pytest.approx([3e-3, 1.5e-3])
    first, second = (r["eval_loss"] for r in records(trainer, "eval"))
    assert second != first
