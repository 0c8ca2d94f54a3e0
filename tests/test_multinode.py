"""Two "nodes" on one machine: two launches of `python -m composerlite.launch` (torchrun) with
`--nnodes 2 --rdzv-backend c10d`, one process each, meet through rendezvous on loopback and train as
one two-process gloo world, the way two machines of a cluster job would; a second pair resumes from
the first pair's checkpoint and continues it bit for bit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import yaml

from composerlite import cli


def args(text_file, run_dir, *extra):
    # One thread per "node": both share this machine's cores. No dropout: each rank draws its own masks,
    # so only without it does the two-process run follow the one-process curve.
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", "4ba", "--batch-size", "4",
            "--seq-len", "32", "--device", "cpu", "--precision", "fp32", "--dropout", "0", "--eval-interval", "2ba",
            "--eval-batches", "1", "--save-interval", "2ba", "--threads", "1", "--run-dir", str(run_dir), *extra]


def two_nodes(run_args: list[str], job: str) -> None:
    """Launches the two nodes of one job and waits for both; each must exit 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = [sys.executable, "-m", "composerlite.launch", "--nnodes", "2", "--nproc-per-node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job,
              "--local-addr", "127.0.0.1", "--max-restarts", "0", "-m", "composerlite", *run_args]
    nodes = [subprocess.Popen(launch, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [node.communicate(timeout=300)[1] for node in nodes]
    for node, stderr in zip(nodes, results):
        assert node.returncode == 0, stderr[-3000:]


def records(run_dir) -> list[tuple]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["event"], r["step"], r.get("tokens"), r.get("loss"), r.get("eval_loss")) for r in map(json.loads, lines)]


def test_two_nodes_train_as_one_world_and_resume(tmp_path, text_file):
    first, resumed, single = tmp_path / "first", tmp_path / "resumed", tmp_path / "single"
    two_nodes(args(text_file, first), "first")
    assert yaml.safe_load((first / "config.yaml").read_text())["world_size"] == 2
    assert [name.name for name in sorted((first / "checkpoints").iterdir())] == ["ba00000002", "ba00000004"]
    # One world of two: global token counts, and the one-process curve up to float summation order.
    assert cli.main(args(text_file, single)) == 0
    ours, reference = records(first), records(single)
    assert [r[:3] for r in ours] == [r[:3] for r in reference]
    assert all(abs((a[3] or a[4]) - (b[3] or b[4])) < 2e-5 for a, b in zip(ours, reference)), (ours, reference)

    # A new job (a new rendezvous) resumes the first one's step-2 checkpoint: the same records after it.
    two_nodes(args(text_file, resumed, "--resume", str(first / "checkpoints" / "ba00000002")), "resumed")
    assert records(resumed) == records(first)[3:]
