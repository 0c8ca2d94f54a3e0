"""Muon: Newton-Schulz against a float64 reference and the orthogonality it promises, the (out, in)
orientation and per-Q/K/V treatment of HF's Conv1D weights, the one-step update, the parameter
split (AdamW groups stepping exactly like torch's AdamW), the LR schedule and momentum warmup,
determinism, exact resume, refusal when listed twice, and export to transformers."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from method_checks import assert_exact_resume_after_stop, assert_exported_logits_match_training, assert_same_seed_runs_match
from tinyrun import tiny_trainer

from composerlite import Algorithm, Event
from composerlite.algorithms.muon import (Muon, MuonOptions, build_muon, momentum_at, muon_layouts, newton_schulz,
                                          orthogonalized_update)
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_algorithm
from composerlite.run.loop import adamw, seed_everything

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz_float64(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic iteration written out in float64: X <- aX + b(XX^T)X + c(XX^T)^2 X on the wide
    orientation, from X = G / ||G||_F."""
    a, b, c = COEFFICIENTS
    x = matrix.double()
    tall = x.shape[0] > x.shape[1]
    x = (x.T if tall else x) / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if tall else x


def known_matrix(rows: int = 8, cols: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U diag(s) V^T with singular values spanning a factor of 100; returns (G, U, V)."""
    generator = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=generator, dtype=torch.float64))
    return u @ torch.diag(torch.logspace(0, -2, k, dtype=torch.float64)) @ v.T, u, v


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("shape", [(8, 16), (16, 8)])
def test_newton_schulz_matches_float64_and_orthogonalises(shape):
    matrix, u, v = known_matrix(*shape)
    reference = newton_schulz_float64(matrix)
    assert relative_error(newton_schulz(matrix.float(), dtype=torch.float32), reference) < 1e-4  # same iteration
    result = newton_schulz(matrix.float())  # the reference's bf16
    assert result.dtype == torch.bfloat16
    assert relative_error(result, reference) < 0.05
    # The promise: singular values from 0.01 to 1 all land near 1, singular vectors unchanged.
    singular_values = torch.linalg.svdvals(result.double())
    assert singular_values.min() > 0.65 and singular_values.max() < 1.2
    rotated = u.T @ result.double() @ v
    assert (rotated - torch.diag(torch.diagonal(rotated))).abs().max() < 0.03


def test_conv1d_weights_are_orthogonalised_and_scaled_as_out_by_in():
    stored, _, _ = known_matrix(4, 16)  # a Conv1D weight [in=4, out=16]: logically (16, 4), tall
    update = orthogonalized_update(stored.float(), transposed=True, blocks=1, dtype=torch.float32)
    expected = (newton_schulz_float64(stored.T) * 2.0).T  # sqrt(max(1, 16 / 4)) = 2
    assert update.shape == stored.shape and update.dtype == torch.float32
    assert relative_error(update, expected) < 1e-4
    as_stored = orthogonalized_update(stored.float(), transposed=False, blocks=1, dtype=torch.float32)
    assert relative_error(as_stored, expected / 2) < 1e-4  # as stored (torch.optim.Muon), the scale would be 1


def test_qkv_blocks_of_c_attn_are_orthogonalised_one_by_one():
    d = 8
    blocks = [known_matrix(d, d, seed)[0] * scale for seed, scale in ((1, 100.0), (2, 1.0), (3, 0.01))]
    stored = torch.cat([block.T for block in blocks], dim=1).float()  # c_attn: [in=d, out=3d], Q|K|V columns
    update = orthogonalized_update(stored, transposed=True, blocks=3, dtype=torch.float32)
    for index, block in enumerate(blocks):
        piece = update[:, index * d:(index + 1) * d].T  # this projection's (out, in) update
        assert relative_error(piece, newton_schulz_float64(block)) < 1e-4
        assert torch.linalg.svdvals(piece.double()).min() > 0.65  # V, 10^4 times smaller than Q, still moves
    whole = orthogonalized_update(stored, transposed=True, blocks=1, dtype=torch.float32)
    assert whole[:, 2 * d:].abs().max() < 0.01  # orthogonalised as one matrix, V's update would vanish


@pytest.fixture
def model():
    seed_everything(0)
    return build_model("gpt2-tiny", vocab_size=512, dropout=0.0)


def make_optimizer(model, **options):
    return build_muon(functools.partial(adamw, lr=1e-3, weight_decay=0.1),
                      MuonOptions(**options), model)


def names_of(model, params):
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_parameter_split_hidden_matrices_on_muon_the_rest_on_adamw(model):
    optimizer = make_optimizer(model)
    muon = {name for group in optimizer.param_groups if group["use_muon"] for name in names_of(model, group["params"])}
    hidden = {f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert muon == hidden
    adam = {name for group in optimizer.param_groups if not group["use_muon"] for name in names_of(model, group["params"])}
    assert adam == {name for name, _ in model.named_parameters()} - hidden  # embeddings, tied head, gains, biases
    layouts = muon_layouts(model)
    assert layouts[id(model.transformer.h[0].attn.c_attn.weight)] == (True, 3)
    assert layouts[id(model.transformer.h[0].mlp.c_fc.weight)] == (True, 1)
    assert optimizer.param_groups[0]["lr"] == 1e-3  # AdamW first: the logged lr stays the run's


def test_an_untied_head_stays_on_adamw(model):
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.zeros(512, 64))
    optimizer = make_optimizer(model)
    on_muon = {id(p) for group in optimizer.param_groups if group["use_muon"] for p in group["params"]}
    assert id(model.lm_head.weight) not in on_muon and id(model.transformer.wte.weight) not in on_muon


def set_grads(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


def test_two_steps_match_the_reference_update_and_adamw_groups_match_torch_adamw(model):
    twin = build_model("gpt2-tiny", vocab_size=512, dropout=0.0)
    twin.load_state_dict(model.state_dict())
    optimizer = make_optimizer(model, weight_decay=0.1, ns_dtype="float32")  # float32: a tight comparison
    baseline = adamw(twin, lr=1e-3, weight_decay=0.1)
    c_fc = model.transformer.h[1].mlp.c_fc.weight
    expected, buffer = c_fc.detach().double().clone(), torch.zeros_like(c_fc, dtype=torch.float64)
    for step in range(2):
        set_grads(model, step)
        set_grads(twin, step)
        grad = c_fc.grad.double()
        buffer = 0.95 * buffer + 0.05 * grad
        nesterov = 0.05 * grad + 0.95 * buffer
        expected = expected * (1 - 0.02 * 0.1) - 0.02 * 2.0 * newton_schulz_float64(nesterov.T).T  # [64, 256]: (256, 64) logically
        optimizer.step()
        baseline.step()
    assert relative_error(c_fc.detach(), expected) < 1e-4
    hidden = {id(p) for group in optimizer.param_groups if group["use_muon"] for p in group["params"]}
    for (name, p), twin_p in zip(model.named_parameters(), twin.parameters()):
        if id(p) not in hidden:
            assert torch.equal(p, twin_p), f"{name}: AdamW group differs from torch.optim.AdamW"


def test_momentum_warmup_schedule():
    assert [momentum_at(step, 0.95, 4, 0.85) for step in (0, 2, 4, 10)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert momentum_at(0, 0.95, 0, 0.85) == 0.95


class Probe(Algorithm):
    """Records every optimizer group's lr and momentum after each step."""

    name = "probe"

    def __init__(self):
        self.seen = []

    def match(self, event, state):
        return event is Event.BATCH_END

    def apply(self, event, state, logger):
        self.seen.append([(g["use_muon"], g["lr"], g.get("momentum")) for g in state.optimizer.param_groups])


def test_both_optimizers_follow_the_lr_schedule_and_momentum_warms_up(tmp_path):
    probe = Probe()
    tiny_trainer(tmp_path, [Muon(momentum_warmup_steps=2), probe], max_duration="5ba", warmup="2ba", vocab_size=512).fit()
    logged = [record["lr"] for record in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
              if record["event"] == "train"]
    assert len(set(logged)) == 5  # warmup then cosine decay: a different LR every step
    for step, (groups, run_lr) in enumerate(zip(probe.seen, logged, strict=True)):
        assert {use_muon for use_muon, _, _ in groups} == {True, False}
        for use_muon, lr, momentum in groups:
            assert lr == pytest.approx(run_lr * (0.02 / 1e-3) if use_muon else run_lr, rel=1e-12)
            if use_muon:
                assert momentum == pytest.approx(momentum_at(step, 0.95, 2, 0.85))


def test_same_seed_is_deterministic_with_gradient_clipping(tmp_path):
    assert_same_seed_runs_match(
        tmp_path, lambda: [Muon(momentum_warmup_steps=2), build_algorithm("gradient_clipping")], max_duration="3ba")


def test_resume_after_a_stop_is_exact_during_momentum_warmup(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [Muon(momentum_warmup_steps=5)])


def test_listed_twice_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'muon' is listed twice and takes over optimizer") as error:
        tiny_trainer(tmp_path, [Muon(), Muon()], vocab_size=512)
    assert "\n" not in str(error.value)


def test_export_gives_a_model_transformers_loads_with_the_trained_logits(tmp_path, text_file):
    assert_exported_logits_match_training(text_file, tmp_path, "muon")
