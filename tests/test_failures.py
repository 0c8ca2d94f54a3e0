"""Failures and bad input: each user mistake is one line and exit code 2 with nothing overwritten;
NaN loss policy; out-of-memory microbatch halving; a full disk while saving."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch

from composerlite import cli
from composerlite.run.checkpoint import read_verified
from composerlite.run.run_directory import find_checkpoints, newest_valid_checkpoint
from composerlite.system import storage
from composerlite.system.storage import location

FAULTS = '''
import pydantic, torch
from composerlite import Algorithm, Event

class StepOptions(pydantic.BaseModel):
    step: int = 0

class NanAt(Algorithm):
    """Turns the loss into NaN at batch `step` (counting from 1), as a diverging run would."""
    name = "nan_at"
    Options = StepOptions
    def __init__(self, step): self.step = step
    def match(self, event, state): return event is Event.AFTER_LOSS and state.timestamp.batch + 1 == self.step
    def apply(self, event, state, logger): state.loss = state.loss * float("nan")

class OomAbove(Algorithm):
    """Raises CUDA's out-of-memory error for any microbatch larger than `step` sequences."""
    name = "oom_above"
    Options = StepOptions
    def __init__(self, step): self.step = step
    def match(self, event, state): return event is Event.BEFORE_FORWARD
    def apply(self, event, state, logger):
        if state.batch["input_ids"].shape[0] > self.step:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

class NotHF(Algorithm):
    """Stands for an architecture change (like ALiBi) that GPT2LMHeadModel cannot load."""
    name = "not_hf"
    exportable_to_hf = False
    def match(self, event, state): return False
