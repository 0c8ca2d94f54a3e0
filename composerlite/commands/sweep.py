"""`composerlite sweep`: the trade-offs the model card describes, run and reported like a benchmark.

Two modes (one per sweep):
  --ratios 0.25,0.5,0.75   scale_schedule: the same recipe in fewer steps (quality versus steps),
                           measured against the full schedule ("baseline", ratio 1)
  --lrs A,B --batch-sizes X,Y   every LR x batch-size pair, measured against the first pair.
                           Give --budget in tokens (e.g. 2e6tok) so every pair sees the same data.
"""

from __future__ import annotations

import argparse

from composerlite.commands.bench import add_shared_arguments, base_config, command_line, out_dir, seeds_of
from composerlite.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratios", help="scale_schedule ratios, comma-separated (e.g. 0.25,0.5,0.75)")
    parser.add_argument("--lrs", help="peak learning rates for the grid, comma-separated")
    parser.add_argument("--batch-sizes", help="global batch sizes for the grid, comma-separated")
    add_shared_arguments(parser)


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, not '{text}'") from None
    if not values or any(value <= 0 for value in values):
        raise ConfigError(f"{flag} needs positive numbers, got '{text}'")
    return values


def sweep_methods(args: argparse.Namespace):
    """(methods, reference label) for the chosen mode."""
    from composerlite.bench.results import Method
    from composerlite.bench.runner import BASELINE

    grid = args.lrs is not None or args.batch_sizes is not None
    if (args.ratios is None) == (not grid):
        raise ConfigError("choose one sweep: --ratios R,R,... or --lrs A,B,... with --batch-sizes X,Y,...")
    if args.ratios is not None:
        ratios = [ratio for ratio in _numbers(args.ratios, float, "--ratios") if ratio != 1.0]
        methods = [Method(label=BASELINE)] + [
            Method(label=f"scale_schedule {ratio:g}", algorithms=(f"scale_schedule:ratio={ratio:g}",)) for ratio in ratios]
        return methods, BASELINE
    if args.lrs is None or args.batch_sizes is None:
        raise ConfigError("an lr x batch-size sweep needs both --lrs and --batch-sizes")
    if args.lr is not None or args.batch_size is not None:
        raise ConfigError("--lr/--batch-size fix what the grid varies; use --lrs/--batch-sizes only")
    methods = [Method(label=f"lr={lr:g} bs={batch}", overrides={"lr": lr, "batch_size": batch})
               for lr in _numbers(args.lrs, float, "--lrs") for batch in _numbers(args.batch_sizes, int, "--batch-sizes")]
    return methods, methods[0].label


def main(args: argparse.Namespace) -> int:
    from composerlite.bench.runner import run_bench

    config = base_config(args)
    methods, reference = sweep_methods(args)
    out = out_dir(args, config, "sweep")
    run_bench(out, config, methods, seeds_of(args, config), command_line(args), reference=reference, kind="sweep",
              interleave=args.interleave)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0
