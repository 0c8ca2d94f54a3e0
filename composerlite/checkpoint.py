"""Checkpoints: everything needed to continue a run exactly, written so that none is ever half there.

Layout of one checkpoint folder (`RUN_DIR/checkpoints/ba00000010/`, local or any fsspec URL):
    model.safetensors   the model's full state_dict (HF key names; tied weights stored once)
    state.pt            optimizer, schedulers, timestamp, algorithm and callback state (callbacks'
                        by name), every rank's RNG states; loaded with `torch.load(weights_only=True)`,
                        which never unpickles code
    manifest.json       size and sha256 of the two files above; written last, so a folder without it
                        is an unfinished save and a mismatch means the files were truncated or changed
Each file is written atomically (`storage.write_atomic`). The data position needs no file of its own:
`timestamp.batch_in_epoch` tells `BatchStream.epoch` where to start, and it skips without reading.

Under torchrun every rank calls `save_checkpoint` and `load_checkpoint` (gathering an FSDP model is a
collective); only rank 0 reads and writes files. Model and optimizer state are saved in the full,
unsharded form of `torch.distributed.checkpoint.state_dict`, so a checkpoint loads into one process,
DDP or FSDP at any world size.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
import sys
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from composerlite import distributed
from composerlite.errors import UsageError
from composerlite.state import State
from composerlite.storage import Location, location

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^ba(\d{8,})$")


class CorruptCheckpoint(UsageError):
    """A checkpoint folder whose files do not match its manifest (or that has no manifest)."""


def checkpoint_name(state: State) -> str:
    return f"ba{state.timestamp.batch:08d}"


# -- RNG -----------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(saved: dict[str, Any]) -> None:
    random.setstate(_as_tuple(saved["python"]))
    kind, keys, *rest = saved["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- saving --------------------------------------------------------------------------------------

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_bytes(model: torch.nn.Module) -> bytes | None:
    """The full state_dict as safetensors bytes on rank 0 (None elsewhere). Tied tensors are stored once
    and their other names recorded in the metadata, so loading can restore every key."""
    full = get_model_state_dict(model, options=_FULL)
    if not distributed.is_rank_zero():
        return None
    tensors, aliases, seen = {}, {}, {}
    for key, tensor in full.items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if identity in seen:
            aliases[key] = seen[identity]
        else:
            seen[identity] = key
            tensors[key] = tensor.contiguous()
    return safetensors.torch.save(tensors, metadata={"aliases": json.dumps(aliases)})


def training_state(state: State) -> dict[str, Any]:
    """Everything but the weights. Collective (optimizer gathering, RNG of every rank)."""
    optimizer = get_optimizer_state_dict(state.model, state.optimizer, options=_FULL) if state.optimizer else {}
    return {
        "timestamp": state.timestamp.state_dict(),
        "optimizer": optimizer,
        "schedulers": [scheduler.state_dict() for scheduler in state.schedulers],
        "algorithm_names": [_label(algorithm) for algorithm in state.algorithms],
        "algorithms": [algorithm.state_dict() for algorithm in state.algorithms],
        "callbacks": dict(zip(callback_keys(state.callbacks), (callback.state_dict() for callback in state.callbacks))),
        "rng": distributed.all_gather_object(rng_state()),  # one entry per rank
    }


def _label(algorithm) -> str:
    return algorithm.name or type(algorithm).__name__


def callback_keys(callbacks: list[Any]) -> list[str]:
    """Stable names for callbacks' saved state: a `name` attribute or the class name; a repeated
    name gets `#1`, `#2`, ... on its later copies. Keyed, not positional, so a run with other
    callbacks (`composerlite eval` has none) still loads the checkpoint."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for callback in callbacks:
        name = getattr(callback, "name", None) or type(callback).__name__
        keys.append(f"{name}#{seen[name]}" if name in seen else name)
        seen[name] = seen.get(name, 0) + 1
    return keys


