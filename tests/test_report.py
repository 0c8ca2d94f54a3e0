"""Verdicts and reports on synthetic results with known answers: costs to a target on three axes,
speedup intervals and verdicts (a no-op is "no different", a time-burner "slower"), the A/A noise
floor, races with their p-value, merging, and refusing other results formats."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from composerlite.bench.analysis import (attainment_test, crossing, equivalence_p_value, group_results, loss_at,
                                         one_sided_p_value, quality_test, race_records, speedup_of, summarize,
                                         t_quantile)
from composerlite.bench.report import build_report, verdict_row
from composerlite.bench.results import BenchResults, EvalPoint, Method, RunRecord, load_results, save_results
from composerlite.cli import main as cli
from composerlite.errors import ConfigError

SETTINGS = {"model": "gpt2-tiny", "max_duration": "20ba", "data": None, "data_name": "synthetic",
            "data_id": "synthetic-0", "train_tokens": 1000, "eval_tokens": 100}
REFERENCES = {"unigram": 6.0, "bigram": 4.0}
SEEDS = (1, 2, 3)
# Each method's eval curve as (tokens, loss); time = tokens x seconds-per-token, FLOPs = tokens x 10.
CURVES = {
    "baseline": [(1000, 4.0), (2000, 3.0)],
    "noop": [(1000, 4.0), (2000, 3.0)],  # the same curve: changes nothing
    "sleeper": [(1000, 4.0), (2000, 3.0)],  # the same curve, 1.43x the time per token
    "fast": [(1000, 3.5), (2000, 2.5)],  # reaches 3.0 at 1500 tokens
    "never": [(1000, 3.5), (2000, 3.1)],  # never reaches 3.0
}
SECONDS_PER_TOKEN = {"sleeper": 0.01 / 0.7}
# Run-to-run timing noise: a fixed multiplier per (method, seed), within ±3%.
NOISE = {("baseline", 1): 1.00, ("baseline", 2): 1.02, ("baseline", 3): 0.99,
         ("baseline (repeat)", 1): 1.01, ("baseline (repeat)", 2): 0.98, ("baseline (repeat)", 3): 1.02,
         ("noop", 1): 0.98, ("noop", 2): 1.03, ("noop", 3): 1.00}


def record(method: str, seed: int, device: str = "CPU: test", curve=None) -> RunRecord:
    curve = curve or CURVES[method.removesuffix(" (repeat)")]
    per_token = SECONDS_PER_TOKEN.get(method, 0.01) * NOISE.get((method, seed), 1.0)
    return RunRecord(
        method=method, seed=seed, run_dir=f"runs/{method}/seed{seed}",
        config={"algorithms": [] if method.startswith("baseline") else [method], "batch_size": 2, "seq_len": 500},
        evals=[EvalPoint(step=2 * (i + 1), tokens=tokens, wall_s=tokens * per_token, flops=tokens * 10.0, eval_loss=loss)
               for i, (tokens, loss) in enumerate(curve)],
        train={"steps": 4, "tokens": 2000, "wall_s": curve[-1][0] * per_token, "first_loss": 5.0, "final_loss": 3.0,
               "min_loss": 3.0},
        step_seconds=[500 * per_token] * 4, step_tokens=[500] * 4,
        tokens_per_s=1 / per_token, peak_memory_bytes=2**20, peak_memory_kind="test", device=device,
        hardware={"cpu": "test", "cpu_cores": 2, "torch_threads": 2, "platform": "test"},
        versions={"torch": "x"}, finished_at="2024-01-01T00:00:00",
    )


def results(device: str = "CPU: test", methods=("baseline", "noop", "sleeper", "fast", "never"),
            settings=SETTINGS) -> BenchResults:
    listed = [Method(label=m, algorithms=() if m == "baseline" else (m,)) for m in methods]
    listed.append(Method(label="baseline (repeat)", repeat_of="baseline"))
    return BenchResults(settings=dict(settings), reference="baseline", references=REFERENCES, methods=listed,
                        commands=[{"command": "composerlite bench ...", "started": "2024-01-01T00:00:00"}],
                        runs=[record(m.label, seed, device) for m in listed for seed in SEEDS])


def summaries_of(bench: BenchResults) -> dict:
    (group,) = group_results([(".", bench)])
    return {summary.method: summary for summary in summarize(group)}


def test_crossing_interpolates_every_axis():
    points = [EvalPoint(step=1, tokens=100, wall_s=1.0, flops=1e3, eval_loss=5.0),
              EvalPoint(step=2, tokens=200, wall_s=3.0, flops=2e3, eval_loss=4.0)]
    assert crossing(points, 4.25) == pytest.approx({"wall_s": 2.5, "tokens": 175.0, "flops": 1750.0})
    assert crossing(points, 6.0) == {"wall_s": 1.0, "tokens": 100.0, "flops": 1e3}  # below at the first eval
    assert crossing(points, 3.9) is None


def test_speedup_interval_is_a_student_t_interval_on_log_ratios():
    logs = [math.log(1.2), math.log(1.3), math.log(1.25)]
    result = speedup_of(logs)
    mean, half = statistics.fmean(logs), t_quantile(0.975, 2) * statistics.stdev(logs) / math.sqrt(3)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)  # the textbook value
    assert (result.point, result.low, result.high) == pytest.approx((math.exp(mean), math.exp(mean - half), math.exp(mean + half)))
    assert result.verdict == "faster"
    assert speedup_of([-x for x in logs]).verdict == "slower"
    assert speedup_of([0.1, -0.1, 0.05]).verdict == "no different"
    # The noise floor widens an interval that three lucky seeds made narrow.
    assert speedup_of([0.05, 0.051, 0.052]).verdict == "faster"
    assert speedup_of([0.05, 0.051, 0.052], noise_variance=0.05**2).verdict == "no different"
    assert speedup_of([0.3]).verdict == "needs 2+ seeds" and speedup_of([0.3]).low is None


def test_noop_is_no_different_and_sleeper_is_slower():
    summaries = summaries_of(results())
    noop, sleeper, fast = summaries["noop"], summaries["sleeper"], summaries["fast"]
    for axis in ("tokens", "flops"):  # deterministic axes: a no-op is exactly 1
        assert (noop.speedups[axis].point, noop.speedups[axis].low, noop.speedups[axis].high) == (1.0, 1.0, 1.0)
        assert noop.speedups[axis].verdict == "no different" and sleeper.speedups[axis].verdict == "no different"
    assert noop.speedups["wall_s"].verdict == "no different"
    assert noop.speedups["wall_s"].low < 1 < noop.speedups["wall_s"].high
    assert sleeper.speedups["wall_s"].verdict == "slower"
    assert sleeper.speedups["wall_s"].high < 1
    assert fast.speedups["tokens"].point == pytest.approx(2000 / 1500) and fast.speedups["tokens"].verdict == "faster"
    assert fast.cost_to_target["tokens"].mean == pytest.approx(1500)
    assert fast.cost_to_target["flops"].mean == pytest.approx(15000)
    never = summaries["never"]
    assert (never.reached, never.compared, never.cost_to_target) == (0, 3, None)
    assert never.speedups["wall_s"].verdict == "crossed in 0/3 seeds"
    assert summaries["baseline"].speedups["wall_s"].verdict == "reference"
    # Loss statements are tests: the no-op and the sleeper end exactly at the baseline's loss in every seed, so
    # neither reaches below it, and both are equivalent to it; "fast" ends 0.5 nats lower in every seed.
    for method in ("noop", "sleeper"):
        assert (summaries[method].attainment.verdict, summaries[method].attainment.p_value) == ("not shown", 1.0)
        assert (summaries[method].quality.verdict, summaries[method].quality.p_value) == ("equivalent", 0.0)
    assert (fast.attainment.verdict, fast.quality.verdict, fast.quality.mean_difference) == ("reached", "better", -0.5)
    assert never.quality.verdict == "worse" and never.attainment.verdict == "not shown"
    assert summaries["baseline"].attainment.verdict == "reference"
    # Step speed needs no target: the sleeper is slower per step, the rest (never included) no different.
    assert sleeper.speedups["step_speed"].verdict == "slower"
    assert sleeper.speedups["step_speed"].point == pytest.approx(0.7, rel=0.03)
    for method in ("noop", "fast", "never"):
        assert summaries[method].speedups["step_speed"].verdict == "no different", method
    assert summaries["baseline"].speedups["step_speed"].verdict == "reference"


def test_aa_noise_floors_the_wall_clock_interval():
    """The noop's seeds happen to agree closely with each other here; the A/A spread still widens its interval."""
    bench = results(methods=("baseline", "noop"))
    aa = summaries_of(bench)["baseline (repeat)"].speedups["wall_s"]
    noop = summaries_of(bench)["noop"].speedups["wall_s"]
    ratios = [math.log(NOISE[("baseline", s)] / NOISE[("noop", s)]) for s in SEEDS]
    aa_squares = [math.log(NOISE[("baseline", s)] / NOISE[("baseline (repeat)", s)]) ** 2 for s in SEEDS]
    variance = max(statistics.variance(ratios), statistics.fmean(aa_squares))
    half = t_quantile(0.975, 2) * math.sqrt(variance / 3)
    assert noop.high == pytest.approx(math.exp(statistics.fmean(ratios) + half))
    assert aa.verdict == "no different"
    # The same floor on step speed: the repeat's per-step noise widens the noop's interval.
    step_ratios = [math.log(NOISE[("baseline", s)] / NOISE[("noop", s)]) for s in SEEDS]
    step_variance = max(statistics.variance(step_ratios), statistics.fmean(aa_squares))
    step_half = t_quantile(0.975, 2) * math.sqrt(step_variance / 3)
    assert summaries_of(bench)["noop"].speedups["step_speed"].high == pytest.approx(
        math.exp(statistics.fmean(step_ratios) + step_half))


