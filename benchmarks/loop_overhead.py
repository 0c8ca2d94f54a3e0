"""What the Trainer costs per step over a hand-written loop, on a micro GPT-2 (issue 12).

Both loops train the same model (gpt2-tiny with a 512-token vocabulary, fp32, on the CPU) on the
same random tokens, with the same AdamW, a cosine LR set every step, and one loss read per step.
The Trainer is built as `composerlite.train` builds it: the SpeedMonitor, the progress bar (on a
terminal console writing to /dev/null), metrics.jsonl and the in-memory record list. A step's time
is the period between two consecutive batch fetches, read by the data stream both loops share, so
neither loop carries a timing hook of its own. Runs alternate (hand, Trainer, hand, ...), each on a
freshly built model, so machine drift hits both alike; a run's cost is the median period of its
steps after `--warmup`, and the overhead is the per-pair difference (Trainer minus hand), reported
as its median and the mean with a 95% Student-t interval.

    python benchmarks/loop_overhead.py                 # 15 pairs of 200 steps, 1 thread
    python benchmarks/loop_overhead.py --pairs 30 --out benchmarks/results/loop_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from rich.console import Console
from scipy import stats

from composerlite.loggers import ConsoleLogger, JSONLinesLogger, Logger, RecordList
from composerlite.models import build_model
from composerlite.schedule import WarmupDecaySchedule
from composerlite.speed_monitor import SpeedMonitor, device_name
from composerlite.state import shifted_cross_entropy
from composerlite.throughput import RandomTokens, write_json
from composerlite.time import Time
from composerlite.trainer import OptimizerConfig, Trainer, adamw, seed_everything

VOCAB = 512
LR = 1e-3


class TimedTokens(RandomTokens):
    """Random token batches that note the time each batch is handed out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetched: list[float] = []

    def epoch(self, epoch: int, start_batch: int = 0):
        for batch in super().epoch(epoch, start_batch):
            self.fetched.append(time.perf_counter())
            yield batch


def hand_loop(data: TimedTokens, steps: int) -> None:
    model = build_model("gpt2-tiny", vocab_size=VOCAB, dropout=0.0)
    optimizer = adamw(model, OptimizerConfig(lr=LR))
    model.train()
    for step, batch in enumerate(data.epoch(0)):
        loss = shifted_cross_entropy(model(input_ids=batch["input_ids"]).logits, batch)
        loss.backward()
        loss.item()
        for group in optimizer.param_groups:
            group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def trainer_loop(data: TimedTokens, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="composerlite-overhead-") as run_dir:
        console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)
        logger = Logger([ConsoleLogger(console), RecordList(), JSONLinesLogger(Path(run_dir) / "metrics.jsonl")])
        trainer = Trainer(model=build_model("gpt2-tiny", vocab_size=VOCAB, dropout=0.0), train_data=data,
                          max_duration=f"{steps}ba", logger=logger, run_dir=run_dir,
                          callbacks=[SpeedMonitor(window=20, warmup_steps=1, console=False)],
                          optimizer=OptimizerConfig(lr=LR), schedule=WarmupDecaySchedule(warmup=Time.parse("0.05dur")),
                          device="cpu", precision="fp32")
        try:
            trainer.fit()
        finally:
            logger.close()
            console.file.close()


def step_ms(data: TimedTokens, warmup: int) -> float:
    periods = [b - a for a, b in zip(data.fetched, data.fetched[1:])][warmup:]
    return 1e3 * statistics.median(periods)


def measure(pairs: int, steps: int, warmup: int, batch_size: int, seq_len: int, log=print) -> dict:
    samples = {"hand": [], "trainer": []}
    for pair in range(pairs):
        for kind, loop in (("hand", hand_loop), ("trainer", trainer_loop)):
            seed_everything(pair)
            data = TimedTokens(batch_size, seq_len, VOCAB, steps, seed=pair)
            loop(data, steps)
            samples[kind].append(step_ms(data, warmup))
        log(f"pair {pair + 1}/{pairs}: hand {samples['hand'][-1]:.3f} ms, trainer {samples['trainer'][-1]:.3f} ms a step")
    overhead = [t - h for h, t in zip(samples["hand"], samples["trainer"])]
    mean = statistics.mean(overhead)
    half = stats.t.ppf(0.975, len(overhead) - 1) * statistics.stdev(overhead) / math.sqrt(len(overhead)) if len(overhead) > 1 else math.nan
    return {"hand_step_ms": samples["hand"], "trainer_step_ms": samples["trainer"], "overhead_ms": overhead,
            "overhead_median_ms": statistics.median(overhead), "overhead_mean_ms": mean,
            "overhead_mean_95ci_ms": [mean - half, mean + half], "hand_median_step_ms": statistics.median(samples["hand"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15, help="interleaved (hand, Trainer) pairs")
    parser.add_argument("--steps", type=int, default=200, help="steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out at the start of each run")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least sensitive to a busy machine)")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # the small vocabulary's token-id warning, once per model built
    load_before = os.getloadavg()
    result = measure(args.pairs, args.steps, args.warmup, args.batch_size, args.seq_len)
    low, high = result["overhead_mean_95ci_ms"]
    print(f"hand-written loop {result['hand_median_step_ms']:.3f} ms a step; Trainer overhead: median "
          f"{result['overhead_median_ms']:.3f} ms, mean {result['overhead_mean_ms']:.3f} ms [{low:.3f}, {high:.3f}] "
          f"over {args.pairs} pairs")
    if args.out:
        write_json(args.out, {**vars(args), **result, "device_name": device_name(torch.device("cpu")),
                              "torch": torch.__version__, "load_average_before": load_before,
                              "load_average_after": os.getloadavg(),
                              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
