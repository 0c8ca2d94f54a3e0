"""`composerlite export RUN_DIR --to hf DIR`: transformers loads the folder and generates the same text;
runs whose algorithms changed the model beyond plain GPT-2 are refused in one line."""

from __future__ import annotations

import pytest
import torch

from composerlite import cli
from composerlite.models import build_model
from composerlite.run.checkpoint import MODEL_FILE, model_tensors, read_verified
from composerlite.system.storage import location

NOT_HF = '''
from composerlite import Algorithm

class NotHF(Algorithm):
    """Stands for an architecture change (like ALiBi) that GPT2LMHeadModel cannot load."""
    name = "not_hf"
    exportable_to_hf = False
    def match(self, event, state): return False
'''


def run_args(text_file, run_dir, *extra):
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", "2ba", "--batch-size", "4",
            "--seq-len", "32", "--device", "cpu", "--precision", "fp32", "--eval-interval", "1dur",
            "--eval-batches", "1", "--run-dir", str(run_dir), *extra]


def test_export_loads_in_transformers_and_generates(tmp_path, text_file):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    run_dir, out = tmp_path / "run", tmp_path / "hf"
    assert cli.main(run_args(text_file, run_dir)) == 0
    assert cli.main(["export", str(run_dir), "--to", "hf", str(out)]) == 0

    exported = GPT2LMHeadModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("The quick brown fox", return_tensors="pt")
    generated = exported.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
    assert isinstance(tokenizer.decode(generated[0]), str)

    # The exported weights are the checkpoint's, so greedy decoding matches the trained model exactly.
    trained = build_model("gpt2-tiny").eval()
    trained.load_state_dict(model_tensors(read_verified(location(str(run_dir / "checkpoints" / "ba00000002")))[MODEL_FILE]))
    with torch.no_grad():
        assert torch.equal(exported(**prompt).logits, trained(**prompt).logits)


def test_export_refuses_models_hf_cannot_load_and_existing_folders(tmp_path, text_file, capsys):
    plugin = tmp_path / "not_hf.py"
    plugin.write_text(NOT_HF)
    run_dir = tmp_path / "run"
    assert cli.main(run_args(text_file, run_dir, "--algo", f"{plugin}:NotHF")) == 0
    capsys.readouterr()
    assert cli.main(["export", str(run_dir), "--to", "hf", str(tmp_path / "hf")]) == 2
    error = capsys.readouterr().err.strip()
    assert "not_hf" in error and "GPT2LMHeadModel cannot load" in error and "\n" not in error
    assert not (tmp_path / "hf").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    assert cli.main(["export", str(run_dir), "--to", "hf", str(occupied)]) == 2
    assert (occupied / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        cli.main(["export", str(run_dir), "--to", "onnx", str(tmp_path / "x")])
