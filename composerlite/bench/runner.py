"""Run a benchmark: every method x seed as an ordinary `composerlite.train` run under the same
settings, recording each finished run in `results.json` and rebuilding the report.

Runs are interleaved so the machine's drift cannot become a method's result: seeds outermost, and
the order of methods rotated by one for each seed, so no method always runs first or last. On a CPU
the runs of a seed go further and train side by side, a step each in turn (see `lockstep`), so a
shared host's changing load meets every method alike. The reference method runs twice per seed
(its repeat labelled "<reference> (repeat)"): same seed, same work, so the difference in their times
is the run-to-run timing noise the verdicts account for.

Layout of a benchmark folder:
    results.json                  every finished run (see results.py); the resume point
    report.md, report.html, plots/
    runs/<method>/seed<S>/        a normal run dir: config.yaml, metrics.jsonl, checkpoints/
    logs/<method>-seed<S>.log     that run's console output
    tuning/<method @ point>/seed<S>/, logs/tuning/   the tuning runs (`--tune`), likewise
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import itertools
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from composerlite.bench.lockstep import Stop, run_to_end, take_turns
from composerlite.bench.report import build_report, print_verdicts
from composerlite.bench.results import (BenchResults, EvalPoint, Method, RunRecord, TuningFailure, load_results,
                                        save_results)
from composerlite.bench.tuning import (TunedKey, at_point, check_tuning, edge_text, format_value, method_grid,
                                       point_text, tuning_method, tuning_outcome, tuning_seed)
from composerlite.core.callback import Callback
from composerlite.core.logger import LoggerDestination
from composerlite.errors import ConfigError, RunHalted
from composerlite.observe.loggers import RecordList
from composerlite.observe.speed_monitor import peak_memory_gib, reset_peak_memory
from composerlite.registry import build_algorithm, split_spec
from composerlite.run.run_directory import find_checkpoints
from composerlite.run.settings import RunConfig
from composerlite.run.train import RunResult, algorithm_specs, print_summary, train
from composerlite.system.runtime import resolve_device
from composerlite.system.signals import StopRequest, stop_on_signals
from composerlite.system.storage import location

BASELINE = "baseline"
REPEAT_SUFFIX = " (repeat)"
REPORT_EVERY_S = 60.0  # while a benchmark runs, the report is rebuilt at most this often
# RunConfig keys that differ between a benchmark's runs; all others go into its `settings`. The
# shared recipe's own `algorithms` are part of every method (the card's gradient clipping, say).
PER_RUN_KEYS = ("seed", "run_dir")
_OPTION_CONTINUATION = re.compile(r"[A-Za-z_]\w*=.*")


# -- which methods ---------------------------------------------------------------------------

def parse_algos(text: str) -> list[Method]:
    """`baseline,seq_len_warmup:duration=0.3,min_seq_len=8,plugin.py:Mine` -> one Method per entry.

    Commas separate entries, but a piece that is only `key=value` continues the options of the
    entry before it (option lists use commas too). `baseline` means no algorithm.
    """
    entries: list[str] = []
    for piece in (part.strip() for part in text.split(",")):
        if not piece:
            continue
        if _OPTION_CONTINUATION.fullmatch(piece):
            if not entries or ":" not in entries[-1]:
                raise ConfigError(f"--algos: '{piece}' looks like an option but follows no 'name:option=value' entry")
            entries[-1] += f",{piece}"
        else:
            entries.append(piece)
    return [Method(label=entry, algorithms=() if entry == BASELINE else (entry,)) for entry in entries]


def parse_recipe(text: str) -> Method:
    """`--recipe fast=seq_len_warmup+alibi:max_seq=2048` -> a Method running those algorithms together."""
    name, sep, spec = text.partition("=")
    parts = [part.strip() for part in spec.split("+") if part.strip()]
    if not sep or not name.strip() or not parts:
        raise ConfigError(f"--recipe '{text}' must be NAME=ALGO+ALGO[+...]")
    return Method(label=name.strip(), algorithms=tuple(parts))


def check_methods(base: RunConfig, methods: list[Method]) -> None:
    """Fail before any training on unknown algorithms, bad options, duplicate labels or folder clashes."""
    for target, options in algorithm_specs(base):
        build_algorithm(target, options)
    labels = [method.label for method in methods]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"method listed twice: {', '.join(duplicates)}")
    folders: dict[str, str] = {}
    for method in methods:
        for spec in method.algorithms:
            build_algorithm(*split_spec(spec))
        other = folders.setdefault(method_folder(method.label), method.label)
        if other != method.label:
            raise ConfigError(f"methods '{other}' and '{method.label}' would share a folder; name one with --recipe")


def method_folder(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_") or "method"


# -- where it runs ---------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


def hardware_info(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": device_label(device),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_count": torch.cuda.device_count(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "composerlite"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:  # which commit of composerlite ran, when it runs from a git checkout
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10)
        if commit.returncode == 0:
            found["composerlite_git"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return found


# -- a run's records ---------------------------------------------------------------------------

def split_records(records: list[dict[str, Any]]) -> tuple[list[EvalPoint], list[dict[str, Any]]]:
    """Eval points and train records of a finished run (the last record per step wins, for resumed
    runs). An eval point's FLOPs are the `model_flops` of the steps up to it, added up."""
    evals: dict[int, dict[str, Any]] = {}
    train: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("event") == "eval":
            evals[record["step"]] = record
        elif record.get("event") == "train":
            train[record["step"]] = record
    steps = sorted(train)
    flops_after = dict(zip(steps, itertools.accumulate(train[step].get("model_flops", 0.0) for step in steps)))
    points = [EvalPoint(flops=flops_after.get(step, 0.0), **{key: evals[step][key] for key in ("step", "tokens", "wall_s", "eval_loss")})
              for step in sorted(evals)]
    return points, [train[step] for step in steps]


