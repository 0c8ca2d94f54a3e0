"""What the Trainer costs per step over a hand-written loop, on a micro GPT-2 (issue 12).

Both loops train the same model (`--model micro`: gpt2-tiny with a 512-token vocabulary; `nano`: one
16-wide layer and 64 tokens, whose own work is small enough that the loops' costs dominate, for
comparing versions of the loop on a busy machine) in fp32 on the CPU, on the same random tokens, with the same AdamW, a cosine LR set every step, and one loss read per step.
The Trainer is built as `composerlite.train` builds it: the SpeedMonitor, the in-memory record list
and the default logger destinations, built and opened by the same calls (`build_loggers`: the
progress bar, on a terminal console writing to /dev/null, and metrics.jsonl).

A pair is two processes, one per loop, that take turns step by step: one trains a step while the
other waits for its turn (blocked, spending no CPU), as `composerlite bench --interleave steps`
runs methods. Consecutive steps of the two loops therefore meet the same machine: on a shared VM
the speed of the same hand-written loop drifts by tens of percent between runs seconds apart,
which swamped a tenth of a millisecond when the two loops ran one after the other. A step is the
period from the loop getting its turn at a batch fetch to its next batch fetch, read by the data
stream both loops share, so neither loop carries a timing hook of its own; it is measured in the
process's CPU time (all its threads) and in wall-clock time. A run's cost is the median of its
steps after `--warmup`; the overhead is the per-pair difference (Trainer minus hand), reported as
its median and its mean with a 95% Student-t interval. Which loop takes the first turn alternates
between pairs. Taking turns halves the progress bar's redraws a step (they are timed by the wall
clock, twice a second; ~1.3 ms each, so ~0.01 ms a step on the micro model).

    python benchmarks/loop_overhead.py                 # 15 pairs of 200 steps, 1 thread
    python benchmarks/loop_overhead.py --pairs 30 --out benchmarks/results/loop_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time

import torch
import transformers
from rich.console import Console
from scipy import stats

from composerlite.config import RunConfig
from composerlite.loggers import Logger, RecordList, RunInfo
from composerlite.models import ModelSpec, build_model
from composerlite.schedule import WarmupDecaySchedule
from composerlite.speed_monitor import SpeedMonitor, device_name
from composerlite.state import shifted_cross_entropy
from composerlite.storage import location
from composerlite.throughput import RandomTokens, write_json
from composerlite.time import Time
from composerlite.trainer import OptimizerConfig, Trainer, adamw, seed_everything
from composerlite.training import build_loggers

LR = 1e-3
# name -> (architecture, vocabulary size)
MODELS = {"micro": ("gpt2-tiny", 512), "nano": (ModelSpec("gpt2-nano", 1, 16, 64, 1), 64)}


class TimedTokens(RandomTokens):
    """Random token batches handed out in turns with a partner process: each fetch ends the step
    before it (its CPU and wall periods are noted), passes the turn, and waits for it to come back."""

    def __init__(self, *args, my_turn, partner_turn, done, partner_done, **kwargs):
        super().__init__(*args, **kwargs)
        self.my_turn, self.partner_turn, self.done, self.partner_done = my_turn, partner_turn, done, partner_done
        self.periods: list[tuple[float, float]] = []  # (CPU, wall) seconds of each timed step
        self._started: tuple[float, float] | None = None

    def epoch(self, epoch: int, start_batch: int = 0):
        for batch in super().epoch(epoch, start_batch):
            if self._started is not None:
                cpu, wall = time.process_time(), time.perf_counter()
                self.periods.append((cpu - self._started[0], wall - self._started[1]))
                self.partner_turn.release()
            while not self.my_turn.acquire(timeout=0.05):
                if self.partner_done.is_set():  # the partner finished: no turn to wait for
                    break
            self._started = time.process_time(), time.perf_counter()
            yield batch
        self.finish()

    def finish(self) -> None:
        """Leave the turns (the last step, which runs into the loop's teardown, is not timed)."""
        if not self.done.is_set():
            self.done.set()
            self.partner_turn.release()


def new_model(name: str) -> torch.nn.Module:
    spec, vocab_size = MODELS[name]
    return build_model(spec, vocab_size=vocab_size, dropout=0.0)


def hand_loop(model: torch.nn.Module, data: TimedTokens, steps: int) -> None:
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


def trainer_loop(model: torch.nn.Module, data: TimedTokens, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="composerlite-overhead-") as run_dir:
        console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)
        logger = Logger([RecordList(), *build_loggers(RunConfig())])
        logger.open(RunInfo(run_dir=location(run_dir), config={}, console=console))
        trainer = Trainer(model=model, train_data=data,
                          max_duration=f"{steps}ba", logger=logger, run_dir=run_dir,
                          callbacks=[SpeedMonitor(window=20, warmup_steps=1, console=False)],
                          optimizer=OptimizerConfig(lr=LR), schedule=WarmupDecaySchedule(warmup=Time.parse("0.05dur")),
                          device="cpu", precision="fp32", threads=torch.get_num_threads())  # the hand loop's
        try:
            trainer.fit()
        finally:
            logger.close()
            console.file.close()


