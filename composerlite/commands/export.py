"""`composerlite export RUN_DIR --to hf DIR`: `composerlite.export_hf`, for Hugging Face transformers."""

from __future__ import annotations

import argparse
from pathlib import Path

from composerlite.run.export import export_hf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (local or fsspec URL) or one checkpoint folder in it")
    parser.add_argument("--to", required=True, choices=["hf"], help="export format: hf = Hugging Face transformers folder")
    parser.add_argument("output", metavar="DIR", help="new local folder to write (must not exist or be empty)")


def main(args: argparse.Namespace) -> int:
    folder = export_hf(args.run_dir, Path(args.output))
    print(f"exported to {folder}: load it with GPT2LMHeadModel.from_pretrained({str(folder)!r})")
    return 0
