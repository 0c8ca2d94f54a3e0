"""Sequence-length warmup: Composer's schedule step by step, and the batch reshaping forms."""

from __future__ import annotations

import types

import pytest
import torch

from composerlite.algorithms.seq_len_warmup import SeqLenWarmup, set_batch_seq_len, warmup_seq_len
from composerlite.core.time import Time, Timestamp


def composer_seq_len(batch: int, max_batches: int, duration: float, min_len: int, max_len: int, step: int) -> int:
    """Composer's SeqLengthWarmup.apply (v0.8-v0.17), transcribed for batch budgets."""
    num_warmup_steps = int(max_batches * duration)
    num_update_steps = (max_len - min_len) // step
    update_every_n_steps = num_warmup_steps // num_update_steps
    curr = step * (batch // update_every_n_steps) + min_len
    return min(max(curr, min_len), max_len)


def fake_state(batch: int, budget: str, batches_per_epoch: int = 0, token: int = 0):
    return types.SimpleNamespace(
        timestamp=Timestamp(batch=batch, token=token),
        max_duration=Time.parse(budget),
        batches_per_epoch=batches_per_epoch,
        fraction_done=Timestamp(batch=batch, token=token).fraction_of(Time.parse(budget)),
    )


@pytest.mark.parametrize(
    "max_batches, duration, min_len, max_len, step",
    [(9000, 0.3, 8, 1024, 8), (1000, 0.5, 16, 512, 16), (400, 0.25, 8, 128, 8), (300, 1.0, 64, 1024, 64)],
)
def test_matches_composer_at_every_step(max_batches, duration, min_len, max_len, step):
    for batch in range(max_batches):
        ours = warmup_seq_len(fake_state(batch, f"{max_batches}ba"), duration, min_len, max_len, step)
        assert ours == composer_seq_len(batch, max_batches, duration, min_len, max_len, step), batch


def test_epoch_budget_uses_batches_per_epoch():
    for batch in range(0, 600, 7):
        state = fake_state(batch, "3ep", batches_per_epoch=200)
        assert warmup_seq_len(state, 0.3, 8, 1024, 8) == composer_seq_len(batch, 600, 0.3, 8, 1024, 8)


def test_short_and_token_budgets_follow_the_fraction_where_composer_divides_by_zero():
    lengths = [warmup_seq_len(fake_state(b, "8ba"), 0.3, 8, 128, 8) for b in range(8)]
    assert lengths[0] == 8 and lengths[-1] == 128
    assert lengths == sorted(lengths)
    token_lengths = [warmup_seq_len(fake_state(0, "1000tok", token=t), 0.5, 8, 128, 8) for t in range(0, 1000, 50)]
    assert token_lengths[0] == 8 and token_lengths[-1] == 128 and token_lengths == sorted(token_lengths)
    assert warmup_seq_len(fake_state(0, "1000tok", token=250), 0.5, 8, 128, 8) == 8 + 8 * 7  # halfway: 7 of 15 steps


def test_truncate_reshape_and_preserve_end():
    batch = {"input_ids": torch.arange(24).view(2, 12)}
    truncated = set_batch_seq_len(batch, 4)
    assert truncated["input_ids"].tolist() == [[0, 1, 2, 3], [12, 13, 14, 15]]
    preserved = set_batch_seq_len(batch, 4, preserve_end_of_sequence=True)
    assert preserved["input_ids"].tolist() == [[0, 1, 2, 11], [12, 13, 14, 23]]
    reshaped = set_batch_seq_len(batch, 5, truncate=False)
    assert reshaped["input_ids"].tolist() == [list(range(i, i + 5)) for i in range(0, 20, 5)]
    assert set_batch_seq_len(batch, 12) is batch
    assert batch["input_ids"].shape == (2, 12)  # the caller's batch is never modified


def test_options_are_validated():
    with pytest.raises(ValueError):
        SeqLenWarmup(duration=1.5)
    with pytest.raises(ValueError):
        SeqLenWarmup(min_seq_len=64, max_seq_len=32)
    with pytest.raises(ValueError):
        SeqLenWarmup(step=3)
