"""Checkpoints: everything needed to continue a run exactly, written so that none is ever half there.
This module saves, verifies and loads one checkpoint folder; where a run's checkpoints live, which
one a run continues from and which are kept is `composerlite.run.run_directory`'s.

Layout of one checkpoint folder (`RUN_DIR/checkpoints/ba00000010/`, local or any fsspec URL):
    model.safetensors   the model's full state_dict (HF key names; tied weights stored once)
    state.pt            optimizer, schedulers, timestamp, algorithm and callback state (callbacks'
                        by name), every rank's RNG states; loaded with `torch.load(weights_only=True)`,
                        which never unpickles code
    manifest.json       size and sha256 of the two files above; written last, so a folder without it
                        is an unfinished save and a mismatch means the files were truncated or changed
Each file is written atomically (`storage.write_atomic`). The data position needs no file of its own:
`timestamp.batch_in_epoch` tells `BatchStream.epoch` where to start, and it skips without reading.

An FSDP2 run's checkpoint is sharded instead (manifest format 2): model and optimizer tensors are
`torch.distributed.checkpoint` (DCP) state, one file per rank plus DCP's index, written by every rank
in parallel, each rank holding only its shard:
    shards/__R_0.distcp rank R's shards of the weights and optimizer state
    shards/.metadata    DCP's index of them; unpickled with DCP's own metadata classes only
    state.pt            as above, with the optimizer's param groups and the names of tied weights
    manifest.json       size and sha256 of every file above (each rank hashes what it wrote), last
DCP reshards on load, so it resumes in any number of processes (one process, DDP, FSDP), and
`read_checkpoint` assembles the full weights in one process (`composerlite export` and `eval`).

Under torchrun every rank calls `save_checkpoint` and `load_checkpoint` (they are collectives). A full
checkpoint (one process, DDP) is written and read by rank 0 alone, in the unsharded form of
`torch.distributed.checkpoint.state_dict`, so it too loads into one process, DDP or FSDP at any
world size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import random
import re
import uuid
import warnings
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from composerlite.core.state import State
from composerlite.core.time import Timestamp
from composerlite.errors import ConfigError
from composerlite.system import distributed
from composerlite.system.distributed import unwrap_model
from composerlite.system.storage import Location, location

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1  # full: model.safetensors and state.pt
SHARDED_FORMAT_VERSION = 2  # FSDP2: DCP shards, one file per rank, and state.pt
SHARDS_DIR = "shards"
SHARDS_INDEX = f"{SHARDS_DIR}/.metadata"
_SHARD_NAME = r"__\d+_\d+\.distcp"  # DCP's file of rank R: __R_0.distcp
_SHARD_FILE_RE = re.compile(rf"^{SHARDS_DIR}/(\.metadata|{_SHARD_NAME})$")


class CorruptCheckpoint(ConfigError):
    """A checkpoint folder whose files do not match its manifest (or that has no manifest)."""


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


def training_state(state: State, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything but the weights. Collective (optimizer gathering, RNG of every rank). `optimizer`
    replaces the gathered optimizer state (a sharded checkpoint keeps its tensors in the shards)."""
    if optimizer is None:
        optimizer = get_optimizer_state_dict(state.model, state.optimizer, options=_FULL) if state.optimizer else {}
    return {
        "timestamp": state.timestamp.state_dict(),
        "optimizer": optimizer,
        "schedulers": [scheduler.state_dict() for scheduler in state.schedulers],
        "algorithm_names": [_label(algorithm) for algorithm in state.algorithms],
        "algorithms": [algorithm.state_dict() for algorithm in state.algorithms],
        "callbacks": dict(zip(callback_keys(state.callbacks), (callback.state_dict() for callback in state.callbacks))),
        "rng": distributed.all_gather_object(rng_state()),  # one entry per rank
        # What the summary and the eval schedule need when a finished run is launched again.
        "progress": {"eval_step": state.eval_step, "eval_metrics": state.eval_metrics, "train_loss": state.train_loss},
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


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is FSDP2-sharded: its checkpoints are then written as shards by every rank."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def save_checkpoint(state: State, folder: Location) -> None:
    """Write the checkpoint folder (the files, then the manifest; where a run's go is
    `run_directory.checkpoint_folder`'s). Called on every rank. A failure (a full disk, a lost
    connection) on any rank raises `OSError` on every rank, and leaves older checkpoints untouched and
    this one without a manifest, i.e. recognisably unfinished."""
    if is_sharded(state.model):
        _save_sharded(state, folder)
    else:
        weights = model_bytes(state.model)
        rest = training_state(state)
        _on_rank_zero_then_agree(lambda: _publish(folder, state, {MODEL_FILE: weights, STATE_FILE: _torch_bytes(rest)}))


def _torch_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _entry(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _publish(folder: Location, state: State, files: dict[str, bytes], written: dict[str, dict] | None = None,
             format_version: int = FORMAT_VERSION) -> None:
    """Rank 0: write `files`, then the manifest over them and over `written` (files other ranks already wrote)."""
    folder.child(MANIFEST_FILE).remove()  # re-saving a step: never leave an old manifest over new files
    folder.makedirs()
    for name, data in files.items():
        folder.child(name).write_bytes(data)
    manifest = {
        "format": format_version,
        "step": state.timestamp.batch.value,
        "world_size": distributed.world_size(),
        "files": {**(written or {}), **{name: _entry(data) for name, data in files.items()}},
    }
    folder.child(MANIFEST_FILE).write_bytes(json.dumps(manifest, indent=1).encode())


def _on_rank_zero_then_agree(write) -> None:
    """`write()` on rank 0; a storage failure there raises `OSError` on every rank (the others would
    otherwise wait for rank 0 at the next collective until the process group times out)."""
    problem = None
    if distributed.is_rank_zero():
        try:
            write()
        except OSError as error:
            if not distributed.active():
                raise
            problem = error.strerror or str(error)
    _agree(problem)


def _agree(problem: str | None) -> None:
    """Raise `OSError` on every rank if any rank had a `problem` (a collective)."""
    found = [problem for problem in distributed.all_gather_object(problem) if problem]
    if found:
        raise OSError(found[0])


def tied_names(model: torch.nn.Module) -> dict[str, str]:
    """{name: the name it is tied to} for parameters shared under several names (GPT-2's head and
    token embedding); the same on every rank, since it comes from the module structure."""
    first: dict[int, str] = {}
    aliases = {}
    for name, parameter in unwrap_model(model).named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            aliases[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return aliases


def _save_sharded(state: State, folder: Location) -> None:
    """Every rank writes its own shard file of the weights and optimizer state (DCP, via memory), then
    rank 0 writes state.pt and the manifest listing every rank's files."""
    aliases = tied_names(state.model)
    weights = {key: value for key, value in get_model_state_dict(state.model).items() if key not in aliases}
    optimizer = get_optimizer_state_dict(state.model, state.optimizer) if state.optimizer else {"state": {}, "param_groups": []}
    rest = training_state(state, optimizer={"param_groups": optimizer["param_groups"]})
    rest["model_aliases"] = aliases

    def clear():  # re-saving a step: never leave an old manifest, or another world size's shards, over new files
        folder.child(MANIFEST_FILE).remove()
        folder.child(SHARDS_DIR).remove()

    _on_rank_zero_then_agree(clear)
    # DCP writes into this process's in-memory filesystem (rank 0 adds the index); the files then go
    # to the run directory through `write_atomic`, so local and remote stores get the same guarantees.
    scratch = location(f"memory://composerlite-shards-{uuid.uuid4().hex}")
    written, problem = {}, None
    try:
        dcp.save({"model": weights, "optimizer": optimizer["state"]}, storage_writer=_shard_writer(scratch.url))
        for name in scratch.listdir():
            data = scratch.child(name).read_bytes()
            folder.child(SHARDS_DIR, name).write_bytes(data)
            written[f"{SHARDS_DIR}/{name}"] = _entry(data)
    except OSError as error:
        problem = error.strerror or str(error)
    finally:
        scratch.remove()
    _agree(problem)
    everyone = distributed.all_gather_object(written)
    files = {name: entry for rank_files in everyone for name, entry in rank_files.items()}
    _on_rank_zero_then_agree(lambda: _publish(folder, state, {STATE_FILE: _torch_bytes(rest)}, files, SHARDED_FORMAT_VERSION))


def _shard_writer(url: str) -> FsspecWriter:
    return FsspecWriter(url, sync_files=False)  # memory: nothing to sync; write_atomic fsyncs the real files


# -- verifying -----------------------------------------------------------------------------------


def read_manifest(folder: Location) -> dict[str, Any]:
    """The checkpoint's manifest, checked for shape; raises `CorruptCheckpoint` naming the problem."""
    try:
        manifest = json.loads(folder.child(MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise CorruptCheckpoint(f"checkpoint {folder} is incomplete (no {MANIFEST_FILE}: the save was interrupted)") from None
    except ValueError:
        raise CorruptCheckpoint(f"checkpoint {folder} has an unreadable {MANIFEST_FILE}") from None
    if not isinstance(manifest, dict):
        raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} is not a JSON object")
    if manifest.get("format") not in (FORMAT_VERSION, SHARDED_FORMAT_VERSION):
        raise CorruptCheckpoint(f"checkpoint {folder} has format {manifest.get('format')}, expected {FORMAT_VERSION} "
                                f"(full) or {SHARDED_FORMAT_VERSION} (sharded)")
    step, entries = manifest.get("step"), manifest.get("files")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} has no valid 'step' ({step!r})")
    if not isinstance(entries, dict):
        raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} 'files' is not a mapping of file name to size and sha256")
    if manifest["format"] == SHARDED_FORMAT_VERSION:
        # Only names a sharded checkpoint can hold: a manifest never points outside its folder.
        strange = sorted(name for name in entries if name != STATE_FILE and not _SHARD_FILE_RE.match(name))
        if strange:
            raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} lists '{strange[0]}', not a file of a sharded checkpoint")
        if not any(name.endswith(".distcp") for name in entries):
            raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} lists no shard files")
    for name in checkpoint_files(manifest):
        entry = entries.get(name)
        if entry is None:
            raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} does not list {name}")
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
            raise CorruptCheckpoint(f"checkpoint {folder}: {MANIFEST_FILE} entry for {name} lacks 'bytes' or 'sha256'")
    return manifest


