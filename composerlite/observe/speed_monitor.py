"""`SpeedMonitor`: tokens/s, samples/s, MFU and peak memory, per step in metrics.jsonl and on the console.

MFU (model FLOPs utilization, PaLM appendix B) = achieved model FLOPs/s / the devices' peak.
Model FLOPs per token are `composerlite.models.flops_per_token` on the model actually trained
(its measured parameter count, 6N + 12 L d T), less any vocabulary padding (padded rows are not
model FLOPs, so `pad_vocab` cannot inflate MFU). The peak comes from `PEAK_FLOPS` (dense, no
sparsity, by device name and precision) unless the user gives one (`peak_flops=`, or the rate
`measured_matmul_peak` measures); with neither (e.g. a CPU) MFU is left out rather than guessed.
"""

from __future__ import annotations

import collections
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from composerlite.core.callback import Callback
from composerlite.system import distributed
from composerlite.system.runtime import PRECISIONS

# Vendor dense peaks, FLOP/s, by a substring of torch.cuda.get_device_name() (first match wins:
# more specific names first) and the run's precision. fp32 is the non-tensor-core rate (PyTorch
# keeps TF32 off for matmuls by default). Sources: NVIDIA H200, H100 and A100 datasheets.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.5e12, "fp16": 756.5e12, "fp32": 51.2e12},
    "H100": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_flops(device: torch.device, precision: str, table: dict[str, dict[str, float]] = PEAK_FLOPS) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for `device` at `precision`; (None, reason) if unknown."""
    name = device_name(device)
    for key, peaks in table.items():
        if key in name and precision in peaks:
            return peaks[precision], f"table: {key} {precision}"
    return None, f"no peak known for {name} {precision}"


def matmul_dtype(device: torch.device, precision: str) -> torch.dtype:
    """fp32 on CPU (its bf16 matmuls are emulated on many CPUs); the precision's dtype on CUDA."""
    return (PRECISIONS[precision] or torch.float32) if device.type == "cuda" else torch.float32


def matmul_size(device: torch.device) -> int:
    """`measured_matmul_peak`'s default: large enough to reach the device's matmul rate, small
    enough to take well under a second (1024 on CPU, 8192 on CUDA)."""
    return 8192 if device.type == "cuda" else 1024