def test_verdict_cells_never_show_a_point_alone():
    row = verdict_row(summaries_of(results())["noop"])
    assert row[0] == "noop" and row[2].startswith("no different ") and "[" in row[2]
    assert verdict_row(summaries_of(results())["baseline (repeat)"])[0] == "baseline (repeat) (A/A)"


def test_race_records_and_p_value():
    bench = results(methods=("baseline", "fast", "never"), settings={**SETTINGS, "target_loss": 3.2})
    (group,) = group_results([(".", bench)])
    records = {r.method: r for r in race_records(group)}
    assert records["fast"].mean_cost["tokens"] == pytest.approx(1300)  # 3.5 -> 2.5 between 1000 and 2000
    assert records["never"].mean_cost["tokens"] == pytest.approx(1750)
    assert records["fast"].budget_tokens == pytest.approx(1300)
    assert records["fast"].p_value == 1.0  # every seed exactly at the target there: not below it
    statistic = (3.05 - 3.2) / (0.05 / math.sqrt(3))  # Student t with 2 degrees of freedom has a closed-form CDF
    assert one_sided_p_value([3.0, 3.1, 3.05], 3.2) == pytest.approx(0.5 + statistic / (2 * math.sqrt(2 + statistic**2)))
    assert one_sided_p_value([3.3, 3.4, 3.5], 3.2) > 0.9
    assert one_sided_p_value([3.0], 3.2) is None
    target_missed = results(methods=("baseline", "never"), settings={**SETTINGS, "target_loss": 1.0})
    (group,) = group_results([(".", target_missed)])
    assert all(r.mean_cost is None and r.p_value is None for r in race_records(group))
    summaries = {s.method: s for s in summarize(group)}
    assert summaries["never"].speedups["tokens"].verdict == "crossed in 0/3 seeds"
    evals = record("fast", 1).evals
    assert loss_at(evals, 1500) == pytest.approx(3.0) and loss_at(evals, 5000) == 2.5