def checkpoint_files(manifest: dict[str, Any]) -> list[str]:
    """The files a checkpoint with this manifest consists of (besides the manifest)."""
    if manifest["format"] == SHARDED_FORMAT_VERSION:
        return sorted({STATE_FILE, SHARDS_INDEX, *manifest["files"]})
    return [MODEL_FILE, STATE_FILE]


def read_verified(folder: Location) -> dict[str, bytes]:
    """The checkpoint's files, checked against its manifest; raises `CorruptCheckpoint` naming the problem."""
    manifest = read_manifest(folder)
    entries = manifest["files"]
    files = {}
    for name in checkpoint_files(manifest):
        try:
            data = folder.child(*name.split("/")).read_bytes()
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


def read_checkpoint(folder: Location) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(full weights, the rest of the state) of a checkpoint, full or sharded: verified against its
    manifest, then decoded and checked for shape, so damage done before the manifest was written (it
    then agrees with the damaged files) is caught too. Raises `CorruptCheckpoint` naming the problem."""
    files = read_verified(folder)
    rest = _load_state(files[STATE_FILE], folder)
    if MODEL_FILE not in files:
        return _assemble_shards(files, rest, folder), rest
    try:
        weights = model_tensors(files[MODEL_FILE])
    except Exception as error:  # safetensors' own error types; any failure here means unreadable weights
        raise CorruptCheckpoint(f"checkpoint {folder}: {MODEL_FILE} is unreadable ({_first_line(error)})") from None
    return weights, rest


def read_step(folder: Location) -> int:
    """The training step a checkpoint was taken at (from its manifest)."""
    return read_manifest(folder)["step"]


def is_checkpoint(folder: Location) -> bool:
    return any(folder.child(name).exists() for name in (MANIFEST_FILE, MODEL_FILE, SHARDS_DIR))


# -- loading -------------------------------------------------------------------------------------


def check_resumable(state: State, folder: Location) -> None:
    """Raise `ConfigError` on every rank when `folder` is damaged or holds another model or algorithm
    set than `state`'s: what `load_checkpoint` would refuse, checked before a run writes anything."""
    _read_compatible(state, folder)


