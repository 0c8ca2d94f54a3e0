"""Exact resume: a run killed with SIGKILL and resumed gives the uninterrupted run's losses bit for bit;
SIGTERM saves then exits; checkpoints are verified, pruned, and never unpickle code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from composerlite import cli
from composerlite.run.checkpoint import read_verified
from composerlite.run.run_directory import find_checkpoints
from composerlite.system.storage import location

# Loaded as `--algo FILE.py:Class`: the kill and the signal come from inside the loop, at an exact step.
FAULTS = '''
import os, signal
import pydantic
from composerlite import Algorithm, Event

class StepOptions(pydantic.BaseModel):
    step: int = 0

class KillAt(Algorithm):
    """SIGKILLs its own process after batch `step` when COMPOSERLITE_TEST_KILL is set (like a lost machine)."""
    name = "kill_at"
    Options = StepOptions
    def __init__(self, step): self.step = step
    def match(self, event, state): return event is Event.BATCH_END and state.timestamp.batch == self.step
    def apply(self, event, state, logger):
        if os.environ.get("COMPOSERLITE_TEST_KILL"):
            os.kill(os.getpid(), signal.SIGKILL)

class TermAt(Algorithm):
    """Sends SIGTERM to its own process after batch `step` (like a preemption notice)."""
    name = "term_at"
    Options = StepOptions
    def __init__(self, step): self.step = step
    def match(self, event, state): return event is Event.BATCH_END and state.timestamp.batch == self.step
    def apply(self, event, state, logger): os.kill(os.getpid(), signal.SIGTERM)
'''


def run_args(text_file: Path, run_dir: Path, *extra: str, duration: str = "8ba") -> list[str]:
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", duration,
            "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--precision", "fp32",
            "--dropout", "0.1",  # dropout draws from the torch RNG, so the RNG state must resume too
            "--eval-interval", "4ba", "--eval-batches", "1", "--run-dir", str(run_dir), *extra]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["event"] == "train"]


@pytest.fixture
def faults(tmp_path: Path) -> Path:
    path = tmp_path / "faults.py"
    path.write_text(FAULTS)
    return path


def test_sigkill_then_autoresume_matches_uninterrupted_run_bit_for_bit(tmp_path, text_file, faults):
    algo = ["--algo", f"{faults}:KillAt:step=5", "--save-interval", "3ba"]
    killed = tmp_path / "killed"
    result = subprocess.run(
        [sys.executable, "-m", "composerlite", *run_args(text_file, killed, *algo)],
        env={**os.environ, "COMPOSERLITE_TEST_KILL": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert [folder.name for folder in find_checkpoints(location(str(killed)))] == ["ba00000003"]
    assert [step for step, _ in train_losses(killed)] == [1, 2, 3, 4]  # step 4 is past the checkpoint

    assert cli.main(run_args(text_file, killed, *algo, "--autoresume")) == 0
    straight = tmp_path / "straight"
    assert cli.main(run_args(text_file, straight, *algo)) == 0

    resumed = train_losses(killed)
    assert [step for step, _ in resumed] == list(range(1, 9))  # steps 4-5 replaced, not duplicated
    assert resumed == train_losses(straight)  # exact float equality: same losses bit for bit
    evals = lambda d: [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if r["event"] == "eval"]
    assert [(r["step"], r["eval_loss"]) for r in evals(killed)] == [(r["step"], r["eval_loss"]) for r in evals(straight)]


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, text_file, faults, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(run_args(text_file, run_dir, "--algo", f"{faults}:TermAt:step=2", duration="6ba"))
    assert code == 128 + signal.SIGTERM
    message = capsys.readouterr().err
    assert "stopped by SIGTERM at step 2" in message and "--autoresume" in message
    assert [folder.name for folder in find_checkpoints(location(str(run_dir)))] == ["ba00000002"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after fit

    # Resuming without the signal algorithm is refused (its state is part of the checkpoint)...
    assert cli.main(run_args(text_file, run_dir, "--autoresume", duration="6ba")) == 2
    assert "algorithms" in capsys.readouterr().err
    # ...and with the same list it finishes (the step-2 signal does not fire again).
    assert cli.main(run_args(text_file, run_dir, "--algo", f"{faults}:TermAt:step=2", "--autoresume", duration="6ba")) == 0
    assert [step for step, _ in train_losses(run_dir)] == list(range(1, 7))


def test_corrupt_checkpoint_is_named_and_skipped_by_autoresume(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(run_args(text_file, run_dir, "--save-interval", "2ba", "--keep-checkpoints", "2", duration="6ba")) == 0
    names = [folder.name for folder in find_checkpoints(location(str(run_dir)))]
    assert names == ["ba00000004", "ba00000006"]  # keep the newest 2
    newest = run_dir / "checkpoints" / "ba00000006"
    state_file = newest / "state.pt"
    state_file.write_bytes(state_file.read_bytes()[:1000])  # truncated, as by a crash outside our writes

    capsys.readouterr()
    assert cli.main(run_args(text_file, run_dir, "--resume", str(newest), duration="8ba")) == 2
    error = capsys.readouterr().err.strip()
    assert "ba00000006" in error and "state.pt is truncated" in error and "\n" not in error

    assert cli.main(run_args(text_file, run_dir, "--autoresume", duration="8ba")) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "ba00000006" in err and "resuming from" in err
    assert [step for step, _ in train_losses(run_dir)] == list(range(1, 9))


def test_changed_bytes_fail_the_hash_check(tmp_path, text_file):
    run_dir = tmp_path / "run"
    assert cli.main(run_args(text_file, run_dir, duration="2ba")) == 0
    folder = location(str(run_dir / "checkpoints" / "ba00000002"))
    model_file = Path(folder.path) / "model.safetensors"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    model_file.write_bytes(bytes(data))
    with pytest.raises(Exception, match="model.safetensors is corrupted"):
        read_verified(folder)


class Payload:
    """Not a tensor or plain data: torch.load(weights_only=True) must refuse to build it."""

    def __reduce__(self):
        return (print, ("this code ran while loading a checkpoint",))


def test_loading_never_unpickles_objects(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(run_args(text_file, run_dir, duration="2ba")) == 0
    folder = run_dir / "checkpoints" / "ba00000002"
    torch.save({"evil": Payload()}, folder / "state.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    import hashlib

    data = (folder / "state.pt").read_bytes()
    manifest["files"]["state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert cli.main(run_args(text_file, tmp_path / "other", "--resume", str(folder), duration="4ba")) == 2
    captured = capsys.readouterr()
    assert "this code ran" not in captured.out
    assert "refusing to unpickle" in captured.err
