"""Where a run runs, resolved once for `train`, `evaluate_run` and `measure_throughput` alike.

    device     "auto": the first CUDA GPU if there is one, else the CPU; "cpu", "cuda", "cuda:N"
    precision  "auto": AUTO_PRECISION below; "fp32", "bf16", or "fp16" (GPUs only)
    threads    intra-op CPU threads, `default_threads()` unless given; the Trainer pins them, and on a
               CPU keeps freed memory for reuse (`kept_freed_memory`)

bf16 is chosen only where the device computes it natively: emulated bf16 matrix multiplication on
a CPU without avx512_bf16 or AMX is far slower than fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from composerlite.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported where a device or dtype is needed, not here: the command line checks its flags
# (`check_device`, the precision names, `AUTO_PRECISION` in --help) without it.
PRECISION_NAMES = ("fp32", "bf16", "fp16")
AUTO_PRECISION = "bf16 where the device computes it natively (GPUs that support it, CPUs with avx512_bf16 or AMX), else fp32"


@functools.cache
def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_threads() -> int:
    """The intra-op CPU threads a run uses unless told otherwise: the physical cores this process may
    run on, shared evenly by the processes a launcher started on this machine. Never the caller's own
    setting (OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads): a float sum split over more
    threads rounds differently, so that would make the same run's numbers depend on where it was
    started from (pytest pins 2 threads, its subprocesses took the core count, torchrun sets 1)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:  # no sysfs topology (some containers): count logical CPUs
            cores.add(("cpu", str(cpu)))
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    return max(1, len(cores) // max(1, local_processes))


def __getattr__(name: str):
    if name == "PRECISIONS":  # precision -> the autocast dtype (None: no autocast)
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def pinned_runtime(threads: int, device: torch.device):
    """Inside: torch's intra-op thread count set to `threads` (the caller's restored after) and, on a
    CPU device, freed memory kept for reuse (`kept_freed_memory`). Setting the thread count also
    turns off MKL's per-call choice of thread count (its "dynamic" mode, on in a process that never
    set one), another way two processes could split the same sum differently. On a CPU, oneMKL's
    VML kernels are chosen first, in one thread (`settle_vml_dispatch`)."""
    import torch

    if device.type == "cpu":
        settle_vml_dispatch()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with kept_freed_memory() if device.type == "cpu" else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(previous)


# The float functions ATen hands to oneMKL's VML on a CPU (`IMPLEMENT_VML_MKL` in ATen/cpu/vml.h).
VML_FUNCTIONS = (
    "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
    "tan", "tanh", "trunc",
)


@functools.cache
def settle_vml_dispatch() -> None:
    """Calls each VML function once on one element, in one thread. oneMKL picks a VML function's
    kernel on its first call; on oneMKL 2024.2 (torch's CPU wheels, 2.13 included) a first call
    made by several intra-op threads at once can run a low-accuracy kernel on one thread's chunk
    (pytorch/pytorch#188792), and two runs of one seed then part in the last digits: seen once in
    15 verdict runs of gpt2-cpu on a 2-core Intel Xeon, from AdamW's first steps (its first `sqrt`
    on the embedding). ATen's own fix (pytorch/pytorch#188791) is this same warm-up; kept here
    until the wheels carry it or oneMKL >= 2025.0."""
    import torch

    half = torch.full((1,), 0.5)  # inside every function's domain (erfinv's is (-1, 1))
    for dtype in (torch.float32, torch.float64):
        for name in VML_FUNCTIONS:
            getattr(torch, name)(half.to(dtype))


# glibc's mallopt parameters (malloc.h) and their defaults.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
_keeping_freed_memory = False  # mirrors a process-wide allocator setting, so process-wide itself


@contextlib.contextmanager
def kept_freed_memory():
    """Inside: glibc's malloc keeps freed memory for the next allocation instead of returning it to
    the kernel; outside, its defaults again (and what it kept is returned). Elsewhere than glibc,
    nothing changes.

    Why: glibc serves every large allocation with a fresh mmap and unmaps it on free, and a CPU
    training step allocates and frees its large activations every step (the batch x seq x 50,257
    logits alone are 206 MB on the CPU preset), so each step page-faults them in again, zeroed by
    the kernel: 440 ms of kernel time in a 1.0 s preset step, 5 ms with this. The result of every
    operation is unchanged. Done with mallopt, not by preloading jemalloc or tcmalloc, which a pip
    install cannot provide."""
    global _keeping_freed_memory
    libc = _glibc()
    if libc is None or _keeping_freed_memory:  # not glibc, or an enclosing block already keeps it
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)  # large blocks come from the heap, where a freed one is reused
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and the heap's top is not handed back after each step
    _keeping_freed_memory = True
    try:
        yield
    finally:
        _keeping_freed_memory = False
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    """The C library, if it is glibc (the one whose mallopt parameters are used above); else None."""
    import ctypes

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (macOS, musl)
        return None
    return ctypes.CDLL("libc.so.6")


def check_device(device: str) -> str:
    """A device name this resolver knows (whether this machine has it is `resolve_device`'s to say)."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(device: str) -> torch.device:
    import torch

    if check_device(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"`device={device}` requested but no CUDA GPU is available")
    return torch.device(device)


def native_precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions `device` computes at full speed."""
    import torch

    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32", "bf16") if cpu_supports_bf16() else ("fp32",)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if "bf16" in native_precisions(device) else "fp32"
    if precision not in PRECISION_NAMES:
        raise ConfigError(f"unknown `precision={precision}`; choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs a GPU; use bf16 or fp32 on CPU")
    return precision


@dataclasses.dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    torch_device = resolve_device(device)
    return Runtime(torch_device, resolve_precision(precision, torch_device))
