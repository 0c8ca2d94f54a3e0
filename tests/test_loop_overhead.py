"""benchmarks/loop_overhead.py, the issue-12 measurement, run as a user runs it: the two loops take
turns in their own processes, with either loop first, and neither waits forever for the other."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "loop_overhead.py"


def test_pairs_take_turns_and_record_both_loops(tmp_path):
    out = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", "nano", "--pairs", "2", "--steps", "12",
                           "--warmup", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(hand first)" in done.stdout and "(trainer first)" in done.stdout
    record = json.loads(out.read_text())
    for clock in ("cpu", "wall"):
        hand, trainer = record[clock]["hand_step_ms"], record[clock]["trainer_step_ms"]
        assert len(hand) == len(trainer) == 2 and min(hand + trainer) > 0
        assert record[clock]["overhead_ms"] == [t - h for h, t in zip(hand, trainer)]
