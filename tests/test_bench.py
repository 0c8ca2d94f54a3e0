"""`composerlite bench` / `sweep` / `scaling`: method parsing, a real tiny benchmark end to end,
resuming after an interruption, and the recipes shipped in benchmarks/recipes."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from rich.console import Console

from composerlite.bench.results import load_results
from composerlite.bench.runner import parse_algos, parse_recipe, run_bench, train_run
from composerlite.cli import main as cli
from composerlite.commands.sweep import sweep_methods
from composerlite.errors import ConfigError, RunHalted
from composerlite.registry import registered_algorithms, split_spec
from composerlite.run.settings import load_config

RECIPES = Path(__file__).resolve().parent.parent / "benchmarks" / "recipes"
TINY = ["--model", "gpt2-tiny", "--budget", "2ba", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1",
        "--device", "cpu", "--precision", "fp32", "--seeds", "1"]


def test_parse_algos_keeps_option_commas_and_plugins():
    methods = parse_algos("baseline, seq_len_warmup:duration=0.3,min_seq_len=8,plugins/mine.py:Mine,alibi")
    assert [m.label for m in methods] == ["baseline", "seq_len_warmup:duration=0.3,min_seq_len=8",
                                          "plugins/mine.py:Mine", "alibi"]
    assert [m.algorithms for m in methods] == [(), ("seq_len_warmup:duration=0.3,min_seq_len=8",),
                                               ("plugins/mine.py:Mine",), ("alibi",)]
    with pytest.raises(ConfigError, match="looks like an option"):
        parse_algos("baseline,duration=0.3")


def test_parse_recipe():
    recipe = parse_recipe("fast=seq_len_warmup:duration=0.2,min_seq_len=8+alibi")
    assert (recipe.label, recipe.algorithms) == ("fast", ("seq_len_warmup:duration=0.2,min_seq_len=8", "alibi"))
    for bad in ("fast", "=alibi", "fast="):
        with pytest.raises(ConfigError):
            parse_recipe(bad)


def test_bad_input_fails_before_training(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli(["bench", "--algos", "baseline,no_such_algo", "--out", str(out), *TINY]) == 2
    assert "unknown algorithm 'no_such_algo'" in capsys.readouterr().err
    assert cli(["bench", "--algos", "baseline,seq_len_warmup:duration=7", "--out", str(out), *TINY]) == 2
    assert cli(["bench", "--algos", "baseline", "--model", "gpt2-tiny", "--out", str(out)]) == 2  # no budget
    assert cli(["bench", "--algos", "baseline,baseline", "--out", str(out), *TINY]) == 2
    assert not (out / "runs").exists()


CALIBRATION = Path(__file__).resolve().parent.parent / "benchmarks" / "plugins" / "calibration.py"


def test_bench_end_to_end_and_rerun_skips_finished(tmp_path, text_file, capsys):
    out = tmp_path / "bench"
    noop = f"{CALIBRATION}:NoOp"
    command = ["bench", "--algos", f"baseline,seq_len_warmup,{noop}", "--data", str(text_file), "--out", str(out),
               *TINY, "--seeds", "2"]
    assert cli(command) == 0
    results = load_results(out)
    # Interleaved: the method order rotates by one per seed, the reference's repeat included.
    assert [(run.method, run.seed) for run in results.runs] == [
        ("baseline", 17), ("seq_len_warmup", 17), (noop, 17), ("baseline (repeat)", 17),
        ("seq_len_warmup", 18), (noop, 18), ("baseline (repeat)", 18), ("baseline", 18)]
    for run in results.runs:
        folder = out / run.run_dir
        assert (folder / "metrics.jsonl").exists() and (folder / "config.yaml").exists()
        assert run.config == yaml.safe_load((folder / "config.yaml").read_text())
        assert run.train["steps"] == 2 and run.tokens_per_s > 0 and run.evals[-1].step == 2
        assert len(run.step_seconds) == 2 and all(seconds > 0 for seconds in run.step_seconds)
        assert sum(run.step_tokens) == run.train["tokens"]
        assert {"torch", "transformers", "composerlite", "python"} <= set(run.versions)
        assert run.peak_memory_bytes > 0 and run.device.startswith("CPU")
    by_name = {(run.method, run.seed): run for run in results.runs}
    baseline, warmup = by_name[("baseline", 17)], by_name[("seq_len_warmup", 17)]
    assert 0 < warmup.evals[-1].flops < baseline.evals[-1].flops  # shorter sequences: fewer FLOPs spent
    assert by_name[(noop, 17)].evals == [point.model_copy(update={"wall_s": other.wall_s})
                                         for point, other in zip(baseline.evals, by_name[(noop, 17)].evals)]
    assert set(results.references) == {"unigram", "bigram"} and results.references["bigram"] > 0
    assert results.settings["max_duration"] == "2ba" and results.settings["data_name"] == "corpus"
    assert results.commands[0]["command"].startswith("composerlite bench --algos baseline,seq_len_warmup")
    printed = capsys.readouterr().err
    assert "no different" in printed and "Timing noise (A/A)" in printed  # the verdict table is printed
    markdown = (out / "report.md").read_text()
    noop_row = next(line for line in markdown.splitlines() if line.startswith(f"| {noop} | 2 |"))
    assert noop_row.count("no different 1.00× [1.00, 1.00]") == 2  # tokens and FLOPs: exactly the baseline
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert all((out / "plots" / name).exists() for name in ("loss_vs_time.png", "loss_vs_tokens.png",
                                                            "loss_vs_flops.png", "speedups.png"))

    before = (out / "results.json").read_text()
    assert cli(command) == 0  # everything finished: nothing is trained again
    after = load_results(out)
    assert [r.model_dump() for r in after.runs] == json.loads(before)["runs"] and len(after.commands) == 2
    assert after.settings == json.loads(before)["settings"]  # resuming adds no setting (an untuned bench no grid)


def test_target_loss_race_evaluates_densely_and_stops_at_the_target(tmp_path):
    text = tmp_path / "verse.txt"
    text.write_text(" ".join(["In the beginning God created the heaven and the earth."] * 300))
    out = tmp_path / "race"
    tiny = list(TINY)
    tiny[tiny.index("--budget") + 1] = "60ba"
    assert cli(["bench", "--algos", "baseline", "--data", str(text), "--out", str(out), *tiny, "--lr", "3e-3",
                "--seeds", "1", "--reference-repeats", "0", "--eval-interval", "10ba", "--target-loss", "2.5"]) == 0
    results = load_results(out)
    for run in results.runs:
        steps, losses = [point.step for point in run.evals], [point.eval_loss for point in run.evals]
        assert losses[-1] <= 2.5 and all(loss > 2.5 for loss in losses[:-1])  # stopped at the first eval reaching it
        assert run.train["steps"] == steps[-1] < 60
        assert steps[:2] == [10, 20] and steps[-1] - steps[-2] == 1  # regular, then every step near the target
    assert "### Race to the target" in (out / "report.md").read_text()
    assert cli(["bench", "--algos", "baseline", "--out", str(out), *TINY, "--target-loss", "-1"]) == 2
    assert cli(["bench", "--algos", "baseline", "--out", str(out), *TINY, "--seeds", "0"]) == 2


def test_interrupted_benchmark_resumes_without_losing_anything(tmp_path, text_file):
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "device": "cpu", "precision": "fp32", "data": str(text_file)})
    methods = parse_algos("baseline,seq_len_warmup")
    out = tmp_path / "bench"
    calls = []

    def interrupted(config, console, **hooks):
        calls.append(Path(config.checkpointing.run_dir))
        if len(calls) == 2:  # the second run dies after writing its first metrics line
            calls[-1].mkdir(parents=True)
            (calls[-1] / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
            raise KeyboardInterrupt
        return train_run(config, console, **hooks)

    with pytest.raises(KeyboardInterrupt):
        run_bench(out, base, methods, [17], "first", run=interrupted, reference_repeats=0, interleave="runs")
    assert [run.method for run in load_results(out).runs] == ["baseline"]

    resumed = []

    def counting(config, console, **hooks):
        resumed.append(Path(config.checkpointing.run_dir))
        return train_run(config, console, **hooks)

    results = run_bench(out, base, methods, [17], "second", run=counting, reference_repeats=0, interleave="runs")
    assert resumed == [out / "runs" / "seq_len_warmup" / "seed17-retry1"]  # baseline was not rerun
    assert (out / "runs" / "seq_len_warmup" / "seed17" / "metrics.jsonl").read_text().count("\n") == 1  # kept
    assert [run.method for run in results.runs] == ["baseline", "seq_len_warmup"]
    assert [c["command"] for c in results.commands] == ["first", "second"]



def test_a_failing_method_costs_only_its_own_runs(tmp_path, text_file):
    base = load_config(None, {"model": "gpt2-tiny", "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "device": "cpu", "precision": "fp32", "data": str(text_file)})
    methods = parse_algos("baseline,seq_len_warmup")
    out = tmp_path / "bench"

    def broken_warmup(config, console, **hooks):
        if config.algorithms:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return train_run(config, console, **hooks)

    with pytest.raises(RunHalted) as halted:
        run_bench(out, base, methods, [17, 18], "first", run=broken_warmup, reference_repeats=0, interleave="runs")
    assert halted.value.exit_code == 1
    message = str(halted.value)
    assert "2 of 4 runs failed" in message and "seq_len_warmup seed 17 (RuntimeError: CUDA error" in message
    assert "\n" not in message  # one line
    assert [(run.method, run.seed) for run in load_results(out).runs] == [("baseline", 17), ("baseline", 18)]
    assert "Traceback" in (out / "logs" / "seq_len_warmup-seed17.log").read_text()
    assert (out / "report.md").exists()

    retried = []

    def counting(config, console, **hooks):
        retried.append(config.training.seed)
        return train_run(config, console, **hooks)

    def terminated(config, console, **hooks):
        retried.append(config.training.seed)
        raise RunHalted("stopped by SIGTERM at step 1; checkpoint saved", exit_code=143)

    with pytest.raises(RunHalted, match="SIGTERM"):  # a signal stops the whole bench, not one run
        run_bench(out, base, methods, [17, 18], "interrupted", run=terminated, reference_repeats=0, interleave="runs")
    assert retried == [17]
    retried.clear()

    results = run_bench(out, base, methods, [17, 18], "second", run=counting, reference_repeats=0, interleave="runs")
    assert sorted(retried) == [17, 18]  # only the failed runs
    assert sorted((run.method, run.seed) for run in results.runs) == [
        ("baseline", 17), ("baseline", 18), ("seq_len_warmup", 17), ("seq_len_warmup", 18)]

def _sweep_args(**values) -> argparse.Namespace:
    defaults = {"ratios": None, "lrs": None, "batch_sizes": None, "lr": None, "batch_size": None}
    return argparse.Namespace(**{**defaults, **values})


def test_sweep_methods():
    methods, reference = sweep_methods(_sweep_args(ratios="0.25,0.5,1"))
    assert reference == "baseline"
    assert [m.algorithms for m in methods] == [(), ("scale_schedule:ratio=0.25",), ("scale_schedule:ratio=0.5",)]
    methods, reference = sweep_methods(_sweep_args(lrs="1e-3,2e-3", batch_sizes="4,8"))
    assert [m.overrides for m in methods] == [{"lr": 1e-3, "batch_size": 4}, {"lr": 1e-3, "batch_size": 8},
                                              {"lr": 2e-3, "batch_size": 4}, {"lr": 2e-3, "batch_size": 8}]
    assert reference == methods[0].label
    for bad in (_sweep_args(), _sweep_args(ratios="0.5", lrs="1e-3", batch_sizes="4"), _sweep_args(lrs="1e-3"),
                _sweep_args(ratios="half"), _sweep_args(ratios="-1"), _sweep_args(lrs="1e-3", batch_sizes="4", lr=1.0)):
        with pytest.raises(ConfigError):
            sweep_methods(bad)


def test_scaling_command(capsys):
    from composerlite.models import FAMILY, count_parameters, predicted_loss, propose

    from rich.console import Console

    from composerlite.commands.scaling import card_table

    assert cli(["scaling"]) == 0
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(card_table())
    text = console.export_text()
    for spec in FAMILY.values():
        if spec.card_tokens:
            gap = math.log(spec.card_predicted_ppl) - predicted_loss(count_parameters(spec, non_embedding=True), spec.card_tokens)
            assert f"{gap:+.3f}" in text
    assert cli(["scaling", "--compute", "3.4e18"]) == 0
    assert f"{propose(3.4e18).nearest} (nearest)" in capsys.readouterr().out
    assert cli(["scaling", "--compute", "lots"]) == 2
    assert cli(["scaling", "--compute", "-5"]) == 2


RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


def test_recipes_exist():
    names = {path.stem for path in RECIPE_FILES}
    assert {"gpt2-52m-baseline", "gpt2-83m-baseline", "gpt2-125m-baseline", "cpu-smoke-baseline"} <= names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda path: path.stem)
def test_recipe_validates_and_its_algorithms_are_registered(path):
    from composerlite.models import get_spec

    config = load_config(path, {})
    for entry in config.algorithms:
        target = next(iter(entry)) if isinstance(entry, dict) else split_spec(entry)[0]
        assert target in registered_algorithms(), f"{path.name}: {target} is not registered"
    recipe = get_spec(config.model.name).recipe
    if recipe is not None:  # card models: the card's batch, sequence length, LR and step count
        assert (config.training.batch_size, config.data.seq_len, config.optimizer.lr) == (
            recipe.global_batch_size, recipe.seq_len, recipe.lr)
        assert config.training.max_duration == f"{recipe.steps}ba" and config.model.dropout == recipe.dropout


LOCKSTEP_PLUGINS = Path(__file__).resolve().parent / "lockstep_plugins.py"


def _lockstep_base(text_file, budget="4ba", algorithms=()):
    return load_config(None, {"model": "gpt2-tiny", "max_duration": budget, "batch_size": 2, "seq_len": 16,
                              "eval_batches": 1, "eval_interval": "2ba", "device": "cpu", "precision": "fp32",
                              "data": str(text_file), "algorithms": list(algorithms)})


def test_lockstep_runs_take_turns_one_step_at_a_time_and_train_as_alone(tmp_path, text_file):
    steps_log = tmp_path / "steps.log"
    base = _lockstep_base(text_file, algorithms=[f"{LOCKSTEP_PLUGINS}:StepLog:path={steps_log}"])
    results = run_bench(tmp_path / "bench", base, parse_algos("baseline,seq_len_warmup"), [17], "lockstep",
                        reference_repeats=1, interleave="steps")
    assert sorted(run.method for run in results.runs) == ["baseline", "baseline (repeat)", "seq_len_warmup"]
    steps = sorted((int(start), int(end), pid) for pid, start, end in (line.split() for line in steps_log.read_text().splitlines()))
    assert len(steps) == 3 * 4 and len({pid for _, _, pid in steps}) == 3  # three worker processes
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in zip(steps, steps[1:]))  # never two at once
    order = [pid for _, _, pid in steps]
    assert order == order[:3] * 4  # round robin: a step each in turn

    # Each run computed exactly what it computes alone in this process.
    alone = train_run(base.updated({"seed": 17, "run_dir": str(tmp_path / "alone")}), Console(quiet=True))
    by_method = {run.method: run for run in results.runs}
    assert [point.eval_loss for point in by_method["baseline"].evals] == [record["eval_loss"] for record in alone.evals]
    assert [p.eval_loss for p in by_method["baseline"].evals] == [p.eval_loss for p in by_method["baseline (repeat)"].evals]


def test_lockstep_signal_stops_every_run_with_a_checkpoint_and_the_rerun_finishes(tmp_path, text_file):
    import os

    base = _lockstep_base(text_file)
    out = tmp_path / "bench"
    signaller = f"{LOCKSTEP_PLUGINS}:SignalAt:step=2,pid={os.getpid()}"
    methods = parse_algos(f"baseline,{signaller}")
    with pytest.raises(RunHalted, match="stopped by SIGTERM") as halted:
        run_bench(out, base, methods, [17], "first", reference_repeats=0, interleave="steps")
    assert halted.value.exit_code == 143
    assert load_results(out).runs == []
    for folder in (out / "runs").iterdir():  # each run saved a checkpoint after its second step
        assert [path.name for path in (folder / "seed17" / "checkpoints").glob("ba*")] == ["ba00000002"]

    # Resumed from those checkpoints (the signaller is past its step): both finish, and, training the same
    # way, agree to the last bit.
    results = run_bench(out, base, methods, [17], "second", reference_repeats=0, interleave="steps")
    runs = {run.method: run for run in results.runs}
    assert set(runs) == {"baseline", signaller} and all(run.train["steps"] == 4 for run in runs.values())
    assert runs["baseline"].evals == [point.model_copy(update={"wall_s": other.wall_s})
                                      for point, other in zip(runs[signaller].evals, runs["baseline"].evals)]


def test_lockstep_a_crashing_plugin_costs_only_its_own_run(tmp_path, text_file):
    base = _lockstep_base(text_file)
    out = tmp_path / "bench"
    methods = parse_algos(f"baseline,{LOCKSTEP_PLUGINS}:CrashAt:step=2")
    with pytest.raises(RunHalted, match="1 of 2 runs failed") as halted:
        run_bench(out, base, methods, [17], "crash", reference_repeats=0, interleave="steps")
    assert halted.value.exit_code == 1 and "ValueError: a bug at this step" in str(halted.value)
    assert [run.method for run in load_results(out).runs] == ["baseline"]
    log = next((out / "logs").glob("*CrashAt*.log")).read_text()
    assert "Traceback" in log and "a bug at this step" in log
