"""QK-norm: the converted model against a hand-written forward on every attention route, bounded
scores, commuting with rotary, the lean blocks keeping it, and the checks every method gets."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from method_checks import assert_exact_resume_after_stop, assert_export_refused, assert_same_seed_runs_match, cli_run

from composerlite.algorithms.fused_gpt2_blocks import apply_fused_gpt2_blocks
from composerlite.algorithms.qk_norm import QKNorm, apply_qk_norm
from composerlite.algorithms.rotary import apply_rotary
from composerlite.core.attention import ScoreModifier, add_score_modifier
from composerlite.core.composition import compose
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_algorithm

VOCAB = 64


class ZeroBias(ScoreModifier):
    """Adds nothing, but puts the model on the hook's SDPA-with-mask route."""

    name = "zero_bias"

    def bias(self, module, query_positions, key_positions):
        return torch.zeros(())


class Identity(ScoreModifier):
    """Changes nothing, but needs the raw scores: the model takes the hook's eager route."""

    name = "identity"
    needs_scores = True

    def apply_to_scores(self, module, scores, query_positions, key_positions):
        return scores


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("gpt2-tiny", vocab_size=VOCAB, dropout=0.0).eval()


def ids(length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))


def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits  # as in training: no KV cache


def rms_normalised(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) over the last dimension, with F.rms_norm's default eps (fp32 epsilon)."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def manual_forward(model, input_ids: torch.Tensor) -> torch.Tensor:
    """GPT-2 written out with each head's q and k RMS-normalised before the scores."""
    t, n_head, seq = model.transformer, model.config.n_head, input_ids.shape[1]
    x = t.wte(input_ids) + t.wpe(torch.arange(seq))
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for block in t.h:
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(model.config.n_embd, dim=-1)
        q, k, v = (z.view(*z.shape[:2], n_head, -1).transpose(1, 2) for z in (q, k, v))
        q, k = rms_normalised(q), rms_normalised(k)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        attention = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + block.attn.c_proj(attention.transpose(1, 2).reshape(x.shape))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(t.ln_f(x))


@pytest.mark.parametrize("route", ["transformers sdpa", "sdpa with a mask", "eager"])
def test_qk_norm_matches_a_hand_written_forward_on_every_route(route):
    model = apply_qk_norm(tiny())
    if route == "sdpa with a mask":
        add_score_modifier(model, ZeroBias())
    elif route == "eager":
        add_score_modifier(model, Identity())
    input_ids = ids()
    torch.testing.assert_close(logits(model, input_ids), manual_forward(model, input_ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(tiny(), input_ids), logits(model, input_ids), atol=1e-3)


def test_normalised_scores_are_bounded_by_sqrt_head_dim():
    model = apply_qk_norm(tiny())
    layer = model.transformer.h[0].attn
    scaled = torch.randn(1, 2, 5, 32) * 1000  # huge queries and keys, as weights can grow to
    q, k = layer.attention_changes.transform_queries_and_keys(layer, scaled, -scaled)
    scores = (q @ k.transpose(-1, -2)) * layer.scaling
    assert scores.abs().max() <= math.sqrt(32) * (1 + 1e-5)
    torch.testing.assert_close(q.pow(2).mean(-1), torch.ones(1, 2, 5))


def test_qk_norm_and_rotary_commute():
    """A rotation keeps every vector's norm, so the two transforms give one model in either order."""
    input_ids = ids()
    first = logits(apply_rotary(apply_qk_norm(tiny())), input_ids)
    second = logits(apply_qk_norm(apply_rotary(tiny())), input_ids)
    torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)


def test_lean_blocks_keep_qk_norm_in_either_order():
    input_ids = ids()
    expected = logits(apply_qk_norm(tiny()), input_ids)
    after = apply_qk_norm(tiny())
    apply_fused_gpt2_blocks(after)
    before = tiny()
    apply_fused_gpt2_blocks(before)
    apply_qk_norm(before)
    for model in (after, before):
        torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_twice_is_refused_in_one_line():
    with pytest.raises(ValueError, match="already uses QK-norm"):
        apply_qk_norm(apply_qk_norm(copy.deepcopy(tiny())))
    with pytest.raises(ConfigError, match="query_key_norm") as error:
        compose([build_algorithm("qk_norm"), build_algorithm("qk_norm")])
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="eps"):
        build_algorithm("qk_norm", {"eps": -1.0})


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [QKNorm()])


def test_resume_after_a_stop_is_exact(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [QKNorm()], steps=4)


def test_export_to_hf_is_refused(tmp_path, text_file, capsys):
    assert cli_run(text_file, tmp_path / "run", "qk_norm") == 0
    assert_export_refused(tmp_path / "run", tmp_path / "hf", "qk_norm", capsys)
