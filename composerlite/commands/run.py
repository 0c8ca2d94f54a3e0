"""`composerlite run`: train one model with a set of algorithms and report what happened."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import yaml
from rich.console import Console
from rich.table import Table

from composerlite import distributed
from composerlite.checkpoint import (
    check_resumable,
    complete_checkpoints,
    newest_valid_checkpoint,
    read_step,
    remove_unfinished,
    resolve_resume,
)
from composerlite.config import RunConfig, cpu_supports_bf16, load_config
from composerlite.errors import UsageError
from composerlite.distributed import unwrap_model
from composerlite.loggers import ConsoleLogger, JSONLinesLogger, Logger, UploadedJSONLinesLogger
from composerlite.registry import build_algorithm, split_spec
from composerlite.schedule import WarmupDecaySchedule
from composerlite.speed_monitor import SpeedMonitor
from composerlite.storage import Location, StorageError, location, remove_temporaries
from composerlite.time import Time, TimeUnit
from composerlite.trainer import OptimizerConfig, Trainer, default_threads, resolve_device, seed_everything

# With no --max-duration, a CPU run is a demo that finishes in a few minutes on 2 cores.
CPU_DEMO = {"max_duration": "20ba", "batch_size": 8, "seq_len": 128}
GPU_DEFAULT = {"max_duration": "1000ba", "batch_size": 32, "seq_len": 1024}
# A remote run directory's metrics.jsonl is at most this far behind the local mirror (and never
# behind a checkpoint): each upload sends the whole file, so not after every step.
METRICS_UPLOAD_INTERVAL_S = 30.0
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe; flags override its keys")
    parser.add_argument("--model", help="family member (see `composerlite models`)")
    parser.add_argument("--algo", dest="algorithms", action="append", default=[], metavar="NAME[:k=v,...]",
                        help="an algorithm, by name or path/to/file.py:Class; repeat for several")
    parser.add_argument("--data", help="text/jsonl/parquet file or folder, fsspec URL, or hf:NAME (default: embedded corpus)")
    parser.add_argument("--max-duration", help="training budget: 1000ba, 4.6e9tok, 2ep, 10min, ...")
    parser.add_argument("--batch-size", type=int, help="global batch size in sequences (split evenly over torchrun's processes)")
    parser.add_argument("--microbatch-size", help="sequences per forward/backward (gradient accumulation), or 'auto': "
                        "start at the whole batch and halve on GPU out-of-memory")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup", help="LR warmup length: 90ba, 0.01dur, ...")
    parser.add_argument("--decay", help="LR decay after warmup: cosine, linear or constant")
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--precision", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--run-dir", help="where metrics.jsonl, config.yaml and checkpoints go: a path or fsspec URL (s3://bucket/run)")
    parser.add_argument("--save-interval", help="checkpoint every 10ba, 0.5dur, 5min, ...")
    parser.add_argument("--eval-interval", help="evaluate every 0.25dur, 100ba, ...")
    parser.add_argument("--eval-batches", type=int, help="held-out batches per evaluation")
    parser.add_argument("--target-loss", type=float, help="stop at the first evaluation at or below this held-out "
                        "loss (evaluations grow dense near it); --max-duration is then the cap")
    parser.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                        help="continue exactly from a checkpoint folder, or from the newest valid checkpoint of a run directory")
    parser.add_argument("--autoresume", action="store_true", default=None,
                        help="continue from the newest valid checkpoint in --run-dir if there is one, else start fresh")
    parser.add_argument("--keep-checkpoints", type=int, metavar="K", help="keep only the newest K checkpoints (default: all)")
    parser.add_argument("--on-nan", choices=["stop", "skip"],
                        help="non-finite loss: stop (exit 1, last good checkpoint kept; default) or skip the step")
    parser.add_argument("--parallel", choices=["ddp", "fsdp"], help="under torchrun: DDP (default) or FSDP2 sharding")
    parser.add_argument("--threads", type=int, help="intra-op CPU threads (default: the physical cores available, split over "
                        "torchrun's processes on this machine; OMP_NUM_THREADS is not consulted): on CPU the same "
                        "seed, config, data and thread count give the same losses bit for bit")
    parser.add_argument("--card-recipe", action="store_true", default=None,
                        help="the model card's full recipe: batch 512x1024, its LR, warmup and step count")


@dataclasses.dataclass
class RunPlan:
    """The resolved run: every default filled in, plus the notes that explain the defaults."""

    config: RunConfig
    max_duration: str
    batch_size: int
    seq_len: int
    lr: float
    warmup: str
    dropout: float
    precision: str
    device: torch.device
    run_dir: str  # a local path or an fsspec URL
    threads: int  # intra-op CPU threads: part of what makes CPU results reproducible, so recorded
    notes: list[str]


def plan_run(config: RunConfig) -> RunPlan:
    from composerlite.models import get_spec

    spec = get_spec(config.model)
    device = resolve_device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{config.device}' requested but no CUDA GPU is available")
    notes = []
    defaults: dict[str, Any] = {}
    recipe = spec.recipe
    if config.card_recipe:
        if recipe is None:
            raise UsageError(f"{spec.name} has no card recipe; it is a test/demo configuration")
        defaults = {"max_duration": f"{recipe.steps}ba", "batch_size": recipe.global_batch_size,
                    "seq_len": recipe.seq_len}
        notes.append(f"card recipe: {recipe.steps} steps of {recipe.global_batch_size}x{recipe.seq_len} tokens")
    elif config.max_duration is None:
        defaults = CPU_DEMO if device.type == "cpu" else GPU_DEFAULT
        notes.append(
            f"no --max-duration: a short {'CPU demo' if device.type == 'cpu' else 'GPU run'} of "
            f"{defaults['max_duration']} at batch {config.batch_size or defaults['batch_size']} x "
            f"{config.seq_len or defaults['seq_len']} tokens. The card's full recipe is `--card-recipe`."
        )
    pick = lambda name, fallback: getattr(config, name) if getattr(config, name) is not None else defaults.get(name, fallback)
    warmup = config.warmup
    if warmup is None:
        warmup = f"{recipe.warmup_batches}ba" if config.card_recipe and recipe and recipe.warmup_batches else "0.05dur"
    precision = config.precision
    if precision == "auto":
        supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
        precision = "bf16" if supported else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("fp16 needs a GPU; use bf16 or fp32 on CPU")
    run_dir = config.run_dir or f"runs/{config.model}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    return RunPlan(
        config=config,
        max_duration=pick("max_duration", None),
        batch_size=pick("batch_size", 8),
        seq_len=pick("seq_len", 128),
        lr=config.lr or (recipe.lr if recipe else 1e-3),
        warmup=warmup,
        dropout=config.dropout if config.dropout is not None else (recipe.dropout if recipe else 0.0),
        precision=precision,
        device=device,
        run_dir=run_dir,
        threads=config.threads or default_threads(),
        notes=notes,
    )


def algorithm_specs(config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """`--algo` strings and YAML entries (`name`, `name:k=v`, or `{name: {k: v}}`) as (target, options)."""
    specs = []
    for entry in config.algorithms:
        if isinstance(entry, dict):
            if len(entry) != 1:
                raise UsageError(f"algorithm entry {entry} must be a single name: {{options}} mapping")
            (target, options), = entry.items()
            if options is not None and not isinstance(options, dict):
                raise UsageError(f"algorithm '{target}': options must be a mapping of key: value, not {options!r}")
            specs.append((target, dict(options or {})))
        else:
            specs.append(split_spec(entry))
    return specs


def prepare_run_dir(run_dir: Location) -> None:
    """Create the run directory, failing now (not at the first checkpoint) if it is unwritable.
    The first write of a run: every check that can refuse the run has passed before it."""
    try:
        run_dir.makedirs()
        probe = run_dir.child(".write-test")
        probe.write_bytes(b"")
        probe.remove()
    except StorageError:
        raise  # the store is down, not the path wrong: a runtime failure (exit 1)
    except OSError as error:
        raise UsageError(f"cannot write to run directory {run_dir}: {error.strerror or error}") from None


def check_budget(plan: RunPlan) -> None:
    """A budget in samples or tokens smaller than one batch would train zero steps."""
    budget = Time.parse(plan.max_duration)
    per_batch = {TimeUnit.SAMPLE: plan.batch_size, TimeUnit.TOKEN: plan.batch_size * plan.seq_len}.get(budget.unit)
    if per_batch is not None and budget.value < per_batch:
        raise UsageError(
            f"--max-duration {plan.max_duration} is shorter than one step ({per_batch} {budget.unit.value} per batch of "
            f"{plan.batch_size}x{plan.seq_len})"
        )


def checkpoint_to_resume(config: RunConfig, run_dir: Location) -> Location | None:
    """The checkpoint this run continues from (None: a fresh start): with `--autoresume` the run
    directory's newest valid one, else `--resume`'s. Refuses, reading only, a run directory that is a
    file, one that holds another run, and one whose every checkpoint is damaged (starting over there
    would rewrite the metrics the checkpoints belong to)."""
    if run_dir.is_file():
        raise UsageError(f"--run-dir {run_dir} is a file, not a folder")
    problems: list[str] = []
    checkpoint = newest_valid_checkpoint(run_dir, problems) if config.autoresume else None
    if checkpoint is None and problems and complete_checkpoints(run_dir):
        raise UsageError(f"--autoresume: every checkpoint in {run_dir} is damaged (newest: {problems[0]}); nothing was "
                         "written. Continue from one with --resume CHECKPOINT, or start over in a new --run-dir")
    for problem in problems:
        print(f"composerlite: skipping {problem}", file=sys.stderr)
    if checkpoint is None and config.resume:
        checkpoint = resolve_resume(config.resume)
    continuing = config.autoresume or (checkpoint is not None and checkpoint.parent.parent.same_place(run_dir))
    if not continuing and (run_dir.child("metrics.jsonl").exists() or run_dir.child("config.yaml").exists()):
        branch = " (to branch from --resume, give a new --run-dir)" if config.resume else ""
        raise UsageError(f"run directory {run_dir} already holds a run; choose another --run-dir, "
                         f"or continue it with --autoresume{branch}")
    if checkpoint is not None:
        check_same_model(checkpoint, config.model)
    return checkpoint


def check_same_model(checkpoint: Location, model: str) -> None:
    """Compare the checkpoint's run config with this one (weights are checked by shape, and the
    algorithms by name, once the model is built)."""
    saved_config = checkpoint.parent.parent.child("config.yaml")
    if saved_config.exists():
        saved_model = (yaml.safe_load(saved_config.read_bytes()) or {}).get("model")
        if saved_model and saved_model != model:
            raise UsageError(f"checkpoint {checkpoint} is a {saved_model} run; this run is {model}: pass --model {saved_model}")


def position_limit(model: torch.nn.Module) -> int | None:
    """How many positions a learned position-embedding table covers; None when positions are not
    looked up in a table (e.g. after ALiBi removed it)."""
    wpe = getattr(getattr(unwrap_model(model), "transformer", None), "wpe", None)
    return wpe.num_embeddings if isinstance(wpe, torch.nn.Embedding) else None


def on_rank_zero(check: Callable[[], T]) -> T:
    """`check()` run on rank 0 alone (only rank 0 reads run files); every rank gets its result, or
    the same `UsageError`."""
    value, problem = None, None
    if distributed.is_rank_zero():
        try:
            value = check()
        except UsageError as error:
            problem = str(error)
    value, problem = distributed.broadcast_object((value, problem))
    if problem is not None:
        raise UsageError(problem)
    return value


def truncate_metrics(metrics: Location, step: int) -> None:
    """Drop records past `step`, so a resumed run's metrics.jsonl reads as one uninterrupted run."""
    if not metrics.exists():
        return
    kept = [line for line in metrics.read_bytes().decode().splitlines(keepends=True)
            if line.strip() and _record_step(line) <= step]
    metrics.write_bytes("".join(kept).encode())


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return 1 << 62  # a line torn by a crash mid-write: past any checkpoint


