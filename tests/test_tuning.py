"""`composerlite bench --tune`: grids (lists, log ranges, products, ALGO.OPTION), each method's best
(the edge flag, a failed run), bad input refused before any run, and the calibration: a method that
only rescales the LR is "no different" once both are tuned, where untuned it is not."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from rich.console import Console

from composerlite.bench.results import BenchResults, EvalPoint, Method, RunRecord, load_results
from composerlite.bench.runner import (BenchProgress, RunJob, bench_progress, keep_tuned_points, parse_algos, run_bench,
                                       train_run)
from composerlite.bench.tuning import (TunedKey, at_point, check_tuning, join_spec, method_grid, parse_tune,
                                       tuning_method, tuning_outcome)
from composerlite.cli import main as cli
from composerlite.errors import ConfigError, Diverged, RunHalted
from composerlite.registry import split_spec
from composerlite.run.settings import load_config

CALIBRATION = Path(__file__).resolve().parent.parent / "benchmarks" / "plugins" / "calibration.py"
TINY = ["--model", "gpt2-tiny", "--budget", "2ba", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1",
        "--device", "cpu", "--precision", "fp32", "--seeds", "1"]


def test_grids_lists_and_log_ranges():
    assert parse_tune("lr=3e-3, 1e-2,3e-2") == TunedKey("lr", (3e-3, 1e-2, 3e-2))
    assert parse_tune("lr=log:1e-3..1e-1:5").values == (1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1)  # 3 significant digits
    assert parse_tune("lr=log:1e-3..6.4e-2:7").values == tuple(1e-3 * 2**i for i in range(7))  # doubling, exactly
    assert parse_tune("batch_size=4,8").values == (4, 8) and parse_tune("warmup=0ba,20ba").values == ("0ba", "20ba")
    assert parse_tune("muon.nesterov=true,false").values == (True, False)
    key = parse_tune("path/plugin.py:Mine.scale=1,2")
    assert (key.algorithm, key.option) == ("path/plugin.py:Mine", "scale") and parse_tune("lr=1").algorithm is None
    for bad, message in (("lr=", "empty grid"), ("lr= , ", "empty grid"), ("=1", "KEY=GRID"), ("lr", "KEY=GRID"),
                         ("lr=log:1e-3..1e-1", "log:LOW..HIGH:N"), ("lr=log:1e-1..1e-3:3", "0 < LOW < HIGH"),
                         ("lr=log:1e-3..1e-1:1", "N >= 2"), ("lr=log:0..1:3", "0 < LOW"),
                         ("lr=1e-2,0.01", "lists 0.01 more than once"), ("lr=log:1.000..1.001:5", "more than once")):
        with pytest.raises(ConfigError, match=message):
            parse_tune(bad)


def test_product_grid_and_algorithm_options_apply_to_the_methods_that_have_them():
    methods = parse_algos("baseline,muon:ns_dtype=float32")
    baseline, muon = methods
    keys = [parse_tune("lr=1e-3,1e-2"), parse_tune("muon.lr=0.01,0.02")]
    assert method_grid(baseline, keys) == [{"lr": 1e-3}, {"lr": 1e-2}]
    assert method_grid(muon, keys) == [{"lr": 1e-3, "muon.lr": 0.01}, {"lr": 1e-3, "muon.lr": 0.02},
                                       {"lr": 1e-2, "muon.lr": 0.01}, {"lr": 1e-2, "muon.lr": 0.02}]
    assert method_grid(baseline, keys[1:]) == []  # no key applies: not tuned
    tuned = at_point(muon, {"lr": 1e-2, "muon.lr": 0.02})
    assert (tuned.label, tuned.overrides, tuned.algorithms) == ("muon:ns_dtype=float32", {"lr": 1e-2},
                                                                ("muon:ns_dtype=float32,lr=0.02",))
    run = tuning_method(muon, {"lr": 1e-2, "muon.lr": 0.02})
    assert (run.label, run.tuning_of, run.point) == ("muon:ns_dtype=float32 @ lr=0.01, muon.lr=0.02",
                                                     "muon:ns_dtype=float32", {"lr": 1e-2, "muon.lr": 0.02})
    options = {"exclude": ["a", "b"], "ratio": 1e-05, "name": "3", "flag": True, "none": None}
    assert split_spec(join_spec("x.py:Y", options)) == ("x.py:Y", options)  # values survive as written


def record(label: str, loss: float, tokens: int = 100) -> RunRecord:
    return RunRecord(method=label, seed=16, run_dir=f"tuning/{label}/seed16", config={},
                     evals=[EvalPoint(step=1, tokens=tokens, wall_s=1.0, flops=1.0, eval_loss=loss)],
                     train={"steps": 1, "tokens": tokens, "wall_s": 1.0}, step_seconds=[1.0], step_tokens=[tokens],
                     tokens_per_s=1.0, peak_memory_bytes=None, peak_memory_kind="test", device="CPU: test",
                     hardware={}, versions={}, finished_at="2024-01-01T00:00:00")


def test_best_of_selection_edge_flags_and_failed_points():
    baseline = Method(label="baseline")
    grid = {"lr": [1e-3, 1e-2, 1e-1], "warmup": ["0ba", "20ba"]}
    keys = [TunedKey(key, tuple(values)) for key, values in grid.items()]
    runs = [tuning_method(baseline, point) for point in method_grid(baseline, keys)]
    losses = dict(zip((run.label for run in runs), [5.0, 4.9, 4.5, 4.4, 4.8, math.nan]))

    def outcome(failed=(), missing=()):
        finished = {label: record(label, loss) for label, loss in losses.items() if label not in failed + missing}
        return tuning_outcome("baseline", runs, grid, finished, {label: "diverged" for label in failed})

    best = outcome()
    assert best.best == {"lr": 1e-2, "warmup": "20ba"} and best.best_loss == 4.4  # NaN is never the best
    assert best.edges == {} and best.tokens == 600 and best.complete
    # The best lr at the top of its grid is flagged (a string key never is); a failed point loses only itself.
    losses[runs[5].label] = 4.0
    assert outcome().edges == {"lr": "highest"}
    failed = outcome(failed=(runs[5].label, runs[3].label))
    assert failed.best == {"lr": 1e-2, "warmup": "0ba"} and failed.failed == 2 and failed.edges == {}
    losses[runs[4].label] = 4.1
    assert outcome(failed=(runs[5].label,)).best == {"lr": 1e-1, "warmup": "0ba"}
    assert outcome(missing=(runs[0].label,)).best is None  # no best until every point has a result
    assert outcome(failed=tuple(run.label for run in runs)).best is None


def test_bad_tuning_input_is_one_line_exit_2_before_any_run(tmp_path, capsys):
    out = tmp_path / "bench"
    for tune, message in (("lr=", "empty grid"), ("lrr=1e-3", "'lrr' is not a run setting"),
                          ("max_duration=10ba", "defines the comparison"), ("lr=-1", "greater than 0"),
                          ("muon.lr=1e-2", "no method includes muon"), ("alibi.max_seq=-3", "alibi"),
                          ("alibi.nope=1", "unknown option 'nope'"), ("warmup=soon", "--tune warmup=soon")):
        assert cli(["bench", "--algos", "baseline,alibi", "--tune", tune, "--out", str(out), *TINY]) == 2, tune
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, (tune, error)
    assert cli(["bench", "--algos", "baseline", "--tune", "lr=1e-3", "--tune", "lr=1e-2", "--out", str(out), *TINY]) == 2
    assert cli(["bench", "--algos", "baseline", "--tune", "lr=1e-3", "--lr", "1e-2", "--out", str(out), *TINY]) == 2
    assert cli(["bench", "--algos", "baseline", "--tune", "lr=1e-3", "--seed", "0", "--out", str(out), *TINY]) == 2
    assert not out.exists()
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "2ba", "algorithms": ["alibi"]})
    with pytest.raises(ConfigError, match="comes with the shared recipe"):
        check_tuning([parse_tune("alibi.max_seq=128")], base, parse_algos("baseline"))


def test_tuning_makes_a_method_that_only_rescales_the_lr_no_different(tmp_path, text_file):
    """LRScale:factor=4 at lr computes what the baseline does at 4 lr. At the same lr (untuned) it ends nats
    worse; tuned over 2^-6, 2^-4, 2^-2 (the baseline's optimum 2^-4 inside, LRScale's 2^-6 at the grid's edge,
    where it is flagged) its verdict runs are the baseline's to the bit. A tuning run that fails (the baseline's at
    2^-2, here) costs only its own point, and is not retried."""
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "4ba", "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "eval_interval": "2ba", "device": "cpu", "precision": "fp32",
                              "data": str(text_file)})
    scaled = f"{CALIBRATION}:LRScale:factor=4"
    methods = parse_algos(f"baseline,{scaled}")
    trained = []

    def failing_at_the_top(config, console, **hooks):
        trained.append(config.training.seed)
        if config.optimizer.lr == 2**-2 and not config.algorithms:
            raise Diverged("loss became nan at step 3", loss=math.nan, step=3)
        return train_run(config, console, **hooks)

    out = tmp_path / "tuned"
    tune = [parse_tune("lr=0.015625,0.0625,0.25")]
    results = run_bench(out, base, methods, [17, 18], "tuned", run=failing_at_the_top, reference_repeats=0,
                        interleave="runs", tuning=tune)
    assert results.settings["tune"] == {"lr": [2**-6, 2**-4, 2**-2]} and results.settings["tune_seed"] == 16
    assert [(failure.method, failure.seed) for failure in results.tuning_failures] == [("baseline @ lr=0.25", 16)]
    assert sorted(trained) == [16] * 6 + [17, 17, 18, 18]
    runs = {(run.method, run.seed): run for run in results.runs}
    untuned = runs[(f"{scaled} @ lr=0.0625", 16)].final_eval_loss - runs[("baseline @ lr=0.0625", 16)].final_eval_loss
    assert untuned > 1.0  # the same lr: LRScale trains at 4x it
    chosen = {method.label: method.point for method in results.methods if not method.tuning_of}
    assert chosen == {"baseline": {"lr": 2**-4}, scaled: {"lr": 2**-6}}
    for seed in (17, 18):  # best against best: the same computation
        assert runs[(scaled, seed)].evals == [point.model_copy(update={"wall_s": other.wall_s}) for point, other
                                              in zip(runs[("baseline", seed)].evals, runs[(scaled, seed)].evals)]
    markdown = (out / "report.md").read_text()
    scaled_row = next(line for line in markdown.splitlines() if line.startswith(f"| {scaled} | 2 | "))
    assert scaled_row.count("no different 1.00× [1.00, 1.00]") == 2  # tokens and FLOPs
    assert "equivalent (+0.000 nats), p 0" in markdown
    assert "| baseline | 3 (1 failed) | " in markdown and "diverged: loss nan at step 3" in markdown
    assert f"| {scaled} | 3 | " in markdown and "lr at the grid's lowest value: widen the grid" in markdown
    assert "3 runs per method" in markdown and (out / "plots" / "tuning_lr.png").exists()
    assert (out / "tuning" / "baseline_lr=0.0625" / "seed16" / "metrics.jsonl").exists()

    trained.clear()  # the same command again: nothing is trained, the failed point included
    again = run_bench(out, base, methods, [17, 18], "tuned", run=failing_at_the_top, reference_repeats=0,
                      interleave="runs", tuning=tune)
    assert trained == [] and len(again.runs) == len(results.runs) and len(load_results(out).commands) == 2
    with pytest.raises(ConfigError, match="already has a method"):  # another method under a known label: refused
        run_bench(out, base, [methods[0], Method(label=scaled, algorithms=(f"{CALIBRATION}:LRScale:factor=2",))],
                  [17, 18], "changed", reference_repeats=0, interleave="runs", tuning=tune)
    assert len(load_results(out).commands) == 2  # before anything was written


def test_a_widened_grid_trains_only_its_new_points_and_refuses_a_moved_best(tmp_path, text_file):
    """A folder's grid may widen: only the new points train, the folder records the wider grid, and the
    verdict runs stay where the best stays. A best that moves to a new point after verdict runs used the
    old one is refused in one line (the new point's tuning run kept); a grid that drops a value is refused
    before anything is written. The held-out loss is made a known function of the LR here, so the best
    is known in advance: lowest at LR 10^-2.4."""
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "device": "cpu", "precision": "fp32", "data": str(text_file)})
    trained = []

    def loss_of_the_lr(config, console, **hooks):
        trained.append((config.optimizer.lr, config.training.seed))
        result = train_run(config, console, **hooks)
        for record in result.records:
            if "eval_loss" in record:
                record["eval_loss"] = 3 + (math.log10(config.optimizer.lr) + 2.4) ** 2
        return result

    out = tmp_path / "widened"
    bench = lambda grid: run_bench(out, base, parse_algos("baseline"), [17], grid, run=loss_of_the_lr,
                                   reference_repeats=0, interleave="runs", tuning=[parse_tune(grid)])
    first = bench("lr=1e-2,1e-1")
    assert next(method.point for method in first.methods if method.label == "baseline") == {"lr": 1e-2}
    assert "lr at the grid's lowest value: widen the grid" in (out / "report.md").read_text()
    trained.clear()
    widened = bench("lr=1e-3,1e-2,1e-1")
    assert trained == [(1e-3, 16)]  # the new point only; the best stays at 1e-2, so does the verdict run
    assert widened.settings["tune"] == {"lr": [1e-3, 1e-2, 1e-1]} and len(widened.runs) == 4
    markdown = (out / "report.md").read_text()
    assert "| baseline | 3 | " in markdown and "widen the grid" not in markdown
    with pytest.raises(ConfigError, match=r"moves baseline's best to lr=0.003, but its verdict runs there used "
                                          r"lr=0.01; run the widened grid into another --out"):
        bench("lr=1e-3,3e-3,1e-2,1e-1")
    kept = load_results(out)
    assert {run.method for run in kept.runs} >= {"baseline @ lr=0.003"}  # the new point's tuning run is kept
    assert next(method.point for method in kept.methods if method.label == "baseline") == {"lr": 1e-2}
    commands = len(kept.commands)
    with pytest.raises(ConfigError, match=r"a grid may only widen") as narrower:
        bench("lr=1e-2,1e-1")
    assert "\n" not in str(narrower.value) and len(load_results(out).commands) == commands


def test_a_moved_best_without_verdict_runs_takes_the_new_point(tmp_path):
    """Where a tuned method's verdict runs have not started (no record, no run folder), its recorded
    point is replaced by the new best; a run folder left by a started run makes it a refusal."""
    results = BenchResults(settings={}, reference="baseline", methods=[Method(label="baseline", overrides={"lr": 1e-2},
                                                                               point={"lr": 1e-2})])
    moved = Method(label="baseline", overrides={"lr": 3e-3}, point={"lr": 3e-3})
    keep_tuned_points(tmp_path, results, [moved])
    assert results.methods == [moved]
    (tmp_path / "runs" / "baseline" / "seed17").mkdir(parents=True)
    with pytest.raises(ConfigError, match="moves baseline's best to lr=0.01"):
        keep_tuned_points(tmp_path, results, [Method(label="baseline", overrides={"lr": 1e-2}, point={"lr": 1e-2})])


NAN_AT_FIRST_STEP = '''
from composerlite import Algorithm, Event

class NanAtFirstStep(Algorithm):
    """The loss NaN at the first batch, as a run far above its stable LR diverges."""
    name = "nan_at_first_step"
    def match(self, event, state): return event is Event.AFTER_LOSS and state.timestamp.batch == 0
    def apply(self, event, state, logger): state.loss = state.loss * float("nan")
'''


def test_a_bench_whose_every_tuning_run_diverges_says_so(tmp_path, text_file):
    """Every grid point diverges (the trainer's own NaN stop): each is its point's result, kept and not
    retried, and with no method left to run verdicts for the bench ends in its one-line failure (exit 1)."""
    plugin = tmp_path / "diverging.py"
    plugin.write_text(NAN_AT_FIRST_STEP)
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "device": "cpu", "precision": "fp32", "data": str(text_file)})
    out = tmp_path / "diverging"
    methods = parse_algos(f"{plugin}:NanAtFirstStep")
    for _ in range(2):  # the second time, nothing is retried
        with pytest.raises(RunHalted, match="every tuning run diverged") as halted:
            run_bench(out, base, methods, [17], "diverging", reference_repeats=0, interleave="runs",
                      tuning=[parse_tune("lr=1e-3,1e-2")])
        assert halted.value.exit_code == 1
        assert [failure.reason for failure in load_results(out).tuning_failures] == ["diverged: loss nan at step 1"] * 2
    assert "no point could train: no verdict runs" in (out / "report.md").read_text()


def test_a_tuning_run_that_fails_for_another_reason_is_retried(tmp_path, text_file):
    """An import error says nothing about the grid point: the bench fails naming the run (exit 1),
    records no result for the point, and the same command retries exactly the failed runs."""
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "device": "cpu", "precision": "fp32", "data": str(text_file)})
    trained = []

    def broken_at_one_point(config, console, **hooks):
        if config.optimizer.lr == 1e-2:
            raise ModuleNotFoundError("No module named 'somewhere'")
        trained.append((config.optimizer.lr, config.training.seed))
        return train_run(config, console, **hooks)

    out = tmp_path / "broken"
    tune = [parse_tune("lr=1e-3,1e-2")]
    with pytest.raises(RunHalted, match="baseline @ lr=0.01.*ModuleNotFoundError") as halted:
        run_bench(out, base, parse_algos("baseline"), [17], "broken", run=broken_at_one_point,
                  reference_repeats=0, interleave="runs", tuning=tune)
    assert halted.value.exit_code == 1 and "retry the failed runs" in str(halted.value)
    assert load_results(out).tuning_failures == [] and trained == [(1e-3, 16)]  # no verdict run yet
    assert "tuning: 1 of 2 runs done" in (out / "report.md").read_text()

    def working(config, console, **hooks):
        trained.append((config.optimizer.lr, config.training.seed))
        return train_run(config, console, **hooks)

    trained.clear()
    again = run_bench(out, base, parse_algos("baseline"), [17], "fixed", run=working, reference_repeats=0,
                      interleave="runs", tuning=tune)
    chosen = next(method.point["lr"] for method in again.methods if method.label == "baseline")
    assert trained == [(1e-2, 16), (chosen, 17)]  # the failed point only, then the verdict seed


OOM_ABOVE_TWO = '''
import torch
from composerlite import Algorithm, Event

class OomAboveTwo(Algorithm):
    """CUDA's out-of-memory error for a batch of more than two sequences, as a small card would raise."""
    name = "oom_above_two"
    def match(self, event, state): return event is Event.BEFORE_FORWARD and state.batch["input_ids"].shape[0] > 2
    def apply(self, event, state, logger): raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
'''


def test_a_tuning_run_out_of_memory_is_its_points_result(tmp_path, text_file):
    """Out of device memory at a grid point (batch 4) is that point's result: the method's verdict
    runs use the point that fits, and the bench succeeds."""
    plugin = tmp_path / "small_card.py"
    plugin.write_text(OOM_ABOVE_TWO)
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "device": "cpu", "precision": "fp32", "data": str(text_file)})
    out = tmp_path / "small_card"
    method = f"{plugin}:OomAboveTwo"
    results = run_bench(out, base, parse_algos(method), [17], "small card", reference_repeats=0, interleave="runs",
                        tuning=[parse_tune("batch_size=2,4")])
    assert [(failure.method, failure.reason) for failure in results.tuning_failures] == [
        (f"{method} @ batch_size=4", "out of device memory")]
    assert next(m.point for m in results.methods if m.label == method) == {"batch_size": 2}
    assert {(run.method, run.seed) for run in results.runs} >= {(method, 17)}


def test_the_overall_progress_moves_with_every_step_of_the_runs_under_way(tmp_path):
    """Runs stepped in turn end together; the overall bar counts their fractions done as they go,
    so its time left is not read off a burst of runs ending at once."""
    progress, overall = bench_progress(Console(file=io.StringIO()), 3)
    results = BenchResults(settings={}, reference="baseline", methods=[])
    tracking = BenchProgress(tmp_path, results, progress, overall)
    base = load_config(None, {"model": "gpt2-tiny"})
    jobs = [RunJob(Method(label=f"m @ lr={lr}", tuning_of="m", point={"lr": lr}), 16, base, tmp_path / "log", "cpu",
                   train_run) for lr in (0.1, 0.2, 0.3)]
    for job in jobs:
        tracking.add(job)
    completed = lambda: progress.tasks[overall].completed
    tracking.on_message(jobs[0], ("record", {"event": "train", "fraction": 0.5, "step": 1, "loss": 9.0}))
    tracking.on_message(jobs[1], ("record", {"event": "train", "fraction": 0.25, "step": 1, "loss": 9.0}))
    assert completed() == 0.75
    tracking.on_message(jobs[0], ("cannot_train", "diverged: loss nan at step 2"))  # settled: a whole run
    assert completed() == 1.25
    tracking.on_message(jobs[1], ("failed", "ModuleNotFoundError: x"))  # not settled: it will be retried
    assert completed() == 1.0 and tracking.failures == ["m @ lr=0.2 seed 16 (ModuleNotFoundError: x)"]