KNOWN_SAMPLES = ([-0.031, -0.012, -0.027, -0.019], [0.02, -0.01, 0.035], [-0.4, 0.1, -0.2, -0.15, -0.3], [0.01, 0.012])


@pytest.mark.parametrize("sample", KNOWN_SAMPLES)
def test_attainment_and_equivalence_p_values_are_scipys(sample):
    from scipy.stats import ttest_1samp

    assert one_sided_p_value(sample, 0.0) == pytest.approx(ttest_1samp(sample, 0.0, alternative="less").pvalue)
    assert attainment_test(sample).p_value == pytest.approx(ttest_1samp(sample, 0.0, alternative="less").pvalue)
    margin = 0.05  # TOST: both one-sided tests against the margins; its p is the larger
    expected = max(ttest_1samp(sample, margin, alternative="less").pvalue,
                   ttest_1samp(sample, -margin, alternative="greater").pvalue)
    assert equivalence_p_value(sample, margin) == pytest.approx(expected)


def test_loss_statements_are_tests_or_not_shown():
    assert attainment_test([-0.031, -0.012, -0.027, -0.019]).verdict == "reached"  # p = 0.007
    assert attainment_test([-0.4, 0.1, -0.2, -0.15, -0.3]).verdict == "not shown"  # below on average, p = 0.04
    assert attainment_test([-1.0]).verdict == "not shown (needs 2+ seeds)"  # one seed is never a test
    assert quality_test([-0.031, -0.012, -0.027, -0.019]).verdict == "better"
    assert quality_test([0.031, 0.012, 0.027, 0.019]).verdict == "worse"
    tight = quality_test([0.004, -0.003, 0.001, -0.002, 0.002])  # inside +-0.05 nats, shown by TOST
    assert tight.verdict == "equivalent" and tight.p_value < 0.01
    loose = quality_test([0.02, -0.01, 0.035])  # looks close, but three seeds this spread cannot show it
    assert loose.verdict == "not shown" and loose.p_value == pytest.approx(equivalence_p_value([0.02, -0.01, 0.035], 0.05))
    assert quality_test([0.0]).verdict == "not shown (needs 2+ seeds)"


