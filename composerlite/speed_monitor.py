"""`SpeedMonitor`: tokens/s, samples/s, MFU and peak memory, per step in metrics.jsonl and on the console.

MFU (model FLOPs utilization, PaLM appendix B) = achieved model FLOPs/s / the device's peak.
Model FLOPs per token are `composerlite.models.flops_per_token` on the model actually trained
(its measured parameter count, 6N + 12 L d T), less any vocabulary padding (padded rows are not
model FLOPs, so `pad_vocab` cannot inflate MFU). The peak comes from `PEAK_FLOPS` (dense, no
sparsity, by device name and precision) unless the user gives one (`peak_flops=`); with neither
(e.g. a CPU) MFU is left out rather than guessed.
"""

from __future__ import annotations

import collections
import resource
import sys
from typing import Any

import torch

from composerlite.algorithm import Callback

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


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of the model as built, minus padded vocabulary rows."""
    from composerlite.models import flops_per_token

    config = model.config
    padded_rows = config.vocab_size - (getattr(config, "unpadded_vocab_size", None) or config.vocab_size)
    return flops_per_token(model, seq_len) - 6.0 * padded_rows * config.n_embd


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """(GiB, what it measures): the CUDA allocator's peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max_memory_allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) / 2**20, "process peak RSS"


class SpeedMonitor(Callback):
    """Logs `throughput/*` and `memory/*` into each step's metrics record.

    window          rates are averaged over the last `window` steps
    warmup_steps    steps left out of the rates (compilation, allocator warmup); the CUDA memory
                    peak is reset after them
    peak_flops      the device's peak FLOP/s, overriding the table (None: look it up)
    console         print a one-line summary at the end of training
    """

    def __init__(self, window: int = 20, warmup_steps: int = 1, peak_flops: float | None = None, console: bool = True):
        self.window = window
        self.warmup_steps = warmup_steps
        self.user_peak = peak_flops
        self.console = console
        self.steps: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=window)
        self.measured: list[tuple[float, int, int]] = []  # (seconds, tokens, samples) of each measured step
        self._last = (0.0, 0, 0)
        self.peak: float | None = None
        self.peak_source = ""
        self.flops_per_token = 0.0
        self.summary: dict[str, Any] = {}

    def fit_start(self, state, logger) -> None:
        if self.user_peak is not None:
            self.peak, self.peak_source = self.user_peak, "user"
        else:
            self.peak, self.peak_source = peak_flops(state.device, state.precision)
        if state.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(state.device)
        t = state.timestamp
        self._last = (t.wall_clock_s, t.token, t.sample)

    def batch_end(self, state, logger) -> None:
        t = state.timestamp
        seconds, tokens, samples = t.wall_clock_s - self._last[0], t.token - self._last[1], t.sample - self._last[2]
        self._last = (t.wall_clock_s, t.token, t.sample)
        seq_len = int(state.batch["input_ids"].shape[1])
        self.flops_per_token = model_flops_per_token(state.model, seq_len)
        if t.batch <= self.warmup_steps:
            if t.batch == self.warmup_steps and state.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(state.device)
            return
        self.steps.append((seconds, tokens, samples))
        self.measured.append((seconds, tokens, samples))
        logger.log_metrics(self.rates(self.steps, state.device))

    def rates(self, steps, device: torch.device) -> dict[str, float]:
        seconds = sum(step[0] for step in steps)
        tokens_per_s = sum(step[1] for step in steps) / seconds
        metrics = {
            "throughput/tokens_per_s": tokens_per_s,
            "throughput/samples_per_s": sum(step[2] for step in steps) / seconds,
            "throughput/model_flops_per_s": tokens_per_s * self.flops_per_token,
        }
        if self.peak:
            metrics["throughput/mfu"] = tokens_per_s * self.flops_per_token / self.peak
        metrics["memory/peak_gib"] = peak_memory_gib(device)[0]
        return metrics

    def fit_end(self, state, logger) -> None:
        if not self.measured:
            return
        gib, kind = peak_memory_gib(state.device)
        self.summary = {
            **self.rates(self.measured, state.device),
            "measured_steps": len(self.measured),
            "step_ms": 1e3 * sum(step[0] for step in self.measured) / len(self.measured),
            "flops_per_token": self.flops_per_token,
            "peak_flops": self.peak,
            "peak_flops_source": self.peak_source,
            "memory_kind": kind,
        }
        if self.console:
            mfu = f"  MFU {self.summary['throughput/mfu']:.1%}" if "throughput/mfu" in self.summary else ""
            print(
                f"speed: {self.summary['throughput/tokens_per_s']:,.0f} tokens/s  "
                f"{self.summary['throughput/samples_per_s']:,.1f} samples/s{mfu}  peak memory {gib:.2f} GiB ({kind})",
                file=sys.stderr,
            )
