"""`composerlite run`: flags (over a YAML recipe) into a `RunConfig`, then `composerlite.train`,
then the run's summary."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from composerlite.commands.flags import add_setting_flags, flag_console, given_settings
from composerlite.registry import check_combination
from composerlite.run.settings import RunConfig, algorithm_specs, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe; flags override its settings")
    add_setting_flags(parser)


def run(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    """`composerlite run` as a function: `train`, then the speed line and the summary table on the
    console; returns the run's summary."""
    from composerlite.run.train import print_summary, train
    from composerlite.system import distributed

    console = console or flag_console(quiet=not distributed.is_rank_zero())
    summary = train(config, console=console).summary
    if distributed.is_rank_zero():
        print_summary(summary, console)
    return summary


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, given_settings(args))
    # Before `run` imports the training stack (torch: seconds): a mistyped or impossible algorithm
    # list is answered at once.
    check_combination([target for target, _ in algorithm_specs(config)])
    run(config)
    return 0
