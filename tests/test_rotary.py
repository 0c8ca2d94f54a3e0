"""Rotary position embeddings: the rotation against one written out pair by pair, relative
positions only, the converted model against a hand-written attention forward, lengths past
n_positions (and `composerlite eval`), conflicts, determinism, resume and export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from method_checks import assert_exact_resume_after_stop, assert_export_refused, assert_same_seed_runs_match, cli_run

from composerlite.algorithms.rotary import Rotary, apply_rotary, rotate, rotated_dimensions
from composerlite import cli
from composerlite.core.attention import NoPositionEmbedding, query_key_transforms
from composerlite.core.composition import compose
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_algorithm


@pytest.fixture
def long_documents(tmp_path) -> Path:
    """100 documents of about 900 tokens: the 2% held out (2 documents) holds a 1100-token sequence."""
    path = tmp_path / "long.jsonl"
    words = "the quick brown fox jumps over the lazy dog while the patient reader counts".split()
    with path.open("w") as file:
        for doc in range(100):
            file.write(json.dumps({"text": f"Document {doc}. " + " ".join(words[(doc + i) % len(words)] for i in range(900))}) + "\n")
    return path


def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=input_ids, use_cache=False).logits  # as in training: no KV cache


def rotated_by_hand(x: torch.Tensor, position: int, rotated: int, base: float) -> torch.Tensor:
    """One head vector x [d], rotated in float64 with an explicit 2x2 matrix per pair (i, i + n)."""
    n = rotated // 2
    out = x.double().clone()
    for i in range(n):
        angle = position * base ** (-2 * i / rotated)
        matrix = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
        out[[i, i + n]] = matrix @ x.double()[[i, i + n]]
    return out


@pytest.mark.parametrize("head_dim, fraction, base", [(8, 1.0, 10000.0), (16, 0.25, 100.0), (6, 1.0, 10000.0)])
def test_rotate_matches_a_rotation_written_out_pair_by_pair(head_dim, fraction, base):
    x = torch.randn(2, 3, 5, head_dim, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([0, 1, 7, 100, 4095])
    rotated = rotated_dimensions(head_dim, fraction)
    result = rotate(x, positions, rotated, base)
    for b in range(2):
        for h in range(3):
            for s, position in enumerate(positions.tolist()):
                expected = rotated_by_hand(x[b, h, s], position, rotated, base)
                torch.testing.assert_close(result[b, h, s].double(), expected, atol=2e-4, rtol=1e-4)
    assert torch.equal(result[..., rotated:], x[..., rotated:])  # the unrotated part passes unchanged
    assert result.dtype == x.dtype


def test_rotated_scores_depend_on_the_distance_only():
    q, k = torch.randn(2, 16, generator=torch.Generator().manual_seed(1)).unbind(0)
    score = lambda i, j: float(rotate(q, torch.tensor([i]), 16, 10000.0) @ rotate(k, torch.tensor([j]), 16, 10000.0).T)  # noqa: E731
    assert score(5, 2) == pytest.approx(score(103, 100), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def manual_forward(model, input_ids: torch.Tensor, rotated: int, base: float) -> torch.Tensor:
    """GPT-2 written out (no learned positions) with q and k rotated by hand before the scores."""
    t = model.transformer
    n_head, seq = model.config.n_head, input_ids.shape[1]
    x = t.wte(input_ids)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for block in t.h:
        h = block.ln_1(x)
        q, k, v = block.attn.c_attn(h).split(model.config.n_embd, dim=-1)
        q, k, v = (z.view(*z.shape[:2], n_head, -1).transpose(1, 2) for z in (q, k, v))
        q = torch.stack([torch.stack([rotated_by_hand(q[0, hh, s], s, rotated, base) for s in range(seq)]) for hh in range(n_head)])[None].float()
        k = torch.stack([torch.stack([rotated_by_hand(k[0, hh, s], s, rotated, base) for s in range(seq)]) for hh in range(n_head)])[None].float()
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        attention = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + block.attn.c_proj(attention.transpose(1, 2).reshape(x.shape))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(t.ln_f(x))


def test_rotary_model_matches_a_hand_written_forward():
    torch.manual_seed(0)
    model = apply_rotary(build_model("gpt2-tiny", vocab_size=64, dropout=0.0), base=10000.0, fraction=0.5)
    input_ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    expected = manual_forward(model, input_ids, rotated=16, base=10000.0)  # head_dim 32, half rotated
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-4, rtol=1e-4)


def test_incremental_decoding_with_a_kv_cache_matches_the_full_forward():
    """Cached keys are stored unrotated and rotated at their own positions on every call, and new
    queries at theirs (the last positions), so decoding token by token gives the full forward's logits."""
    torch.manual_seed(0)
    model = apply_rotary(build_model("gpt2-tiny", vocab_size=64, dropout=0.0)).eval()
    input_ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    full = logits(model, input_ids)
    with torch.no_grad():
        out = model(input_ids=input_ids[:, :6], use_cache=True)
        steps = [out.logits]
        for position in range(6, 10):
            out = model(input_ids=input_ids[:, position:position + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_apply_rotary_drops_the_table_runs_past_n_positions_and_refuses_twice():
    model = build_model("gpt2-tiny", vocab_size=64, n_positions=16, dropout=0.0)
    apply_rotary(model, max_sequence_length=48)
    assert isinstance(model.transformer.wpe, NoPositionEmbedding) and model.config.n_positions == 48
    assert not any("wpe" in key for key in model.state_dict())
    assert [transform.name for transform in query_key_transforms(model)] == ["rotary"]
    out = logits(model, torch.randint(0, 64, (1, 200)))  # 12x the old table
    assert out.shape == (1, 200, 64) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="already uses rotary"):
        apply_rotary(model)
    with pytest.raises(ConfigError, match="no pair of dimensions"):
        apply_rotary(build_model("gpt2-tiny", vocab_size=64), fraction=0.01)


def test_rotary_and_alibi_are_refused_together_in_one_line():
    with pytest.raises(ConfigError, match="position_embedding") as error:
        compose([build_algorithm("rotary"), build_algorithm("alibi")])
    assert "'rotary'" in str(error.value) and "'alibi'" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        build_algorithm("rotary", {"fraction": 0})


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [Rotary()])


def test_resume_after_a_stop_is_exact(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [Rotary()], steps=4)


def test_eval_cli_past_n_positions_and_export_refused(tmp_path, long_documents, capsys):
    run_dir = tmp_path / "run"
    assert cli_run(long_documents, run_dir, "rotary") == 0
    assert_export_refused(run_dir, tmp_path / "hf", "rotary", capsys)
    # gpt2-tiny's learned table covers 1024 positions; the rotary model has none and runs at 1100.
    assert cli.main(["eval", str(run_dir), "--seq-len", "1100", "--batch-size", "1", "--max-batches", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seq_len"] == 1100 and result["algorithms"] == ["rotary"] and math.isfinite(result["eval_loss"])
