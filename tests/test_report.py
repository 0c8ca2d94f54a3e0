"""The report builder on synthetic results with known answers: speedups, 'never reached', merging."""

from __future__ import annotations

import math
import statistics

import pytest

from composerlite.bench.analysis import Stat, crossing, group_results, pareto_front, summarize
from composerlite.bench.report import build_report, format_row
from composerlite.bench.results import BenchResults, EvalPoint, Method, RunRecord, load_results, save_results
from composerlite.cli import main as cli
from composerlite.errors import UsageError

SETTINGS = {"model": "gpt2-tiny", "max_duration": "20ba", "data": None, "data_name": "synthetic",
            "data_id": "synthetic-0", "train_tokens": 1000, "eval_tokens": 100}

# (wall_s, tokens, loss) per eval, per method and seed. Targets: seed 1 -> 3.0, seed 2 -> 3.2.
CURVES = {
    ("baseline", 1): [(10, 1000, 4.0), (20, 2000, 3.0)],  # reaches 3.0 at 20 s
    ("baseline", 2): [(10, 1000, 4.0), (20, 2000, 3.2)],  # reaches 3.2 at 20 s
    ("fast", 1): [(5, 1000, 3.5), (10, 2000, 2.5)],  # 3.0 halfway: 7.5 s, 1500 tokens -> 20/7.5
    ("fast", 2): [(5, 1000, 3.0), (10, 2000, 2.8)],  # below 3.2 at its first eval: 5 s -> 20/5
    ("never", 1): [(8, 1000, 3.5), (16, 2000, 3.1)],  # never reaches 3.0
    ("never", 2): [(8, 1000, 3.5), (16, 2000, 3.1)],  # reaches 3.2 at 8 + 8 * 0.3/0.4 = 14 s
}


def record(method: str, seed: int, device: str = "CPU: test") -> RunRecord:
    curve = CURVES[(method, seed)]
    return RunRecord(
        method=method, seed=seed, run_dir=f"runs/{method}/seed{seed}",
        config={"algorithms": [] if method == "baseline" else [method], "batch_size": 2, "seq_len": 500},
        evals=[EvalPoint(step=10 * (i + 1), tokens=tokens, wall_s=wall, eval_loss=loss)
               for i, (wall, tokens, loss) in enumerate(curve)],
        train={"steps": 20, "tokens": 2000, "wall_s": curve[-1][0], "first_loss": 5.0, "final_loss": 3.0, "min_loss": 3.0},
        tokens_per_s=2000 / curve[-1][0], peak_memory_bytes=2**20, peak_memory_kind="test", device=device,
        hardware={"cpu": "test", "cpu_cores": 2, "torch_threads": 2, "platform": "test"},
        versions={"torch": "x"}, finished_at="2024-01-01T00:00:00",
    )


def results(device: str = "CPU: test", methods=("baseline", "fast", "never"), settings=SETTINGS) -> BenchResults:
    return BenchResults(settings=dict(settings), reference="baseline",
                        methods=[Method(label=m, algorithms=() if m == "baseline" else (m,)) for m in methods],
                        commands=[{"command": "composerlite bench ...", "started": "2024-01-01T00:00:00"}],
                        runs=[record(m, seed, device) for m in methods for seed in (1, 2)])


def test_crossing_interpolates_linearly():
    points = [EvalPoint(step=1, tokens=100, wall_s=1.0, eval_loss=5.0), EvalPoint(step=2, tokens=200, wall_s=3.0, eval_loss=4.0)]
    assert crossing(points, 4.25) == pytest.approx((2.5, 175.0))
    assert crossing(points, 6.0) == (1.0, 100.0)  # below at the first eval: that eval's time
    assert crossing(points, 3.9) is None


def test_pareto_front():
    points = [(10, 3.0), (5, 3.5), (7, 3.6), (12, 2.9), (12, 3.5)]
    assert pareto_front(points) == [1, 0, 3]


def test_known_speedups_and_never_reached():
    (group,) = group_results([(".", results())])
    summaries = {s.method: s for s in summarize(group)}
    assert summaries["baseline"].speedup == Stat(1.0, 0.0)
    fast = summaries["fast"]
    assert fast.speedup.mean == pytest.approx((20 / 7.5 + 20 / 5) / 2)
    assert fast.speedup.spread == pytest.approx(statistics.stdev([20 / 7.5, 20 / 5]))
    assert fast.time_to_target.mean == pytest.approx((7.5 + 5) / 2)
    assert fast.tokens_to_target.mean == pytest.approx((1500 + 1000) / 2)
    assert fast.final_loss.mean == pytest.approx(2.65)
    assert fast.final_ppl.mean == pytest.approx((math.exp(2.5) + math.exp(2.8)) / 2)
    never = summaries["never"]
    assert (never.reached, never.compared, never.speedup, never.time_to_target) == (1, 2, None, None)
    row = format_row(never)
    assert row[-1] == row[-2] == row[-3] == "never reached (1/2 seeds)"
    assert format_row(fast)[-1] == f"{fast.speedup.mean:.2f}× ± {fast.speedup.spread:.2f}"


def test_report_files(tmp_path):
    save_results(tmp_path, results())
    build_report([tmp_path], tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "never reached (1/2 seeds)" in markdown
    assert f"{(20 / 7.5 + 20 / 5) / 2:.2f}×" in markdown
    assert "20ba per run" in markdown and "synthetic" in markdown and "CPU: test" in markdown
    for name in ("loss_vs_time.png", "loss_vs_tokens.png", "pareto.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG")
        assert f"](plots/{name})" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "plots/" not in page.split("<h2>Runs")[0]
    assert "never reached (1/2 seeds)" in page


def test_merge_keeps_devices_apart(tmp_path):
    save_results(tmp_path / "cpu", results("CPU: test"))
    save_results(tmp_path / "gpu", results("NVIDIA H100", methods=("baseline", "fast")))
    groups = build_report([tmp_path / "cpu", tmp_path / "gpu"], tmp_path / "merged")
    assert sorted(group.device for group in groups) == ["CPU: test", "NVIDIA H100"]
    markdown = (tmp_path / "merged" / "report.md").read_text()
    assert markdown.count("| fast | 2 | 2.6500") == 2 and "Warning" not in markdown  # one table row per device
    assert "../cpu/runs/fast/seed1" in markdown  # run folders stay reachable from the merged report


def test_merge_refuses_other_budget_unless_allowed(tmp_path):
    save_results(tmp_path / "a", results())
    save_results(tmp_path / "b", results(settings={**SETTINGS, "max_duration": "40ba"}))
    with pytest.raises(UsageError, match="max_duration"):
        build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    groups = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", allow_mixed=True)
    assert len(groups) == 2
    assert "**Warning:**" in (tmp_path / "merged" / "report.md").read_text()


def test_merge_refuses_duplicate_runs(tmp_path):
    save_results(tmp_path / "a", results())
    save_results(tmp_path / "b", results())
    with pytest.raises(UsageError, match="both hold"):
        group_results([("a", load_results(tmp_path / "a")), ("b", load_results(tmp_path / "b"))])


def test_report_cli(tmp_path, capsys):
    save_results(tmp_path / "a", results())
    assert cli(["report", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "report.html").exists()
    assert cli(["report", str(tmp_path / "a"), str(tmp_path / "a")]) == 2  # merging needs --out
    assert cli(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    assert cli(["report", str(tmp_path / "bad")]) == 2
    assert "not a composerlite results file" in capsys.readouterr().err
