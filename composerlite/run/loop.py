"""The training loop. `composerlite.core.event` draws it and marks where each event fires."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import numpy as np
import torch

from composerlite.core.algorithm import Algorithm
from composerlite.core.callback import Callback
from composerlite.core.composition import compose
from composerlite.core.engine import Engine
from composerlite.core.event import Event
from composerlite.core.logger import Logger
from composerlite.core.schedule import Scheduler, WarmupDecaySchedule
from composerlite.core.state import State
from composerlite.core.time import Time, TimeUnit
from composerlite.errors import ConfigError, Diverged, RunHalted
from composerlite.run.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from composerlite.run.run_directory import checkpoint_folder, prune_checkpoints
from composerlite.run.settings import DEFAULT_LR, DEFAULT_WARMUP, RunConfig, validated
from composerlite.system import distributed
from composerlite.system.runtime import PRECISIONS, default_threads, pinned_runtime, resolve_runtime
from composerlite.system.signals import StopRequest, stop_on_signals
from composerlite.system.storage import Location, location

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# AdamW's betas and epsilon: GPT-2-family training's usual choice (nanoGPT, Composer's recipes).
ADAMW_BETAS = (0.9, 0.95)
ADAMW_EPS = 1e-8


def adamw(model: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (biases, norms and gains stay undecayed).
    PyTorch's default (foreach) implementation: the fused kernel is the `fused_adamw` algorithm's
    to switch on, so the baseline stays the plain one users start from."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=ADAMW_BETAS, eps=ADAMW_EPS)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    return optimizer


# A context that does nothing; it keeps no state, so one serves every step.
_NO_CONTEXT = contextlib.nullcontext()


def autocast(state: State):
    """The run's precision as a context for its forward passes (none for fp32)."""
    dtype = PRECISIONS[state.precision]
    if dtype is None:
        return _NO_CONTEXT
    return torch.autocast(state.device.type, dtype=dtype)


