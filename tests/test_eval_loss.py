"""Held-out loss is the plain next-token cross-entropy, whatever objective training optimises: a
label-smoothing plugin written as docs/writing-an-algorithm.md says (replacing `state.loss_fn` at
INIT) changes the training loss, never the eval loss (`composerlite run` and `composerlite eval`)."""

from __future__ import annotations

import json

import pytest
import torch
from tinyrun import tiny_trainer

from composerlite import cli
from composerlite.core.state import shifted_cross_entropy

LABEL_SMOOTHING = '''
import torch.nn.functional as F

from composerlite import Algorithm, Event


class LabelSmoothing(Algorithm):
    name = "label_smoothing"

    def __init__(self, smoothing: float = 0.1):
        self.smoothing = smoothing

    def match(self, event, state):
        return event is Event.INIT

    def apply(self, event, state, logger):
        def smoothed(outputs, batch):
            logits = outputs[:, :-1].float()
            targets = batch["input_ids"][:, 1:]
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), label_smoothing=self.smoothing)

        state.loss_fn = smoothed
'''


def plugin(tmp_path):
    path = tmp_path / "label_smoothing.py"
    path.write_text(LABEL_SMOOTHING)
    from composerlite.registry import build_algorithm

    return path, build_algorithm(f"{path}:LabelSmoothing", {"smoothing": 0.3})


def test_eval_reports_plain_cross_entropy_while_training_optimises_another_loss(tmp_path):
    _, smoothing = plugin(tmp_path)
    trainer = tiny_trainer(tmp_path / "run", [smoothing], vocab_size=512)
    summary = trainer.fit()
    state = trainer.state
    state.model.eval()
    plain, smoothed = [], []
    with torch.no_grad():
        for batch in list(trainer.eval_data.epoch(0))[: trainer.eval_batches]:
            logits = state.model(input_ids=batch["input_ids"]).logits
            plain.append(shifted_cross_entropy(logits, batch).item())
            smoothed.append(state.loss_fn(logits, batch).item())
    assert summary["eval_loss"] == pytest.approx(sum(plain) / len(plain), rel=1e-12)
    assert abs(sum(smoothed) / len(smoothed) - summary["eval_loss"]) > 1e-3  # the test can tell them apart


def test_composerlite_eval_reports_the_same_plain_loss(tmp_path, text_file, capsys):
    path, _ = plugin(tmp_path)
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", "2ba",
                     "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1", "--precision", "fp32",
                     "--device", "cpu", "--run-dir", str(run_dir), "--algo", f"{path}:LabelSmoothing:smoothing=0.3"]) == 0
    last_eval = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == "eval"][-1]
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--batch-size", "2", "--max-batches", "1", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_loss"] == last_eval["eval_loss"]
