"""Checkpoints: weights in safetensors, everything else in a `weights_only` torch file beside them.

Layout of one checkpoint folder (`RUN_DIR/checkpoints/ba00000010/`):
    model.safetensors   the model's state_dict (HF key names; tied weights stored once)
    state.pt            optimizer, schedulers, timestamp, algorithm and callback state, RNG states
A checkpoint is written into a temporary sibling folder and renamed into place, so a crash while
saving never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from composerlite.state import State

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"


def checkpoint_name(state: State) -> str:
    return f"ba{state.timestamp.batch:08d}"


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


def training_state(state: State) -> dict[str, Any]:
    return {
        "timestamp": state.timestamp.state_dict(),
        "optimizer": state.optimizer.state_dict() if state.optimizer is not None else {},
        "schedulers": [scheduler.state_dict() for scheduler in state.schedulers],
        "algorithms": [algorithm.state_dict() for algorithm in state.algorithms],
        "callbacks": [callback.state_dict() for callback in state.callbacks],
        "rng": rng_state(),
    }


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state_dict keys are the plain HF names (torch.compile wraps in `_orig_mod`)."""
    return getattr(model, "_orig_mod", model)


def save_checkpoint(state: State, folder: Path) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        safetensors.torch.save_model(unwrapped(state.model), str(staging / MODEL_FILE))
        torch.save(training_state(state), staging / STATE_FILE)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_checkpoint(state: State, folder: Path) -> None:
    folder = Path(folder)
    safetensors.torch.load_model(unwrapped(state.model), str(folder / MODEL_FILE), device=str(state.device))
    saved = torch.load(folder / STATE_FILE, map_location=state.device, weights_only=True)
    state.timestamp.load_state_dict(saved["timestamp"])
    if state.optimizer is not None:
        state.optimizer.load_state_dict(saved["optimizer"])
    for scheduler, scheduler_state in zip(state.schedulers, saved["schedulers"], strict=True):
        scheduler.load_state_dict(scheduler_state)
    for algorithm, algorithm_state in zip(state.algorithms, saved["algorithms"], strict=True):
        algorithm.load_state_dict(algorithm_state)
    for callback, callback_state in zip(state.callbacks, saved["callbacks"], strict=True):
        callback.load_state_dict(callback_state)
    restore_rng_state(saved["rng"])