@torch.no_grad()
def held_out_loss(state: State, engine: Engine, eval_data, max_batches: int | None = None) -> dict[str, float]:
    """One evaluation: the EVAL_* events around a pass over `eval_data` (at most `max_batches`
    batches) in the run's precision. Sets and returns `state.eval_metrics`: the token-weighted
    mean loss over every rank's batches and its perplexity. The Trainer's evaluation, and
    `evaluate_run`'s without a Trainer."""
    engine.run_event(Event.EVAL_START)
    state.model.eval()
    train_batch, total_loss, total_tokens = state.batch, 0.0, 0
    for index, batch in enumerate(eval_data.epoch(0)):
        if max_batches is not None and index >= max_batches:
            break
        state.batch = {key: value.to(state.device) for key, value in batch.items()}
        engine.run_event(Event.EVAL_BATCH_START)
        engine.run_event(Event.EVAL_BEFORE_FORWARD)
        with autocast(state):
            state.outputs = state.forward_fn(state.model, state.batch)
            engine.run_event(Event.EVAL_AFTER_FORWARD)
            loss = state.eval_loss_fn(state.outputs, state.batch).float().item()
        predicted = state.batch["input_ids"][:, 1:].numel()
        total_loss += loss * predicted
        total_tokens += predicted
        engine.run_event(Event.EVAL_BATCH_END)
    state.batch, state.outputs = train_batch, None
    total_loss, total_tokens = distributed.all_reduce_sum([total_loss, total_tokens], state.device)
    eval_loss = total_loss / max(total_tokens, 1)
    state.eval_metrics = {"eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50.0))}
    engine.run_event(Event.EVAL_END)
    return state.eval_metrics


def init_state(model: torch.nn.Module, data, *, algorithms: Iterable[Algorithm], max_duration: Time,
               device: torch.device, precision: str, seed: int, run_dir: Location, logger: Logger,
               schedule: Scheduler, microbatch_size: int | None = None, callbacks: Iterable[Callback] = (),
               optimizer_factory: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
               ) -> tuple[State, Engine]:
    """The run's State around `model` and its Engine, after Event.INIT: the one model-conversion
    phase, where the algorithms (bundles expanded for this device and precision, impossible
    combinations refused, in their deterministic order) convert the model (surgery, a new forward
    or loss, an optimizer factory), which then moves to the device. `data` (a BatchStream) gives the
    batch size, sequence length and epoch length INIT-time algorithms read. Call it inside
    `pinned_runtime`. The Trainer's start, and `evaluate_run`'s without a Trainer, so a checkpoint
    is evaluated on the model converted exactly as it was trained."""
    state = State(
        model=model,
        max_duration=max_duration,
        device=device,
        precision=precision,
        seed=seed,
        run_dir=run_dir,
        algorithms=compose(algorithms, device, precision),
        callbacks=list(callbacks),
        schedulers=[schedule],
        batch_size=data.batch_size,
        microbatch_size=microbatch_size or data.batch_size,
        seq_len=data.seq_len,
        batches_per_epoch=len(data),
        optimizer_factory=optimizer_factory,
    )
    engine = Engine(state, logger)
    engine.run_event(Event.INIT)
    state.model.to(device)
    return state, engine


def position_limit(model: torch.nn.Module) -> int | None:
    """How many positions a learned position-embedding table covers; None when positions are not
    looked up in a table (e.g. after ALiBi removed it)."""
    wpe = getattr(getattr(distributed.unwrap_model(model), "transformer", None), "wpe", None)
    return wpe.num_embeddings if isinstance(wpe, torch.nn.Embedding) else None


class Trainer:
    """Trains `model` on `train_data` as `settings` say, firing events for algorithms and callbacks.

    `settings` is the run's configuration: a `RunConfig`, or a mapping of its settings (flat keys,
    sections or both; `composerlite.run.settings`). The Trainer reads the loop's sections: `training` (the
    budget, microbatch size, precision, device, seed, threads, the NaN policy), `optimizer`,
    `schedule`, `evaluation`, `checkpointing` (the run directory, required; the checkpoint interval
    and retention) and `parallelism`. A setting left at its default gets the declaration's default,
    as in `train()`, but for what needs a model card (`lr` is `DEFAULT_LR` here). What the caller
    builds is theirs: the model, the data (its batch size and sequence length are the run's) and
    the checkpoint to continue from (`load_path`; `train()` finds it from `resume`/`autoresume`).

    `train_data` and `eval_data` are `composerlite.data.BatchStream`s (anything with `len()`,
    `epoch(epoch, start_batch)`, `batch_size` and `seq_len`). The model is converted by algorithms
    at INIT, then moved to the device, wrapped in DDP or FSDP2 under torchrun, then the optimizer
    is built over the converted parameters. `microbatch_size="auto"` starts at the whole batch and
    halves it on CUDA out-of-memory. With `target_loss`, training stops at the first evaluation at
    or below it, and evaluations grow dense as the loss nears it (see `_near_target`), so the step
    that reaches it is known to within 1%. `threads` holds while the trainer works (default:
    `default_threads()`, whatever the caller set), so the same run gives the same numbers from any
    process.
    """

    def __init__(self, settings: RunConfig | Mapping[str, Any], *, model: torch.nn.Module, train_data,
                 logger: Logger, eval_data=None, algorithms: Iterable[Algorithm] = (),
                 callbacks: Iterable[Callback] = (), load_path: Location | str | None = None):
        settings = validated(settings)
        training, evaluation, checkpointing = settings.training, settings.evaluation, settings.checkpointing
        for key, value in (("max_duration", training.max_duration), ("run_dir", checkpointing.run_dir)):
            if value is None:
                raise ConfigError(f"a Trainer needs `{key}`")
        runtime = resolve_runtime(training.device, training.precision)
        self.threads = training.threads or default_threads()
        self.train_data = train_data
        self.eval_data = eval_data
        self.logger = logger
        self.save_interval = Time.parse(checkpointing.save_interval) if checkpointing.save_interval else None
        self.eval_interval = Time.parse(evaluation.eval_interval) if evaluation.eval_interval else None
        self.eval_batches = evaluation.eval_batches
        self.load_path = load_path
        self.keep_checkpoints = checkpointing.keep_checkpoints
        self.on_nan = training.on_nan
        self.target_loss = evaluation.target_loss
        self._recent_evals: list[tuple[int, float]] = []  # (step, eval loss) of the last two evaluations
        self._regular_eval_gap = 0  # most steps seen between two evaluations: the regular schedule's spacing
        self.auto_microbatch = training.microbatch_size == "auto"
        self.last_checkpoint: Location | None = None
        self._stop = StopRequest()  # SIGTERM/SIGINT: save after the current batch, then RunHalted
        self._last_saved_batch = -1
        self._next_save = self.save_interval
        self._next_eval = self.eval_interval
        schedule = settings.schedule
        with pinned_runtime(self.threads, runtime.device):
            self.state, self.engine = init_state(
                model, train_data, algorithms=algorithms, max_duration=Time.parse(training.max_duration),
                device=runtime.device, precision=runtime.precision, seed=training.seed,
                run_dir=location(checkpointing.run_dir), logger=logger,
                schedule=WarmupDecaySchedule(warmup=Time.parse(schedule.warmup or DEFAULT_WARMUP), decay=schedule.decay),
                microbatch_size=None if self.auto_microbatch else training.microbatch_size, callbacks=callbacks,
                optimizer_factory=functools.partial(adamw, lr=settings.optimizer.lr or DEFAULT_LR,
                                                    weight_decay=settings.optimizer.weight_decay),
            )
            # Wrapped after INIT, so algorithms converted a plain module; before the optimizer, which
            # must see FSDP's sharded parameters.
            self.state.model = distributed.wrap(self.state.model, settings.parallelism.strategy, self.state.device)
            # Fixed once the model is wrapped: asked here, not three times a step (~3 us each).
            self.world_size = distributed.world_size()
            self.state.optimizer = self.state.optimizer_factory(self.state.model)
        self.scaler = torch.amp.GradScaler(self.state.device.type, enabled=runtime.precision == "fp16")

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to `max_duration`. SIGTERM/SIGINT save a checkpoint after the current batch and
        raise `RunHalted` whose message says how to resume."""
        announce = lambda name: print(f"composerlite: got {name}; saving a checkpoint after this batch "
                                      "(send it again to abort without saving)", file=sys.stderr)
        with stop_on_signals(self._stop, announce), pinned_runtime(self.threads, self.state.device):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        state, engine = self.state, self.engine
        engine.run_event(Event.BEFORE_LOAD)
        if self.load_path is not None:
            load_checkpoint(state, self.load_path)
            self._last_saved_batch = state.timestamp.batch.value
            self.last_checkpoint = location(str(self.load_path))
        engine.run_event(Event.AFTER_LOAD)
        self._next_save = self._advance(self.save_interval)
        self._next_eval = self._advance(self.eval_interval) if self.eval_data is not None else None
        if any(algorithm.dynamic_seq_len for algorithm in state.algorithms) and state.device.type == "cuda":
            self.preallocate_full_length()
        engine.fix_observers()
        engine.run_event(Event.FIT_START)
        while not self._done():
            engine.run_event(Event.EPOCH_START)
            batches = iter(self.train_data.epoch(state.timestamp.epoch.value, start_batch=state.timestamp.batch_in_epoch.value))
            while not self._done():
                engine.run_event(Event.BEFORE_DATALOADER)
                batch = next(batches, None)
                if batch is None:
                    break
                state.batch = {key: value.to(state.device, non_blocking=True) for key, value in batch.items()}
                engine.run_event(Event.AFTER_DATALOADER)
                self._train_batch()
                # Evaluate before saving: a checkpoint then always follows its step's evaluation, so
                # a kill between the two cannot lose that eval record (resume schedules the next one).
                if self._due("eval") or self._near_target():
                    self.evaluate()
                if self._due("save"):
                    self.save()
                engine.run_event(Event.BATCH_CHECKPOINT)
                self._halt_if_signalled()
            else:
                break
            state.timestamp.epoch += 1
            state.timestamp.batch_in_epoch = 0
            engine.run_event(Event.EPOCH_END)
            engine.run_event(Event.EPOCH_CHECKPOINT)
        if self.eval_data is not None and state.timestamp.batch.value != state.eval_step:
            self.evaluate()
        if state.timestamp.batch.value != self._last_saved_batch:
            self.save()
        engine.run_event(Event.FIT_END)
        return self.summary()

    def _train_batch(self) -> None:
        state, engine = self.state, self.engine
        started = time.perf_counter()
        engine.run_event(Event.BATCH_START)
        engine.run_event(Event.BEFORE_TRAIN_BATCH)
        if not state.model.training:  # after an evaluation; the recursive walk costs ~1 ms a step
            state.model.train()
        full_batch = state.batch
        batch_tokens = full_batch["input_ids"].numel()
        while True:
            try:
                total_loss = self._forward_backward(full_batch, batch_tokens)
                break
            except torch.OutOfMemoryError:
                if not self.auto_microbatch or state.microbatch_size == 1:
                    raise
                self._halve_microbatch()
        # The step's one host-device sync: the loss decides whether the step is taken, and it
        # keeps the CPU at most one step ahead of the GPU.
        total_loss = total_loss.item()
        if self.world_size > 1:
            total_loss = distributed.all_reduce_mean(total_loss, state.device)  # every rank decides NaN alike
        finite = math.isfinite(total_loss)
        state.train_loss = total_loss
        state.batch = full_batch
        self.scaler.unscale_(state.optimizer)
        engine.run_event(Event.AFTER_TRAIN_BATCH)
        timestamp = state.timestamp
        start = timestamp.copy()
        world_size = self.world_size  # counts are global
        timestamp.add_batch(samples=full_batch["input_ids"].shape[0] * world_size, tokens=batch_tokens * world_size)
        # The LR for this batch comes from the time before it and the time that counts it (see
        # WarmupDecaySchedule): warmup's first step is not at LR 0, nor the decay's last one.
        for scheduler in state.schedulers:
            scheduler.step(state.optimizer, start, timestamp, state.max_duration)
        lr = state.optimizer.param_groups[0]["lr"]
        if finite:
            self.scaler.step(state.optimizer)
        self.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        # No synchronize here: the optimizer's kernels overlap the next batch's CPU work, and the
        # next step's loss read waits for them, so wall-clock budgets still count the GPU's work.
        engine.run_event(Event.BATCH_END)
        # After BATCH_END: work done there (EMA's weight update, say) is training time too.
        timestamp.wall_clock_s += time.perf_counter() - started
        self.logger.record(
            "train",
            step=timestamp.batch.value,
            epoch=timestamp.epoch.value,
            tokens=timestamp.token.value,
            samples=timestamp.sample.value,
            seq_len=int(full_batch["input_ids"].shape[1]),
            loss=total_loss,
            lr=lr,
            wall_s=round(timestamp.wall_clock_s, 4),
            fraction=round(state.fraction_done, 6),
            **({} if finite else {"skipped_step": True}),
        )
        if not finite and self.on_nan == "stop":
            kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was saved yet"
            raise Diverged(
                f"loss became {total_loss} at step {timestamp.batch.value}; stopped without taking that step "
                f"(`on_nan=stop`): {kept}. Resume from it with a lower `lr`, or use `on_nan=skip`",
                loss=total_loss, step=timestamp.batch.value,
            )

    def _forward_backward(self, full_batch: dict[str, torch.Tensor], batch_tokens: int) -> torch.Tensor:
        """Forward and backward over the microbatches of one batch; returns the batch's mean loss
        (a device scalar: reading it per microbatch would stall the GPU between microbatches)."""
        state = self.state
        if state.microbatch_size >= full_batch["input_ids"].shape[0]:
            self._microbatch(full_batch, weight=1.0, last=True)
            return state.loss  # no split, nothing to accumulate: the loss as it is (the caller reads it once)
        total_loss = torch.zeros((), dtype=torch.float32, device=state.device)
        microbatches = _split(full_batch, state.microbatch_size)
        for index, microbatch in enumerate(microbatches):
            weight = microbatch["input_ids"].numel() / batch_tokens
            self._microbatch(microbatch, weight, last=index == len(microbatches) - 1)
            total_loss += state.loss.detach().float() * weight
        return total_loss

    def _microbatch(self, microbatch: dict[str, torch.Tensor], weight: float, last: bool) -> None:
        """Forward and backward of one microbatch, its gradients weighted by its share of the batch's
        tokens; its (unweighted) loss is left in `state.loss`."""
        state, engine = self.state, self.engine
        state.batch = microbatch
        # DDP all-reduces gradients only on the last microbatch; the others just accumulate.
        sync = _NO_CONTEXT if last or not hasattr(state.model, "no_sync") else state.model.no_sync()
        with sync:
            engine.run_event(Event.BEFORE_FORWARD)
            with autocast(self.state):
                state.outputs = state.forward_fn(state.model, state.batch)
                engine.run_event(Event.AFTER_FORWARD)
                engine.run_event(Event.BEFORE_LOSS)
                state.loss = state.loss_fn(state.outputs, state.batch)
            engine.run_event(Event.AFTER_LOSS)
            engine.run_event(Event.BEFORE_BACKWARD)
            self.scaler.scale(state.loss if weight == 1.0 else state.loss * weight).backward()
            engine.run_event(Event.AFTER_BACKWARD)
        state.outputs = None  # free activations' outputs before the next microbatch

    def _halve_microbatch(self) -> None:
        """After an out-of-memory error: drop the partial gradients and retry the batch in halves."""
        state = self.state
        state.optimizer.zero_grad(set_to_none=True)
        state.outputs = state.loss = None
        if state.device.type == "cuda":
            torch.cuda.empty_cache()
        state.microbatch_size = max(1, state.microbatch_size // 2)
        self.logger.log_metrics({"microbatch_size": state.microbatch_size})
        print(f"composerlite: out of memory; retrying the batch with microbatch size {state.microbatch_size}",
              file=sys.stderr)

    def evaluate(self) -> dict[str, float]:
        with pinned_runtime(self.threads, self.state.device):
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        state = self.state
        held_out_loss(state, self.engine, self.eval_data, self.eval_batches)
        self.logger.record(
            "eval",
            step=state.timestamp.batch.value,
            tokens=state.timestamp.token.value,
            wall_s=round(state.timestamp.wall_clock_s, 4),
            **state.eval_metrics,
        )
        state.eval_step = state.timestamp.batch.value
        self._note_eval(state.timestamp.batch.value, state.eval_metrics["eval_loss"])
        return state.eval_metrics

    def save(self) -> Location:
        """Checkpoint now (every rank takes part; rank 0 writes). A failed write (a full disk, a lost
        connection) halts the run: the previous checkpoint is untouched and named in the message."""
        try:
            self.logger.sync()  # records first: a checkpoint is never ahead of the metrics it continues
            folder = checkpoint_folder(self.state.run_dir, self.state.timestamp.batch.value)
            save_checkpoint(self.state, folder)
        except OSError as error:
            kept = f"the previous checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else "no earlier checkpoint exists"
            reason = error.strerror or str(error)
            raise RunHalted(f"could not save a checkpoint at step {self.state.timestamp.batch.value}: {reason}; {kept}", exit_code=1) from error
        self._last_saved_batch = self.state.timestamp.batch.value
        self.last_checkpoint = folder
        if self.keep_checkpoints and distributed.is_rank_zero():
            prune_checkpoints(self.state.run_dir, self.keep_checkpoints)
        return folder

    # -- signals -------------------------------------------------------------------------------

    def _halt_if_signalled(self) -> None:
        signum = self._stop.signum or 0
        if self.world_size > 1:
            signum = distributed.all_reduce_max(signum, self.state.device)  # ranks stop together
        if not signum:
            return
        if self.state.timestamp.batch.value != self._last_saved_batch:
            self.save()
        self.engine.run_event(Event.FIT_END)
        raise RunHalted(
            f"stopped by {signal.Signals(signum).name} at step {self.state.timestamp.batch.value}; checkpoint saved in "
            f"{self.last_checkpoint}. Continue with the same settings plus `autoresume=True` "
            f"(`run_dir={self.state.run_dir.url}`)",
            exit_code=128 + signum,
        )

    def preallocate_full_length(self) -> None:
        """One forward/backward at the full batch shape before training, so the caching allocator
        reaches its peak up front instead of fragmenting as sequences grow. Leaves weights,
        gradients, optimizer and RNG exactly as they were."""
        state = self.state
        saved_rng = rng_state()
        shape = (state.microbatch_size, state.seq_len)
        batch = {"input_ids": torch.zeros(shape, dtype=torch.long, device=state.device)}
        state.model.train()
        with autocast(self.state):
            loss = state.loss_fn(state.forward_fn(state.model, batch), batch)
        loss.backward()
        state.optimizer.zero_grad(set_to_none=True)
        restore_rng_state(saved_rng)

    # -- helpers -------------------------------------------------------------------------------

    def _done(self) -> bool:
        return self.state.stop_requested or self.state.reached(self.state.max_duration)

    def _advance(self, interval: Time | None) -> Time | None:
        """The next time an interval event is due, strictly after now."""
        if interval is None or interval.value == 0:
            return None
        unit = interval.unit
        now = self.state.fraction_done if unit is TimeUnit.DURATION else self.state.timestamp.get(unit).value
        count = math.floor(now / interval.value + 1e-9) + 1
        # Rounded so 3 x 0.1dur is due at 0.3, not at 0.30000000000000004 (one batch late).
        value = round(count * interval.value, 9)
        value = min(1.0, value) if unit is TimeUnit.DURATION else value
        return Time(value, unit)

    def _note_eval(self, step: int, eval_loss: float) -> None:
        if self._recent_evals:
            self._regular_eval_gap = max(self._regular_eval_gap, step - self._recent_evals[-1][0])
        self._recent_evals = [*self._recent_evals[-1:], (step, eval_loss)]
        if self.target_loss is not None and eval_loss <= self.target_loss:
            self.state.stop_training()

    def _near_target(self) -> bool:
        """Evaluate now, off the regular schedule? Yes when the last two evaluations, extrapolated
        linearly, reach the target before about 1.5 regular intervals from the last one, and 1% of
        the steps so far have passed since it: the crossing is then bracketed within 1% of the steps."""
        if self.target_loss is None or len(self._recent_evals) < 2 or self.eval_data is None:
            return False
        (step_a, loss_a), (step_b, loss_b) = self._recent_evals
        slope = (loss_a - loss_b) / (step_b - step_a)  # loss drop per step
        if slope <= 0:
            return False
        predicted = step_b + (loss_b - self.target_loss) / slope
        step = self.state.timestamp.batch.value
        return predicted - step_b <= 1.5 * self._regular_eval_gap and step - step_b >= max(1, step // 100)

    def _due(self, kind: str) -> bool:
        attribute = f"_next_{kind}"
        due = getattr(self, attribute)
        if due is None or not self.state.reached(due) or self._done():
            return False
        setattr(self, attribute, self._advance(getattr(self, f"{kind}_interval")))
        return True

    def summary(self) -> dict[str, Any]:
        timestamp = self.state.timestamp
        return {
            "run_dir": self.state.run_dir.url,
            "steps": timestamp.batch.value,
            "tokens": timestamp.token.value,
            "wall_s": timestamp.wall_clock_s,
            "tokens_per_s": timestamp.token.value / timestamp.wall_clock_s if timestamp.wall_clock_s else 0.0,
            "final_train_loss": self.state.train_loss,
            **self.state.eval_metrics,
            "seconds_per_algorithm": dict(self.engine.seconds_per_algorithm),
        }


def _split(batch: dict[str, torch.Tensor], microbatch_size: int) -> list[dict[str, torch.Tensor]]:
    pieces = {key: value.split(microbatch_size) for key, value in batch.items()}
    return [dict(zip(pieces, chunk)) for chunk in zip(*pieces.values())]
