"""`python -m composerlite.launch` is torchrun whose exit code says "preempted" (128 + SIGTERM = 143,
torchrun's own is 1) after the workers saved their checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from composerlite.run.checkpoint import read_checkpoint
from composerlite.run.run_directory import find_checkpoints
from composerlite.system.storage import location


def test_sigterm_to_the_launcher_saves_and_exits_143(tmp_path, text_file):
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "composerlite.launch", "--nproc_per_node", "1", "--master_port", "0",
         "-m", "composerlite", "run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", "100000ba",
         "--batch-size", "2", "--seq-len", "16", "--device", "cpu", "--precision", "fp32", "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().strip()):  # wait until it trains
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read() if launcher.poll() else "timeout"
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 128 + signal.SIGTERM, stderr
    assert "launch stopped by SIGTERM" in stderr and "--autoresume" in stderr
    checkpoints = find_checkpoints(location(str(run_dir)))
    assert len(checkpoints) == 1
    read_checkpoint(checkpoints[0])
    last_step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert checkpoints[0].name == f"ba{last_step:08d}"  # saved at the step it stopped at
