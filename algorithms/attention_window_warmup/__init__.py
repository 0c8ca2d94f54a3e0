"""Attention window warmup: causal attention restricted to a sliding window of recent tokens that
grows over training, from a short window to the full length (the GPT-2 speedrun, modded-nanogpt:
64 -> 1792 tokens linearly over the run, in steps of 64; the sliding window itself:
Beltagy et al., 2020, "Longformer", arXiv:2004.05150).

Early in training a model learns mostly local statistics, so a short window costs little quality,
and it regularises; on kernels that skip blocked tiles (FlexAttention, as in the speedrun) it also
saves attention compute. Here the window is a score modifier on the core attention hook, an
additive mask (-inf for keys at distance >= window), so it stacks with ALiBi's bias and with
rotary embeddings; SDPA takes the mask, so the saving is in quality per token, not in FLOPs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pydantic
import torch

from composerlite import Algorithm, Event, Logger, Order, State
from composerlite.core.attention import ScoreModifier, add_score_modifier

# The window once it has reached the full length: no key is too far.
UNLIMITED = torch.iinfo(torch.int64).max


class AttentionWindowWarmupOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    initial_window: int = pydantic.Field(64, ge=1, description="keys each query sees at the start, itself included (modded-nanogpt: 64)")
    final_window: int | None = pydantic.Field(
        None, ge=1,
        description="the window at the end of the warmup; null: the full training length, after which attention is plain causal",
    )
    duration: float = pydantic.Field(1.0, gt=0, le=1, description="fraction of training over which the window grows (modded-nanogpt: the whole run)")
    step_size: int = pydantic.Field(64, ge=1, description="the window grows in multiples of this many tokens (modded-nanogpt: 64)")

    @pydantic.model_validator(mode="after")
    def _growing(self):
        if self.final_window is not None and self.final_window < self.initial_window:
            raise ValueError(f"final_window={self.final_window} is below initial_window={self.initial_window}")
        return self


def window_at(fraction_done: float, initial: int, final: int, duration: float, step_size: int) -> int:
    """The window after `fraction_done` of training: linear from `initial` to `final` over
    `duration`, rounded down to whole steps of `step_size` above `initial`."""
    progress = min(1.0, fraction_done / duration)
    grown = math.floor((final - initial) * progress / step_size + 1e-9) * step_size
    return min(final, initial + grown)


class SlidingWindow(ScoreModifier):
    """-inf for keys `window` or more positions before the query. The window is a 0-dim tensor
    changed in place, so a torch.compile'd model reads its value instead of recompiling for each."""

    name: ClassVar[str] = "sliding_window"

    def __init__(self, window: int):
        self.window = torch.tensor(window, dtype=torch.int64)

    def cache_key(self) -> object:
        return int(self.window)

    def bias(self, module, query_positions, key_positions):
        too_far = query_positions[:, None] - key_positions[None, :] >= self.window
        return torch.zeros(too_far.shape, device=too_far.device).masked_fill(too_far, float("-inf"))


def apply_sliding_window(model: torch.nn.Module, window: int) -> SlidingWindow:
    """Restrict `model`'s attention to the last `window` keys (the query's own included); returns
    the modifier, whose `window` can be changed in place."""
    modifier = SlidingWindow(window)
    add_score_modifier(model, modifier)
    return modifier


class AttentionWindowWarmup(Algorithm):
    """Causal sliding-window attention whose window grows over training, e.g. 64 tokens to full length."""

    name = "attention_window_warmup"
    Options = AttentionWindowWarmupOptions
    provides = ("attention_window",)
    order = Order.SURGERY
    # Plain GPT-2 has no window; a checkpoint taken before the window reached full length would
    # load in transformers and compute something else.
    exportable_to_hf = False

    def __init__(self, **options):
        super().__init__(**options)
        self.window = self.options.initial_window
        self.modifier: SlidingWindow | None = None

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.BATCH_START)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event is Event.INIT:
            self.modifier = apply_sliding_window(state.model, self.window)
            return
        o = self.options
        final = o.final_window or state.seq_len
        window = window_at(state.fraction_done, min(o.initial_window, final), final, o.duration, o.step_size)
        if o.final_window is None and window >= state.seq_len:
            window = UNLIMITED
        self._set(window)
        logger.log_metrics({"attention_window_warmup/window": min(window, state.batch["input_ids"].shape[1])})

    def _set(self, window: int) -> None:
        self.window = window
        self.modifier.window.fill_(window)

    # The window follows from the time trained, but `composerlite eval` restores a checkpoint
    # without running a batch: it needs the window the model last trained with.
    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set(int(state["window"]))

    def __repr__(self) -> str:
        o = self.options
        return (f"AttentionWindowWarmup(initial_window={o.initial_window}, final_window={o.final_window}, "
                f"duration={o.duration}, step_size={o.step_size})")
