"""Each built-in algorithm's functional form on gpt2-tiny, its Algorithm in a short training run,
and checkpoint/resume to the same weights for every registered algorithm."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
from tinyrun import CHEAP_ON_CPU, same, tiny_trainer, weights
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

from composerlite import Algorithm, Event
from composerlite.algorithms.ema import EMA, compute_ema, smoothing_for
from composerlite.algorithms.gated_linear_units import GatedMLP, apply_gated_linear_units
from composerlite.algorithms.gradient_clipping import AGC_EPS, apply_gradient_clipping, unitwise_norm
from composerlite.algorithms.layer_freezing import freeze_fraction, freeze_layers
from composerlite.algorithms.low_precision_layernorm import LPLayerNorm, apply_low_precision_layernorm
from composerlite.core.surgery import count_modules
from composerlite.errors import ConfigError
from composerlite.models import build_model, count_parameters
from composerlite.registry import build_algorithm, registered_algorithms
from composerlite.run.loop import seed_everything


@pytest.fixture
def model() -> nn.Module:
    seed_everything(0)
    return build_model("gpt2-tiny", dropout=0.0, vocab_size=512)


def backward(model: nn.Module, scale: float = 1.0) -> None:
    input_ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    (model(input_ids=input_ids, labels=input_ids).loss * scale).backward()


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


# --- gradient_clipping ---------------------------------------------------------------------------


def test_norm_clipping_caps_the_total_norm_and_keeps_the_direction(model):
    backward(model, scale=1000.0)
    before = grads(model)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before]))
    assert total > 1.0
    apply_gradient_clipping(model, "norm", 1.0)
    after = grads(model)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in after]))
    assert clipped == pytest.approx(1.0, rel=1e-4)
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b * (clipped / total), rtol=1e-4, atol=1e-9)


def test_value_clipping_caps_every_element(model):
    backward(model, scale=1000.0)
    before = grads(model)
    apply_gradient_clipping(model, "value", 0.01)
    for b, a in zip(before, grads(model)):
        assert a.abs().max() <= 0.01
        torch.testing.assert_close(a, b.clamp(-0.01, 0.01))


def test_adaptive_clipping_bounds_each_units_ratio_and_leaves_small_ones(model):
    backward(model, scale=1000.0)
    before = grads(model)
    apply_gradient_clipping(model, "adaptive", 0.01)
    touched = untouched = 0
    for param, b, a in zip(model.parameters(), before, grads(model)):
        limit = unitwise_norm(param.detach()).clamp_min(AGC_EPS) * 0.01
        assert (unitwise_norm(a) <= limit * (1 + 1e-4)).all()
        small = unitwise_norm(b) <= limit
        untouched += int(small.sum())
        touched += int((~small).sum())
        torch.testing.assert_close(torch.where(small, a, b), b)  # units under the limit are unchanged
    assert touched > 0 and untouched > 0  # the scale above exercises both branches


def test_gradient_clipping_runs_after_the_full_batch_gradient(tmp_path):
    clip = build_algorithm("gradient_clipping", {"clipping_type": "norm", "clipping_threshold": 1e-3})
    seen = []

    class Probe(type(clip)):
        def apply(self, event, state, logger):
            super().apply(event, state, logger)
            seen.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in state.model.parameters() if p.grad is not None)))

    probe = Probe(clipping_type="norm", clipping_threshold=1e-3)
    tiny_trainer(tmp_path, [probe], max_duration="2ba", vocab_size=512, microbatch_size=1).fit()
    assert seen == [pytest.approx(1e-3, rel=1e-3)] * 2


# --- ema ---------------------------------------------------------------------------------------


def test_compute_ema_and_half_life():
    assert smoothing_for(1000, 1000) == pytest.approx(0.5)
    assert smoothing_for(1, 1000) ** 1000 == pytest.approx(0.5)
    model = nn.Linear(2, 2)
    average = [torch.zeros_like(p) for p in model.parameters()]
    compute_ema(model, average, smoothing=0.75)
    for p, a in zip(model.parameters(), average):
        torch.testing.assert_close(a, 0.25 * p.detach())


def test_ema_options_are_checked():
    with pytest.raises(ConfigError, match="exactly one of half_life and smoothing"):
        build_algorithm("ema", {"smoothing": 0.9})
    with pytest.raises(ConfigError, match="option 'half_life'"):
        build_algorithm("ema", {"half_life": "0.5dur"})
    with pytest.raises(ConfigError, match="same unit"):
        build_algorithm("ema", {"half_life": "10ba", "update_interval": "1ep"})
    assert build_algorithm("ema", {"half_life": None, "smoothing": 0.9}).update_interval.value == 1


def test_ema_evaluates_with_the_average_and_restores_the_training_weights(tmp_path):
    ema = EMA(half_life="2ba")
    evaluated = []

    class EvalProbe(Algorithm):  # records the weights the eval forward sees
        name = "eval_probe"

        def match(self, event, state):
            return event is Event.EVAL_BATCH_START

        def apply(self, event, state, logger):
            evaluated.append([p.detach().clone() for p in state.model.parameters()])

    trainer = tiny_trainer(tmp_path, [ema, EvalProbe()], max_duration="3ba", eval_interval="3ba", vocab_size=512)
    trainer.fit()
    assert evaluated and ema.last_update == 3
    for seen, average in zip(evaluated[-1], ema.ema_weights):
        torch.testing.assert_close(seen, average, rtol=0, atol=0)
    trained = list(trainer.state.model.parameters())
    assert any(not torch.equal(p, a) for p, a in zip(trained, ema.ema_weights)), "training weights are back after eval"
    with pytest.raises(ConfigError, match="'ema' is listed twice"):
        tiny_trainer(tmp_path / "twice", [EMA(), EMA()], vocab_size=512)


def test_ema_average_matches_the_closed_form(tmp_path):
    """Averaging starts from the step-1 weights; each later step lerps with s = 2^(-1/half_life)."""
    snapshots = []

    class Snapshot(Algorithm):
        name = "snapshot"

        def match(self, event, state):
            return event is Event.BATCH_END

        def apply(self, event, state, logger):
            snapshots.append([p.detach().clone() for p in state.model.parameters()])

    ema = EMA(half_life="2ba")
    tiny_trainer(tmp_path, [Snapshot(), ema], max_duration="3ba", vocab_size=512).fit()
    s = 2 ** -0.5
    for i, average in enumerate(ema.ema_weights):
        expected = snapshots[0][i]
        for step in (1, 2):
            expected = s * expected + (1 - s) * snapshots[step][i]
        torch.testing.assert_close(average, expected, rtol=1e-5, atol=1e-7)


# --- gated_linear_units -------------------------------------------------------------------------


def test_glu_replaces_every_mlp_with_matched_parameter_count(model):
    before = count_parameters(model)
    n_layer = model.config.n_layer
    assert apply_gated_linear_units(model) == n_layer
    assert count_modules(model, GPT2MLP) == 0 and count_modules(model, GatedMLP) == n_layer
    assert abs(count_parameters(model) - before) / before < 0.01
    glu = model.transformer.h[0].mlp
    assert glu.gate.out_features == round(256 * 2 / 3)
    assert model(input_ids=torch.zeros(1, 8, dtype=torch.long)).logits.shape == (1, 8, 512)
    with pytest.raises(ConfigError, match="matched no module .* GPT2MLP"):
        apply_gated_linear_units(model)  # a second pass finds nothing to replace: loud, not silent


def test_glu_algorithm_trains_the_new_weights(tmp_path):
    trainer = tiny_trainer(tmp_path, [build_algorithm("gated_linear_units", {"activation": "silu"})], vocab_size=512)
    gate = trainer.state.model.transformer.h[0].mlp.gate.weight
    assert any(p is gate for group in trainer.state.optimizer.param_groups for p in group["params"])
    before = gate.detach().clone()
    trainer.fit()
    assert not torch.equal(before, gate.detach())


# --- layer_freezing ----------------------------------------------------------------------------


def test_freeze_schedule_is_composers():
    assert freeze_fraction(0.4, 0.5, 1.0) == 0.0
    assert freeze_fraction(0.75, 0.5, 1.0) == pytest.approx(0.5)
    assert freeze_fraction(1.0, 0.5, 0.5) == pytest.approx(0.5)


def test_freeze_layers_freezes_the_earliest_blocks(model):
    assert freeze_layers(model, 0.5) == 1
    assert not any(p.requires_grad for p in model.transformer.h[0].parameters())
    assert all(p.requires_grad for p in model.transformer.h[1].parameters())
    assert model.transformer.wte.weight.requires_grad


def test_frozen_blocks_stop_changing_under_the_trainers_optimizer(tmp_path):
    algorithm = build_algorithm("layer_freezing", {"freeze_start": 0.0, "freeze_level": 1.0})
    trainer = tiny_trainer(tmp_path, [algorithm], max_duration="4ba", vocab_size=512)
    block0 = trainer.state.model.transformer.h[0]
    snapshots = []

    class Snapshot(type(algorithm)):
        def match(self, event, state):
            return event.value == "batch_end"

        def apply(self, event, state, logger):
            snapshots.append(weights(block0))

    trainer.state.algorithms.append(Snapshot())
    trainer.fit()
    # freeze fraction at batch starts 0, .25, .5, .75 -> block 0 frozen from step 3 on
    assert any(not torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])
    assert all(torch.equal(snapshots[2][k], snapshots[3][k]) for k in snapshots[2])


# --- low_precision_layernorm -------------------------------------------------------------------


def test_lpln_is_layernorm_outside_autocast_and_low_precision_inside(model):
    x = torch.randn(2, 4, 64)
    reference = model.transformer.ln_f(x)
    assert apply_low_precision_layernorm(model) == 2 * model.config.n_layer + 1
    norm = model.transformer.ln_f
    assert isinstance(norm, LPLayerNorm)
    torch.testing.assert_close(norm(x), reference, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.bfloat16
        assert nn.LayerNorm(64)(x).dtype == torch.float32  # what it replaces: fp32 under autocast
    assert set(model.state_dict()) == set(build_model("gpt2-tiny", vocab_size=512).state_dict())


def test_lpln_says_it_is_a_no_op_in_fp32(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = tiny_trainer(tmp_path, [build_algorithm("low_precision_layernorm")], vocab_size=512)
    assert any("does nothing in an fp32 run" in str(w.message) for w in caught)
    assert count_modules(trainer.state.model, LPLayerNorm) == 0


def test_lpln_converts_in_a_bf16_run(tmp_path):
    trainer = tiny_trainer(tmp_path, [build_algorithm("low_precision_layernorm")], vocab_size=512, precision="bf16")
    assert count_modules(trainer.state.model, LPLayerNorm) == 2 * 2 + 1


# --- scale_schedule ----------------------------------------------------------------------------


def test_scale_schedule_scales_duration_and_warmup_not_fractions(tmp_path):
    trainer = tiny_trainer(tmp_path, [build_algorithm("scale_schedule", {"ratio": 0.5})], max_duration="6ba",
                           warmup="4ba", vocab_size=512)
    assert str(trainer.state.max_duration) == "3ba"
    assert str(trainer.state.schedulers[0].warmup) == "2ba"
    assert trainer.fit()["steps"] == 3
    relative = tiny_trainer(tmp_path / "dur", [build_algorithm("scale_schedule", {"ratio": 2.0})], max_duration="2ba",
                            warmup="0.25dur", vocab_size=512)
    assert str(relative.state.max_duration) == "4ba" and str(relative.state.schedulers[0].warmup) == "0.25dur"


# --- every registered algorithm: train, checkpoint, resume to the same weights -----------------

RESUME_OPTIONS = {
    "scale_schedule": {"ratio": 1.5},  # 6 steps instead of 4: the resumed run must scale too
    "ema": {"half_life": "2ba"},
    "layer_freezing": {"freeze_start": 0.3},  # freezing starts after the checkpoint
}

# state_dict keys that measure this process rather than the training (compile counts the graphs
# Dynamo built here; a resumed process may reuse its cache): compared by presence only.
PER_PROCESS_STATE = {"compile": {"graphs", "graph_breaks"}}


@pytest.mark.parametrize("name", sorted(registered_algorithms()))
def test_train_checkpoint_resume_gives_the_same_weights(tmp_path, name):
    options = {**CHEAP_ON_CPU.get(name, {}), **RESUME_OPTIONS.get(name, {})}
    make = lambda run_dir, **kwargs: tiny_trainer(  # noqa: E731
        run_dir, [build_algorithm(name, options)], max_duration="4ba", save_interval="2ba", eval_interval="2ba",
        dropout=0.1, vocab_size=512, **kwargs)
    try:
        straight = make(tmp_path / "straight")
    except ConfigError as error:  # e.g. a GPU-only kernel: refused up front, nothing to resume
        pytest.skip(f"{name} does not run on this CPU: {error}")
    straight.fit()
    checkpoint = tmp_path / "straight" / "checkpoints" / "ba00000002"
    assert checkpoint.is_dir()
    resumed = make(tmp_path / "resumed", load_path=str(checkpoint))
    resumed.fit()
    assert resumed.state.timestamp.batch == straight.state.timestamp.batch
    for key, tensor in weights(straight.state.model).items():
        assert torch.equal(tensor, weights(resumed.state.model)[key]), f"{name}: {key} differs after resume"
    for a, b in zip(straight.state.algorithms, resumed.state.algorithms, strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for key in PER_PROCESS_STATE.get(name, set()) & sa.keys():
            del sa[key], sb[key]
        assert same(sa, sb), f"{name}: algorithm state differs after resume"
