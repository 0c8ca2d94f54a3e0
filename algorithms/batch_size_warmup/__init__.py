"""Batch-size warmup: train on small batches first and grow them linearly to the full batch over
the first `duration` of training (GPT-3: Brown et al., 2020, "Language Models are Few-Shot
Learners", arXiv:2005.14165, appendix B, grew the batch linearly from 32k tokens to the full size
over the first 4-12 billion of 300 billion tokens; the modded-nanogpt speedrun uses a batch-size
schedule too). Early in training the gradient noise scale is small, so a small batch makes about
as much progress per step as a large one for a fraction of the tokens (McCandlish et al., 2018,
"An Empirical Model of Large-Batch Training", arXiv:1812.06162).

At AFTER_DATALOADER each batch keeps its first `batch_size_at(...)` sequences. With gradient
accumulation the default start is one microbatch and the batch grows a whole microbatch at a
time, so every forward keeps its shape and only the number of accumulated microbatches grows. The
trainer counts the tokens and samples actually trained, so token budgets, the LR schedule (which
follows the timestamp in its own units) and `dur` times stay right: a token budget takes more,
smaller steps; a batch budget trains fewer tokens. The size follows the fraction of the budget
used, read from the timestamp: same seed, same sizes, and a resumed run picks up where it stopped.
The sequences left out of a batch are not trained in that epoch (the next epoch reshuffles).
"""

from __future__ import annotations

import math

import pydantic
import torch

from composerlite import Algorithm, Event, Logger, State

GPT3_START_FRACTION = 1 / 16  # GPT-3 small: 32k of 0.5M tokens


class BatchSizeWarmupOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    duration: float = pydantic.Field(
        0.04, ge=0, le=1, description="fraction of the budget over which the batch grows to full (GPT-3: the first "
        "4-12B of 300B tokens, up to 0.04)")
    min_batch_size: int | None = pydantic.Field(
        None, ge=1, description="sequences in the first batches; the batch grows in multiples of it. Default: one "
        "microbatch when the run accumulates (every forward keeps its shape), else 1/16 of the batch (GPT-3's start)")


def batch_size_at(fraction: float, duration: float, min_batch_size: int, batch_size: int) -> int:
    """Sequences in the batch at `fraction` of the budget: a staircase from `min_batch_size` up a
    straight line to `batch_size` at `duration`, in multiples of `min_batch_size`."""
    if duration == 0 or fraction >= duration or min_batch_size >= batch_size:
        return batch_size
    steps = (batch_size / min_batch_size - 1) * fraction / duration
    return min(batch_size, min_batch_size * (1 + math.floor(steps + 1e-9)))


def default_min_batch_size(batch_size: int, microbatch_size: int) -> int:
    if microbatch_size < batch_size:
        return microbatch_size
    return max(1, round(batch_size * GPT3_START_FRACTION))


def keep_first_rows(batch: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """The first `rows` sequences of every [batch, ...] tensor in `batch`."""
    return {key: tensor[:rows] for key, tensor in batch.items()}


class BatchSizeWarmup(Algorithm):
    """Grow the batch (in microbatches accumulated) linearly from a small one to full over `duration`."""

    name = "batch_size_warmup"
    Options = BatchSizeWarmupOptions
    provides = ("batch_size",)

    def match(self, event: Event, state: State) -> bool:
        return event is Event.AFTER_DATALOADER

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        full = state.batch["input_ids"].shape[0]
        smallest = self.options.min_batch_size or default_min_batch_size(full, state.microbatch_size)
        rows = batch_size_at(state.fraction_done, self.options.duration, smallest, full)
        state.batch = keep_first_rows(state.batch, rows)
        logger.log_metrics({"batch_size_warmup/batch_size": rows})