def measured_matmul_peak(device: torch.device | str, precision: str = "fp32", size: int | None = None,
                         warmup: int = 2, reps: int = 5) -> float:
    """FLOP/s of a `size` x `size` matmul on `device` (default `matmul_size`; dtype `matmul_dtype`):
    the fastest of `reps` timed products after `warmup` untimed ones. A measured ceiling for MFU
    where the vendor table has no entry (CPUs). Uses its own generator, so the training RNG
    streams are untouched."""
    device = torch.device(device)
    n = size or matmul_size(device)
    dtype = matmul_dtype(device, precision)
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.rand(n, n, generator=generator, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    fastest = float("inf")
    for _ in range(reps):
        sync()  # a timing of the kernel itself, so here (unlike in SpeedMonitor) the GPU is waited for
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        fastest = min(fastest, time.perf_counter() - start)
    return 2.0 * n**3 / fastest


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of the model as built, minus padded vocabulary rows. Reads through
    DDP/FSDP/torch.compile wrappers (`distributed.unwrap_model`)."""
    from composerlite.models import flops_per_token

    model = distributed.unwrap_model(model)
    config = model.config
    padded_rows = config.vocab_size - (getattr(config, "unpadded_vocab_size", None) or config.vocab_size)
    return flops_per_token(model, seq_len) - 6.0 * padded_rows * config.n_embd


def reset_peak_memory(device: torch.device) -> bool:
    """Start a fresh peak-memory measurement; False where the platform cannot reset it (then the
    CPU peak is the process's since it started)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """(GiB, what it measures): the CUDA allocator's peak, or the process's peak RSS on CPU (since
    the last `reset_peak_memory` on Linux, else since the process started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max_memory_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20, "process peak RSS"
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) / 2**20, "process peak RSS since start"


class SpeedMonitor(Callback):
    """Logs `throughput/*` and `memory/*` into each step's metrics record.

    window          rates are averaged over the last `window` steps
    warmup_steps    steps after FIT_START left out of the rates (compilation, allocator warmup;
                    a resumed run warms up again); the CUDA memory peak is reset after them
    peak_flops      the device's peak FLOP/s, overriding the table (None: look it up)
    peak_source     what `peak_flops` is, for the record ("user", "measured: 1024x1024 matmul", ...)
    console         print a one-line summary at the end of training (rank 0)

    A step's time runs from its BEFORE_DATALOADER to its BATCH_END (`time.perf_counter`): data
    loading, logging and the algorithms' work in the step count; evaluation, checkpoint saving and
    whatever runs between one step's BATCH_END and the next step's start do not.
    No `torch.cuda.synchronize` here: the trainer reads the loss (`.item()`) once per step, which
    waits for that step's forward and backward, so the GPU's queue never runs more than about a
    step ahead of the CPU; over a window of steps the CPU-side period then equals the GPU's step
    time in steady state, and a synchronize would only stall the pipeline it is measuring.
    """

    def __init__(self, window: int = 20, warmup_steps: int = 1, peak_flops: float | None = None,
                 peak_source: str = "user", console: bool = True):
        self.window = window
        self.warmup_steps = warmup_steps
        self.user_peak = peak_flops
        self.user_peak_source = peak_source
        self.console = console
        # (seconds, tokens, samples, model FLOPs) of every measured step, and of the last `window`
        # steps by column (four sums a step instead of transposing the window)
        self.measured: list[tuple[float, int, int, float]] = []
        self.window_columns = tuple(collections.deque(maxlen=window) for _ in range(4))
        self.peak: float | None = None
        self.peak_source = ""
        self.warmup_s = 0.0  # FIT_START to the last warmup step's BATCH_END, less the time between steps
        self.excluded_s = 0.0  # time between steps (evaluation, checkpoints) since FIT_START, left out of the timings
        self.summary: dict[str, Any] = {}
        self._flops_per_token: dict[int, float] = {}  # by sequence length (seq_len_warmup varies it)
        self._started = self._mark = 0.0  # perf_counter at FIT_START / at the previous BATCH_END
        self._counts = (0, 0)  # timestamp tokens and samples at the previous BATCH_END
        self._excluded = 0.0  # eval/checkpoint seconds inside the current period
        self._eval_started: float | None = None
        self._seen = 0  # steps since FIT_START
        self._world = 1
        self._memory: tuple[int, float] | None = None  # (step, peak GiB) of the last peak-memory reading
        self._memory_every = 1  # steps between peak-memory readings (see `_step_memory_gib`)

    def fit_start(self, state, logger) -> None:
        if self.user_peak is not None:
            self.peak, self.peak_source = self.user_peak, self.user_peak_source
        else:
            self.peak, self.peak_source = peak_flops(state.device, state.precision)
        reset_peak_memory(state.device)
        self._world = distributed.world_size()  # timestamp counts are global: MFU is over all devices
        for column in self.window_columns:
            column.clear()
        self.measured.clear()
        self.warmup_s = self.excluded_s = self._excluded = 0.0
        self._seen = 0
        self._memory = None
        self._memory_every = 1 if state.device.type == "cuda" else self.window  # `device.type` costs ~3 us: read once
        self._started = self._mark = time.perf_counter()
        self._counts = (state.timestamp.token.value, state.timestamp.sample.value)

    def batch_end(self, state, logger) -> None:
        now = time.perf_counter()
        seconds = now - self._mark - self._excluded
        self._mark, self._excluded = now, 0.0
        t = state.timestamp
        tokens, samples = t.token.value - self._counts[0], t.sample.value - self._counts[1]
        self._counts = (t.token.value, t.sample.value)
        self._seen += 1
        seq_len = int(state.batch["input_ids"].shape[1])
        flops_per_token = self._flops_per_token.get(seq_len)
        if flops_per_token is None:
            flops_per_token = self._flops_per_token[seq_len] = model_flops_per_token(state.model, seq_len)
        flops = tokens * flops_per_token
        # Every step's FLOPs, warmup included: benchmarks add them up into FLOPs-to-target.
        metrics = {"model_flops": flops}
        if self._seen <= self.warmup_steps:
            logger.log_metrics(metrics)
            if self._seen == self.warmup_steps:
                self.warmup_s = now - self._started - self.excluded_s
                reset_peak_memory(state.device)
                self._memory = None
            return
        self.measured.append((seconds, tokens, samples, flops))
        seconds_column, tokens_column, samples_column, flops_column = self.window_columns
        seconds_column.append(seconds)
        tokens_column.append(tokens)
        samples_column.append(samples)
        flops_column.append(flops)
        metrics.update(self._rates(*map(sum, self.window_columns), self._step_memory_gib(state.device)))
        logger.log_metrics(metrics)  # one update of the record: the step's FLOPs, then its rates

    def _step_memory_gib(self, device: torch.device) -> float:
        """The peak memory a step's record shows: read every step on CUDA (an allocator counter),
        every `window` steps on a CPU, where reading /proc costs more than the rest of the step's
        monitoring."""
        if self._memory is None or self._seen - self._memory[0] >= self._memory_every:
            self._memory = (self._seen, peak_memory_gib(device)[0])
        return self._memory[1]

    # Time to leave out: everything from BATCH_END to the next step's BEFORE_DATALOADER. That span
    # holds the evaluation and the checkpoint save when due, the step's metrics write (microseconds)
    # and every BATCH_CHECKPOINT callback, whichever order they run in: a benchmark's turn-taking
    # callback waits there while other runs train, and that wait is no part of this run's step.
    # Evaluation has its own events and is already in `_excluded`, which counts only this span (it
    # is reset at BATCH_END), so excluding "all since BATCH_END" twice (at an epoch's end) is exact.
    def before_dataloader(self, state, logger) -> None:
        self._exclude(time.perf_counter() - self._mark - self._excluded)

    def eval_start(self, state, logger) -> None:
        self._eval_started = time.perf_counter()

    def eval_end(self, state, logger) -> None:
        if self._eval_started is not None:
            self._exclude(time.perf_counter() - self._eval_started)
            self._eval_started = None

    def _exclude(self, seconds: float) -> None:
        self._excluded += seconds
        self.excluded_s += seconds

    def rates(self, steps, memory_gib: float) -> dict[str, float]:
        """The rates over `steps`, (seconds, tokens, samples, model FLOPs) tuples."""
        return self._rates(*(sum(column) for column in zip(*steps)), memory_gib)

    def _rates(self, seconds: float, tokens: int, samples: int, flops: float, memory_gib: float) -> dict[str, float]:
        flops_per_s = flops / seconds
        metrics = {
            "throughput/tokens_per_s": tokens / seconds,
            "throughput/samples_per_s": samples / seconds,
            "throughput/model_flops_per_s": flops_per_s,
        }
        if self.peak:
            metrics["throughput/mfu"] = flops_per_s / (self.peak * self._world)
        metrics["memory/peak_gib"] = memory_gib
        return metrics

    def fit_end(self, state, logger) -> None:
        if not self.measured:
            return
        tokens = sum(step[1] for step in self.measured)
        self.summary = {
            **self.rates(self.measured, peak_memory_gib(state.device)[0]),
            "measured_steps": len(self.measured),
            "step_ms": 1e3 * sum(step[0] for step in self.measured) / len(self.measured),
            "flops_per_token": sum(step[3] for step in self.measured) / tokens if tokens else 0.0,
            "peak_flops": self.peak,
            "peak_flops_source": self.peak_source,
            "world_size": self._world,
            "warmup_s": self.warmup_s,
            "excluded_s": self.excluded_s,
            "memory_kind": peak_memory_gib(state.device)[1],
        }
        if self.console:
            distributed.print_once(speed_line(self.summary))


def speed_line(summary: dict[str, Any]) -> str:
    """A `SpeedMonitor.summary` as one line: tokens/s, samples/s, MFU when known, peak memory."""
    s = summary
    mfu = f"  MFU {s['throughput/mfu']:.1%}" if "throughput/mfu" in s else ""
    return (f"speed: {s['throughput/tokens_per_s']:,.0f} tokens/s  {s['throughput/samples_per_s']:,.1f} samples/s"
            f"{mfu}  peak memory {s['memory/peak_gib']:.2f} GiB ({s['memory_kind']})")
