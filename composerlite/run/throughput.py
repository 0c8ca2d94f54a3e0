"""`measure_throughput`: a short fixed-step speed measurement of one model + algorithm set.

Trains on random tokens (no corpus needed) through the real Trainer, so algorithms compose exactly
as in `train`; the first `warmup_steps` (compilation, allocator growth) are left out. Returns a
record: device name, torch version, date, precision, tokens/s, samples/s, MFU, peak memory, and
each algorithm's state (what it applied or skipped, compile graph breaks). `measure_peak` times a
square matmul on the device first and takes that as MFU's peak, which gives a CPU (absent from the
vendor table) an MFU.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from composerlite.core.logger import Logger
from composerlite.errors import ConfigError
from composerlite.observe.speed_monitor import SpeedMonitor, device_name, matmul_dtype, matmul_size, measured_matmul_peak
from composerlite.registry import build_algorithm, split_spec
from composerlite.run.loop import Trainer, seed_everything
from composerlite.system.runtime import resolve_runtime


class RandomTokens:
    """A BatchStream stand-in: `pool` fixed batches of uniform random token ids, cycled."""

    def __init__(self, batch_size: int, seq_len: int, vocab_size: int, steps: int, seed: int = 0, pool: int = 4):
        generator = torch.Generator().manual_seed(seed)
        self.batch_size, self.seq_len, self.steps = batch_size, seq_len, steps
        self.batches = [torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator) for _ in range(pool)]

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int, start_batch: int = 0):
        for index in range(start_batch, self.steps):
            yield {"input_ids": self.batches[index % len(self.batches)]}


def batch_shape(device: torch.device, batch_size: int | None, seq_len: int | None) -> tuple[int, int]:
    """(batch size, sequence length), the defaults filled in: 32 x 1024 on a GPU, 4 x 256 on a CPU."""
    gpu = device.type == "cuda"
    batch_size = (32 if gpu else 4) if batch_size is None else batch_size
    seq_len = (1024 if gpu else 256) if seq_len is None else seq_len
    if batch_size < 1 or seq_len < 2:
        raise ConfigError(f"`batch_size` must be at least 1 and `seq_len` at least 2 (got {batch_size} and {seq_len})")
    return batch_size, seq_len


def measure_throughput(model_name: str, algorithms: list[str], *, batch_size: int | None = None, seq_len: int | None = None,
            steps: int = 10, warmup_steps: int = 3, precision: str = "auto", device: str = "auto",
            dropout: float = 0.0, peak_flops: float | None = None, measure_peak: bool = False,
            seed: int = 0) -> dict[str, Any]:
    """Build, convert and train `model_name` for warmup + steps on random tokens; returns the record.
    `measure_peak` times a matmul on the device first (`measured_matmul_peak`) and uses it as the peak."""
    from composerlite.models import build_model, get_spec

    try:
        get_spec(model_name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if steps < 1 or warmup_steps < 0:
        raise ConfigError("`steps` must be at least 1 and `warmup_steps` at least 0")
    if measure_peak and peak_flops is not None:
        raise ConfigError("give `peak_flops` or `measure_peak`, not both")
    runtime = resolve_runtime(device, precision)
    torch_device, precision = runtime.device, runtime.precision
    batch_size, seq_len = batch_shape(torch_device, batch_size, seq_len)
    algorithm_objects = [build_algorithm(*split_spec(spec)) for spec in algorithms]
    matmul_peak, peak_source = None, "user"
    if measure_peak:
        size = matmul_size(torch_device)
        matmul_peak = peak_flops = measured_matmul_peak(torch_device, precision, size)
        peak_source = f"measured: {size}x{size} {str(matmul_dtype(torch_device, precision)).removeprefix('torch.')} matmul"
    seed_everything(seed)
    model = build_model(model_name, dropout=dropout, n_positions=max(1024, seq_len))
    data = RandomTokens(batch_size, seq_len, model.config.vocab_size, warmup_steps + steps, seed=seed)
    monitor = SpeedMonitor(window=steps, warmup_steps=warmup_steps, peak_flops=peak_flops, peak_source=peak_source,
                           console=False)
    run_dir = Path(tempfile.mkdtemp(prefix="composerlite-throughput-"))
    try:
        # No LR warmup (the run default's 0.05dur): the LR does not change a step's speed, and the
        # committed measurements were taken without one.
        settings = {"max_duration": f"{warmup_steps + steps}ba", "run_dir": str(run_dir), "warmup": "0ba",
                    "precision": precision, "device": str(torch_device), "seed": seed}
        trainer = Trainer(settings, model=model, train_data=data, logger=Logger([]), algorithms=algorithm_objects,
                          callbacks=[monitor])
        summary = trainer.fit()
        algorithm_states = [{"name": a.name or type(a).__name__, **a.state_dict()} for a in trainer.state.algorithms]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    record = {
        "model": model_name, "algorithms": algorithms, "batch_size": batch_size, "seq_len": seq_len,
        "precision": precision, "dropout": dropout, "steps": steps, "warmup_steps": warmup_steps,
        "device": str(torch_device), "device_name": device_name(torch_device), "torch": torch.__version__,
        "transformers": _version("transformers"), "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "tokens_per_s": monitor.summary["throughput/tokens_per_s"],
        "samples_per_s": monitor.summary["throughput/samples_per_s"],
        "step_ms": monitor.summary["step_ms"],
        "mfu": monitor.summary.get("throughput/mfu"),
        "model_flops_per_s": monitor.summary["throughput/model_flops_per_s"],
        "flops_per_token": monitor.summary["flops_per_token"],
        "peak_flops": monitor.summary["peak_flops"], "peak_flops_source": monitor.summary["peak_flops_source"],
        "matmul_peak_flops": matmul_peak,
        "peak_memory_gib": monitor.summary["memory/peak_gib"], "memory_kind": monitor.summary["memory_kind"],
        "warmup_s": monitor.warmup_s, "final_loss": summary["final_train_loss"],
        "algorithm_state": algorithm_states,
    }
    del trainer, model
    release_memory()
    return record


def release_memory() -> None:
    """Between measurements in one process: drop compiled graphs (they guard on the old model and
    would count toward Dynamo's recompile limit) and cached CUDA blocks."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _version(package: str) -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version(package)
    except Exception:
        return None


def table(records: list[dict[str, Any]], title: str = "throughput") -> Table:
    out = Table(title=title)
    for column in ("model", "algorithms", "precision", "batch", "tokens/s", "vs base", "MFU", "step ms", "peak GiB", "warmup s", "notes"):
        out.add_column(column, justify="right" if column not in ("model", "algorithms", "precision", "notes") else "left")
    baselines = {(r["model"], r["batch_size"], r["precision"]): r["tokens_per_s"]
                 for r in records if not r.get("error") and not r["algorithms"]}
    for r in records:
        label = " + ".join(r["algorithms"]) or "baseline"
        if r.get("error"):
            out.add_row(r["model"], label, "-", str(r["batch_size"]), "-", "-", "-", "-", "-", "-", r["error"][:80])
            continue
        base = baselines.get((r["model"], r["batch_size"], r["precision"]))
        notes = "; ".join(
            f"skipped {name}" for state in r["algorithm_state"] for name in state.get("skipped", {})
        ) + "".join(f" graph breaks {s['graph_breaks']}" for s in r["algorithm_state"] if "graph_breaks" in s)
        out.add_row(r["model"], label, r["precision"], str(r["batch_size"]), f"{r['tokens_per_s']:,.0f}",
                    f"{r['tokens_per_s'] / base:.2f}x" if base else "-",
                    f"{r['mfu']:.1%}" if r["mfu"] is not None else "-", f"{r['step_ms']:.1f}",
                    f"{r['peak_memory_gib']:.2f}", f"{r['warmup_s']:.1f}", notes.strip())
    return out


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Atomic: a temporary file beside the target, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(temporary, path)