def save_checkpoint(state: State, run_dir: Location | str) -> Location | None:
    """Write `RUN_DIR/checkpoints/baNNNNNNNN/` (model, state, then the manifest). Called on every rank;
    returns the folder on rank 0. A failure (a full disk, a lost connection) leaves older checkpoints
    untouched and this one without a manifest, i.e. recognisably unfinished."""
    run_dir = location(run_dir) if isinstance(run_dir, str) else run_dir
    weights = model_bytes(state.model)
    rest = training_state(state)
    folder = run_dir.child(CHECKPOINTS_DIR, checkpoint_name(state))
    if distributed.is_rank_zero():
        buffer = io.BytesIO()
        torch.save(rest, buffer)
        files = {MODEL_FILE: weights, STATE_FILE: buffer.getvalue()}
        folder.child(MANIFEST_FILE).remove()  # re-saving a step: never leave an old manifest over new files
        folder.makedirs()
        for name, data in files.items():
            folder.child(name).write_bytes(data)
        manifest = {
            "format": FORMAT_VERSION,
            "step": state.timestamp.batch,
            "world_size": distributed.world_size(),
            "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()},
        }
        folder.child(MANIFEST_FILE).write_bytes(json.dumps(manifest, indent=1).encode())
    distributed.barrier()
    return folder if distributed.is_rank_zero() else None


def prune_checkpoints(run_dir: Location, keep: int) -> list[Location]:
    """Delete all but the newest `keep` complete checkpoints (rank 0 only); returns what was deleted.
    Unfinished folders are left for `find_checkpoints` to report; only complete ones count toward `keep`."""
    complete = [folder for folder in find_checkpoints(run_dir) if folder.child(MANIFEST_FILE).exists()]
    doomed = complete[:-keep] if keep > 0 else []
    for folder in doomed:
        folder.remove()
    return doomed


# -- finding and verifying ------------------------------------------------------------------------


def find_checkpoints(run_dir: Location) -> list[Location]:
    """Checkpoint folders under `run_dir/checkpoints`, oldest first (by step, not by name)."""
    root = run_dir.child(CHECKPOINTS_DIR)
    names = [name for name in root.listdir() if _NAME_RE.match(name)]
    return [root.child(name) for name in sorted(names, key=lambda name: int(_NAME_RE.match(name)[1]))]


def read_verified(folder: Location) -> dict[str, bytes]:
    """The checkpoint's files, checked against its manifest; raises `CorruptCheckpoint` naming the problem."""
    try:
        manifest = json.loads(folder.child(MANIFEST_FILE).read_bytes())
        entries = manifest["files"]
    except FileNotFoundError:
        raise CorruptCheckpoint(f"checkpoint {folder} is incomplete (no {MANIFEST_FILE}: the save was interrupted)") from None
    except (ValueError, KeyError, TypeError):
        raise CorruptCheckpoint(f"checkpoint {folder} has an unreadable {MANIFEST_FILE}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CorruptCheckpoint(f"checkpoint {folder} has format {manifest.get('format')}, expected {FORMAT_VERSION}")
    files = {}
    for name in (MODEL_FILE, STATE_FILE):
        if name not in entries:
            raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} does not list {name}")
        try:
            data = folder.child(name).read_bytes()
        except FileNotFoundError:
            raise CorruptCheckpoint(f"checkpoint {folder} is missing {name}") from None
        if len(data) != entries[name]["bytes"]:
            raise CorruptCheckpoint(
                f"checkpoint {folder}: {name} is truncated ({len(data)} bytes, manifest says {entries[name]['bytes']})"
            )
        if hashlib.sha256(data).hexdigest() != entries[name]["sha256"]:
            raise CorruptCheckpoint(f"checkpoint {folder}: {name} is corrupted (sha256 does not match the manifest)")
        files[name] = data
    return files


def read_step(folder: Location) -> int:
    """The training step a (verified) checkpoint was taken at."""
    return int(json.loads(folder.child(MANIFEST_FILE).read_bytes())["step"])


def is_checkpoint(folder: Location) -> bool:
    return folder.child(MANIFEST_FILE).exists() or folder.child(MODEL_FILE).exists()


def newest_valid_checkpoint(run_dir: Location) -> Location | None:
    """The newest checkpoint that verifies; each newer broken one is reported on stderr and skipped."""
    for folder in reversed(find_checkpoints(run_dir)):
        try:
            read_verified(folder)
        except CorruptCheckpoint as problem:
            print(f"composerlite: skipping {problem}", file=sys.stderr)
            continue
        return folder
    return None


def resolve_resume(target: str) -> Location:
    """`--resume` accepts a checkpoint folder or a run directory (its newest valid checkpoint)."""
    where = location(target)
    if is_checkpoint(where):
        return where
    if not where.exists():
        raise UsageError(f"--resume {target}: no such checkpoint or run directory")
    newest = newest_valid_checkpoint(where)
    if newest is None:
        raise UsageError(f"--resume {target}: no valid checkpoint in it")
    return newest


# -- loading -------------------------------------------------------------------------------------


