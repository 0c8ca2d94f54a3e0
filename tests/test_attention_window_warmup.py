"""Attention window warmup: the schedule, the mask against a brute-force one (alone and with ALiBi),
the model against a hand-written windowed forward, the window a run trains and saves, and the
checks every method gets."""

from __future__ import annotations

import json
import math

import pytest
import torch
from method_checks import assert_exact_resume_after_stop, assert_export_refused, assert_same_seed_runs_match, cli_run
from tinyrun import tiny_trainer

from composerlite.algorithms.alibi import alibi_slopes, apply_alibi
from composerlite.algorithms.attention_window_warmup import (UNLIMITED, AttentionWindowWarmup, apply_sliding_window,
                                                             window_at)
from composerlite.core.attention import attention_layers
from composerlite.core.composition import compose
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_algorithm

VOCAB = 64
BLOCKED = torch.finfo(torch.float32).min


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("gpt2-tiny", vocab_size=VOCAB, dropout=0.0).eval()


def brute_force_mask(length: int, window: int, bias=lambda i, j: 0.0) -> torch.Tensor:
    """Entry (i, j): bias(i, j) if key j is neither in the query's future nor `window` or more
    positions back, else blocked; one loop iteration per entry."""
    mask = torch.full((length, length), BLOCKED)
    for i in range(length):
        for j in range(length):
            if 0 <= i - j < window:
                mask[i, j] = bias(i, j)
    return mask


def test_window_grows_linearly_in_whole_steps_and_reaches_the_final_window():
    assert window_at(0.0, 64, 1792, 1.0, 64) == 64
    assert window_at(1.0, 64, 1792, 1.0, 64) == 1792
    assert window_at(0.6, 64, 1792, 0.5, 64) == 1792  # past the duration
    previous = 0
    for k in range(101):
        window = window_at(k / 100, 64, 1792, 1.0, 64)
        exact = 64 + (1792 - 64) * k / 100
        assert window % 64 == 0 and exact - 64 < window <= exact + 1e-6 and window >= previous
        previous = window


@pytest.mark.parametrize("window", [1, 3, 7, 20])
def test_mask_matches_a_brute_force_mask(window):
    model = tiny()
    apply_sliding_window(model, window)
    layer = attention_layers(model)[0]
    mask = layer.attention_changes.additive_mask(layer, 9, 9, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(mask, brute_force_mask(9, window)[None], atol=0, rtol=0)


def test_window_composes_with_alibi():
    model = apply_alibi(tiny())
    apply_sliding_window(model, 4)
    layer = attention_layers(model)[0]
    mask = layer.attention_changes.additive_mask(layer, 9, 9, torch.device("cpu"), torch.float32)
    slopes = alibi_slopes(model.config.n_head)
    for head, slope in enumerate(slopes):
        expected = brute_force_mask(9, 4, lambda i, j: -slope * (i - j))
        torch.testing.assert_close(mask[head], expected, atol=1e-6, rtol=0)


def test_changing_the_window_in_place_changes_the_mask_and_the_model():
    model = tiny()
    modifier = apply_sliding_window(model, 2)
    layer = attention_layers(model)[0]
    input_ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        narrow = model(input_ids=input_ids).logits
        modifier.window.fill_(5)
        mask = layer.attention_changes.additive_mask(layer, 9, 9, torch.device("cpu"), torch.float32)
        torch.testing.assert_close(mask, brute_force_mask(9, 5)[None], atol=0, rtol=0)
        modifier.window.fill_(UNLIMITED)
        unlimited = model(input_ids=input_ids).logits
        plain = tiny()(input_ids=input_ids).logits
    torch.testing.assert_close(unlimited, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(narrow, plain, atol=1e-3)


def test_windowed_model_matches_a_hand_written_forward():
    model = tiny()
    apply_sliding_window(model, 3)
    input_ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    t, n_head, seq = model.transformer, model.config.n_head, input_ids.shape[1]
    x = t.wte(input_ids) + t.wpe(torch.arange(seq))
    allowed = brute_force_mask(seq, 3) == 0
    with torch.no_grad():
        for block in t.h:
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(model.config.n_embd, dim=-1)
            q, k, v = (z.view(*z.shape[:2], n_head, -1).transpose(1, 2) for z in (q, k, v))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            attention = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
            x = x + block.attn.c_proj(attention.transpose(1, 2).reshape(x.shape))
            x = x + block.mlp(block.ln_2(x))
        expected = model.lm_head(t.ln_f(x))
        torch.testing.assert_close(model(input_ids=input_ids).logits, expected, atol=1e-5, rtol=1e-5)


def growing(**options) -> AttentionWindowWarmup:
    """A window that changes at every step of a 4-step run at length 16: 2, 4, 8, 12, then full."""
    return AttentionWindowWarmup(**{"initial_window": 2, "step_size": 2, **options})


def test_a_run_trains_with_the_growing_window_and_saves_the_last(tmp_path):
    algorithm = growing()
    tiny_trainer(tmp_path, [algorithm], max_duration="4ba", seq_len=16, vocab_size=512).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["attention_window_warmup/window"] for r in records if r["event"] == "train"]
    expected = [window_at(step / 4, 2, 16, 1.0, 2) for step in range(4)]  # from the fraction done before each step
    assert logged == expected and len(set(logged)) == 4
    assert algorithm.state_dict() == {"window": expected[-1]}
    restored = growing()
    restored.modifier = apply_sliding_window(tiny(), 2)
    restored.load_state_dict(algorithm.state_dict())  # what `composerlite eval` does after INIT
    assert int(restored.modifier.window) == expected[-1]


def test_reaching_the_full_length_removes_the_limit(tmp_path):
    algorithm = growing(duration=0.5)
    tiny_trainer(tmp_path, [algorithm], max_duration="4ba", seq_len=16, vocab_size=512).fit()
    assert algorithm.window == UNLIMITED and int(algorithm.modifier.window) == UNLIMITED


def test_options_and_a_second_window_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="final_window=8 is below initial_window=64"):
        build_algorithm("attention_window_warmup", {"final_window": 8})
    with pytest.raises(ConfigError, match="attention_window") as error:
        compose([build_algorithm("attention_window_warmup"), build_algorithm("attention_window_warmup")])
    assert "\n" not in str(error.value)


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [growing()], max_duration="4ba")


def test_resume_after_a_stop_is_exact(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [growing()], steps=4)


def test_export_to_hf_is_refused(tmp_path, text_file, capsys):
    assert cli_run(text_file, tmp_path / "run", "attention_window_warmup") == 0
    assert_export_refused(tmp_path / "run", tmp_path / "hf", "attention_window_warmup", capsys)
