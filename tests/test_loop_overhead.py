"""benchmarks/loop_overhead.py, the issue-12 measurement: it runs both loops, either one first, and
records what it printed."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "loop_overhead.py"


def test_loop_overhead_records_both_loops_each_way_round(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("loop_overhead", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    order = []
    hand, trainer = script.hand_loop, script.trainer_loop
    script.hand_loop = lambda *args: (order.append("hand"), hand(*args))
    script.trainer_loop = lambda *args: (order.append("trainer"), trainer(*args))
    out = tmp_path / "overhead.json"
    assert script.main(["--model", "nano", "--pairs", "2", "--steps", "12", "--warmup", "2", "--out", str(out)]) == 0
    assert order == ["hand", "trainer", "trainer", "hand"]
    record = json.loads(out.read_text())
    for clock in ("cpu", "wall"):
        hand_ms, trainer_ms = record[clock]["hand_step_ms"], record[clock]["trainer_step_ms"]
        assert len(hand_ms) == len(trainer_ms) == 2 and min(hand_ms + trainer_ms) > 0
        assert record[clock]["overhead_ms"] == [t - h for h, t in zip(hand_ms, trainer_ms)]
    assert "Trainer overhead: median" in capsys.readouterr().out
