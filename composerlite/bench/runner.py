"""Run a benchmark: every method x seed as an ordinary `composerlite run` under the same settings,
recording each finished run in `results.json` and rebuilding the report.

Runs are interleaved so the machine's drift cannot become a method's result: seeds outermost, and
the order of methods rotated by one for each seed, so no method always runs first or last. The
reference method runs twice per seed (its repeat labelled "<reference> (repeat)"): same seed, same
work, so the difference in their times is the run-to-run timing noise the verdicts account for.

Layout of a benchmark folder:
    results.json                  every finished run (see results.py); the resume point
    report.md, report.html, plots/
    runs/<method>/seed<S>/        a normal run dir: config.yaml, metrics.jsonl, checkpoints/
    logs/<method>-seed<S>.log     that run's console output
"""

from __future__ import annotations

import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import re
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from composerlite.bench.report import build_report, print_verdicts
from composerlite.bench.results import (BenchResults, EvalPoint, Method, RunRecord, load_results,
                                        save_results)
from composerlite.config import RunConfig, validated
from composerlite.errors import RunHalted, UsageError
from composerlite.registry import build_algorithm, split_spec
from composerlite.runtime import resolve_device
from composerlite.speed_monitor import peak_memory_gib, reset_peak_memory
from composerlite.training import algorithm_specs, print_summary, train

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
                raise UsageError(f"--algos: '{piece}' looks like an option but follows no 'name:option=value' entry")
            entries[-1] += f",{piece}"
        else:
            entries.append(piece)
    return [Method(label=entry, algorithms=() if entry == BASELINE else (entry,)) for entry in entries]


def parse_recipe(text: str) -> Method:
    """`--recipe fast=seq_len_warmup+alibi:max_seq=2048` -> a Method running those algorithms together."""
    name, sep, spec = text.partition("=")
    parts = [part.strip() for part in spec.split("+") if part.strip()]
    if not sep or not name.strip() or not parts:
        raise UsageError(f"--recipe '{text}' must be NAME=ALGO+ALGO[+...]")
    return Method(label=name.strip(), algorithms=tuple(parts))


def check_methods(base: RunConfig, methods: list[Method]) -> None:
    """Fail before any training on unknown algorithms, bad options, duplicate labels or folder clashes."""
    for target, options in algorithm_specs(base):
        build_algorithm(target, options)
    labels = [method.label for method in methods]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UsageError(f"method listed twice: {', '.join(duplicates)}")
    folders: dict[str, str] = {}
    for method in methods:
        for spec in method.algorithms:
            build_algorithm(*split_spec(spec))
        other = folders.setdefault(method_folder(method.label), method.label)
        if other != method.label:
            raise UsageError(f"methods '{other}' and '{method.label}' would share a folder; name one with --recipe")


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


# -- following a run -------------------------------------------------------------------------

