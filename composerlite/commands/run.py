"""`composerlite run`: flags (over a YAML recipe) into a `RunConfig`, then `composerlite.train`,
then the run's summary."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from composerlite.cli import flag_console
from composerlite.config import RunConfig, algorithm_specs, load_config
from composerlite.registry import check_combination
from composerlite.runtime import AUTO_PRECISION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe; flags override its keys")
    parser.add_argument("--model", help="family member (see `composerlite models`)")
    parser.add_argument("--algo", dest="algorithms", action="append", default=[], metavar="NAME[:k=v,...]",
                        help="an algorithm, by name or path/to/file.py:Class; repeat for several")
    parser.add_argument("--logger", dest="loggers", action="append", default=[], metavar="NAME[:k=v,...]",
                        help="also log to tensorboard, mlflow, wandb, or path/to/file.py:Class; repeat for several "
                             "(console and jsonl, always on, take options the same way)")
    parser.add_argument("--data", help="a prepared corpus (`composerlite data prepare`; a folder or URL), a text/jsonl/"
                        "parquet file or folder, fsspec URL, or hf:NAME (default: embedded corpus)")
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
    parser.add_argument("--precision", help=f"auto, fp32, bf16 or fp16 (auto: {AUTO_PRECISION})")
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


def run(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    """`composerlite run` as a function: `train`, then the speed line and the summary table on the
    console; returns the run's summary."""
    from composerlite import distributed
    from composerlite.training import print_summary, train

    console = console or flag_console(quiet=not distributed.is_rank_zero())
    summary = train(config, console=console).summary
    if distributed.is_rank_zero():
        print_summary(summary, console)
    return summary


def main(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "config", "handler")}
    config = load_config(args.config, overrides)
    # Before `run` imports the training stack (torch: seconds): a mistyped or impossible algorithm
    # list is answered at once.
    check_combination([target for target, _ in algorithm_specs(config)])
    run(config)
    return 0
