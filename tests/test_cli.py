"""The `composerlite run` path a new user walks, and its one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from composerlite.cli import main


def run_cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exit:  # argparse's own refusals (a value outside a flag's choices) exit 2 too
        return exit.code


@pytest.fixture
def tiny_args(text_file, tmp_path):
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--batch-size", "4", "--seq-len", "32",
            "--run-dir", str(tmp_path / "run")]


def test_seq_len_warmup_run_writes_growing_lengths(tmp_path, corpus_folder):
    run_dir = tmp_path / "warm"
    code = run_cli("run", "--model", "gpt2-tiny", "--algo", "seq_len_warmup", "--max-duration", "8ba",
                   "--batch-size", "4", "--seq-len", "128", "--run-dir", str(run_dir), "--data", str(corpus_folder),
                   "--eval-batches", "1")
    assert code == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["event"] == "train"]
    assert [line["step"] for line in train] == list(range(1, 9))
    lengths = [line["seq_len"] for line in train]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1] == 128
    assert any(line["event"] == "eval" for line in lines)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["max_duration"] == "8ba" and config["algorithms"] == ["seq_len_warmup"]
    assert (run_dir / "checkpoints" / "ba00000008" / "model.safetensors").is_file()


def test_yaml_recipe_with_flags_on_top(tmp_path, text_file):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "gpt2-tiny", "max_duration": "3ba", "batch_size": 2, "seq_len": 16, "data": str(text_file),
        "algorithms": [{"seq_len_warmup": {"duration": 0.5, "min_seq_len": 4, "step_size": 4}}],
    }))
    run_dir = tmp_path / "from-yaml"
    assert run_cli("run", "--config", str(recipe), "--max-duration", "4ba", "--run-dir", str(run_dir)) == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["max_duration"] == "4ba" and config["batch_size"] == 2
    train = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert len(train) == 4 and train[0]["seq_len"] == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "gpt2-huge"], "unknown model 'gpt2-huge'"),
        (["--algo", "warp_drive"], "unknown algorithm 'warp_drive'"),
        (["--algo", "seq_len_warmup:speed=3"], "algorithm 'seq_len_warmup': unknown option 'speed'"),
        (["--algo", "seq_len_warmup:duration=2"], "algorithm 'seq_len_warmup': option 'duration'"),
        (["--algo", "seq_len_warmup:duration"], "not key=value"),
        (["--max-duration", "10 parsecs"], "invalid max_duration"),
        (["--max-duration", "0.5dur"], "cannot be in 'dur'"),
        (["--batch-size", "0"], "invalid batch_size"),
        (["--seq-len", "1"], "invalid seq_len"),  # no next token to predict: the loss would be NaN
        (["--lr", "-1"], "invalid lr"),
        (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--config", "/nonexistent/recipe.yaml"], "config file not found"),
        (["--data", "/nonexistent/corpus.txt"], "not found"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(tiny_args, capsys, extra, message):
    args = [*tiny_args, "--max-duration", "2ba"]
    if "--max-duration" in extra:
        args = tiny_args
    if "--model" in extra:
        args[args.index("--model") + 1] = extra[1]
        extra = []
    if "--data" in extra:
        args[args.index("--data") + 1] = extra[1]
        extra = []
    assert run_cli(*args, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_yaml_key(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: gpt2-tiny\nlearning_rate: 3\n")
    assert run_cli("run", "--config", str(recipe)) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err


def test_existing_run_is_never_overwritten(tiny_args, tmp_path, capsys):
    args = [*tiny_args, "--max-duration", "1ba", "--eval-batches", "1"]
    assert run_cli(*args) == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    before = metrics.read_text()
    assert run_cli(*args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert metrics.read_text() == before


def test_list_and_models_commands(capsys, monkeypatch):
    # In this process: `python -m composerlite` itself is exercised by the argparse test below.
    assert run_cli("list") == 0
    listing = capsys.readouterr().out
    assert "seq_len_warmup" in listing and "duration" in listing
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli("models") == 0
    models = capsys.readouterr().out
    for name in ("gpt2-tiny", "gpt2-52m", "gpt2-83m", "gpt2-125m", "124.4M", "3.43 (30.88)"):
        assert name in models


def test_argparse_errors_are_one_line_exit_2():
    result = subprocess.run([sys.executable, "-m", "composerlite", "run", "--batch-size", "many"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_yaml_algorithm_options_must_be_a_mapping(tmp_path, capsys):
    recipe = tmp_path / "bad-options.yaml"
    recipe.write_text("model: gpt2-tiny\nalgorithms:\n  - seq_len_warmup: 5\n")
    assert run_cli("run", "--config", str(recipe), "--max-duration", "1ba") == 2
    assert "options must be a mapping" in capsys.readouterr().err
