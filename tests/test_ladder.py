"""`composerlite bench --models`: the trend of a speedup across sizes (a weighted line through the
sizes' log speedups against log parameters) and the size ladder's report on tiny runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from composerlite.bench.analysis import group_results, is_mixed, speedup_of, t_quantile
from composerlite.bench.ladder import fit_trend, trend_text
from composerlite.bench.results import load_results
from composerlite.cli import main as cli

CALIBRATION = Path(__file__).resolve().parent.parent / "benchmarks" / "plugins" / "calibration.py"


def test_trend_is_a_weighted_least_squares_line_with_a_t_interval():
    sizes = [5.0, 6.0, 7.0]  # log10 parameters
    per_seed = [[0.10, 0.14, 0.12], [0.30, 0.22, 0.26], [0.52, 0.40, 0.43]]  # log speedups, growing with size
    speedups = [speedup_of(logs) for logs in per_seed]
    trend = fit_trend(list(zip(sizes, speedups)))
    errors = [np.std(logs, ddof=1) / math.sqrt(3) for logs in per_seed]
    slope, intercept = np.polyfit(sizes, [np.mean(logs) for logs in per_seed], 1, w=[1 / e for e in errors])
    assert (trend.slope, trend.intercept) == pytest.approx((slope, intercept))
    weights = np.array([1 / e**2 for e in errors])
    centred = np.array(sizes) - np.average(sizes, weights=weights)
    half = t_quantile(0.975, 2) / math.sqrt(np.sum(weights * centred**2))
    assert (trend.low, trend.high) == pytest.approx((slope - half, slope + half))
    assert trend.verdict == "grows" and trend_text(trend).startswith("grows: +0.1")
    shrinking = fit_trend(list(zip(sizes, reversed(speedups))))
    assert shrinking.verdict == "shrinks" and shrinking.slope == pytest.approx(-trend.slope)
    noisy = [speedup_of([0.1, -0.3, 0.4]), speedup_of([0.2, -0.2, 0.5])]
    assert fit_trend(list(zip(sizes, noisy))).verdict == "holds"
    exact = [speedup_of([0.0, 0.0, 0.0])] * 2  # a no-op on tokens: 1x with no spread at every size
    assert fit_trend(list(zip(sizes, exact))).verdict == "holds" and fit_trend(list(zip(sizes, exact))).slope == 0
    assert fit_trend([(5.0, speedups[0])]) is None and trend_text(None).startswith("needs 2+ sizes")


def test_size_ladder_runs_each_model_and_reports_the_trend(tmp_path, text_file, capsys):
    out = tmp_path / "ladder"
    noop = f"{CALIBRATION}:NoOp"
    common = ["--budget", "2ba", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--device", "cpu",
              "--precision", "fp32", "--data", str(text_file), "--interleave", "runs"]
    assert cli(["bench", "--models", "gpt2-tiny", "--algos", "baseline", "--out", str(out), *common]) == 2
    assert cli(["bench", "--models", "gpt2-tiny,gpt2-nope", "--algos", "baseline", "--out", str(out), *common]) == 2
    assert cli(["bench", "--models", "gpt2-tiny,gpt2-cpu", "--algos", "baseline,nope", "--out", str(out), *common]) == 2
    assert not out.exists() and capsys.readouterr().err.count("\n") == 3  # one line each

    assert cli(["bench", "--models", "gpt2-cpu,gpt2-tiny", "--algos", f"baseline,{noop}", "--seeds", "2",
                "--reference-repeats", "0", "--out", str(out), *common]) == 0
    for model in ("gpt2-tiny", "gpt2-cpu"):
        results = load_results(out / model)
        assert results.settings["model"] == model and len(results.runs) == 4
        assert (out / model / "report.md").exists()
    markdown = (out / "report.md").read_text()
    assert "## gpt2-cpu on CPU" in markdown and "## gpt2-tiny on CPU" in markdown and "Warning" not in markdown
    assert "| method | axis | gpt2-tiny (0.10M) | gpt2-cpu (0.79M) | ln(speedup) per 10x parameters [95% CI] |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {noop} | tokens |"))
    assert row.count("no different 1.00× [1.00, 1.00]") == 2 and "holds: +0.000 [+0.000, +0.000]" in row
    assert (out / "plots" / "speedups_vs_size.png").exists() and "Across sizes" in markdown
    printed = " ".join(capsys.readouterr().err.split())  # the console wraps lines
    assert f"{noop} across gpt2-tiny, gpt2-cpu: wall-clock" in printed and "tokens holds: +0.000" in printed
    # `composerlite report` merges the model folders without --allow-mixed: a ladder is not mixed.
    groups = group_results([(model, load_results(out / model)) for model in ("gpt2-tiny", "gpt2-cpu")])
    assert [group.settings["model"] for group in groups] == ["gpt2-tiny", "gpt2-cpu"] and not is_mixed(groups)
