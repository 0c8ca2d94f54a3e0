"""logit_softcap: bounds and gradient of cap * tanh(x / cap) against a manual float64 reference, the
capped model's logits, the same loss and gradients inside fused_cross_entropy (eager, no-grad and
traceable forms) and in a training run with both; determinism, exact resume, refusals, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_checks import (assert_exact_resume_after_stop, assert_export_refused, assert_same_seed_runs_match,
                           cli_run, train_losses)
from tinyrun import tiny_trainer

from composerlite.algorithms.fused_cross_entropy import FusedLinearCrossEntropyLoss, HiddenStates, traceable_loss
from composerlite.algorithms.logit_softcap import LogitSoftcap, apply_logit_softcap, softcap
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_algorithm
from composerlite.run.loop import seed_everything


def test_softcap_bounds_and_gradient_match_a_manual_reference():
    x = torch.tensor([-1e4, -300.0, -30.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 30.0, 300.0, 1e4], dtype=torch.float64,
                     requires_grad=True)
    capped = softcap(x, 30.0)
    assert (capped[1:-1].abs() < 30.0).all()  # strictly inside the cap ...
    assert capped.abs().max() <= 30.0 and capped[0] == -capped[-1]  # ... until tanh rounds to exactly 1
    manual = torch.tensor([30.0 * math.tanh(v / 30.0) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(capped, manual, rtol=1e-15, atol=0)
    torch.testing.assert_close(capped[4:7], x[4:7].detach(), rtol=1e-6, atol=0)  # the identity near zero
    capped.sum().backward()
    manual_grad = 1 - torch.tanh(x.detach() / 30.0) ** 2  # d/dx [c tanh(x / c)] = 1 - tanh^2(x / c)
    torch.testing.assert_close(x.grad, manual_grad, rtol=1e-12, atol=1e-15)
    assert x.grad[5] == 1.0 and x.grad[0] < 1e-10


def test_the_capped_model_caps_its_logits():
    seed_everything(0)
    model = build_model("gpt2-tiny", vocab_size=512, dropout=0.0).eval()
    with torch.no_grad():  # a head large enough that many logits pass the cap
        model.lm_head.weight.mul_(200.0)
    input_ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = model(input_ids=input_ids).logits
        apply_logit_softcap(model, 5.0)
        capped = model(input_ids=input_ids).logits
    assert raw.abs().max() > 10.0 and capped.abs().max() <= 5.0  # float32 tanh rounds to 1 far out
    torch.testing.assert_close(capped, 5.0 * torch.tanh(raw / 5.0))
    assert model.config.final_logit_softcapping == 5.0
    with pytest.raises(ValueError, match="already soft-capped"):
        apply_logit_softcap(model, 15.0)


def reference_loss(hidden, weight, ids, valid, cap):
    logits = softcap(hidden[:, :-1] @ weight.t(), cap)[..., :valid]
    return F.cross_entropy(logits.reshape(-1, valid), ids[:, 1:].reshape(-1))


@pytest.mark.parametrize("valid", [300, 320])  # padded vocabulary (rows past 300 masked) and not
def test_fused_cross_entropy_applies_the_cap_with_the_same_loss_and_gradients(valid):
    generator = torch.Generator().manual_seed(0)
    hidden = (torch.randn(2, 9, 16, generator=generator) * 4).requires_grad_()
    weight = (torch.randn(320, 16, generator=generator) * 4).requires_grad_()
    ids = torch.randint(0, valid, (2, 9), generator=generator)
    reference = reference_loss(hidden, weight, ids, valid, 15.0)
    reference_grads = torch.autograd.grad(reference, (hidden, weight))
    fused = FusedLinearCrossEntropyLoss(chunk_elements=4096)(HiddenStates(hidden, weight, valid, 15.0), {"input_ids": ids})
    torch.testing.assert_close(fused, reference)
    for got, want in zip(torch.autograd.grad(fused, (hidden, weight)), reference_grads):
        torch.testing.assert_close(got, want)
    uncapped = FusedLinearCrossEntropyLoss(chunk_elements=4096)(HiddenStates(hidden, weight, valid), {"input_ids": ids})
    assert abs(uncapped.item() - fused.item()) > 1.0  # the cap changes this loss: the check above can fail
    with torch.no_grad():
        torch.testing.assert_close(
            FusedLinearCrossEntropyLoss(chunk_elements=4096)(HiddenStates(hidden, weight, valid, 15.0), {"input_ids": ids}),
            reference)
    traced = traceable_loss(hidden[:, :-1], weight, ids[:, 1:], valid, sequences_per_chunk=1, softcap=15.0)
    torch.testing.assert_close(traced, reference)


def test_training_with_fused_cross_entropy_gives_the_capped_models_losses(tmp_path):
    # A cap of 0.01 keeps every prediction near uniform (loss near ln 512): far from the uncapped losses.
    for name, algorithms in (("capped", [LogitSoftcap(cap=0.01)]),
                             ("fused", [LogitSoftcap(cap=0.01), build_algorithm("fused_cross_entropy")]),
                             ("plain", [])):
        tiny_trainer(tmp_path / name, algorithms, max_duration="3ba", vocab_size=512).fit()
    capped, fused, plain = (train_losses(tmp_path / name) for name in ("capped", "fused", "plain"))
    assert [step for step, _ in fused] == [1, 2, 3]
    for (_, with_cap), (_, with_cap_fused), (_, without) in zip(capped, fused, plain, strict=True):
        assert with_cap_fused == pytest.approx(with_cap, rel=1e-5)
        assert abs(with_cap - without) > 10 * 1e-5 * with_cap  # an uncapped fused loss would fail the line above


def test_the_cap_survives_padding_replacing_an_untied_head(tmp_path):
    """pad_vocab resizes an untied head into a new module, which comes without the hook."""
    algorithms = [LogitSoftcap(cap=5.0), build_algorithm("untied_head"), build_algorithm("pad_vocab")]
    trainer = tiny_trainer(tmp_path, algorithms, max_duration="1ba", vocab_size=500)
    trainer.fit()
    model = trainer.state.model.eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 100.0, generator=torch.Generator().manual_seed(0))
        logits = model(input_ids=torch.arange(16)[None]).logits
    assert logits.shape[-1] == 500 and 4.0 < logits.abs().max() <= 5.0


def test_same_seed_is_deterministic(tmp_path):
    assert_same_seed_runs_match(tmp_path, lambda: [LogitSoftcap()], max_duration="3ba")


def test_resume_after_a_stop_is_exact(tmp_path):
    assert_exact_resume_after_stop(tmp_path, lambda: [LogitSoftcap(cap=15.0)])


def test_bad_cap_and_listed_twice_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'logit_softcap' is listed twice and takes over logit_softcap") as error:
        tiny_trainer(tmp_path, [LogitSoftcap(), LogitSoftcap()], vocab_size=512)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="algorithm 'logit_softcap'.*cap"):
        build_algorithm("logit_softcap", {"cap": 0})


def test_export_is_refused_in_one_line(tmp_path, text_file, capsys):
    assert cli_run(text_file, tmp_path / "run", "logit_softcap:cap=15") == 0
    assert_export_refused(tmp_path / "run", tmp_path / "hf", "logit_softcap", capsys)