def step_costs(train: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    """Each step's seconds and tokens, from the records' running totals."""
    seconds, tokens, wall, count = [], [], 0.0, 0
    for record in train:
        seconds.append(round(record["wall_s"] - wall, 6))
        tokens.append(record["tokens"] - count)
        wall, count = record["wall_s"], record["tokens"]
    return seconds, tokens


# -- the benchmark ---------------------------------------------------------------------------

def bench_settings(base: RunConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """What all runs share, with the data identified by content (its cache key), not just by name;
    and the corpus's count-based reference losses (cached with its tokens)."""
    from composerlite.data import prepare_corpus
    from composerlite.data.references import reference_losses
    from composerlite.data.tokenizer import GPT2Tokenizer

    corpus = prepare_corpus(base.data.source)
    settings = {key: value for key, value in base.flat().items() if key not in PER_RUN_KEYS}
    references = reference_losses(corpus, GPT2Tokenizer.vocab_size)
    return ({**settings, "data_name": corpus.name, "data_id": corpus.id,
             "train_tokens": corpus.train.n_tokens, "eval_tokens": corpus.eval.n_tokens},
            {"unigram": references.unigram, "bigram": references.bigram})


def with_reference_repeats(methods: list[Method], reference: str, repeats: int) -> list[Method]:
    """The methods plus `repeats` extra timings of the reference, placed last so the rotation spreads them."""
    found = [method for method in methods if method.label == reference]
    if not found or repeats == 0:
        return methods
    extra = [found[0].model_copy(update={"label": reference + REPEAT_SUFFIX + (f" {i + 1}" if repeats > 1 else ""),
                                         "repeat_of": reference}) for i in range(repeats)]
    return [*methods, *(method for method in extra if method.label not in {m.label for m in methods})]


def run_order(methods: list[Method], seeds: list[int]) -> list[tuple[Method, int]]:
    """Seeds outermost; the methods' order rotated by one per seed (so none is always first or last)."""
    order = []
    for index, seed in enumerate(seeds if methods else ()):  # none when every tuned method's grid failed
        shift = index % len(methods)
        order += [(method, seed) for method in methods[shift:] + methods[:shift]]
    return order


def open_results(out: Path, base: RunConfig, reference: str, kind: str,
                 extra_settings: dict[str, Any] | None = None) -> BenchResults:
    """The folder's results (refusing one made with other settings), or a fresh record.
    `extra_settings`: what else every run shares (a tuning grid and its seed). A tuning grid may
    widen (`widens`): the folder then records the wider grid, and only its new points train."""
    settings, references = bench_settings(base)
    settings.update(extra_settings or {})
    if (out / "results.json").exists():
        results = load_results(out)
        widened = widens(results.settings.get("tune"), settings.get("tune"))
        changed = [key for key in sorted(set(settings) | set(results.settings))
                   if settings.get(key) != results.settings.get(key) and not (key == "tune" and widened)]
        if changed == ["tune"] and results.reference == reference and results.kind == kind:
            raise ConfigError(f"{out} was tuned over {grid_text(results.settings.get('tune'))}, not "
                              f"{grid_text(settings.get('tune'))}: a grid may only widen (the same keys, every value "
                              "it had kept); choose another --out for another grid")
        if changed or results.reference != reference or results.kind != kind:
            what = ", ".join(f"{key} ({results.settings.get(key)!r} there, {settings.get(key)!r} now)" for key in changed)
            raise ConfigError(f"{out} holds a {results.kind} with other settings ({what or 'reference method'}); "
                             "resume with the same settings or choose another --out")
        if widened:
            results.settings["tune"] = settings["tune"]
        return results
    return BenchResults(kind=kind, settings=settings, reference=reference, references=references, methods=[])


def widens(old: dict[str, list[Any]] | None, new: dict[str, list[Any]] | None) -> bool:
    """Whether grid `new` adds values to grid `old` and drops none: the same keys, every old value kept.
    The points already tuned keep their results, so widening costs only the new points."""
    return bool(old) and bool(new) and old.keys() == new.keys() and all(
        value in new[key] for key, values in old.items() for value in values)


def grid_text(grid: dict[str, list[Any]] | None) -> str:
    return "; ".join(f"{key}={','.join(map(format_value, values))}" for key, values in (grid or {}).items()) or "no grid"


def add_methods(out: Path, results: BenchResults, methods: list[Method]) -> None:
    """Record `methods` in `results`, refusing a label the folder already holds with other algorithms or options."""
    known = {method.label: method for method in results.methods}
    for method in methods:
        if method.label in known and known[method.label] != method:
            raise ConfigError(f"{out} already has a method '{method.label}' with other algorithms or options")
    results.methods += [method for method in methods if method.label not in known]


def keep_tuned_points(out: Path, results: BenchResults, methods: list[Method]) -> None:
    """After a widened grid's tuning: a tuned method whose best point moved gets its new point where
    none of its verdict runs has started, and is refused in one line where one has (its runs at the
    old point cannot be compared with, nor resumed as, runs at the new one; nothing is deleted)."""
    known = {method.label: method for method in results.methods}
    for method in methods:
        recorded = known.get(method.label)
        if recorded is None or not method.point or recorded.point == method.point:
            continue
        started = (any(run.method == method.label for run in results.runs)
                   or (out / "runs" / method_folder(method.label)).exists())
        if started:
            raise ConfigError(f"{out}: the widened grid moves {method.label}'s best to {point_text(method.point)}, "
                              f"but its verdict runs there used {point_text(recorded.point)}; run the widened grid "
                              "into another --out (this folder's runs are kept)")
        results.methods = [method if other.label == method.label else other for other in results.methods]


def run_folder(out: Path, method: Method, seed: int) -> tuple[Path, bool]:
    """(folder, resume) for a run. A folder left by an interrupted attempt is resumed from its last
    checkpoint where `composerlite run` supports `autoresume`; otherwise it is kept untouched (nothing
    written is lost) and the run restarts cleanly in the next free `seed<S>-retryN` folder."""
    parent = out / ("tuning" if method.tuning_of else "runs") / method_folder(method.label)
    attempts = [parent / f"seed{seed}"]
    while attempts[-1].exists():
        attempts.append(parent / f"seed{seed}-retry{len(attempts)}")
    interrupted = attempts[-2] if len(attempts) > 1 else None
    if interrupted and find_checkpoints(location(str(interrupted))):
        return interrupted, True
    return attempts[-1], False


@dataclasses.dataclass
class RunJob:
    """One run of the benchmark, as handed to the process that trains it (so it pickles)."""

    method: Method
    seed: int
    config: RunConfig
    log_path: Path
    device: str
    run: Callable[..., RunResult]

    @property
    def name(self) -> str:
        return f"{self.method.label} seed {self.seed}"


def execute_run(job: RunJob, callbacks: list[Callback], on_record: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train `job` in this process, its console output into its log; returns what its record needs."""
    device = torch.device(job.device)
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    with job.log_path.open("a") as log:
        reset_peak_memory(device)
        try:
            result = job.run(job.config, Console(file=log, width=120, force_terminal=False), callbacks=callbacks,
                             loggers=[RecordList(on_record)])
        except Exception:
            traceback.print_exc(file=log)
            raise
    memory_gib, memory_kind = peak_memory_gib(device)
    return {"summary": result.summary, "records": result.records, "config": result.config,
            "peak_memory_bytes": int(memory_gib * 2**30), "peak_memory_kind": memory_kind}


def check_bench(base: RunConfig, methods: list[Method], tuning: Sequence[TunedKey] = ()) -> None:
    """Everything about a benchmark's methods and tuning grid that can be refused before any run."""
    check_methods(base, methods)
    check_tuning(list(tuning), base, methods)


def run_bench(out: Path, base: RunConfig, methods: list[Method], seeds: list[int], command: str,
              reference: str = BASELINE, kind: str = "bench", console: Console | None = None,
              run: Callable[..., RunResult] | None = None, reference_repeats: int = 1,
              interleave: str | None = None, tuning: Sequence[TunedKey] = ()) -> BenchResults:
    """Run every (method, seed) not yet in `out/results.json`, interleaved (`run_order`), the
    reference `reference_repeats` extra times per seed; a stopped benchmark has compared all methods
    on its first seeds. `run(config, console, callbacks, loggers)` trains one run (default
    `train_run`). `interleave`: "steps" trains the runs of a seed side by side, a step each in turn
    (`lockstep`: wall-clock verdicts that hold on a loaded machine; all of a seed's runs in memory at
    once), "runs" one after another in this process; default: steps on CPU, runs on a GPU.

    With `tuning` (see `tuning`), every method first trains at each point of its grid on the tuning
    seed, the i-th points of all methods side by side like a seed's runs; then the verdict seeds run
    each method at its best point."""
    run = run or train_run
    console = console or Console(stderr=True)
    out = Path(out)
    check_bench(base, methods, tuning)
    if reference not in {method.label for method in methods}:
        console.print(f"[yellow]no '{reference}' method: the report will have no speedups[/yellow]")
    device = resolve_device(base.training.device)
    interleave = interleaving(interleave, device)
    out.mkdir(parents=True, exist_ok=True)
    tune_seed = tuning_seed(seeds)
    results = open_results(out, base, reference, kind, {"tune": {key.key: list(key.values) for key in tuning},
                                                        "tune_seed": tune_seed} if tuning else None)
    grids = {method.label: [tuning_method(method, point) for point in method_grid(method, tuning)] for method in methods}
    # Checked against the folder before anything is written: the tuning runs, and the methods no
    # tuned key applies to (a tuned method's verdict runs depend on its best, known after tuning).
    untuned_methods = [method for method in with_reference_repeats(methods, reference, reference_repeats)
                       if not grids[method.repeat_of or method.label]]
    add_methods(out, results, [*(tuning_run for grid in grids.values() for tuning_run in grid), *untuned_methods])
    results.commands.append({"command": command, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                             "interleave": interleave})
    save_results(out, results)
    tuning_todo = [[(tuning_run, tune_seed) for tuning_run in batch if not results.settled(tuning_run.label, tune_seed)]
                   for batch in tuning_batches(list(grids.values()))]
    labels = [method.label for method in with_reference_repeats(methods, reference, reference_repeats)]
    verdict_todo = sum(not results.finished(label, seed) for label in labels for seed in seeds)
    total = sum(map(len, tuning_todo)) + verdict_todo
    skipped = len(labels) * len(seeds) + sum(map(len, grids.values())) - total
    if skipped:
        console.print(f"{skipped} run(s) already finished in {out}; running the other {total}")
    if any(tuning_todo) and any(not method.tuning_of for method in results.methods if method.point):
        console.print(f"[yellow]{out}: the grid widened after its tuned methods chose their points; if a method's best "
                      "moves to a new point, the bench stops there and says so[/yellow]")
    progress, overall = bench_progress(console, total)
    tracking = BenchProgress(out, results, progress, overall)
    announce = lambda name: progress.console.print(
        f"composerlite bench: got {name}; stopping every run after its current step, checkpoints saved (send "
        "it again to abort without saving)")
    every_point_failed: list[str] = []  # tuned methods without a best: they get no verdict runs
    with progress, stop_on_signals(StopRequest(), announce) as stop:
        stopped = lambda: stop.signum is not None or tracking.halted

        def run_batch(batch: list[tuple[Method, int]]) -> None:
            jobs = [make_job(out, base, method, seed, device, run) for method, seed in batch]
            train_batch(jobs, interleave, tracking, stopped)

        for batch in filter(None, tuning_todo):
            run_batch(batch)
            if stopped():
                break
        if not stopped():
            verdict_methods, every_point_failed = tuned_methods(methods, grids, results, tuning, console)
            verdict_methods = with_reference_repeats(verdict_methods, reference, reference_repeats)
            keep_tuned_points(out, results, verdict_methods)
            add_methods(out, results, verdict_methods)
            save_results(out, results)
            todo = [(method, seed) for method, seed in run_order(verdict_methods, seeds)
                    if not results.finished(method.label, seed)]
            for seed in dict.fromkeys(seed for _, seed in todo):
                run_batch([(method, this_seed) for method, this_seed in todo if this_seed == seed])
                if stopped():
                    break
            else:
                progress.update(overall, completed=max(total, 1), status="")
    groups = build_report([out], out)
    if stopped():
        signum = stop.signum or tracking.halted
        raise RunHalted(f"benchmark stopped by {signal.Signals(signum).name}: every run still going saved a "
                        f"checkpoint; rerun the same command to finish ({len(tracking.finished)} of {total} "
                        f"runs finished in {out})", exit_code=128 + signum)
    print_verdicts(groups, console)
    raise_for_failures(out, tracking.failures, every_point_failed, total)
    return results


def train_batch(jobs: list[RunJob], interleave: str, tracking: BenchProgress, stopped: Callable[[], bool]) -> None:
    """Train a batch of runs: side by side a step each in turn, or one after another."""
    for job in jobs:
        tracking.add(job)
    if interleave == "steps":
        try:
            take_turns(jobs, execute_run, tracking.on_message, stopped)
        except Stop:
            pass
    else:
        for job in jobs:
            if stopped():
                break
            run_to_end(execute_run, job, [], lambda *message, job=job: tracking.on_message(job, message))


def bench_progress(console: Console, total: int) -> tuple[Progress, TaskID]:
    """The benchmark's progress bar, and its task for the `total` runs to go."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console,
                        speed_estimate_period=600)  # steps of all runs in turn: average over minutes, not 30 s
    return progress, progress.add_task(f"benchmark: {total} runs", total=max(total, 1), status="")


def interleaving(interleave: str | None, device: torch.device) -> str:
    """How a seed's runs share the machine: "steps" (side by side, a step each in turn) or "runs"
    (one after another); by default steps on a CPU, runs on a GPU."""
    # Step interleaving forks its workers from a fork server, which Windows lacks.
    can_step = "forkserver" in multiprocessing.get_all_start_methods()
    interleave = interleave or ("steps" if device.type != "cuda" and can_step else "runs")
    if interleave not in INTERLEAVE:
        raise ConfigError(f"interleave must be one of {', '.join(INTERLEAVE)}, not '{interleave}'")
    if interleave == "steps" and not can_step:
        raise ConfigError("--interleave steps needs the 'forkserver' start method, which this platform lacks; use runs")
    return interleave


def raise_for_failures(out: Path, failures: list[str], every_point_failed: list[str], total: int) -> None:
    """The bench's one-line failure (exit 1) when runs failed, or a tuned method has no best point."""
    failures = failures + [f"{label} (every tuning run diverged, so it has no verdict runs; a diverged tuning run "
                           "is its point's result, not retried)" for label in every_point_failed]
    if failures:
        raise RunHalted(f"{len(failures)} of {total} runs failed: {'; '.join(failures)}. The "
                        f"finished runs are kept in {out} (each failure's traceback is in its log under "
                        f"{out / 'logs'}); rerun the same command to retry the failed runs only", exit_code=1)


def tuning_batches(grids: list[list[Method]]) -> list[list[Method]]:
    """The i-th tuning run of every method side by side (as a seed's runs are), their order rotated
    by one for each i, so no method always trains first or last."""
    batches = []
    for index in range(max(map(len, grids), default=0)):
        batch = [grid[index] for grid in grids if index < len(grid)]
        shift = index % len(batch)
        batches.append(batch[shift:] + batch[:shift])
    return batches


def tuned_methods(methods: list[Method], grids: dict[str, list[Method]], results: BenchResults,
                  tuning: Sequence[TunedKey], console: Console) -> tuple[list[Method], list[str]]:
    """(each method at its best grid point, or as given when no tuned key applies to it; the labels
    of methods every tuning run of which could not train, left out). A method whose tuning is not
    complete (a tuning run failed and waits for a rerun) is left out of both."""
    runs = {run.method: run for run in results.runs}
    failures = {failure.method: failure.reason for failure in results.tuning_failures}
    values = {key.key: list(key.values) for key in tuning}
    chosen, without_best = [], []
    for method in methods:
        if not grids[method.label]:
            chosen.append(method)
            continue
        outcome = tuning_outcome(method.label, grids[method.label], values, runs, failures)
        if not outcome.complete:
            continue  # a tuning run failed and waits for a rerun (the bench's failure names it)
        if outcome.best is None:
            without_best.append(method.label)
            continue
        flag = f" ({edge_text(outcome)})" if outcome.edges else ""
        console.print(f"tuned {method.label}: {point_text(outcome.best)}, final loss {outcome.best_loss:.4f} on the "
                      f"tuning seed{flag}")
        chosen.append(at_point(method, outcome.best))
    return chosen, without_best


INTERLEAVE = ("steps", "runs")


class BenchProgress:
    """What the runs report, as it arrives: records into the progress display, finished runs into
    `results.json` (saved after each), failures collected, the report rebuilt at most once a minute."""

    def __init__(self, out: Path, results: BenchResults, progress: Progress, overall):
        self.out, self.results, self.progress, self.overall = out, results, progress, overall
        self.tasks: dict[str, Any] = {}
        # The overall bar counts settled runs plus the fractions done of those under way, so it
        # moves with every step (and its time left means something) rather than in jumps of a
        # batch of runs ending together.
        self.settled = 0
        self.under_way: dict[str, float] = {}
        self.finished: list[str] = []
        self.failures: list[str] = []
        self.halted = 0  # the signal number that halted a run, if one did
        self.reported_at = time.monotonic()

    def add(self, job: RunJob) -> None:
        self.tasks[job.name] = self.progress.add_task(job.name, total=1.0, status="waiting")

    def on_message(self, job: RunJob, message: tuple) -> None:
        kind, task, console = message[0], self.tasks[job.name], self.progress.console
        if kind == "record":
            record = message[1]
            if record.get("event") == "train" and "fraction" in record:
                self.progress.update(task, completed=record["fraction"],
                                     status=f"step {record['step']} loss {record['loss']:.3f}")
                self.under_way[job.name] = record["fraction"]
                self._show_overall()
            elif record.get("event") == "eval" and "eval_loss" in record:
                console.print(f"  {job.name}: eval @ step {record['step']} ({record['wall_s']:.0f} s training): "
                              f"loss {record['eval_loss']:.4f}")
            return
        self.progress.remove_task(task)
        self.under_way.pop(job.name, None)
        self._show_overall()
        if kind == "done":
            try:
                record = run_record(self.out, job, message[1])
            except ConfigError as error:
                message = ("failed", str(error))
            else:
                self._finished(job, record)
                return
        if kind == "halted" and message[2] > 128:  # a signal (SIGTERM, a scheduler's timeout): stop everything
            self.halted = self.halted or message[2] - 128
            console.print(f"[yellow]stopped[/yellow] {job.name}: {message[1]}")
        elif kind == "cannot_train" and job.method.tuning_of:
            # Its settings cannot train (it diverged): that grid point's result, kept and never retried.
            # Any other failure (an import error, a crash) says nothing of the point: retried on a rerun.
            self.results.tuning_failures.append(TuningFailure(method=job.method.label, seed=job.seed, reason=message[1]))
            save_results(self.out, self.results)
            self._settle()
            console.print(f"[red]failed[/red] tuning run {job.name}: {message[1]} (that grid point's result: the "
                          "method's other points decide)")
        elif kind != "not_started":
            self.failures.append(f"{job.name} ({message[1]})")
            console.print(f"[red]failed[/red] {job.name}: {message[1]}")

    def _settle(self) -> None:
        self.settled += 1
        self._show_overall()

    def _show_overall(self) -> None:
        self.progress.update(self.overall, completed=self.settled + sum(self.under_way.values()))

    def _finished(self, job: RunJob, record: RunRecord) -> None:
        console = self.progress.console
        self.results.runs.append(record)
        save_results(self.out, self.results)
        self.finished.append(job.name)
        self._settle()
        console.print(f"[green]done[/green] {job.name}: eval loss {record.final_eval_loss:.4f}, "
                      f"{record.tokens_per_s:,.0f} tokens/s, {record.train['wall_s']:.1f} s")
        # A stopped benchmark still has a current report; at most once a minute, since with
        # short runs (a small model on a GPU) drawing the plots would take longer than training.
        if time.monotonic() - self.reported_at > REPORT_EVERY_S:
            build_report([self.out], self.out)
            self.reported_at = time.monotonic()


def train_run(config: RunConfig, console: Console, callbacks: Sequence[Callback] = (),
              loggers: Sequence[LoggerDestination] = ()) -> RunResult:
    """One run of the benchmark: `train`, then its speed line and summary table into the run's log
    (what `composerlite run` prints)."""
    result = train(config, callbacks=callbacks, loggers=loggers, console=console)
    print_summary(result.summary, console)
    return result


def make_job(out: Path, base: RunConfig, method: Method, seed: int, device: torch.device, run: Callable) -> RunJob:
    run_dir, resume = run_folder(out, method, seed)
    values = {"algorithms": [*base.algorithms, *method.algorithms], **method.overrides,
              "seed": seed, "run_dir": str(run_dir), **({"autoresume": True} if resume else {})}
    logs = out / "logs" / ("tuning" if method.tuning_of else "")
    return RunJob(method=method, seed=seed, config=base.updated(values), device=str(device), run=run,
                  log_path=logs / f"{run_dir.parent.name}-{run_dir.name}.log")


def run_record(out: Path, job: RunJob, outcome: dict[str, Any]) -> RunRecord:
    evals, train = split_records(outcome["records"])
    if not evals:
        raise ConfigError(f"{job.name} finished without an evaluation; check --eval-interval")
    summary, device = outcome["summary"], torch.device(job.device)
    losses = [record["loss"] for record in train]
    step_seconds, step_tokens = step_costs(train)
    return RunRecord(
        method=job.method.label,
        seed=job.seed,
        run_dir=os.path.relpath(job.config.checkpointing.run_dir, out),
        config=outcome["config"],
        evals=evals,
        train={"steps": summary["steps"], "tokens": summary["tokens"], "wall_s": summary["wall_s"],
               "first_loss": losses[0], "final_loss": losses[-1], "min_loss": min(losses)},
        step_seconds=step_seconds,
        step_tokens=step_tokens,
        tokens_per_s=summary["tokens_per_s"],
        peak_memory_bytes=outcome["peak_memory_bytes"],
        peak_memory_kind=outcome["peak_memory_kind"],
        device=device_label(device),
        hardware=hardware_info(device),
        versions=versions(),
        finished_at=datetime.datetime.now().isoformat(timespec="seconds"),
    )
