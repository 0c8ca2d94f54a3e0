"""Multi-process training on the engine users already have: `torchrun` sets RANK/WORLD_SIZE/LOCAL_RANK
and MASTER_ADDR/PORT, we join the process group and wrap the (already converted) model in DDP or FSDP2.

Outside torchrun every helper here is the single-process identity, so the trainer has one code path.
Batch semantics: `batch_size` is the global batch; each rank trains on `batch_size / world_size`
sequences of its own disjoint shard, and gradients are averaged, so N processes follow the same
loss curve as one process with the same global batch (up to float summation order).
"""

from __future__ import annotations

import atexit
import datetime
import io
import os
import sys
from typing import Any

import torch
import torch.distributed as dist

from composerlite.errors import ConfigError

PARALLEL_MODES = ("ddp", "fsdp")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> torch.device | None:
    """Join the torchrun process group (once). Returns this rank's device on CUDA, None on CPU or single process."""
    if not launched_by_torchrun() or dist.is_initialized():
        return None
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = None
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # Long timeout: rank 0 may spend minutes tokenizing a corpus or writing a checkpoint to S3.
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), device_id=device)
    # Torn down at exit, not after each run: later runs in the same process (tests, notebooks) reuse it.
    atexit.register(shutdown)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# Whether this torch was built with torch.distributed: fixed for the process, and asked every step.
_AVAILABLE = dist.is_available()


def active() -> bool:
    return _AVAILABLE and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def print_once(message: str) -> None:
    if is_rank_zero():
        print(message, file=sys.stderr)


# Objects travel as torch.save bytes: tensors inside objects do not survive the collectives' own
# pickling on every torch version, and loading them back with weights_only keeps it to plain data.
def _pack(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _unpack(blob: bytes) -> Any:
    return torch.load(io.BytesIO(blob), weights_only=True)


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's `value` (tensors and plain data), in rank order, on every rank."""
    if not active():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, _pack(value))
    return [_unpack(blob) for blob in gathered]


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` (tensors and plain data) on every rank."""
    if not active():
        return value
    box = [_pack(value) if is_rank_zero() else None]
    dist.broadcast_object_list(box, src=0)
    return _unpack(box[0])


def all_reduce_mean(value: float, device: torch.device) -> float:
    """The mean of a per-rank float over ranks (train loss, NaN checks): every rank gets the same number."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / world_size()


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest per-rank int on every rank (a signal that reached only some ranks, say)."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def wrap(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 around the converted model (after Event.INIT, so algorithms see a plain module)."""
    if not active():
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard each transformer block, then the root (embeddings, final norm, tied head):
        # the per-block units are what lets FSDP free a block's full weights after using it.
        for module in model.modules():
            if type(module).__name__.endswith("Block"):
                fully_shard(module)
        fully_shard(model)
        return model
    raise ConfigError(f"unknown `parallel={mode}`; choose one of: {', '.join(PARALLEL_MODES)}")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside wrappers, however nested: DDP, DataParallel and FSDP1 keep it in
    `.module`, torch.compile in `._orig_mod`. Read model attributes (`.config`) through this.
    FSDP2's `fully_shard` changes the module's class in place, so there is nothing to unwrap."""
    # Imported here: Dynamo and FSDP take about a second each to import, which a process that
    # never wraps a model (the trainer has already imported them when it does) should not pay.
    from torch._dynamo.eval_frame import OptimizedModule
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel, FullyShardedDataParallel)):
            model = model.module
        elif isinstance(model, OptimizedModule):
            model = model._orig_mod
        else:
            return model


def per_rank_batch_size(global_batch: int) -> int:
    size = world_size()
    if global_batch % size:
        raise ConfigError(f"`batch_size={global_batch}` is the global batch and must divide evenly over {size} processes")
    return global_batch // size