def _read_compatible(state: State, folder: Location) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """Rank 0 reads, verifies and checks the checkpoint against this run; every rank gets the same
    `ConfigError` when it does not fit. Returns (weights, rest) on rank 0, (None, None) elsewhere."""
    weights, rest, problem = None, None, None
    # Sharded (not gathered) state_dict: DTensor shapes are global, and getting it is not a collective.
    expected = {key: tuple(value.shape) for key, value in get_model_state_dict(state.model).items()}
    if distributed.is_rank_zero():
        try:
            weights, rest = read_checkpoint(folder)
            _check_same_model(expected, weights, folder)
            _check_same_algorithms(state, rest, folder)
        except ConfigError as error:
            problem = str(error)
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise ConfigError(problem)
    return weights, rest


def load_checkpoint(state: State, folder: Location | str) -> None:
    """Restore `state` from `folder`, which rank 0 reads, verifies and broadcasts. Raises `ConfigError`
    when the checkpoint is corrupt or belongs to a different model or algorithm set."""
    folder = location(folder) if isinstance(folder, str) else folder
    weights, rest = _read_compatible(state, folder)
    # Rank 0 has read the checkpoint; whether it is sharded decides how every rank loads it.
    if distributed.broadcast_object(distributed.is_rank_zero() and read_manifest(folder)["format"] == SHARDED_FORMAT_VERSION):
        rest = distributed.broadcast_object(rest)  # small: the tensors are in the shards
        _load_shards(state, folder, rest)
    else:
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
    if "progress" in rest:  # older checkpoints lack it: a finished run then evaluates once more
        progress = rest["progress"]
        state.eval_step, state.train_loss = progress["eval_step"], progress["train_loss"]
        state.eval_metrics = dict(progress["eval_metrics"])
    saved_rng = rest["rng"]
    if len(saved_rng) == distributed.world_size():
        restore_rng_state(saved_rng[distributed.rank()])
    else:  # a different world size cannot replay per-rank randomness; keep each rank's seeded stream
        distributed.print_once(
            f"composerlite: checkpoint was written by {len(saved_rng)} processes, this run has "
            f"{distributed.world_size()}: weights, optimizer and data position resume exactly, RNG streams do not"
        )


