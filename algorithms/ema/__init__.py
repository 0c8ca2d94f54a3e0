"""Exponential moving average of the weights (Polyak & Juditsky, 1992, "Acceleration of Stochastic
Approximation by Averaging"; as used for large models, e.g. Karras et al., 2023,
arXiv:2312.02696). Composer's `EMA`.

Keeps a running average W_ema <- s * W_ema + (1 - s) * W of the weights and evaluates with it:
evaluation swaps the averaged weights in at EVAL_START and the training weights back at EVAL_END.
The average lives in the algorithm's state_dict, so it is saved in every checkpoint and restored
on resume. Helps when the final learning rate is still high or the loss is noisy, giving a lower
and smoother eval loss for the cost of one extra copy of the weights and a cheap update per step.
"""

from __future__ import annotations

import math
from typing import Any

import pydantic
import torch

from composerlite import Algorithm, Event, Logger, State, Time, TimeUnit

_UNITS = (TimeUnit.BATCH, TimeUnit.EPOCH, TimeUnit.SAMPLE, TimeUnit.TOKEN)


def _check_time(value: str | None, field: str, units=_UNITS) -> str | None:
    if value is None:
        return None
    time = Time.parse(value)  # its ValueError becomes a one-line option error
    if time.unit not in units:
        raise ValueError(f"{field} must be in {', '.join(unit.value for unit in units)}, got {value!r}")
    return str(time)


class EMAOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    half_life: str | None = pydantic.Field(
        "1000ba", description="time for an old weight's share of the average to halve (ba, ep, sp or tok)"
    )
    smoothing: float | None = pydantic.Field(
        None, gt=0, lt=1, description="s per update instead of half_life (set half_life=null)"
    )
    ema_start: str = pydantic.Field("0.0dur", description="when averaging starts; eval uses training weights before")
    update_interval: str | None = pydantic.Field(
        None, description="time between updates (default: 1 unit of half_life, or 1ba with smoothing)"
    )

    @pydantic.field_validator("half_life", "update_interval")
    @classmethod
    def _counted_time(cls, value, info):
        return _check_time(value, info.field_name)

    @pydantic.field_validator("ema_start")
    @classmethod
    def _start_time(cls, value, info):
        return _check_time(value, info.field_name, (*_UNITS, TimeUnit.DURATION))

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if (self.half_life is None) == (self.smoothing is None):
            raise ValueError("set exactly one of half_life and smoothing (e.g. half_life=null,smoothing=0.999)")
        interval = self.update_interval and Time.parse(self.update_interval)
        if self.half_life and interval and interval.unit is not Time.parse(self.half_life).unit:
            raise ValueError("update_interval must be in the same unit as half_life")
        return self


def smoothing_for(elapsed: float, half_life: float) -> float:
    """The smoothing that halves an old weight's share every `half_life` over `elapsed` time."""
    return math.exp(-math.log(2) * elapsed / half_life)


@torch.no_grad()
def compute_ema(model: torch.nn.Module, ema_weights: list[torch.Tensor], smoothing: float) -> None:
    """ema <- smoothing * ema + (1 - smoothing) * weights, in place, for each parameter."""
    weights = [param.detach() for param in model.parameters()]
    torch._foreach_lerp_(ema_weights, weights, 1.0 - smoothing)  # one fused kernel per dtype/device


class EMA(Algorithm):
    """Evaluate (and checkpoint) an exponential moving average of the weights."""

    name = "ema"
    Options = EMAOptions
    provides = ("eval_weights",)  # decides which weights evaluation sees

    def __init__(self, **options):
        super().__init__(**options)
        interval = self.options.update_interval or (
            f"1{Time.parse(self.options.half_life).unit.value}" if self.options.half_life else "1ba"
        )
        self.update_interval = Time.parse(interval)
        self.ema_weights: list[torch.Tensor] | None = None
        self.last_update: float | None = None  # in update_interval's unit
        self._training_weights: list[torch.Tensor] | None = None

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.BATCH_END, Event.EVAL_START, Event.EVAL_END)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if self.ema_weights is not None:  # a checkpoint's average is loaded on the CPU
            device = next(state.model.parameters()).device
            if self.ema_weights[0].device != device:
                self.ema_weights = [tensor.to(device) for tensor in self.ema_weights]
        if event is Event.BATCH_END:
            self._update(state)
        elif event is Event.EVAL_START and self.ema_weights is not None:
            self._training_weights = [param.detach().clone() for param in state.model.parameters()]
            self._copy_into(state.model, self.ema_weights)
        elif event is Event.EVAL_END and self._training_weights is not None:
            self._copy_into(state.model, self._training_weights)
            self._training_weights = None

    def _update(self, state: State) -> None:
        if not state.reached(Time.parse(self.options.ema_start)):
            return
        now = state.timestamp.get(self.update_interval.unit).value
        if self.ema_weights is None:  # averaging starts from the weights as they are now
            self.ema_weights = [param.detach().clone() for param in state.model.parameters()]
            self.last_update = now
            return
        elapsed = now - self.last_update
        if elapsed < self.update_interval.value:
            return
        if self.options.smoothing is not None:
            smoothing = self.options.smoothing ** (elapsed / self.update_interval.value)
        else:
            smoothing = smoothing_for(elapsed, Time.parse(self.options.half_life).value)
        compute_ema(state.model, self.ema_weights, smoothing)
        self.last_update = now

    @staticmethod
    @torch.no_grad()
    def _copy_into(model: torch.nn.Module, tensors: list[torch.Tensor]) -> None:
        for param, tensor in zip(model.parameters(), tensors, strict=True):
            param.copy_(tensor)

    def state_dict(self) -> dict[str, Any]:
        if self.ema_weights is None:
            return {}
        return {"ema_weights": self.ema_weights, "last_update": self.last_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.ema_weights = [tensor.clone() for tensor in state["ema_weights"]]
            self.last_update = state["last_update"]
