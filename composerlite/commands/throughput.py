"""`composerlite throughput`: `composerlite.measure_throughput` as a table, and JSON with `--out`."""

from __future__ import annotations

import argparse

from rich.console import Console

from composerlite.registry import check_combination, split_spec
from composerlite.system.runtime import AUTO_PRECISION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="family member (see `composerlite models`)")
    parser.add_argument("--algo", dest="algorithms", action="append", default=[], metavar="NAME[:k=v,...]",
                        help="an algorithm, by name or path/to/file.py:Class; repeat for several")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: 32 on GPU, 4 on CPU)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: 1024 on GPU, 256 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="unmeasured steps first (compilation, allocator)")
    parser.add_argument("--precision", default="auto", help=f"auto, fp32, bf16 or fp16 (auto: {AUTO_PRECISION})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout of the model (default 0)")
    parser.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (overrides the table)")
    parser.add_argument("--measure-peak", action="store_true",
                        help="time a square matmul on the device first and use its FLOP/s as the MFU peak "
                             "(gives CPUs an MFU; on GPUs a measured ceiling instead of the datasheet's)")
    parser.add_argument("--out", help="write the result as JSON here")


def main(args: argparse.Namespace) -> int:
    check_combination([split_spec(spec)[0] for spec in args.algorithms])  # before torch is imported: at once
    from composerlite.run.throughput import measure_throughput, table, write_json

    record = measure_throughput(args.model, args.algorithms, batch_size=args.batch_size, seq_len=args.seq_len,
                                steps=args.steps, warmup_steps=args.warmup_steps, precision=args.precision,
                                device=args.device, dropout=args.dropout, peak_flops=args.peak_flops,
                                measure_peak=args.measure_peak)
    console = Console()
    console.print(table([record], title=f"throughput on {record['device_name']}, torch {record['torch']}"))
    for state in record["algorithm_state"]:
        for name, why in state.get("skipped", {}).items():
            console.print(f"{state['name']}: skipped {name}: {why}")
    if args.out:
        write_json(args.out, record)
    return 0