class MetricsFollower(threading.Thread):
    """Reads a run's metrics.jsonl as the trainer appends to it and hands each record to `on_record`,
    so the benchmark's progress display needs nothing from inside the run."""

    def __init__(self, path: Path, on_record: Callable[[dict[str, Any]], None], poll_s: float = 0.5):
        super().__init__(daemon=True)
        self.path, self.on_record, self.poll_s = path, on_record, poll_s
        self._offset = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.poll_s):
            self.poll()
        self.poll()

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self._offset += len(complete)
        for line in complete.splitlines():
            if line.strip():
                self.on_record(json.loads(line))

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def read_metrics(run_dir: Path) -> tuple[list[EvalPoint], list[dict[str, Any]]]:
    """Eval points and train records of a finished run (the last record per step wins, for resumed
    runs). An eval point's FLOPs are the `model_flops` of the steps up to it, added up."""
    evals: dict[int, dict[str, Any]] = {}
    train: dict[int, dict[str, Any]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
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

    corpus = prepare_corpus(base.data)
    settings = {key: value for key, value in base.model_dump().items() if key not in PER_RUN_KEYS}
    references = reference_losses(corpus, GPT2Tokenizer.vocab_size)
    return ({**settings, "data_name": corpus.name, "data_id": corpus.cache_path.name,
             "train_tokens": int(len(corpus.train_tokens)), "eval_tokens": int(len(corpus.eval_tokens))},
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
    for index, seed in enumerate(seeds):
        shift = index % len(methods)
        order += [(method, seed) for method in methods[shift:] + methods[:shift]]
    return order


def open_results(out: Path, base: RunConfig, methods: list[Method], reference: str, kind: str) -> BenchResults:
    """The folder's results (refusing one made with other settings), or a fresh record."""
    settings, references = bench_settings(base)
    if (out / "results.json").exists():
        results = load_results(out)
        changed = [key for key in sorted(set(settings) | set(results.settings))
                   if settings.get(key) != results.settings.get(key)]
        if changed or results.reference != reference or results.kind != kind:
            what = ", ".join(f"{key} ({results.settings.get(key)!r} there, {settings.get(key)!r} now)" for key in changed)
            raise UsageError(f"{out} holds a {results.kind} with other settings ({what or 'reference method'}); "
                             "resume with the same settings or choose another --out")
        known = {method.label: method for method in results.methods}
        for method in methods:
            if method.label in known and known[method.label] != method:
                raise UsageError(f"{out} already has a method '{method.label}' with other algorithms or options")
        results.methods += [method for method in methods if method.label not in known]
        return results
    return BenchResults(kind=kind, settings=settings, reference=reference, references=references, methods=methods)


def run_folder(out: Path, method: Method, seed: int) -> tuple[Path, bool]:
    """(folder, resume) for a run. A folder left by an interrupted attempt is resumed from its last
    checkpoint where `composerlite run` supports `autoresume`; otherwise it is kept untouched (nothing
    written is lost) and the run restarts cleanly in the next free `seed<S>-retryN` folder."""
    parent = out / "runs" / method_folder(method.label)
    attempts = [parent / f"seed{seed}"]
    while attempts[-1].exists():
        attempts.append(parent / f"seed{seed}-retry{len(attempts)}")
    interrupted = attempts[-2] if len(attempts) > 1 else None
    if interrupted and "autoresume" in RunConfig.model_fields and any((interrupted / "checkpoints").glob("ba*")):
        return interrupted, True
    return attempts[-1], False


def run_bench(out: Path, base: RunConfig, methods: list[Method], seeds: list[int], command: str,
              reference: str = BASELINE, kind: str = "bench", console: Console | None = None,
              run: Callable[..., dict[str, Any]] | None = None, reference_repeats: int = 1) -> BenchResults:
    """Run every (method, seed) not yet in `out/results.json`, interleaved (`run_order`), the
    reference `reference_repeats` extra times per seed; a stopped benchmark has compared all methods
    on its first seeds. `run(config, console)` trains one run and returns its summary; by default
    `train_run`."""
    run = run or train_run
    console = console or Console(stderr=True)
    out = Path(out)
    check_methods(base, methods)
    if reference not in {method.label for method in methods}:
        console.print(f"[yellow]no '{reference}' method: the report will have no speedups[/yellow]")
    methods = with_reference_repeats(methods, reference, reference_repeats)
    out.mkdir(parents=True, exist_ok=True)
    results = open_results(out, base, methods, reference, kind)
    results.commands.append({"command": command, "started": datetime.datetime.now().isoformat(timespec="seconds")})
    save_results(out, results)
    todo = [(method, seed) for method, seed in run_order(methods, seeds) if not results.finished(method.label, seed)]
    skipped = len(methods) * len(seeds) - len(todo)
    if skipped:
        console.print(f"{skipped} run(s) already finished in {out}; running the other {len(todo)}")
    device = resolve_device(base.device)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("benchmark", total=max(len(todo), 1), status="")
    failures: list[str] = []
    reported_at = time.monotonic()
    with progress:
        for index, (method, seed) in enumerate(todo):
            description = f"run {index + 1}/{len(todo)}: {method.label} seed {seed}"
            progress.update(task, description=description, completed=index, status="starting")
            try:
                record = run_one(out, base, method, seed, device, run,
                                 lambda record, index=index: _show(progress, task, index, record))
            except Exception as error:  # noqa: BLE001 -- one method's failure must not cost the other runs
                if isinstance(error, RunHalted) and error.exit_code > 128:  # a signal (SIGTERM, a scheduler's timeout)
                    raise
                failures.append(f"{method.label} seed {seed} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
                progress.console.print(f"[red]failed[/red] {description}: {failures[-1]}")
                continue
            results.runs.append(record)
            save_results(out, results)
            progress.console.print(f"[green]done[/green] {description}: eval loss {record.final_eval_loss:.4f}, "
                                   f"{record.tokens_per_s:,.0f} tokens/s, {record.train['wall_s']:.1f} s")
            # A stopped benchmark still has a current report; at most once a minute, since with
            # short runs (a small model on a GPU) drawing the plots would take longer than training.
            if time.monotonic() - reported_at > REPORT_EVERY_S:
                build_report([out], out)
                reported_at = time.monotonic()
        progress.update(task, completed=max(len(todo), 1), status="")
    groups = build_report([out], out)
    print_verdicts(groups, console)
    if failures:
        raise RunHalted(f"{len(failures)} of {len(todo)} runs failed: {'; '.join(failures)}. The finished runs are "
                        f"kept in {out} (each failure's traceback is in its log under {out / 'logs'}); rerun the "
                        "same command to retry the failed runs only", exit_code=1)
    return results


def _show(progress: Progress, task, index: int, record: dict[str, Any]) -> None:
    if record.get("event") == "train" and "fraction" in record:
        progress.update(task, completed=index + record["fraction"],
                        status=f"step {record['step']} loss {record['loss']:.3f}")
    elif record.get("event") == "eval" and "eval_loss" in record:
        progress.console.print(f"  eval @ step {record['step']} ({record['wall_s']:.0f} s): loss {record['eval_loss']:.4f}")


def train_run(config: RunConfig, console: Console) -> dict[str, Any]:
    """One run of the benchmark: `train`, then its speed line and summary table into the run's log
    (what `composerlite run` prints); returns the run's summary."""
    summary = train(config, console=console).summary
    print_summary(summary, console)
    return summary


def run_one(out: Path, base: RunConfig, method: Method, seed: int, device: torch.device, run: Callable,
            on_record: Callable[[dict[str, Any]], None]) -> RunRecord:
    run_dir, resume = run_folder(out, method, seed)
    values = {**base.model_dump(), "algorithms": [*base.algorithms, *method.algorithms], **method.overrides,
              "seed": seed, "run_dir": str(run_dir), **({"autoresume": True} if resume else {})}
    config = validated(values)
    log_path = out / "logs" / f"{run_dir.parent.name}-{run_dir.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    reset_peak_memory(device)
    follower = MetricsFollower(run_dir / "metrics.jsonl", on_record)
    follower.start()
    try:
        with log_path.open("a") as log:
            try:
                summary = run(config, console=Console(file=log, width=120, force_terminal=False))
            except Exception:
                traceback.print_exc(file=log)
                raise
    finally:
        follower.stop()
    memory_gib, memory_kind = peak_memory_gib(device)
    memory = int(memory_gib * 2**30)
    evals, train = read_metrics(run_dir)
    if not evals:
        raise UsageError(f"{method.label} seed {seed} finished without an evaluation; check --eval-interval")
    losses = [record["loss"] for record in train]
    step_seconds, step_tokens = step_costs(train)
    return RunRecord(
        method=method.label,
        seed=seed,
        run_dir=os.path.relpath(run_dir, out),
        config=yaml.safe_load((run_dir / "config.yaml").read_text()),
        evals=evals,
        train={"steps": summary["steps"], "tokens": summary["tokens"], "wall_s": summary["wall_s"],
               "first_loss": losses[0], "final_loss": losses[-1], "min_loss": min(losses)},
        step_seconds=step_seconds,
        step_tokens=step_tokens,
        tokens_per_s=summary["tokens_per_s"],
        peak_memory_bytes=memory,
        peak_memory_kind=memory_kind,
        device=device_label(device),
        hardware=hardware_info(device),
        versions=versions(),
        finished_at=datetime.datetime.now().isoformat(timespec="seconds"),
    )