def _load_shards(state: State, folder: Location, rest: dict[str, Any]) -> None:
    """Every rank reads what it holds of the weights and optimizer state from a sharded checkpoint
    (DCP reshards: any number of processes, FSDP or not). Rank 0 has verified the files just before."""
    aliases = rest["model_aliases"]
    weights = get_model_state_dict(state.model)
    targets: dict[str, Any] = {"model": {key: value for key, value in weights.items() if key not in aliases}}
    if state.optimizer is not None:
        # A template of this optimizer's state (torch initializes it with a zero step at LR 0) to load into.
        targets["optimizer"] = get_optimizer_state_dict(state.model, state.optimizer)["state"]
    try:
        _dcp_load(targets, ShardReader(folder.child(SHARDS_DIR).url), no_dist=not distributed.active())
    except Exception as error:  # DCP raises its own exception types, on every rank
        raise CorruptCheckpoint(f"checkpoint {folder}: its shards could not be loaded ({_shard_problem(error)})") from None
    for alias, original in aliases.items():
        weights[alias] = weights[original]
    set_model_state_dict(state.model, weights)
    if state.optimizer is not None:
        set_optimizer_state_dict(state.model, state.optimizer,
                                 {"state": targets["optimizer"], "param_groups": rest["optimizer"]["param_groups"]})


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


