"""`composerlite report`: rebuild report.md, report.html and the plots from benchmark folders,
merging several (for example the same benchmark on different machines) into one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from composerlite.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="DIR", help="benchmark folders holding results.json")
    parser.add_argument("--out", help="where to write the report (default: the folder itself, when there is one)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="merge folders with different settings (budget, data, ...) as separate groups, flagged")


def main(args: argparse.Namespace) -> int:
    from composerlite.bench.report import build_report, print_verdicts

    folders = [Path(folder) for folder in args.folders]
    if args.out is None and len(folders) > 1:
        raise ConfigError("merging several folders: say where the merged report goes with --out")
    out = Path(args.out) if args.out else folders[0]
    groups = build_report(folders, out, allow_mixed=args.allow_mixed)
    console = Console()
    print_verdicts(groups, console)
    console.print(f"wrote {out / 'report.md'}, {out / 'report.html'} and plots in {out / 'plots'}")
    return 0
