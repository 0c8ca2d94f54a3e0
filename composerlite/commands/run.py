"""`composerlite run`: train one model with a set of algorithms and report what happened."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from composerlite.config import RunConfig, cpu_supports_bf16, load_config
from composerlite.errors import UsageError
from composerlite.loggers import ConsoleLogger, JSONLinesLogger, Logger
from composerlite.registry import build_algorithm, split_spec
from composerlite.schedule import WarmupDecaySchedule
from composerlite.time import Time
from composerlite.trainer import OptimizerConfig, Trainer, resolve_device, seed_everything

# With no --max-duration, a CPU run is a demo that finishes in a few minutes on 2 cores.
CPU_DEMO = {"max_duration": "40ba", "batch_size": 8, "seq_len": 128}
GPU_DEFAULT = {"max_duration": "1000ba", "batch_size": 32, "seq_len": 1024}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe; flags override its keys")
    parser.add_argument("--model", help="family member (see `composerlite models`)")
    parser.add_argument("--algo", dest="algorithms", action="append", default=[], metavar="NAME[:k=v,...]",
                        help="an algorithm, by name or path/to/file.py:Class; repeat for several")
    parser.add_argument("--data", help="text/jsonl/parquet file or folder, fsspec URL, or hf:NAME (default: embedded corpus)")
    parser.add_argument("--max-duration", help="training budget: 1000ba, 4.6e9tok, 2ep, 10min, ...")
    parser.add_argument("--batch-size", type=int, help="global batch size in sequences")
    parser.add_argument("--microbatch-size", type=int, help="sequences per forward/backward (gradient accumulation)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup", help="LR warmup length: 90ba, 0.01dur, ...")
    parser.add_argument("--decay", help="LR decay after warmup: cosine, linear or constant")
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--precision", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--run-dir", help="where metrics.jsonl, config.yaml and checkpoints go")
    parser.add_argument("--save-interval", help="checkpoint every 10ba, 0.5dur, 5min, ...")
    parser.add_argument("--eval-interval", help="evaluate every 0.25dur, 100ba, ...")
    parser.add_argument("--eval-batches", type=int, help="held-out batches per evaluation")
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
    run_dir: Path
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
    run_dir = Path(config.run_dir or f"runs/{config.model}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
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
            specs.append((target, dict(options or {})))
        else:
            specs.append(split_spec(entry))
    return specs


def prepare_run_dir(run_dir: Path) -> None:
    if (run_dir / "metrics.jsonl").exists():
        raise UsageError(f"run directory {run_dir} already holds a run; choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to run directory {run_dir}: {error.strerror}") from None


def run(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    from composerlite.data import BatchStream, prepare_corpus
    from composerlite.models import build_model

    console = console or Console(stderr=True)
    plan = plan_run(config)
    algorithms = [build_algorithm(target, options) for target, options in algorithm_specs(config)]
    corpus = prepare_corpus(config.data)
    train_data = BatchStream(corpus.train_tokens, seq_len=plan.seq_len, batch_size=plan.batch_size, seed=config.seed)
    eval_data = BatchStream(corpus.eval_tokens, seq_len=plan.seq_len, batch_size=plan.batch_size, seed=0, shuffle=False)
    prepare_run_dir(plan.run_dir)
    for note in plan.notes:
        console.print(f"[yellow]{note}[/yellow]")
    resolved = {**config.model_dump(), "max_duration": plan.max_duration, "batch_size": plan.batch_size,
                "seq_len": plan.seq_len, "lr": plan.lr, "warmup": plan.warmup, "dropout": plan.dropout,
                "precision": plan.precision, "device": str(plan.device), "run_dir": str(plan.run_dir)}
    (plan.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    console.print(
        f"[bold]{config.model}[/bold] on {corpus.name} ({len(corpus.train_tokens):,} train tokens), "
        f"{plan.device} {plan.precision}, algorithms: {', '.join(a.name or type(a).__name__ for a in algorithms) or 'none'}"
    )
    seed_everything(config.seed)
    model = build_model(config.model, dropout=plan.dropout)
    logger = Logger([ConsoleLogger(console), JSONLinesLogger(plan.run_dir / "metrics.jsonl")])
    try:
        trainer = Trainer(
            model=model,
            train_data=train_data,
            eval_data=eval_data,
            max_duration=plan.max_duration,
            logger=logger,
            run_dir=plan.run_dir,
            algorithms=algorithms,
            optimizer=OptimizerConfig(lr=plan.lr, weight_decay=config.weight_decay),
            schedule=WarmupDecaySchedule(warmup=Time.parse(plan.warmup), decay=config.decay),
            microbatch_size=config.microbatch_size,
            precision=plan.precision,
            device=str(plan.device),
            seed=config.seed,
            save_interval=config.save_interval,
            eval_interval=config.eval_interval,
            eval_batches=config.eval_batches,
        )
        summary = trainer.fit()
    finally:
        logger.close()
    print_summary(console, summary)
    return summary


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="run summary", show_header=False)
    table.add_row("steps / tokens", f"{summary['steps']:,} / {summary['tokens']:,}")
    table.add_row("training time", f"{summary['wall_s']:.1f} s ({summary['tokens_per_s']:,.0f} tokens/s)")
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