# The entries of state.pt and their types: checked on reading, so a damaged file is named, not a traceback.
STATE_ENTRIES = {"timestamp": dict, "optimizer": dict, "schedulers": list, "algorithm_names": list,
                 "algorithms": list, "callbacks": (dict, list), "rng": list}


def _load_state(data: bytes, folder: Location) -> dict[str, Any]:
    try:
        rest = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise CorruptCheckpoint(
            f"checkpoint {folder}: {STATE_FILE} holds objects other than tensors and plain data; "
            f"refusing to unpickle it ({first})"
        ) from None
    except Exception as error:  # a damaged zip archive or pickle stream: torch raises several kinds
        raise CorruptCheckpoint(f"checkpoint {folder}: {STATE_FILE} is unreadable ({_first_line(error)})") from None
    if not isinstance(rest, dict):
        raise CorruptCheckpoint(f"checkpoint {folder}: {STATE_FILE} holds a {type(rest).__name__}, not a training state")
    for key, kind in STATE_ENTRIES.items():
        if not isinstance(rest.get(key), kind):
            raise CorruptCheckpoint(f"checkpoint {folder}: {STATE_FILE} has no valid '{key}'")
    missing = [field.name for field in dataclasses.fields(Timestamp) if field.name not in rest["timestamp"]]
    if missing or len(rest["algorithms"]) != len(rest["algorithm_names"]):
        raise CorruptCheckpoint(f"checkpoint {folder}: {STATE_FILE} has an incomplete timestamp or algorithm list")
    return rest


# -- sharded checkpoints: DCP's index, read without running code -------------------------------------

# What DCP's index (`.metadata`, a pickle) may hold: its metadata dataclasses and the torch types in
# them. torch's own reader unpickles anything, so a crafted index could run code; this one refuses.
_INDEX_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "ChunkStorageMetadata", "TensorStorageMetadata",
        "TensorProperties", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _INDEX_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index")


def shard_index(data: bytes, where: Location | str):
    """DCP's index of a sharded checkpoint, checked: only tensors (DCP would unpickle other entries
    with `torch.load(weights_only=False)`), stored in shard files of this checkpoint."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    try:
        index = _IndexUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        raise CorruptCheckpoint(f"checkpoint {where}: {SHARDS_INDEX} holds objects other than DCP's index; "
                                f"refusing to unpickle it ({error})") from None
    except Exception as error:  # a damaged pickle stream raises several kinds
        raise CorruptCheckpoint(f"checkpoint {where}: {SHARDS_INDEX} is unreadable ({_first_line(error)})") from None
    if not (isinstance(index, Metadata) and isinstance(index.state_dict_metadata, dict)
            and isinstance(index.storage_data, dict)):
        raise CorruptCheckpoint(f"checkpoint {where}: {SHARDS_INDEX} is not a DCP index")
    if not all(isinstance(entry, TensorStorageMetadata) for entry in index.state_dict_metadata.values()):
        raise CorruptCheckpoint(f"checkpoint {where}: {SHARDS_INDEX} lists entries other than tensors; refusing them")
    if not all(isinstance(info, _StorageInfo) and re.fullmatch(_SHARD_NAME, str(info.relative_path))
               for info in index.storage_data.values()):
        raise CorruptCheckpoint(f"checkpoint {where}: {SHARDS_INDEX} points at files other than this checkpoint's shards")
    return index


class ShardReader(FsspecReader):
    """DCP's fsspec reader with the index read by `shard_index` (tensors it reads with weights_only)."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        from torch.distributed.checkpoint.metadata import StorageMeta

        with self.fs.create_stream(self.fs.concat_path(self.path, ".metadata"), "rb") as file:
            index = shard_index(file.read(), self.path)
        index.storage_meta = index.storage_meta or StorageMeta()
        index.storage_meta.load_id = self.load_id
        return index