def load_checkpoint(state: State, folder: Location | str) -> None:
    """Restore `state` from `folder`, which rank 0 reads, verifies and broadcasts. Raises `UsageError`
    when the checkpoint is corrupt or belongs to a different model or algorithm set."""
    folder = location(folder) if isinstance(folder, str) else folder
    weights, rest, problem = None, None, None
    # Sharded (not gathered) state_dict: DTensor shapes are global, and getting it is not a collective.
    expected = {key: tuple(value.shape) for key, value in get_model_state_dict(state.model).items()}
    if distributed.is_rank_zero():
        try:
            files = read_verified(folder)
            weights = model_tensors(files[MODEL_FILE])
            _check_same_model(expected, weights, folder)
            rest = _load_state(files[STATE_FILE], folder)
            _check_same_algorithms(state, rest, folder)
        except UsageError as error:
            problem = str(error)
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise UsageError(problem)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed.world_size() > 1)
    set_model_state_dict(state.model, weights or {}, options=options)
    if state.optimizer is not None:
        optimizer_state = rest["optimizer"] if rest is not None else {}
        set_optimizer_state_dict(state.model, state.optimizer, optimizer_state, options=options)
    rest = distributed.broadcast_object(
        {key: value for key, value in rest.items() if key != "optimizer"} if rest is not None else None
    )
    state.timestamp.load_state_dict(rest["timestamp"])
    for scheduler, scheduler_state in zip(state.schedulers, rest["schedulers"], strict=True):
        scheduler.load_state_dict(scheduler_state)
    for algorithm, algorithm_state in zip(state.algorithms, rest["algorithms"], strict=True):
        algorithm.load_state_dict(algorithm_state)
    _restore_callbacks(state.callbacks, rest["callbacks"], folder)
    saved_rng = rest["rng"]
    if len(saved_rng) == distributed.world_size():
        restore_rng_state(saved_rng[distributed.rank()])
    else:  # a different world size cannot replay per-rank randomness; keep each rank's seeded stream
        distributed.print_once(
            f"composerlite: checkpoint was written by {len(saved_rng)} processes, this run has "
            f"{distributed.world_size()}: weights, optimizer and data position resume exactly, RNG streams do not"
        )


def _restore_callbacks(callbacks: list[Any], saved: dict[str, Any] | list[Any], folder: Location) -> None:
    """Each callback gets the state saved under its key; one without saved state keeps its fresh
    state, and saved state no callback here claims is dropped, said once on stderr (empty state
    is dropped silently: there is nothing to lose)."""
    keys = callback_keys(callbacks)
    if isinstance(saved, list):  # older checkpoints: a positional list, meaningful only for the same count
        saved = dict(zip(keys, saved)) if len(saved) == len(keys) else {f"position {i}": s for i, s in enumerate(saved)}
    for key, callback in zip(keys, callbacks):
        if key in saved:
            callback.load_state_dict(saved[key])
    dropped = [key for key, value in saved.items() if key not in keys and value]
    if dropped:
        distributed.print_once(f"composerlite: checkpoint {folder} holds state of callbacks this run does not have "
                               f"({', '.join(dropped)}); ignoring it")


def _load_state(data: bytes, folder: Location) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise CorruptCheckpoint(
            f"checkpoint {folder}: {STATE_FILE} holds objects other than tensors and plain data; "
            f"refusing to unpickle it ({first})"
        ) from None


def model_tensors(data: bytes) -> dict[str, torch.Tensor]:
    tensors = safetensors.torch.load(data)
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    aliases = json.loads(header.get("__metadata__", {}).get("aliases", "{}"))
    for alias, original in aliases.items():
        tensors[alias] = tensors[original]
    return tensors


def _check_same_model(expected: dict[str, tuple], saved: dict[str, torch.Tensor], folder: Location) -> None:
    for key, shape in expected.items():
        if key not in saved:
            raise UsageError(f"checkpoint {folder} is for a different model: it has no '{key}'")
        if tuple(saved[key].shape) != shape:
            raise UsageError(
                f"checkpoint {folder} is for a different model: '{key}' is {tuple(saved[key].shape)}, this model's is {shape}"
            )
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise UsageError(f"checkpoint {folder} is for a different model: it has '{extra[0]}' that this model lacks")


def _check_same_algorithms(state: State, saved: dict[str, Any], folder: Location) -> None:
    names = [_label(algorithm) for algorithm in state.algorithms]
    if saved["algorithm_names"] != names:
        raise UsageError(
            f"checkpoint {folder} was trained with algorithms {saved['algorithm_names'] or 'none'}, "
            f"this run has {names or 'none'}: resume with the same --algo list"
        )
