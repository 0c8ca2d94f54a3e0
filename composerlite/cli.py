"""The `composerlite` command line. User mistakes (`ConfigError`, `DataError`) print one line and
exit 2; runtime failures that are not composerlite's (a plugin's exception, a store that stays
down) one line and exit 1, with the traceback under `--debug`; bugs keep tracebacks. The library's
messages name options as `key` or `key=value`; here they read as the flags that set them."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

import pydantic

from composerlite.commands.flags import as_flags
from composerlite.data.errors import DataError
from composerlite.errors import ConfigError, PluginError, RunHalted
from composerlite.run.settings import describe_validation_error
from composerlite.system.storage import StorageError

# subcommand -> (module under composerlite.commands, one-line help)
COMMANDS = {
    "run": ("run", "train a model with a set of algorithms"),
    "list": ("listing", "list models, algorithms and loggers with their options"),
    "export": ("export", "export a run's newest checkpoint as a Hugging Face model folder"),
    "models": ("models", "the GPT-2 family: parameters, FLOPs, the card's results and scaling-law predictions"),
    "bench": ("bench", "compare methods under one budget: quality vs time, speedups, report"),
    "report": ("report", "rebuild (and merge) benchmark reports from results.json folders"),
    "sweep": ("sweep", "scale_schedule ratios or an lr x batch-size grid, reported like a benchmark"),
    "scaling": ("scaling", "Kaplan's L(N, D) for the family; model size and tokens for a compute budget"),
    "eval": ("eval", "held-out loss and perplexity of a run's latest checkpoint at any sequence length"),
    "data": ("data", "prepare a corpus into token shards once (resumable), or show a prepared corpus"),
    "throughput": ("throughput", "measure tokens/s, MFU and peak memory of a model + algorithms (random tokens)"),
}


def print_error(message: str) -> None:
    print(f"composerlite: error: {as_flags(message)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own exit code is already 2; keep it to one line
        self.exit(2, f"composerlite: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="composerlite", description="A small, fast, honest trainer for GPT-2-family models.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"composerlite.commands.{module_name}")
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(subparser)
        subparser.add_argument("--debug", action="store_true",
                               help="on a failing plugin or store, print the full traceback too")
        subparser.set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug
    del args.debug  # a CLI switch, not an option of the command
    try:
        return args.handler(args) or 0
    except (ConfigError, DataError) as problem:
        print_error(str(problem))
        return 2
    except (PluginError, StorageError) as problem:
        if debug:
            traceback.print_exception(problem.__cause__ or problem)
        hint = "" if debug else " (--debug shows the traceback)"
        print_error(f"{problem}{hint}")
        return 1
    except pydantic.ValidationError as problem:
        print_error(describe_validation_error(problem))
        return 2
    except RunHalted as halt:
        print(f"composerlite: {as_flags(str(halt))}", file=sys.stderr)
        return halt.exit_code
    except KeyboardInterrupt:
        print("composerlite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