def step_ms(periods: list[tuple[float, float]], warmup: int, clock: int) -> float:
    """The median step of a run, after `warmup` steps, on clock 0 (CPU) or 1 (wall)."""
    return 1e3 * statistics.median(period[clock] for period in periods[warmup:])


LOOPS = {"hand": hand_loop, "trainer": trainer_loop}


def run_in_turns(kind: str, model: str, steps: int, seed: int, batch_size: int, seq_len: int, threads: int,
                 turns: dict, results) -> None:
    """One loop of a pair, in its own process."""
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # the small vocabulary's token-id warning
    seed_everything(seed)
    partner = "trainer" if kind == "hand" else "hand"
    data = TimedTokens(batch_size, seq_len, MODELS[model][1], steps, seed=seed, my_turn=turns[kind][0],
                       partner_turn=turns[partner][0], done=turns[kind][1], partner_done=turns[partner][1])
    try:
        LOOPS[kind](new_model(model), data, steps)
    finally:
        data.finish()
    results.put((kind, data.periods))


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% Student-t interval."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def measure(model: str, pairs: int, steps: int, warmup: int, batch_size: int, seq_len: int, threads: int,
            log=print) -> dict:
    # each loop in a fresh process forked from a server that imported the libraries once
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "rich", "composerlite.trainer", "composerlite.training"])
    samples = {(kind, clock): [] for kind in LOOPS for clock in ("cpu", "wall")}
    for pair in range(pairs):
        first = "hand" if pair % 2 == 0 else "trainer"
        turns = {kind: (context.Semaphore(1 if kind == first else 0), context.Event()) for kind in LOOPS}
        results = context.Queue()
        workers = [context.Process(target=run_in_turns, args=(kind, model, steps, pair, batch_size, seq_len,
                                                                threads, turns, results)) for kind in LOOPS]
        for worker in workers:
            worker.start()
        periods = {}
        while len(periods) < len(workers):
            try:
                kind, timed = results.get(timeout=1.0)
                periods[kind] = timed
            except queue.Empty:
                if any(worker.exitcode not in (None, 0) for worker in workers):
                    for worker in workers:
                        worker.kill()
                    raise SystemExit("a loop's process failed: see its traceback above")
        for worker in workers:
            worker.join()
        for kind in LOOPS:
            for index, clock in enumerate(("cpu", "wall")):
                samples[kind, clock].append(step_ms(periods[kind], warmup, index))
        log(f"pair {pair + 1}/{pairs} ({first} first): CPU ms a step: hand {samples['hand', 'cpu'][-1]:.3f}, trainer "
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
    torch.set_num_threads(args.threads)  # as the loops' processes do; named in the record
    load_before = os.getloadavg()
    result = measure(args.model, args.pairs, args.steps, args.warmup, args.batch_size, args.seq_len, args.threads)
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
