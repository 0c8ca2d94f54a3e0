"""Same seed, config and data give the same records on CPU, bit for bit, whatever thread settings the
process that starts the run has (issue 13): a float sum split over more threads rounds differently,
so the trainer pins its own intra-op thread count and config.yaml records it."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

from composerlite import cli
from composerlite.system.runtime import default_threads
from soak import records


def args(text_file, run_dir):
    # Without the pinning, this run's step-2 eval loss differs in its last bits between 1 and 2 threads.
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", "2ba", "--batch-size", "4",
            "--seq-len", "32", "--device", "cpu", "--precision", "fp32", "--dropout", "0.1", "--eval-interval", "2ba",
            "--eval-batches", "1", "--run-dir", str(run_dir)]


def test_the_callers_thread_settings_do_not_change_a_runs_records(tmp_path, text_file, capsys):
    runs = [tmp_path / "caller-1-thread", tmp_path / "caller-2-threads", tmp_path / "omp-num-threads-1"]
    before = torch.get_num_threads()
    try:
        # In-process, as pytest's own runs are (conftest sets 2 threads); the first says --threads,
        # with the default's value: the flag pins as the default does.
        for run_dir, threads, extra in zip(runs, (1, 2), (["--threads", str(default_threads())], [])):
            torch.set_num_threads(threads)
            assert cli.main([*args(text_file, run_dir), *extra]) == 0
            assert torch.get_num_threads() == threads  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    # A subprocess whose environment asks for one thread, as torchrun's workers get by default.
    result = subprocess.run([sys.executable, "-m", "composerlite", *args(text_file, runs[2])], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert [len(records(str(run))) for run in runs] == [3, 3, 3]
    assert records(str(runs[0])) == records(str(runs[1])) == records(str(runs[2]))
    for run in runs:
        assert yaml.safe_load((run / "config.yaml").read_text())["threads"] == default_threads()

    capsys.readouterr()
    refused = tmp_path / "refused"
    assert cli.main([*args(text_file, refused), "--threads", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "threads" in error, error
    assert not refused.exists()
