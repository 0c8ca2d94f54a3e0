"""SpeedMonitor on every run: per-step throughput in metrics.jsonl, what its step time counts (on a
fake clock), checkpoints keyed by callback name (eval and resume with other callbacks), the unwrap
helper, and the measured matmul peak."""

from __future__ import annotations

import hashlib
import io
import json
import math
import types
from pathlib import Path

import pytest
import torch

from composerlite import Callback, cli
from composerlite.models import build_model
from composerlite.observe import speed_monitor
from composerlite.observe.speed_monitor import (SpeedMonitor, measured_matmul_peak, model_flops_per_token, peak_memory_gib,
                                       reset_peak_memory)
from composerlite.run.checkpoint import MANIFEST_FILE, STATE_FILE, callback_keys
from composerlite.system.distributed import unwrap_model
from tinyrun import same, tiny_trainer


def run_args(text_file, run_dir, *extra):
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", "4ba", "--batch-size", "4",
            "--seq-len", "32", "--device", "cpu", "--precision", "fp32", "--dropout", "0", "--eval-interval", "2ba",
            "--eval-batches", "1", "--save-interval", "2ba", "--run-dir", str(run_dir), *extra]


def test_run_logs_throughput_after_warmup_and_eval_reads_its_checkpoint(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(run_args(text_file, run_dir)) == 0
    err = capsys.readouterr().err
    assert "speed: " in err and "tokens/s" in err and "model FLOPs utilization" in err
    train = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert "throughput/tokens_per_s" not in train[0]  # the warmup step
    for record in train[1:]:
        assert record["throughput/tokens_per_s"] > 0 and record["memory/peak_gib"] > 0
        assert record["throughput/tokens_per_s"] == pytest.approx(32 * record["throughput/samples_per_s"])
        assert "throughput/mfu" not in record  # no peak known for a CPU: left out, not guessed

    assert cli.main(["eval", str(run_dir), "--max-batches", "1", "--device", "cpu"]) == 0  # no callbacks there
    out, err = capsys.readouterr()
    assert json.loads(out)["step"] == 4 and math.isfinite(json.loads(out)["eval_loss"])
    assert "ignoring" not in err  # the monitor's state is empty: nothing lost, nothing said


def test_monitor_does_not_change_the_loss_curve(tmp_path):
    plain = tiny_trainer(tmp_path / "a", max_duration="3ba", vocab_size=256, evaluate=False)
    plain.fit()
    monitored = tiny_trainer(tmp_path / "b", max_duration="3ba", vocab_size=256, evaluate=False,
                             callbacks=[SpeedMonitor(warmup_steps=1, console=False)])
    monitored.fit()
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())] for d in "ab"]
    assert losses[0] == losses[1]
    assert same(plain.state.model.state_dict(), monitored.state.model.state_dict())


class FakeClock(Callback):
    """Moves a fake perf_counter on at events: 1 s loading each batch, 2 s training it, 100 s per
    eval batch, 50 s while a checkpoint is written (its state is asked for mid-save)."""

    def __init__(self):
        self.now = 0.0

    def after_dataloader(self, state, logger):
        self.now += 1.0

    def after_train_batch(self, state, logger):
        self.now += 2.0

    def eval_batch_start(self, state, logger):
        self.now += 100.0

    def state_dict(self):
        self.now += 50.0
        return {}