def test_report_files(tmp_path):
    save_results(tmp_path, results())
    build_report([tmp_path], tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "### Verdicts" in markdown and "| noop | 3 | no different" in markdown
    assert "slower" in markdown and "crossed in 0/3 seeds" in markdown
    assert "Timing noise (A/A)" in markdown and "unigram 6.000, bigram 4.000" in markdown
    assert "20ba per run" in markdown and "synthetic" in markdown and "CPU: test" in markdown
    names = ("loss_vs_time.png", "loss_vs_tokens.png", "loss_vs_flops.png", "speedups.png")
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG")
        assert f"](plots/{name})" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(names) and "plots/" not in page.split("<h2>Runs")[0]


def test_report_says_when_the_reference_learned_nothing(tmp_path):
    bench = results(methods=("baseline", "noop"))
    bench.references = {"unigram": 2.0, "bigram": 1.5}
    save_results(tmp_path, bench)
    build_report([tmp_path], tmp_path)
    assert "ABOVE the unigram" in (tmp_path / "report.md").read_text()


def test_report_rebuilds_exactly(tmp_path):
    save_results(tmp_path, results())
    build_report([tmp_path], tmp_path)
    first = [line for line in (tmp_path / "report.md").read_text().splitlines() if not line.startswith("_Built")]
    build_report([tmp_path], tmp_path)
    assert [line for line in (tmp_path / "report.md").read_text().splitlines() if not line.startswith("_Built")] == first


def test_merge_keeps_devices_apart(tmp_path):
    save_results(tmp_path / "cpu", results("CPU: test"))
    save_results(tmp_path / "gpu", results("NVIDIA H100", methods=("baseline", "fast")))
    groups = build_report([tmp_path / "cpu", tmp_path / "gpu"], tmp_path / "merged")
    assert sorted(group.device for group in groups) == ["CPU: test", "NVIDIA H100"]
    markdown = (tmp_path / "merged" / "report.md").read_text()
    assert markdown.count("| fast | 3 | faster") == 2 and "Warning" not in markdown  # one row per device
    assert "../cpu/runs/fast/seed1" in markdown  # run folders stay reachable from the merged report


def test_tuning_runs_join_their_folder_whatever_machine_trained_them(tmp_path):
    """A folder tuned in one session and verdict-run in another (another host) is one group: the tuned
    point is chosen by held-out loss. Verdict runs on two machines still make two groups, each with the
    tuning, and the report lists each tuning run once, on its own machine."""
    bench = results("CPU: second host", methods=("baseline", "fast"))
    tuning = [Method(label=f"{m} @ lr={lr}", algorithms=(m,) if m == "fast" else (), tuning_of=m, point={"lr": lr})
              for m in ("baseline", "fast") for lr in (0.01, 0.03)]
    bench.methods += tuning
    bench.runs += [record(m.label, 0, "CPU: first host", curve=CURVES[m.tuning_of]) for m in tuning]
    bench.settings.update(tune={"lr": [0.01, 0.03]}, tune_seed=0)
    (group,) = group_results([(".", bench)])
    assert group.device == "CPU: second host" and len(group.tuning_runs) == 4 and len(group.runs) == 9
    assert {run.device for run in group.tuning_runs} == {"CPU: first host"}
    assert {s.method: s for s in summarize(group)}["fast"].speedups["tokens"].verdict == "faster"

    bench.runs = [run.model_copy(update={"device": "CPU: third host"}) if run.seed == 3 and run.method in
                  ("baseline", "fast", "baseline (repeat)") else run for run in bench.runs]
    save_results(tmp_path, bench)
    groups = build_report([tmp_path], tmp_path)
    assert [(group.device, len(group.tuning_runs), len(group.runs)) for group in groups] == [
        ("CPU: second host", 4, 6), ("CPU: third host", 4, 3)]
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.count("| baseline @ lr=0.01 | 0 | CPU: first host |") == 1


def test_a_ladder_across_machines_fits_only_the_axes_the_machine_does_not_change(tmp_path):
    """Sizes that ran on different hosts are one ladder: tokens and FLOPs trends are fitted, wall-clock
    and step speed are not (they would mix the machine into the size). A size measured on two hosts
    makes one ladder per host."""
    for model, device in (("gpt2-tiny", "CPU: first host"), ("gpt2-cpu", "CPU: second host")):
        save_results(tmp_path / model, results(device, methods=("baseline", "fast"), settings={**SETTINGS, "model": model}))
    build_report([tmp_path / "gpt2-tiny", tmp_path / "gpt2-cpu"], tmp_path / "ladder")
    markdown = (tmp_path / "ladder" / "report.md").read_text()
    assert "## Across sizes on 2 machines" in markdown and "gpt2-tiny on CPU: first host; gpt2-cpu on" in markdown
    rows = {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| fast | ")}
    assert "holds: +0.000 [+0.000, +0.000]" in rows["tokens"] and "holds" in rows["FLOPs"]
    assert rows["wall-clock"].endswith("| not fitted: the sizes ran on different machines |")
    assert rows["step speed"].endswith("| not fitted: the sizes ran on different machines |")
    assert (tmp_path / "ladder" / "plots" / "speedups_vs_size.png").exists()

    save_results(tmp_path / "gpt2-cpu-again", results("CPU: first host", methods=("baseline", "fast"),
                                                      settings={**SETTINGS, "model": "gpt2-cpu"}))
    build_report([tmp_path / "gpt2-tiny", tmp_path / "gpt2-cpu", tmp_path / "gpt2-cpu-again"], tmp_path / "both")
    markdown = (tmp_path / "both" / "report.md").read_text()
    assert "## Across sizes on CPU: first host" in markdown and "Across sizes on 2 machines" not in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| fast | wall-clock |"))
    assert "not fitted" not in row and "holds" in row


def test_merge_refuses_other_budget_unless_allowed(tmp_path):
    save_results(tmp_path / "a", results())
    save_results(tmp_path / "b", results(settings={**SETTINGS, "max_duration": "40ba"}))
    with pytest.raises(ConfigError, match="max_duration"):
        build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    groups = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", allow_mixed=True)
    assert len(groups) == 2
    assert "**Warning:**" in (tmp_path / "merged" / "report.md").read_text()


def test_merge_refuses_duplicate_runs(tmp_path):
    save_results(tmp_path / "a", results())
    save_results(tmp_path / "b", results())
    with pytest.raises(ConfigError, match="both hold"):
        group_results([("a", load_results(tmp_path / "a")), ("b", load_results(tmp_path / "b"))])


def test_report_cli(tmp_path, capsys):
    save_results(tmp_path / "a", results())
    assert cli(["report", str(tmp_path / "a")]) == 0
    assert "no different" in capsys.readouterr().out  # the verdict table is printed
    assert (tmp_path / "a" / "report.html").exists()
    assert cli(["report", str(tmp_path / "a"), str(tmp_path / "a")]) == 2  # merging needs --out
    assert cli(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    assert cli(["report", str(tmp_path / "bad")]) == 2
    assert "not a composerlite results file" in capsys.readouterr().err
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps({"format": 1, "runs": []}))
    assert cli(["report", str(tmp_path / "old")]) == 2
    assert "results format 1" in capsys.readouterr().err


RECORDS = sorted((Path(__file__).resolve().parent.parent / "benchmarks" / "results").glob("*/results.json"))


@pytest.mark.parametrize("results_file", RECORDS, ids=lambda path: path.parent.name)
def test_committed_records_rebuild_exactly(results_file, tmp_path):
    """`composerlite report` on a committed record reproduces its report.md (all but the build time)."""
    copy = tmp_path / results_file.parent.name
    shutil.copytree(results_file.parent, copy, ignore=shutil.ignore_patterns("plots", "runs", "logs"))
    (copy / "report.md").unlink()
    build_report([copy], copy)
    strip = lambda text: [line for line in text.splitlines() if not line.startswith("_Built")]
    assert strip((copy / "report.md").read_text()) == strip((results_file.parent / "report.md").read_text())