def metrics_destination(run_dir: Location) -> JSONLinesLogger:
    """metrics.jsonl, appended in the run directory; for a remote one, appended to a local mirror
    (seeded from the remote copy) that is uploaded as `UploadedJSONLinesLogger` says."""
    if run_dir.is_local:
        return JSONLinesLogger(Path(run_dir.path) / "metrics.jsonl")
    cache = Path(os.environ.get("COMPOSERLITE_CACHE") or Path.home() / ".cache" / "composerlite")
    mirror = cache / "runs" / hashlib.sha256(run_dir.url.encode()).hexdigest()[:20] / "metrics.jsonl"
    mirror.parent.mkdir(parents=True, exist_ok=True)
    remote = run_dir.child("metrics.jsonl")
    mirror.write_bytes(remote.read_bytes() if remote.exists() else b"")
    return UploadedJSONLinesLogger(mirror, remote, upload_interval_s=METRICS_UPLOAD_INTERVAL_S)


def run(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    from composerlite.data import BatchStream, prepare_corpus
    from composerlite.models import build_model

    plan = plan_run(config)
    rank_device = distributed.init(plan.device.type)
    if rank_device is not None:
        plan.device = rank_device
    if config.microbatch_size == "auto" and distributed.world_size() > 1:
        raise UsageError("--microbatch-size auto works in a single process only; give a number under torchrun")
    plan.run_dir = distributed.broadcast_object(plan.run_dir)  # the default name has a timestamp
    console = console or Console(stderr=True, quiet=not distributed.is_rank_zero())
    check_budget(plan)
    algorithms = [build_algorithm(target, options) for target, options in algorithm_specs(config)]
    per_rank_batch = distributed.per_rank_batch_size(plan.batch_size)
    if not distributed.is_rank_zero():
        distributed.barrier()  # rank 0 tokenizes and caches the corpus first; the others then read the cache
    corpus = prepare_corpus(config.data)
    if distributed.is_rank_zero():
        distributed.barrier()
    shard = {"rank": distributed.rank(), "world_size": distributed.world_size()}
    train_data = BatchStream(corpus.train_tokens, seq_len=plan.seq_len, batch_size=per_rank_batch, seed=config.seed, **shard)
    eval_data = BatchStream(corpus.eval_tokens, seq_len=plan.seq_len, batch_size=per_rank_batch, seed=0, shuffle=False, **shard)
    # Every check that can refuse the run comes before its first write, so a refused run leaves the
    # run directory exactly as it was.
    run_dir = location(plan.run_dir)
    def resume_url() -> str | None:  # a URL, not a Location: it travels to the other ranks
        checkpoint = checkpoint_to_resume(config, run_dir)
        return checkpoint.url if checkpoint else None

    url = on_rank_zero(resume_url)
    resume_from = location(url) if url else None
    seed_everything(config.seed)
    model = build_model(config.model, dropout=plan.dropout)
    logger = Logger([ConsoleLogger(console)])
    # Every run measures its speed (throughput/* and memory/peak_gib in metrics.jsonl); the summary
    # line goes through this run's console (a benchmark sends that to the run's log file).
    speed = SpeedMonitor(window=20, warmup_steps=1, console=False)
    trainer = Trainer(
        model=model,
        train_data=train_data,
        eval_data=eval_data,
        max_duration=plan.max_duration,
        logger=logger,
        run_dir=plan.run_dir,
        algorithms=algorithms,
        callbacks=[speed],
        optimizer=OptimizerConfig(lr=plan.lr, weight_decay=config.weight_decay),
        schedule=WarmupDecaySchedule(warmup=Time.parse(plan.warmup), decay=config.decay),
        microbatch_size=config.microbatch_size,
        precision=plan.precision,
        device=str(plan.device),
        seed=config.seed,
        save_interval=config.save_interval,
        eval_interval=config.eval_interval,
        eval_batches=config.eval_batches,
        target_loss=config.target_loss,
        load_path=resume_from,
        keep_checkpoints=config.keep_checkpoints,
        on_nan=config.on_nan,
        parallel=config.parallel,
        threads=plan.threads,
    )
    limit = position_limit(trainer.state.model)
    if limit is not None and plan.seq_len > limit:
        raise UsageError(f"--seq-len {plan.seq_len} is longer than {config.model}'s {limit} learned positions "
                         "(n_positions); train at most that long, or with --algo alibi, which has no such limit")
    if resume_from is not None:
        check_resumable(trainer.state, resume_from)

    if distributed.is_rank_zero():  # the run's first writes
        continuing = run_dir.exists()  # and, having passed the checks above, it is this run's
        prepare_run_dir(run_dir)
        if continuing:
            leftovers = [*remove_temporaries(run_dir), *(folder.url for folder in remove_unfinished(run_dir))]
            if leftovers:
                console.print(f"removed what interrupted writes left: {', '.join(leftovers)}")
        # Records past the checkpoint are replayed by the resumed run; without one, none survive.
        truncate_metrics(run_dir.child("metrics.jsonl"), read_step(resume_from) if resume_from else 0)
        resolved = {**config.model_dump(), "max_duration": plan.max_duration, "batch_size": plan.batch_size,
                    "seq_len": plan.seq_len, "lr": plan.lr, "warmup": plan.warmup, "dropout": plan.dropout,
                    "precision": plan.precision, "device": str(plan.device), "run_dir": plan.run_dir,
                    "threads": plan.threads, "world_size": distributed.world_size()}
        run_dir.child("config.yaml").write_bytes(yaml.safe_dump(resolved, sort_keys=False).encode())
        logger.destinations.append(metrics_destination(run_dir))
    for note in plan.notes:
        console.print(f"[yellow]{note}[/yellow]")
    if resume_from is not None:
        console.print(f"resuming from {resume_from}")
    console.print(
        f"[bold]{config.model}[/bold] on {corpus.name} ({len(corpus.train_tokens):,} train tokens), "
        f"{plan.device} {plan.precision}, algorithms: {', '.join(a.name or type(a).__name__ for a in algorithms) or 'none'}"
        + (f", {distributed.world_size()} processes ({config.parallel})" if distributed.world_size() > 1 else "")
    )
    try:
        summary = {**trainer.fit(), "speed": speed.summary}
    except BaseException:
        # Best effort: the error being raised is the one to report; records past the newest
        # checkpoint are replayed on resume anyway.
        with contextlib.suppress(OSError):
            logger.sync()
        raise
    else:
        logger.sync()
    finally:
        logger.close()
    if distributed.is_rank_zero():
        if speed.summary:
            console.print(speed.summary_line())
        print_summary(console, summary)
    return summary


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="run summary", show_header=False)
    table.add_row("steps / tokens", f"{summary['steps']:,} / {summary['tokens']:,}")
    table.add_row("time in training steps", f"{summary['wall_s']:.1f} s ({summary['tokens_per_s']:,.0f} tokens/s)")
    speed = summary.get("speed") or {}
    if speed:
        table.add_row("throughput", f"{speed['throughput/tokens_per_s']:,.0f} tokens/s, {speed['throughput/samples_per_s']:,.1f} "
                      f"samples/s ({speed['measured_steps']} steps after warmup, data and logging included)")
        if "throughput/mfu" in speed:
            table.add_row("model FLOPs utilization", f"{speed['throughput/mfu']:.1%} (peak {speed['peak_flops_source']})")
        else:
            table.add_row("model FLOPs utilization", f"unknown ({speed['peak_flops_source']})")
        table.add_row("peak memory", f"{speed['memory/peak_gib']:.2f} GiB ({speed['memory_kind']})")
    table.add_row("final train loss", f"{summary['final_train_loss']:.4f}")
    if "eval_loss" in summary:
        table.add_row("final eval loss / ppl", f"{summary['eval_loss']:.4f} / {summary['eval_ppl']:.2f}")
    for name, seconds in summary["seconds_per_algorithm"].items():
        table.add_row(f"time in {name}", f"{seconds:.3f} s")
    table.add_row("run directory", summary["run_dir"])
    console.print(table)


def main(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "config", "handler")}
    run(load_config(args.config, overrides))
    return 0
