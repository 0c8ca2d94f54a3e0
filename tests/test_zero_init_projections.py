"""zero_init_projections: every attention and MLP c_proj starts at zero (residual branches start as
the identity) and then trains; determinism, exact resume, refusal beside an MLP replacement, export."""

from __future__ import annotations

import pytest
import torch
from method_checks import assert_exact_resume_after_stop, assert_exported_logits_match_training, assert_same_seed_runs_match
from tinyrun import tiny_trainer

from composerlite.algorithms.zero_init_projections import ZeroInitProjections, zero_init_projections
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_algorithm
from composerlite.run.loop import seed_everything


def test_zeroed_projections_make_every_block_the_identity():
    seed_everything(0)
    model = build_model("gpt2-tiny", vocab_size=512, dropout=0.0).eval()
    others = {name: p.detach().clone() for name, p in model.named_parameters() if ".c_proj." not in name}
    assert zero_init_projections(model) == 2 * model.config.n_layer
    for name, p in model.named_parameters():
        if ".c_proj." in name:
            assert not p.any(), name
        else:
            assert torch.equal(p, others[name]), f"{name} changed"
    # With every branch zero, the output is ln_f(token + position embedding) through the head.
    input_ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    t = model.transformer
    hidden = t.ln_f(t.wte(input_ids) + t.wpe(torch.arange(16)))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, model.lm_head(hidden), rtol=1e-6, atol=1e-6)


def test_projections_start_at_zero_and_then_train(tmp_path):
    zeroed = []

    class After(ZeroInitProjections):  # records c_proj right after INIT, before any step
        def apply(self, event, state, logger):
            super().apply(event, state, logger)
            zeroed.append(not state.model.transformer.h[1].mlp.c_proj.weight.any())

    trainer = tiny_trainer(tmp_path, [After()], max_duration="2ba", vocab_size=512)
    trainer.fit()
    assert zeroed == [True]
    assert trainer.state.model.transformer.h[1].mlp.c_proj.weight.any()


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [ZeroInitProjections()], max_duration="3ba")


def test_resume_after_a_stop_is_exact(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [ZeroInitProjections()])


def test_an_mlp_replacement_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'zero_init_projections' cannot run with 'gated_linear_units'") as error:
        tiny_trainer(tmp_path, [ZeroInitProjections(), build_algorithm("gated_linear_units")], vocab_size=512)
    assert "\n" not in str(error.value)


def test_export_gives_a_model_transformers_loads_with_the_trained_logits(tmp_path, text_file):
    assert_exported_logits_match_training(text_file, tmp_path, "zero_init_projections")
