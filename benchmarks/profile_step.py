"""Where a training step's time goes: torch.profiler over a few steps of the real Trainer.

Answers the question a missed throughput target leaves open: is the device busy (then which
kernels take the time) or idle (then the host is the bottleneck: Python overhead, launches, syncs)?
Writes JSON with the step's wall time, the device's kernel time per step (busy fraction), the top
kernels (or CPU ops on a CPU run) by self time, and the count of host-device synchronizing runtime
calls per step. The profiler is attached as an ordinary `Callback`, as a user's plugin would be.

    python benchmarks/profile_step.py --model gpt2-52m --algo fused_kernels --device cuda
    python benchmarks/profile_step.py --smoke        # gpt2-tiny on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from composerlite import Callback
from composerlite.core.logger import Logger
from composerlite.models import build_model
from composerlite.observe.speed_monitor import device_name
from composerlite.registry import build_algorithm, split_spec
from composerlite.run.loop import Trainer, seed_everything
from composerlite.run.throughput import RandomTokens, batch_shape, write_json
from composerlite.system.runtime import resolve_runtime

# Runtime calls that make the host wait for the device (a D2H copy waits for the stream too).
SYNCHRONIZING = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
# CPU ops whose self time is matrix multiplication (MKL/oneDNN GEMMs; attention's GEMMs run inside
# the SDPA kernels and are not counted). Their share of a step bounds what fusing the rest can gain.
CPU_GEMM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")


class StepProfiler(Callback):
    """Profiles `active` steps after `warmup` unprofiled ones; records each active step's wall time."""

    def __init__(self, profiler: profile, warmup: int):
        self.profiler, self.warmup = profiler, warmup
        self.step_seconds: list[float] = []
        self._last: float | None = None

    def batch_end(self, state, logger) -> None:
        now = time.perf_counter()
        if state.timestamp.batch > self.warmup and self._last is not None:
            self.step_seconds.append(now - self._last)
        self._last = now
        self.profiler.step()


def summarize(profiler: profile, device: torch.device, steps: int, top: int) -> dict:
    events = profiler.key_averages()
    on_device = [e for e in events if e.device_type == DeviceType.CUDA] if device.type == "cuda" else []
    if on_device:
        ranked = sorted(on_device, key=lambda e: e.self_device_time_total, reverse=True)
        rows = [{"name": e.key[:160], "calls_per_step": e.count / steps, "ms_per_step": e.self_device_time_total / 1e3 / steps}
                for e in ranked[:top]]
        busy_ms = sum(e.self_device_time_total for e in on_device) / 1e3 / steps
        kernels = sum(e.count for e in on_device) / steps
        extra = {}
    else:
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        rows = [{"name": e.key[:160], "calls_per_step": e.count / steps, "ms_per_step": e.self_cpu_time_total / 1e3 / steps}
                for e in ranked[:top]]
        busy_ms, kernels = None, None
        gemm_ms = sum(e.self_cpu_time_total for e in events if e.key in CPU_GEMM_OPS) / 1e3 / steps
        extra = {"gemm_ms_per_step": gemm_ms,
                 "op_ms_per_step": sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e3 / steps}
    syncs = {e.key: e.count / steps for e in events if e.key.startswith(SYNCHRONIZING)}
    return {"top": rows, "device_busy_ms_per_step": busy_ms, "device_ops_per_step": kernels,
            "synchronizing_calls_per_step": syncs, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-52m")
    parser.add_argument("--algo", dest="algorithms", action="append", default=[])
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup-steps", type=int, default=4, help="unprofiled steps first (compilation)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/profile_<device>_<model>_<date>.json)")
    parser.add_argument("--smoke", action="store_true", help="gpt2-tiny on CPU, batch 2 x 32, 1 + 2 steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.device, args.batch_size, args.seq_len, args.warmup_steps, args.steps = "gpt2-tiny", "cpu", 2, 32, 1, 2
    runtime = resolve_runtime(args.device, args.precision)
    device, precision = runtime.device, runtime.precision
    batch_size, seq_len = batch_shape(device, args.batch_size, args.seq_len)
    seed_everything(0)
    model = build_model(args.model, dropout=0.0, n_positions=max(1024, seq_len))
    total = args.warmup_steps + args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = profile(activities=activities, schedule=schedule(wait=0, warmup=args.warmup_steps, active=args.steps, repeat=1))
    recorder = StepProfiler(profiler, args.warmup_steps)
    run_dir = Path(tempfile.mkdtemp(prefix="composerlite-profile-"))
    try:
        settings = {"max_duration": f"{total}ba", "run_dir": str(run_dir), "warmup": "0ba", "precision": precision,
                    "device": str(device), "seed": 0}
        trainer = Trainer(settings, model=model, train_data=RandomTokens(batch_size, seq_len, model.config.vocab_size, total),
                          logger=Logger([]), algorithms=[build_algorithm(*split_spec(spec)) for spec in args.algorithms],
                          callbacks=[recorder])
        with profiler:
            trainer.fit()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    step_ms = 1e3 * sum(recorder.step_seconds) / max(len(recorder.step_seconds), 1)
    result = {
        "model": args.model, "algorithms": args.algorithms, "batch_size": batch_size, "seq_len": seq_len,
        "precision": precision, "device_name": device_name(device), "torch": torch.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "note": "profiled steps run slower than unprofiled ones (the profiler's own overhead)",
        "step_ms": step_ms, "tokens_per_s": batch_size * seq_len / step_ms * 1e3,
        **summarize(profiler, device, args.steps, args.top),
    }
    if result["device_busy_ms_per_step"] is not None:
        result["device_busy_fraction"] = result["device_busy_ms_per_step"] / step_ms
    if "gemm_ms_per_step" in result:  # Amdahl: with everything but the GEMMs free, the step takes gemm_ms
        result["gemm_fraction"] = result["gemm_ms_per_step"] / step_ms
        result["speedup_bound_at_same_gemm_time"] = step_ms / result["gemm_ms_per_step"]
    out = args.out or f"benchmarks/results/profile_{device.type}_{args.model}_{datetime.date.today()}.json"
    write_json(out, result)
    busy = f", device busy {result['device_busy_fraction']:.0%}" if "device_busy_fraction" in result else ""
    if "gemm_fraction" in result:
        busy = f", GEMMs {result['gemm_fraction']:.0%} of it (bound {result['speedup_bound_at_same_gemm_time']:.2f}x)"
    print(f"{args.model} {'+'.join(args.algorithms) or 'baseline'}: {step_ms:.1f} ms a step{busy}; syncs a step "
          f"{result['synchronizing_calls_per_step']}; wrote {out}")
    for row in result["top"][:10]:
        print(f"  {row['ms_per_step']:8.2f} ms  x{row['calls_per_step']:<6.1f} {row['name'][:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
