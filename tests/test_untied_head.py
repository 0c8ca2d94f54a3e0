"""untied_head: its own zero-initialised lm_head (uniform first predictions), trained apart from the
embedding; determinism, exact resume, refusal when listed twice, export to transformers untied."""

from __future__ import annotations

import math

import pytest
import torch
from method_checks import assert_exact_resume_after_stop, assert_same_seed_runs_match, cli_run, export_and_load
from tinyrun import tiny_trainer

from composerlite.algorithms.untied_head import UntiedHead, untie_head
from composerlite.errors import ConfigError
from composerlite.models import build_model, count_parameters
from composerlite.run.loop import seed_everything


def test_untie_head_gives_a_zero_head_of_its_own_and_uniform_predictions():
    seed_everything(0)
    model = build_model("gpt2-tiny", vocab_size=512, dropout=0.0)
    before = count_parameters(model)
    embedding = model.transformer.wte.weight.detach().clone()
    head = untie_head(model)
    assert head is model.lm_head.weight and head is not model.transformer.wte.weight
    assert head.shape == embedding.shape and not head.any() and not model.config.tie_word_embeddings
    assert torch.equal(model.transformer.wte.weight, embedding)  # the embedding itself is untouched
    assert count_parameters(model) == before + 512 * 64
    input_ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    assert model(input_ids=input_ids, labels=input_ids).loss.item() == pytest.approx(math.log(512), rel=1e-6)
    with pytest.raises(ValueError, match="already untied"):
        untie_head(model)


def test_head_and_embedding_train_apart(tmp_path):
    trainer = tiny_trainer(tmp_path, [UntiedHead()], max_duration="3ba", vocab_size=512)
    trainer.fit()
    model = trainer.state.model
    assert model.lm_head.weight.any()  # the zero head was trained
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    trained = {id(p) for group in trainer.state.optimizer.param_groups for p in group["params"]}
    assert id(model.lm_head.weight) in trained and id(model.transformer.wte.weight) in trained


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [UntiedHead()], max_duration="3ba")


def test_resume_after_a_stop_is_exact(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [UntiedHead()])


def test_listed_twice_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'untied_head' is listed twice and takes over output_head") as error:
        tiny_trainer(tmp_path, [UntiedHead(), UntiedHead()], vocab_size=512)
    assert "\n" not in str(error.value)


def test_export_gives_an_untied_model_transformers_loads_with_the_trained_logits(tmp_path, text_file):
    assert cli_run(text_file, tmp_path / "run", "untied_head") == 0
    exported, trained_weights = export_and_load(tmp_path / "run", tmp_path / "hf")
    assert exported.lm_head.weight is not exported.transformer.wte.weight
    trained = build_model("gpt2-tiny", dropout=0.0)
    untie_head(trained)
    trained.load_state_dict(trained_weights)
    assert not torch.equal(trained.lm_head.weight, trained.transformer.wte.weight)
    input_ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(input_ids=input_ids).logits, trained.eval()(input_ids=input_ids).logits)
