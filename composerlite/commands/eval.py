"""`composerlite eval RUN_DIR`: `composerlite.evaluate_run` as JSON on stdout."""

from __future__ import annotations

import argparse
import json

from composerlite.run.evaluate import DEFAULT_BATCH_SIZE, evaluate_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `composerlite run` (local or fsspec URL), or one checkpoint folder in it")
    parser.add_argument("--data", help="data to take the held-out split of (default: the run's)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the run's training length)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="sequences per eval batch")
    parser.add_argument("--max-batches", type=int, help="evaluate at most this many batches (default: the whole split)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def main(args: argparse.Namespace) -> int:
    result = evaluate_run(args.run_dir, data=args.data, seq_len=args.seq_len, batch_size=args.batch_size,
                          max_batches=args.max_batches, device=args.device)
    print(json.dumps(result, indent=1))
    return 0