def test_step_time_is_a_step_from_loading_to_batch_end_less_eval_and_saves(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(speed_monitor, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    monitor = SpeedMonitor(warmup_steps=1, peak_flops=1e9, console=False)
    trainer = tiny_trainer(tmp_path, max_duration="4ba", seq_len=16, batch_size=2, vocab_size=256,
                           eval_interval="2ba", save_interval="2ba", callbacks=[clock, monitor])
    trainer.fit()
    assert [step[0] for step in monitor.measured] == [3.0, 3.0, 3.0]  # steps 2-4; step 3 follows an eval and a save
    assert monitor.warmup_s == 3.0
    assert monitor.excluded_s == 2 * 2 * 100.0 + 50.0  # evals at 2 and 4 (2 batches each); the in-loop save at 2
    assert monitor.summary["throughput/tokens_per_s"] == 2 * 16 / 3.0
    flops = model_flops_per_token(trainer.state.model, 16)
    assert monitor.summary["throughput/mfu"] == pytest.approx(2 * 16 / 3.0 * flops / 1e9)


class TurnTaker(Callback):
    """A benchmark's turn-taking callback on a second fake clock: 1,000 s waiting at each
    BATCH_CHECKPOINT while other runs train."""

    def __init__(self):
        self.now = 0.0

    def batch_checkpoint(self, state, logger):
        self.now += 1000.0


def test_a_wait_between_steps_is_not_step_time_whichever_callback_comes_first(tmp_path, monkeypatch):
    # Lockstep benchmarks pass their turn-taking callback after the monitor: its wait once landed in
    # the next step's time and reported a sixth of the real tokens/s for six runs taking turns.
    clock = FakeClock()
    waiter = TurnTaker()
    monkeypatch.setattr(speed_monitor, "time", types.SimpleNamespace(perf_counter=lambda: clock.now + waiter.now))
    monitor = SpeedMonitor(warmup_steps=1, console=False)
    trainer = tiny_trainer(tmp_path, max_duration="4ba", seq_len=16, batch_size=2, vocab_size=256,
                           evaluate=False, callbacks=[clock, monitor, waiter])
    trainer.fit()
    assert [step[0] for step in monitor.measured] == [3.0, 3.0, 3.0]
    assert monitor.warmup_s == 3.0
    assert monitor.excluded_s == 3 * 1000.0  # the waits after steps 1-3; the one after step 4 ends the run
    assert monitor.summary["throughput/tokens_per_s"] == 2 * 16 / 3.0


class Counter(Callback):
    def __init__(self, name=None):
        if name:
            self.name = name
        self.count = 0

    def batch_end(self, state, logger):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class Other(Counter):
    pass


def test_callback_keys_are_names_with_an_index_for_repeats():
    assert callback_keys([Counter(), Counter(), Counter("steps"), Other(), Counter()]) == [
        "Counter", "Counter#1", "steps", "Other", "Counter#2"]


def test_resume_with_a_different_callback_set(tmp_path, capsys):
    first = tiny_trainer(tmp_path / "a", max_duration="2ba", vocab_size=256, evaluate=False,
                         callbacks=[SpeedMonitor(console=False), Counter(), Counter(), Counter("steps")])
    first.fit()
    checkpoint = tmp_path / "a" / "checkpoints" / "ba00000002"
    kept, named, fresh = Counter(), Counter("steps"), Other()
    resumed = tiny_trainer(tmp_path / "b", max_duration="3ba", vocab_size=256, evaluate=False,
                           load_path=str(checkpoint), callbacks=[fresh, kept, named])
    resumed.fit()
    assert (kept.count, named.count, fresh.count) == (3, 3, 1)  # restored by key (2 + 1); no saved state: fresh
    err = capsys.readouterr().err
    assert err.count("does not have") == 1 and "(Counter#1)" in err  # said once; SpeedMonitor's empty state silently


def rewrite_state(folder, edit) -> None:
    """Edit a checkpoint's state.pt and keep its manifest true (as an older version would have written it)."""
    state = torch.load(folder / STATE_FILE, weights_only=True)
    edit(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    (folder / STATE_FILE).write_bytes(data)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][STATE_FILE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_older_positional_callback_state_still_loads(tmp_path, capsys):
    tiny_trainer(tmp_path / "a", max_duration="2ba", vocab_size=256, evaluate=False, callbacks=[Counter(), Other()]).fit()
    folder = tmp_path / "a" / "checkpoints" / "ba00000002"
    rewrite_state(folder, lambda state: state.update(callbacks=[{"count": 5}, {"count": 7}]))
    same_count = [Counter(), Other()]
    tiny_trainer(tmp_path / "b", max_duration="2ba", vocab_size=256, evaluate=False, load_path=str(folder),
                 callbacks=same_count).fit()
    assert [c.count for c in same_count] == [5, 7]  # same count: matched by position, as before
    assert "does not have" not in capsys.readouterr().err
    fewer = Counter()
    tiny_trainer(tmp_path / "c", max_duration="2ba", vocab_size=256, evaluate=False, load_path=str(folder),
                 callbacks=[fewer]).fit()
    assert fewer.count == 0  # another count: positions mean nothing, so nothing is guessed
    assert "does not have" in capsys.readouterr().err


def test_unwrap_model_and_flops_through_wrappers():
    model = build_model("gpt2-tiny", dropout=0.0, vocab_size=256)
    compiled = torch.compile(model, backend="eager")  # wrapping only; nothing is traced until called
    for wrapped in (compiled, torch.nn.DataParallel(model), torch.nn.DataParallel(compiled)):
        assert unwrap_model(wrapped) is model
        assert model_flops_per_token(wrapped, 64) == model_flops_per_token(model, 64)
    assert unwrap_model(model) is model


def test_measured_matmul_peak_is_a_positive_rate():
    rate = measured_matmul_peak(torch.device("cpu"), "fp32")
    assert math.isfinite(rate) and rate > 0


def test_throughput_measure_peak_gives_cpu_an_mfu(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert cli.main(["throughput", "--model", "gpt2-tiny", "--steps", "2", "--warmup-steps", "1", "--batch-size", "2",
                     "--seq-len", "32", "--measure-peak", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["peak_flops"] == record["matmul_peak_flops"] > 0
    assert record["peak_flops_source"].startswith("measured: 1024x1024")
    assert record["mfu"] == pytest.approx(record["model_flops_per_s"] / record["matmul_peak_flops"])
    capsys.readouterr()
    assert cli.main(["throughput", "--model", "gpt2-tiny", "--measure-peak", "--peak-flops", "1e12"]) == 2
    assert capsys.readouterr().err.strip().startswith("composerlite: error: give --peak-flops or --measure-peak")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS can only be reset on Linux")
def test_cpu_peak_memory_resets():
    """After a reset the CPU peak is the current RSS again, not an earlier, larger peak."""
    cpu = torch.device("cpu")
    assert reset_peak_memory(cpu)
    before, kind = peak_memory_gib(cpu)
    block = torch.ones(2**27)  # 0.5 GiB, touched
    during = peak_memory_gib(cpu)[0]
    del block
    assert during > before + 0.4 and kind == "process peak RSS"
    reset_peak_memory(cpu)
    assert peak_memory_gib(cpu)[0] < during - 0.4