def _dcp_load(targets: dict[str, Any], reader: ShardReader, no_dist: bool) -> None:
    with warnings.catch_warnings():  # DCP warns that it "assumes" the one-process load it was asked for
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        try:
            dcp.load(targets, storage_reader=reader, no_dist=no_dist)
        except dcp.CheckpointException as error:  # a BaseException wrapping what each rank raised: the first says why
            raise next(iter(error.failures.values()))[0] from None


def _assemble_shards(files: dict[str, bytes], rest: dict[str, Any], folder: Location) -> dict[str, torch.Tensor]:
    """The full weights of a sharded checkpoint, in this process alone, from its verified files."""
    aliases, groups = rest.get("model_aliases"), rest["optimizer"].get("param_groups")
    if not isinstance(aliases, dict) or not isinstance(groups, list):
        raise CorruptCheckpoint(f"checkpoint {folder}: {STATE_FILE} lacks the tied-weight names or optimizer groups of a sharded checkpoint")
    index = shard_index(files[SHARDS_INDEX], folder)
    weights = {key.removeprefix("model."): torch.empty(entry.size, dtype=entry.properties.dtype)
               for key, entry in index.state_dict_metadata.items() if key.startswith("model.")}
    missing = sorted(original for original in aliases.values() if original not in weights)
    if not weights or missing:
        raise CorruptCheckpoint(f"checkpoint {folder}: its shards hold no weights{f' named {missing[0]}' if missing else ''}")
    # Decoded from the bytes just verified (through this process's memory), not read again from storage.
    scratch = location(f"memory://composerlite-verified-{uuid.uuid4().hex}")
    try:
        for name, data in files.items():
            if name.startswith(f"{SHARDS_DIR}/"):
                scratch.child(name.removeprefix(f"{SHARDS_DIR}/")).write_bytes(data)
        _dcp_load({"model": weights}, ShardReader(scratch.url), no_dist=True)
    except CorruptCheckpoint:
        raise
    except Exception as error:  # DCP's and torch.load's own exception types
        raise CorruptCheckpoint(f"checkpoint {folder}: its shards are unreadable ({_shard_problem(error)})") from None
    finally:
        scratch.remove()
    for alias, original in aliases.items():
        weights[alias] = weights[original]
    return weights


def _shard_problem(error: BaseException) -> str:
    # torch.load(weights_only=True) refusing a record: damage, whatever its message suggests doing.
    return "a tensor record does not decode" if isinstance(error, pickle.UnpicklingError) else _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


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
            raise ConfigError(f"checkpoint {folder} is for a different model: it has no '{key}'")
        if tuple(saved[key].shape) != shape:
            raise ConfigError(
                f"checkpoint {folder} is for a different model: '{key}' is {tuple(saved[key].shape)}, this model's is {shape}"
            )
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise ConfigError(f"checkpoint {folder} is for a different model: it has '{extra[0]}' that this model lacks")


def _check_same_algorithms(state: State, saved: dict[str, Any], folder: Location) -> None:
    names = [_label(algorithm) for algorithm in state.algorithms]
    if saved["algorithm_names"] != names:
        raise ConfigError(
            f"checkpoint {folder} was trained with algorithms {saved['algorithm_names'] or 'none'}, "
            f"this run has {names or 'none'}: resume with the same `algorithms`"
        )
