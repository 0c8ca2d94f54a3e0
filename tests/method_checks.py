"""Checks every speedup method's test file runs: same-seed determinism, exact resume after a run
stops mid-way, and `export --to hf` (a folder transformers loads with the trained logits, or one
line saying why not). `make_algorithms` builds fresh Algorithm instances for each run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from tinyrun import tiny_trainer, weights

from composerlite import Callback, cli
from composerlite.run.checkpoint import MODEL_FILE, model_tensors, read_verified
from composerlite.system.storage import location

Algorithms = Callable[[], list]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["event"] == "train"]


class StopAfter(Callback):
    """Ends the process's training abruptly after batch `step` (as a crash would: no save)."""

    def __init__(self, step: int):
        self.step = step

    def batch_end(self, state, logger):
        if state.timestamp.batch == self.step:
            raise KeyboardInterrupt(f"stopped after step {self.step}")


def assert_same_seed_runs_match(tmp_path: Path, make_algorithms: Algorithms, **run) -> None:
    """Two runs from the same seed give the same losses and weights, bit for bit."""
    first = tiny_trainer(tmp_path / "first", make_algorithms(), vocab_size=512, **run)
    first.fit()
    second = tiny_trainer(tmp_path / "second", make_algorithms(), vocab_size=512, **run)
    second.fit()
    assert train_losses(tmp_path / "first") == train_losses(tmp_path / "second")
    for key, tensor in weights(first.state.model).items():
        assert torch.equal(tensor, weights(second.state.model)[key]), key


def assert_exact_resume_after_stop(tmp_path: Path, make_algorithms: Algorithms, steps: int = 4, **run) -> None:
    """A run that stops after step `steps // 2 + 1`, resumed from its step-`steps // 2` checkpoint,
    ends with the uninterrupted run's losses and weights, bit for bit."""
    half = steps // 2
    common = dict(max_duration=f"{steps}ba", save_interval=f"{half}ba", dropout=0.1, vocab_size=512, **run)
    straight = tiny_trainer(tmp_path / "straight", make_algorithms(), **common)
    straight.fit()
    try:
        tiny_trainer(tmp_path / "stopped", make_algorithms(), callbacks=[StopAfter(half + 1)], **common).fit()
        raise AssertionError("the run did not stop")
    except KeyboardInterrupt:
        pass
    checkpoint = tmp_path / "stopped" / "checkpoints" / f"ba{half:08d}"
    resumed = tiny_trainer(tmp_path / "resumed", make_algorithms(), load_path=str(checkpoint), **common)
    resumed.fit()
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")[half:]
    for key, tensor in weights(straight.state.model).items():
        assert torch.equal(tensor, weights(resumed.state.model)[key]), f"{key} differs after resume"


def cli_run(text_file: Path, run_dir: Path, *algo_specs: str) -> int:
    """A two-step gpt2-tiny run through the CLI (which writes the config.yaml export reads)."""
    algos = [arg for spec in algo_specs for arg in ("--algo", spec)]
    return cli.main(["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", "2ba",
                     "--batch-size", "4", "--seq-len", "16", "--device", "cpu", "--precision", "fp32",
                     "--eval-interval", "1dur", "--eval-batches", "1", "--run-dir", str(run_dir), *algos])


def export_and_load(run_dir: Path, out: Path):
    """Export the run to HF and load it with transformers; returns (exported model, checkpoint weights)."""
    from transformers import GPT2LMHeadModel

    assert cli.main(["export", str(run_dir), "--to", "hf", str(out)]) == 0
    exported = GPT2LMHeadModel.from_pretrained(out).eval()
    checkpoint = location(str(run_dir / "checkpoints" / "ba00000002"))
    return exported, model_tensors(read_verified(checkpoint)[MODEL_FILE])


def assert_export_refused(run_dir: Path, out: Path, name: str, capsys) -> None:
    """`export --to hf` refuses the run with one line that names the algorithm, writing nothing."""
    capsys.readouterr()
    assert cli.main(["export", str(run_dir), "--to", "hf", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"'{name}'" in error and "cannot export" in error and "\n" not in error
    assert not out.exists()


def assert_exported_logits_match_training(text_file: Path, tmp_path: Path, algo_spec: str) -> None:
    """Train gpt2-tiny with `algo_spec`, export it, and check transformers gives the trained model's logits."""
    from composerlite.models import build_model

    assert cli_run(text_file, tmp_path / "run", algo_spec) == 0
    exported, trained_weights = export_and_load(tmp_path / "run", tmp_path / "hf")
    trained = build_model("gpt2-tiny", dropout=0.0).eval()
    trained.load_state_dict(trained_weights)
    input_ids = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(input_ids=input_ids).logits, trained(input_ids=input_ids).logits)
