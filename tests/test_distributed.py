"""Two processes on CPU with gloo, launched as torchrun would (RANK/WORLD_SIZE/MASTER_* env): the same
global batch follows the one-process loss curve; metrics and checkpoints are written once; DDP resumes
from its checkpoint, and an FSDP2 run's checkpoint loads into one process (any world size)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from composerlite import cli
from composerlite.checkpoint import find_checkpoints
from composerlite.storage import location

WORLD = 2
TERM_AT = '''
import os, signal
from composerlite import Algorithm, Event, distributed

class TermAt(Algorithm):
    """SIGTERMs rank 1 after the first batch (a preemption notice that reached one process)."""
    name = "term_at"
    def match(self, event, state): return event is Event.BATCH_END and state.timestamp.batch == 1
    def apply(self, event, state, logger):
        if distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
'''


def args(text_file, run_dir, *extra, duration="4ba"):
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", duration,
            "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--precision", "fp32", "--dropout", "0",
            "--eval-interval", "2ba", "--eval-batches", "1", "--save-interval", "2ba", "--run-dir", str(run_dir), *extra]


def _worker(rank: int, port: int, argvs: list[list[str]], results: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    from composerlite import distributed

    with open(Path(results, f"rank{rank}.err"), "w") as errors, contextlib.redirect_stderr(errors):
        codes = [cli.main(argv) for argv in argvs]
    distributed.shutdown()
    Path(results, f"rank{rank}.json").write_text(json.dumps(codes))


def run_two_processes(tmp_path: Path, argvs: list[list[str]], codes: list[int] | None = None) -> list[str]:
    """Runs each argv on both ranks in turn, checks the exit codes (default: all 0); returns each rank's stderr."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, argvs, str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == (codes or [0] * len(argvs))
    return [(tmp_path / f"rank{rank}.err").read_text() for rank in range(WORLD)]


def curve(run_dir: Path, event="train", key="loss") -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if r["event"] == event]


def close(a, b, tolerance=2e-5):
    return [s for s, _ in a] == [s for s, _ in b] and all(abs(x - y) <= tolerance * max(1.0, abs(x)) for (_, x), (_, y) in zip(a, b))


def test_two_processes_match_one_and_resume(tmp_path, text_file):
    single, ddp, ddp_resumed, fsdp, fsdp_resumed, stopped = (
        tmp_path / name for name in ("single", "ddp", "ddp2", "fsdp", "fsdp2", "stopped"))
    stop = tmp_path / "stop.py"
    stop.write_text(TERM_AT)
    assert cli.main(args(text_file, single, duration="6ba")) == 0
    errors = run_two_processes(tmp_path, [
        args(text_file, ddp, duration="6ba"),
        # Same budget (the LR schedule depends on it), continued from step 4 of the run above.
        args(text_file, ddp_resumed, "--resume", str(ddp / "checkpoints" / "ba00000004"), duration="6ba"),
        args(text_file, fsdp, "--parallel", "fsdp", duration="6ba"),
        args(text_file, stopped, "--algo", f"{stop}:TermAt", duration="6ba"),
    ], codes=[0, 0, 0, 128 + signal.SIGTERM])
    # A SIGTERM on rank 1 alone stops both ranks at the same step; each names the shared checkpoint
    # (rank 1 said "checkpoint saved in None").
    for rank_errors in errors:
        assert f"stopped by SIGTERM at step 1; checkpoint saved in {stopped / 'checkpoints' / 'ba00000001'}" in rank_errors
    assert [f.name for f in find_checkpoints(location(str(stopped)))] == ["ba00000001"]
    reference = curve(single)
    assert close(curve(ddp), reference), (curve(ddp), reference)
    assert close(curve(ddp, "eval", "eval_loss"), curve(single, "eval", "eval_loss"))
    train = [r for r in map(json.loads, (ddp / "metrics.jsonl").read_text().splitlines()) if r["event"] == "train"]
    assert [r["tokens"] for r in train] == [step * 4 * 32 for step in range(1, 7)]  # global counts, written once
    assert [f.name for f in find_checkpoints(location(str(ddp)))] == ["ba00000002", "ba00000004", "ba00000006"]
    assert close(curve(ddp_resumed), reference[4:])
    assert close(curve(fsdp), reference)

    # The FSDP checkpoint is full (unsharded): one process continues it exactly where it stopped.
    assert cli.main(args(text_file, fsdp_resumed, "--resume", str(fsdp / "checkpoints" / "ba00000004"), duration="6ba")) == 0
    assert close(curve(fsdp_resumed), reference[4:])
