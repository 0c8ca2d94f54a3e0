"""Learning-rate schedules defined in time units.

Deliberately not `torch.optim.lr_scheduler`: those count `step()` calls, while ours follow the
run's `Timestamp`, so a warmup of "90ba", "2e6tok" or "0.01dur" and a wall-clock budget ("10min")
all mean what they say. The multiplier is recomputed from the timestamp at every batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import torch

from composerlite.core.time import Time, Timestamp


class Scheduler(Protocol):
    """What `State.schedulers` holds: the trainer calls `step` once a batch, after the gradients and
    before the optimizer step, with the time before and after that batch."""

    def step(self, optimizer: torch.optim.Optimizer, start: Timestamp, end: Timestamp, max_duration: Time) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass
class WarmupDecaySchedule:
    """Linear warmup from 0 to the base LR over `warmup`, then `decay` towards `alpha_f` x base LR
    at the end of `max_duration` ("cosine", "linear" or "constant").

    The LR of a step is computed from the time around it, as the usual warmup-cosine definition
    has it (nanoGPT's, Hugging Face's) for step indices t in [0, T): warmup counts the step itself
    (`end`), so the first step is not wasted at LR 0; the decay follows the time before the step
    (`start`), so the last step starts short of the budget and trains at a small positive LR
    rather than at `alpha_f`. A wall-clock budget's step duration is unknown when its LR is set:
    both ends read the time at the step's start."""

    warmup: Time
    decay: str = "cosine"
    alpha_f: float = 0.0
    # Fraction of the budget used at the start of the first step past warmup: decay spans the
    # rest, whatever the units.
    decay_start: float | None = None

    def multiplier(self, start: Timestamp, end: Timestamp, max_duration: Time) -> float:
        """The LR multiplier for the step that takes training from `start` to `end`."""
        if self.warmup.value > 0 and not end.reached(self.warmup, max_duration):
            if self.warmup.unit.value == "dur":
                return end.fraction_of(max_duration) / self.warmup.value
            return end.get(self.warmup.unit).value / self.warmup.value
        fraction = start.fraction_of(max_duration)
        if self.decay_start is None:
            self.decay_start = fraction
        span = 1.0 - self.decay_start
        progress = 1.0 if span <= 0 else min(1.0, (fraction - self.decay_start) / span)
        if self.decay == "cosine":
            shape = 0.5 * (1 + math.cos(math.pi * progress))
        elif self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 1.0
        return self.alpha_f + (1 - self.alpha_f) * shape

    def step(self, optimizer: torch.optim.Optimizer, start: Timestamp, end: Timestamp, max_duration: Time) -> None:
        factor = self.multiplier(start, end, max_duration)
        for group in optimizer.param_groups:
            # An optimizer a plugin built (Composer's `state.optimizers = ...`) peaks at its own LR,
            # as a torch LR scheduler makes it: `initial_lr` is the LR it came with.
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor

    def state_dict(self) -> dict:
        return {"decay_start": self.decay_start}

    def load_state_dict(self, state: dict) -> None:
        self.decay_start = state["decay_start"]