'''


@pytest.fixture
def faults(tmp_path: Path) -> Path:
    path = tmp_path / "faults.py"
    path.write_text(FAULTS)
    return path


def args(text_file, run_dir, *extra, duration="4ba"):
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", duration,
            "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--precision", "fp32",
            "--eval-interval", "1dur", "--eval-batches", "1", "--run-dir", str(run_dir), *extra]


def records(run_dir: Path, event="train") -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path, text_file) -> Path:
    run_dir = tmp_path / "done"
    assert cli.main(args(text_file, run_dir, duration="2ba")) == 0
    return run_dir


def one_line_exit_2(capsys, argv, *expected):
    capsys.readouterr()
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    assert error.startswith("composerlite: error:"), error
    for fragment in expected:
        assert fragment in error, error


def test_bad_input_is_one_line_and_exit_2(tmp_path, text_file, capsys, finished_run):
    run_dir = tmp_path / "new"
    cases = [
        (args(text_file, run_dir, "--model", "gpt2-huge"), "unknown model 'gpt2-huge'"),
        (args(text_file, run_dir, "--algo", "no_such_algo"), "unknown algorithm 'no_such_algo'"),
        (args(text_file, run_dir, "--algo", "seq_len_warmup:bogus=1"), "bogus"),
        (args(text_file, run_dir, "--batch-size", "-4"), "batch_size"),
        (args(text_file, run_dir, "--seq-len", "0"), "seq_len"),
        (args(text_file, run_dir, "--microbatch-size", "0"), "microbatch_size"),
        (args(text_file, run_dir, "--keep-checkpoints", "0"), "keep_checkpoints"),
        (args(text_file, run_dir, duration="0ba"), "max_duration"),
        (args(text_file, run_dir, duration="10tok"), "shorter than one step"),
        (args(text_file, run_dir, "--resume", str(tmp_path / "nowhere")), "no such checkpoint"),
    ]
    for argv, expected in cases:
        one_line_exit_2(capsys, argv, expected)
    assert not run_dir.exists()  # none of them got as far as creating the run directory
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors are exit 2 as well
        cli.main(args(text_file, run_dir, "--no-such-flag"))
    assert exit_info.value.code == 2


def test_bad_data_is_one_line_and_exit_2(tmp_path, text_file, capsys):
    empty, binary, small = tmp_path / "empty.txt", tmp_path / "binary.txt", tmp_path / "small.txt"
    empty.write_text("")
    binary.write_bytes(bytes(range(256)) * 8)
    small.write_text("just a few words\n\nand another few")
    run_dir = tmp_path / "new"
    one_line_exit_2(capsys, args(empty, run_dir), "no text")
    one_line_exit_2(capsys, args(binary, run_dir), "not text")
    one_line_exit_2(capsys, args(small, run_dir), "one batch needs")
    one_line_exit_2(capsys, args(tmp_path / "missing.txt", run_dir), "not found")
    assert not run_dir.exists()


def test_unwritable_run_dir(tmp_path, text_file, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_exit_2(capsys, args(text_file, blocker / "run"), "cannot write to run directory")
    assert blocker.read_text() == "not a folder"


def test_existing_run_and_foreign_checkpoint_are_not_overwritten(tmp_path, text_file, capsys, finished_run):
    before = tree_digest(finished_run)
    one_line_exit_2(capsys, args(text_file, finished_run), "already holds a run", "--autoresume")
    one_line_exit_2(capsys, args(text_file, finished_run, "--model", "gpt2-52m", "--autoresume"),
                    "gpt2-tiny run", "this run is gpt2-52m")
    checkpoint = finished_run / "checkpoints" / "ba00000002"
    one_line_exit_2(capsys, args(text_file, finished_run, "--model", "gpt2-52m", "--resume", str(checkpoint)), "gpt2-tiny")
    assert tree_digest(finished_run) == before


def test_nan_stop_keeps_last_good_checkpoint(tmp_path, text_file, faults, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(args(text_file, run_dir, "--algo", f"{faults}:NanAt:step=3", "--save-interval", "2ba"))
    assert code == 1
    message = capsys.readouterr().err
    assert "loss became nan at step 3" in message and "ba00000002" in message
    assert [f.name for f in find_checkpoints(location(str(run_dir)))] == ["ba00000002"]
    assert newest_valid_checkpoint(location(str(run_dir))).name == "ba00000002"
    assert records(run_dir)[-1]["step"] == 3 and records(run_dir)[-1]["skipped_step"] is True


def test_nan_skip_drops_the_step_and_continues(tmp_path, text_file, faults):
    run_dir = tmp_path / "run"
    assert cli.main(args(text_file, run_dir, "--algo", f"{faults}:NanAt:step=2", "--on-nan", "skip")) == 0
    train = records(run_dir)
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r.get("skipped_step", False) for r in train] == [False, True, False, False]
    assert all(isinstance(r["loss"], float) and r["loss"] == r["loss"] for r in (train[0], *train[2:]))
    weights = read_verified(location(str(run_dir / "checkpoints" / "ba00000004")))["model.safetensors"]
    from safetensors.torch import load

    assert all(torch.isfinite(tensor).all() for tensor in load(weights).values())


def test_auto_microbatch_halves_on_out_of_memory(tmp_path, text_file, faults, capsys):
    oom = ["--algo", f"{faults}:OomAbove:step=1", "--dropout", "0"]
    auto = tmp_path / "auto"
    assert cli.main(args(text_file, auto, *oom, "--microbatch-size", "auto")) == 0
    assert "retrying the batch with microbatch size 1" in capsys.readouterr().err
    assert records(auto)[0]["microbatch_size"] == 1  # halved 4 -> 2 -> 1 on the first batch, then kept
    fixed = tmp_path / "fixed"
    assert cli.main(args(text_file, fixed, *oom, "--microbatch-size", "1")) == 0
    assert [r["loss"] for r in records(auto)] == [r["loss"] for r in records(fixed)]
    with pytest.raises(torch.OutOfMemoryError):  # without auto, out-of-memory is not caught
        cli.main(args(text_file, tmp_path / "plain", *oom))


def test_full_disk_while_saving_keeps_previous_checkpoint(tmp_path, text_file, monkeypatch, capsys):
    real_write, calls = storage.write_all, []

    def fill_up_on_second_checkpoint(file, data):
        calls.append(len(data))
        big_writes = sum(size > 1_000_000 for size in calls)
        if big_writes > 2:  # checkpoint 1 wrote its model and state; checkpoint 2's model fails halfway
            file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(file, data)

    monkeypatch.setattr(storage, "write_all", fill_up_on_second_checkpoint)
    run_dir = tmp_path / "run"
    assert cli.main(args(text_file, run_dir, "--save-interval", "2ba")) == 1
    message = capsys.readouterr().err
    assert "No space left on device" in message and "ba00000002 is intact" in message
    read_verified(location(str(run_dir / "checkpoints" / "ba00000002")))
    assert newest_valid_checkpoint(location(str(run_dir))).name == "ba00000002"
    leftovers = list((run_dir / "checkpoints" / "ba00000004").iterdir())
    assert [p.name for p in leftovers] == []  # the failed file's temporary was removed
