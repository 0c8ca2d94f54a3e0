"""What the Trainer costs per step over a hand-written loop, on a micro GPT-2 (issue 12).

Both loops train the same model (`--model micro`: gpt2-tiny with a 512-token vocabulary; `nano`: one
16-wide layer and 64 tokens, whose own work is small enough that the loops' costs dominate, for
comparing versions of the loop on a busy machine) in fp32 on the CPU, on the same random tokens, with the same AdamW, a cosine LR set every step, and one loss read per step.
The Trainer is built as `composerlite.train` builds it: the SpeedMonitor, the in-memory record list
and the default logger destinations, built and opened by the same calls (`build_loggers`: the
progress bar, on a terminal console writing to /dev/null, and metrics.jsonl). A step is
the period between two consecutive batch fetches, read by the data stream both loops share, so
neither loop carries a timing hook of its own; it is measured in the process's CPU time (all its
threads: the progress bar's refresh thread counts) and in wall-clock time. CPU time is the
primary figure: on a shared machine other processes stretch the wall clock by tens of percent,
while they barely change the CPU time a step takes. Runs alternate, each on a freshly built model, and
the loop that runs first alternates between pairs (hand then Trainer, Trainer then hand), so drift
and order hit both alike; a run's cost is the median of its steps after
`--warmup`, and the overhead is the per-pair difference (Trainer minus hand), reported as its
median and the mean with a 95% Student-t interval. Running the two loops in two processes that take
turns step by step (as `composerlite bench --interleave steps` runs methods) was tried and dropped:
each turn evicts the other loop's caches, which added ~2 ms to the hand loop's step and ~0.6 ms to
the difference on the micro model, a cost no real run pays.

    python benchmarks/loop_overhead.py                 # 15 pairs of 200 steps, 1 thread
    python benchmarks/loop_overhead.py --pairs 120 --steps 60 --warmup 15   # finer-grained: the 2026-12-01 record
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

import torch
import transformers
from rich.console import Console
from scipy import stats

from composerlite.core.logger import Logger, RunInfo
from composerlite.core.state import shifted_cross_entropy
from composerlite.models import ModelSpec, build_model
from composerlite.observe.loggers import RecordList
from composerlite.observe.speed_monitor import SpeedMonitor, device_name
from composerlite.run.loop import Trainer, adamw, seed_everything
from composerlite.run.settings import RunConfig
from composerlite.run.throughput import RandomTokens, write_json
from composerlite.run.train import build_loggers
from composerlite.system.runtime import pinned_runtime
from composerlite.system.storage import location

LR = 1e-3
# name -> (architecture, vocabulary size)
MODELS = {"micro": ("gpt2-tiny", 512), "nano": (ModelSpec("gpt2-nano", 1, 16, 64, 1), 64)}


class TimedTokens(RandomTokens):
    """Random token batches that note the times (CPU, wall) each batch is handed out at."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetched: list[tuple[float, float]] = []

    def epoch(self, epoch: int, start_batch: int = 0):
        for batch in super().epoch(epoch, start_batch):
            self.fetched.append((time.process_time(), time.perf_counter()))
            yield batch


def new_model(name: str) -> torch.nn.Module:
    spec, vocab_size = MODELS[name]
    return build_model(spec, vocab_size=vocab_size, dropout=0.0)


def hand_loop(model: torch.nn.Module, data: TimedTokens, steps: int) -> None:
    optimizer = adamw(model, lr=LR, weight_decay=0.0)
    model.train()
    # The runtime the Trainer's fit() runs in. Without it glibc returns each step's freed tensors to
    # the kernel and the hand loop pays their page faults again (6.5-6.9 ms a step on the micro model
    # against 4.7 with it, runs half an hour apart): the Trainer then looked 0.18 ms faster than it.
    with pinned_runtime(torch.get_num_threads(), torch.device("cpu")):
        for step, batch in enumerate(data.epoch(0)):
            loss = shifted_cross_entropy(model(input_ids=batch["input_ids"]).logits, batch)
            loss.backward()
            loss.item()
            for group in optimizer.param_groups:
                group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / steps))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def trainer_loop(model: torch.nn.Module, data: TimedTokens, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="composerlite-overhead-") as run_dir:
        console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)
        logger = Logger([RecordList(), *build_loggers(RunConfig())])
        logger.open(RunInfo(run_dir=location(run_dir), config={}, console=console))
        settings = {"max_duration": f"{steps}ba", "run_dir": run_dir, "lr": LR, "warmup": "0.05dur", "device": "cpu",
                    "precision": "fp32", "threads": torch.get_num_threads()}  # the hand loop's threads
        trainer = Trainer(settings, model=model, train_data=data, logger=logger,
                          callbacks=[SpeedMonitor(window=20, warmup_steps=1, console=False)])
        try:
            trainer.fit()
        finally:
            logger.close()
            console.file.close()


def step_ms(data: TimedTokens, warmup: int, clock: int) -> float:
    """The median step of a run, after `warmup` steps, on clock 0 (CPU) or 1 (wall)."""
    periods = [b[clock] - a[clock] for a, b in zip(data.fetched, data.fetched[1:])][warmup:]
    return 1e3 * statistics.median(periods)


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% Student-t interval."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def measure(model: str, pairs: int, steps: int, warmup: int, batch_size: int, seq_len: int, log=print) -> dict:
    samples = {(kind, clock): [] for kind in ("hand", "trainer") for clock in ("cpu", "wall")}
    for pair in range(pairs):
        loops = (("hand", hand_loop), ("trainer", trainer_loop))
        for kind, loop in loops if pair % 2 == 0 else loops[::-1]:  # either loop first, as often
            seed_everything(pair)
            data = TimedTokens(batch_size, seq_len, MODELS[model][1], steps, seed=pair)
            loop(new_model(model), data, steps)
            for index, clock in enumerate(("cpu", "wall")):
                samples[kind, clock].append(step_ms(data, warmup, index))
        log(f"pair {pair + 1}/{pairs}: CPU ms a step: hand {samples['hand', 'cpu'][-1]:.3f}, trainer "
            f"{samples['trainer', 'cpu'][-1]:.3f}; wall: {samples['hand', 'wall'][-1]:.3f}, {samples['trainer', 'wall'][-1]:.3f}")
    result = {}
    for clock in ("cpu", "wall"):
        hand, trainer = samples["hand", clock], samples["trainer", clock]
        overhead = [t - h for h, t in zip(hand, trainer)]
        mean, low, high = mean_interval(overhead)
        result[clock] = {"hand_step_ms": hand, "trainer_step_ms": trainer, "overhead_ms": overhead,
                         "hand_median_step_ms": statistics.median(hand), "overhead_median_ms": statistics.median(overhead),
                         "overhead_mean_ms": mean, "overhead_mean_95ci_ms": [low, high]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="micro")
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
    result = measure(args.model, args.pairs, args.steps, args.warmup, args.batch_size, args.seq_len)
    for clock, what in (("cpu", "CPU time"), ("wall", "wall-clock")):
        r = result[clock]
        low, high = r["overhead_mean_95ci_ms"]
        print(f"{what}: hand-written loop {r['hand_median_step_ms']:.3f} ms a step; Trainer overhead: median "
              f"{r['overhead_median_ms']:.3f} ms, mean {r['overhead_mean_ms']:.3f} ms [{low:.3f}, {high:.3f}] "
              f"over {args.pairs} pairs")
    if args.out:
        write_json(args.out, {**vars(args), **result, "device_name": device_name(torch.device("cpu")),
                              "torch": torch.__version__, "load_average_before": load_before,
                              "load_average_after": os.getloadavg(),
                              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
