"""`State`: everything a training run holds, in one place that algorithms may read and replace."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F

from composerlite.core.schedule import Scheduler
from composerlite.core.time import Time, Timestamp, TimeUnit
from composerlite.system.storage import Location

if TYPE_CHECKING:
    from composerlite.core.algorithm import Algorithm
    from composerlite.core.callback import Callback


def logits_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Default forward: the language model's logits, [batch, seq, vocab]."""
    return model(input_ids=batch["input_ids"]).logits


def shifted_cross_entropy(outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy; each position predicts the token after it. Computed in fp32."""
    logits = outputs[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


@dataclasses.dataclass
class State:
    """The mutable state of a run.

    `forward_fn(model, batch) -> outputs` and `loss_fn(outputs, batch) -> loss` are fields, not
    methods of the model, so an algorithm can change what the forward returns (hidden states
    instead of logits, say) and how the loss is computed, without patching the model.
    `eval_loss_fn(outputs, batch)` is what evaluation reports: always the plain mean next-token
    cross-entropy, whatever objective `loss_fn` trains (label smoothing, an auxiliary term), so
    held-out losses compare across methods. An algorithm that changes what `forward_fn` returns
    sets it too, to the same cross-entropy computed from its outputs (fused_cross_entropy does).

    `run_dir` is where the run's files go, a local folder or an fsspec URL (`s3://bucket/run`):
    write into it through its `Location` methods (`state.run_dir.child("x.txt").write_bytes(...)`),
    which work for both.

    Composer's `State` names a plugin reads are here too: `optimizers`, `get_elapsed_duration()`,
    `max_duration`, `timestamp` (whose counters are `Time`s), `rank_zero_seed`, `model`, `batch`,
    `batch_get_item(key)`, `batch_set_item(key, value)`, `outputs`, `loss`, `stop_training()`.
    `schedulers` holds composerlite schedules (`schedule.Scheduler`), not torch LR schedulers, and
    `device` is a `torch.device`, not Composer's `Device`.
    """

    model: torch.nn.Module
    max_duration: Time
    device: torch.device
    precision: str
    seed: int  # the run's seed, the same on every rank: Composer's `rank_zero_seed`
    run_dir: Location
    optimizer: torch.optim.Optimizer | None = None
    # Builds `optimizer` from the converted model after INIT; an algorithm may replace it at INIT
    # (e.g. to switch on a fused kernel) without knowing the trainer's optimizer settings.
    optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None
    schedulers: list[Scheduler] = dataclasses.field(default_factory=list)
    algorithms: list[Algorithm] = dataclasses.field(default_factory=list)
    callbacks: list[Callback] = dataclasses.field(default_factory=list)
    timestamp: Timestamp = dataclasses.field(default_factory=Timestamp)
    forward_fn: Callable[[torch.nn.Module, dict], Any] = logits_forward
    loss_fn: Callable[[Any, dict], torch.Tensor] = shifted_cross_entropy
    eval_loss_fn: Callable[[Any, dict], torch.Tensor] = shifted_cross_entropy
    batch: dict[str, torch.Tensor] | None = None
    outputs: Any = None
    loss: torch.Tensor | None = None
    batch_size: int = 0
    microbatch_size: int = 0
    seq_len: int = 0
    batches_per_epoch: int = 0
    eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_step: int = -1  # the step `eval_metrics` were measured at; -1 before the first evaluation
    train_loss: float = float("nan")  # the newest step's mean training loss
    stop_requested: bool = False  # set by `stop_training()`: the trainer ends after the current batch

    @property
    def fraction_done(self) -> float:
        """Fraction of the training budget used: what 'dur' times are measured against."""
        return self.timestamp.fraction_of(self.max_duration)

    def reached(self, time: Time) -> bool:
        return self.timestamp.reached(time, self.max_duration)

    # -- Composer's names ----------------------------------------------------------------------

    def get_elapsed_duration(self) -> Time:
        """The fraction of the budget used, as a `dur` Time (Composer's; `fraction_done` as a number)."""
        return Time(self.fraction_done, TimeUnit.DURATION)

    @property
    def stop_training(self) -> Callable[[], None]:
        """Composer's `state.stop_training()`: end training after the current batch. The run still
        ends as any run does: a final evaluation and checkpoint for that batch, FIT_END, loggers
        closed. (Setting `state.stop_training = True`, composerlite's earlier flag, still works.)"""
        return self._request_stop

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        self.stop_requested = bool(value)

    def _request_stop(self) -> None:
        self.stop_requested = True

    def batch_get_item(self, key: str | Callable | tuple[Callable, Callable] | Sequence[str]) -> Any:
        """Composer's: `batch[key]`, or `key(batch)` for a getter, or the getter of a (getter,
        setter) pair applied to the batch, or for a list or tuple of keys (not a pair) the list of
        their items, as Composer's `batch_get` gives for a dict batch."""
        if _is_getter_setter(key):
            return key[0](self.batch)
        if isinstance(key, (list, tuple)):
            return [self.batch_get_item(one) for one in key]
        if callable(key):
            return key(self.batch)
        if key not in self.batch:
            raise KeyError(f"the batch has no {key!r}; it holds {', '.join(map(repr, self.batch))}")
        return self.batch[key]

    def batch_set_item(self, key: str | Callable | tuple[Callable, Callable], value: Any) -> None:
        """Composer's: the batch with `value` at `key` (a key the batch already has), or as
        `setter(batch, value)` returns it for a setter or the setter of a (getter, setter) pair.
        A new dict: the batch the trainer split into microbatches is not changed under it."""
        setter = key[1] if _is_getter_setter(key) else key
        if callable(setter):
            self.batch = setter(dict(self.batch), value)
            return
        if key not in self.batch:
            raise KeyError(f"the batch has no {key!r} to set; it holds {', '.join(map(repr, self.batch))}")
        self.batch = {**self.batch, key: value}

    @property
    def rank_zero_seed(self) -> int:
        return self.seed

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        """Composer's sequence of optimizers: here the one `optimizer`. It is built after INIT, over
        the converted model, so at INIT there is none yet: reading or setting it then raises, rather
        than leave a Composer algorithm that wraps the optimizer at INIT silently doing nothing (set
        `optimizer_factory` at INIT instead)."""
        self._check_optimizer_built()
        return (self.optimizer,)

    @optimizers.setter
    def optimizers(self, optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer]) -> None:
        self._check_optimizer_built()
        optimizers = (optimizers,) if isinstance(optimizers, torch.optim.Optimizer) else tuple(optimizers)
        if len(optimizers) != 1:
            raise ValueError(f"composerlite steps one optimizer; got {len(optimizers)}")
        self.optimizer = optimizers[0]

    def _check_optimizer_built(self) -> None:
        if self.optimizer is None:
            raise RuntimeError("state.optimizers: the optimizer is built after INIT, over the converted model; "
                               "at INIT, replace state.optimizer_factory instead")


def _is_getter_setter(key: Any) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and all(callable(part) for part in key)
