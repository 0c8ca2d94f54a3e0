"""ReLU²: the converted MLP against a hand-written one, the config telling the truth, the lean
blocks keeping it in either order, the conflict with a replaced MLP, and the checks every method gets."""

from __future__ import annotations

import pytest
import torch
from method_checks import assert_exact_resume_after_stop, assert_same_seed_runs_match, cli_run, export_and_load

from composerlite.algorithms.fused_gpt2_blocks import apply_fused_gpt2_blocks
from composerlite.algorithms.relu_squared import ReLUSquared, apply_relu_squared
from composerlite.core.composition import compose
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_algorithm

VOCAB = 64


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("gpt2-tiny", vocab_size=VOCAB, dropout=0.0).eval()


def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits  # as in training: no KV cache


def test_mlp_is_relu_squared_written_out():
    model = tiny()
    assert apply_relu_squared(model) == model.config.n_layer
    assert model.config.activation_function == "relu2"
    x = torch.randn(2, 7, model.config.n_embd, generator=torch.Generator().manual_seed(3))
    for block in model.transformer.h:
        mlp = block.mlp
        hidden = x @ mlp.c_fc.weight + mlp.c_fc.bias  # HF Conv1D: [in, out]
        expected = torch.where(hidden > 0, hidden * hidden, torch.zeros(())) @ mlp.c_proj.weight + mlp.c_proj.bias
        with torch.no_grad():
            torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
    input_ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(logits(model, input_ids), logits(tiny(), input_ids), atol=1e-3)


def test_lean_blocks_keep_relu_squared_which_runs_before_them():
    input_ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    converted = tiny()
    apply_relu_squared(converted)
    expected = logits(converted, input_ids)
    apply_fused_gpt2_blocks(converted)  # its lean MLP picks the activation from the config
    torch.testing.assert_close(logits(converted, input_ids), expected, atol=1e-5, rtol=1e-5)
    # listed after fused_gpt2_blocks, relu_squared still runs first (its order), so the lean MLP sees it
    algorithms = compose([build_algorithm("fused_gpt2_blocks"), build_algorithm("relu_squared")])
    assert [algorithm.name for algorithm in algorithms] == ["relu_squared", "fused_gpt2_blocks"]


def test_conflicts_with_a_replaced_mlp_in_one_line():
    with pytest.raises(ConfigError, match="gated_linear_units") as error:
        compose([build_algorithm("relu_squared"), build_algorithm("gated_linear_units")])
    assert "'relu_squared'" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="matched no module"):
        apply_relu_squared(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [ReLUSquared()])


def test_resume_after_a_stop_is_exact(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [ReLUSquared()], steps=4)


def test_export_to_hf_loads_in_transformers_with_the_trained_logits(tmp_path, text_file):
    assert cli_run(text_file, tmp_path / "run", "relu_squared") == 0
    exported, trained_weights = export_and_load(tmp_path / "run", tmp_path / "hf")
    assert exported.config.activation_function == "relu2"
    trained = build_model("gpt2-tiny", dropout=0.0).eval()
    apply_relu_squared(trained)
    trained.load_state_dict(trained_weights)
    plain = build_model("gpt2-tiny", dropout=0.0).eval()  # the same weights under GELU: what export wrote before
    plain.load_state_dict(trained_weights)
    input_ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = exported(input_ids=input_ids).logits
        assert torch.equal(logits, trained(input_ids=input_ids).logits)
        assert not torch.allclose(logits, plain(input_ids=input_ids).logits)
