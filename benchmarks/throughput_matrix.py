"""The fused-kernels throughput matrix, side by side in one process.

For each model: the baseline (plain HF GPT2LMHeadModel, SDPA attention, PyTorch's default AdamW),
each fused method alone, and the `fused_kernels` bundle, all through `composerlite.measure_throughput`
(the real Trainer on random tokens). With `--repeats N` the whole matrix runs N times, interleaved
(round-robin), and the median of each cell is reported, so background load on a shared CPU hits
every variant alike. A variant `NAME@B` runs at batch size B.

    python benchmarks/throughput_matrix.py                         # CPU: gpt2-tiny and gpt2-52m, fp32
    python benchmarks/throughput_matrix.py --device cuda --models gpt2-52m gpt2-125m --variants baseline fused_kernels fused_kernels@64
Writes JSON (default benchmarks/results/throughput_<device>_<date>.json) and prints a table, plus
each target of issue 4 as met or missed (targets live here, never in timed tests).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from composerlite.observe.speed_monitor import device_name
from composerlite.run.throughput import measure_throughput, release_memory, table, write_json
from composerlite.system.runtime import resolve_device

METHODS = ["flash_attention", "fused_adamw", "fused_cross_entropy", "fused_layernorm", "pad_vocab", "fused_gpt2_blocks", "compile"]

# Issue 4's targets: tokens/s of `fused_kernels` at batch 32 x 1024, bf16, one H100/H200; and the
# CPU speedup of the bundle over the baseline (2 cores, fp32).
GPU_TARGETS = {"gpt2-52m": 1.1e6, "gpt2-125m": 520e3}
CPU_SPEEDUP_TARGET = 1.3


def parse_variant(text: str) -> tuple[str, list[str], int | None]:
    name, _, batch = text.partition("@")
    algorithms = [] if name == "baseline" else name.split("+")
    return text, algorithms, int(batch) if batch else None


def run_matrix(args: argparse.Namespace, console: Console) -> tuple[list[dict], list[dict]]:
    started = time.perf_counter()
    samples: list[dict] = []
    for repeat in range(args.repeats):
        for variant in args.variants:
            label, algorithms, batch = parse_variant(variant)
            for model in args.models:
                if time.perf_counter() - started > args.budget_s:
                    console.print(f"[yellow]budget of {args.budget_s:.0f} s spent: skipping {model} {label}[/yellow]")
                    continue
                try:
                    record = measure_throughput(model, algorithms, batch_size=batch or args.batch_size,
                                                seq_len=args.seq_len, steps=args.steps, warmup_steps=args.warmup_steps,
                                                precision=args.precision, device=args.device, dropout=args.dropout,
                                                peak_flops=args.peak_flops, measure_peak=args.measure_peak)
                except Exception as error:  # noqa: BLE001 -- record it and keep measuring the rest
                    release_memory()
                    record = {"model": model, "algorithms": algorithms, "batch_size": batch or args.batch_size,
                              "error": f"{type(error).__name__}: {str(error)[:300]}"}
                record.update(variant=label, repeat=repeat)
                samples.append(record)
                done = f"{record['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in record else record["error"]
                console.print(f"[{time.perf_counter() - started:6.0f}s] {model} {label} (round {repeat + 1}): {done}")
    return median_records(samples), samples


def median_records(samples: list[dict]) -> list[dict]:
    """One record per (model, variant): the median-throughput sample, with every sample's tokens/s."""
    cells: dict[tuple, list[dict]] = {}
    for sample in samples:
        cells.setdefault((sample["model"], sample["variant"]), []).append(sample)
    records = []
    for group in cells.values():
        good = [s for s in group if "tokens_per_s" in s]
        if not good:
            records.append(group[0])
            continue
        ordered = sorted(good, key=lambda s: s["tokens_per_s"])
        record = dict(ordered[(len(ordered) - 1) // 2])  # the lower median: a real sample, not an average
        record["tokens_per_s_samples"] = [s["tokens_per_s"] for s in good]
        record["tokens_per_s_median"] = statistics.median(record["tokens_per_s_samples"])
        records.append(record)
    return records


def ceiling_rows(path: str | None) -> dict[str, dict]:
    """The hand-written minimal GPT-2's tokens/s per model from `gpu_ceiling.py`'s JSON, measured in
    the same job: its padded-vocabulary, default-compile, batch-32 rows (the anchor the targets cite)."""
    if not path or not Path(path).exists():
        return {}
    rows = json.loads(Path(path).read_text())["rows"]
    return {row["model"]: row for row in rows
            if "error" not in row and row["vocab"] == 50304 and row["B"] == 32 and row["mode"] == "default"}


def verdicts(records: list[dict], device: str, ceiling: dict[str, dict] | None = None) -> list[str]:
    lines = []
    ceiling = ceiling or {}
    base = {(r["model"], r["batch_size"]): r for r in records if r["variant"] == "baseline" and "tokens_per_s" in r}
    for r in records:
        if not r["variant"].startswith("fused_kernels") or "tokens_per_s" not in r:
            continue
        b = base.get((r["model"], r["batch_size"]))
        if device == "cuda":
            target = GPU_TARGETS.get(r["model"])
            if target and r["batch_size"] == 32 and r["seq_len"] == 1024:
                lines.append(f"{r['model']} bundle {r['tokens_per_s']:,.0f} tok/s vs target {target:,.0f}: "
                             f"{'MET' if r['tokens_per_s'] >= target else 'MISSED'}")
                if r["model"] in ceiling:
                    anchor = ceiling[r["model"]]["tokens_per_s"]
                    lines.append(f"{r['model']} bundle {r['tokens_per_s'] / anchor:.2f}x the hand-written ceiling "
                                 f"measured in this job ({anchor:,.0f} tok/s): "
                                 f"{'MET' if r['tokens_per_s'] >= anchor else 'MISSED'}")
            if b:
                lines.append(f"{r['model']} bundle peak memory {r['peak_memory_gib']:.2f} GiB vs baseline "
                             f"{b['peak_memory_gib']:.2f}: {'MET' if r['peak_memory_gib'] <= b['peak_memory_gib'] else 'MISSED'}")
        elif b:
            speedup = r["tokens_per_s_median"] / b["tokens_per_s_median"]
            lines.append(f"{r['model']} bundle {speedup:.2f}x baseline (median of {len(r['tokens_per_s_samples'])}) vs "
                         f"target {CPU_SPEEDUP_TARGET}x: {'MET' if speedup >= CPU_SPEEDUP_TARGET else 'MISSED'}")
        if r["batch_size"] != 32 and device == "cuda":
            lines.append(f"{r['model']} bundle at batch {r['batch_size']}: ran ({r['tokens_per_s']:,.0f} tok/s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", default=None, help="baseline, a method, a+b, fused_kernels, NAME@BATCH")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds of the whole matrix (median)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--peak-flops", type=float)
    parser.add_argument("--measure-peak", action="store_true", help="MFU against a matmul timed before each measurement")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no new measurement after this")
    parser.add_argument("--ceiling", help="gpu_ceiling.py's JSON from the same job: judge the bundle against it too")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/throughput_<device>_<date>.json)")
    parser.add_argument("--smoke", action="store_true", help="gpt2-tiny, 2 steps, batch 2 x 64: checks the script runs")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.smoke:
        args.models = args.models or ["gpt2-tiny"]
        args.batch_size, args.seq_len = args.batch_size or 2, args.seq_len or 64
        args.steps, args.warmup_steps, args.repeats = args.steps or 2, args.warmup_steps or 1, args.repeats or 1
    args.models = args.models or (["gpt2-52m", "gpt2-125m"] if gpu else ["gpt2-tiny", "gpt2-52m"])
    args.variants = args.variants or ["baseline", *METHODS, "fused_kernels"]
    args.steps = args.steps or (10 if gpu else 4)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (3 if gpu else 1)
    args.repeats = args.repeats or (1 if gpu else 3)
    console = Console()
    records, samples = run_matrix(args, console)
    info = {"device_name": device_name(device), "torch": torch.__version__, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv[1:], "repeats": args.repeats}
    console.print(table(records, title=f"throughput on {info['device_name']}, torch {info['torch']}, median of {args.repeats}"))
    ceiling = ceiling_rows(args.ceiling)
    info["ceiling"] = ceiling
    lines = verdicts(records, device.type, ceiling)
    for line in lines:
        console.print(line)
    out = args.out or f"benchmarks/results/throughput_{'cuda' if gpu else 'cpu'}_{datetime.date.today()}.json"
    write_json(out, {"info": info, "records": records, "samples": samples, "verdicts": lines})
    console.print(f"wrote {out}")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
