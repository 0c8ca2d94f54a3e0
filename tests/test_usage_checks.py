"""The command line's usage checks: answered without importing torch, all before the run's data is
read or anything is written; and a run directory that evaluates from anywhere (its plugin files
kept in it) without a Trainer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

import composerlite
from composerlite.errors import ConfigError
from composerlite.registry import _class_source, _literal_declaration, algorithm_class, registered_algorithms
from composerlite.system.storage import location

# Runs the CLI's `main` and reports its exit code and which heavy packages it imported on the way.
PROBE = """
import json, sys
from composerlite.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "imported": sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)}))
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["run", "--help"], 0),
    (["run", "--bogus"], 2),
    (["run", "--algo", "warp_drive"], 2),
    (["run", "--algo", "alibi", "--algo", "rotary"], 2),  # conflict by declaration
    (["run", "--max-duration", "10 parsecs"], 2),
    (["run", "--model", "gpt2-huge"], 2),
    (["throughput", "--model", "gpt2-tiny", "--algo", "relu_squared", "--algo", "gated_linear_units"], 2),
])
def test_usage_errors_and_help_answer_without_importing_torch(argv, code, tmp_path):
    """Importing torch and transformers costs seconds of CPU; none of these needs them."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": code, "imported": []}
    if code == 2:
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", sorted(registered_algorithms()))
def test_declarations_read_from_source_are_the_classes(name):
    """Every built-in's composition declarations are read without importing it, and read right."""
    declared = _literal_declaration(*_class_source(name))
    cls = algorithm_class(name)
    assert declared is not None
    assert (declared.label, declared.provides, declared.requires, declared.conflicts) == (
        cls.name or cls.__name__, tuple(cls.provides), tuple(cls.requires), tuple(cls.conflicts))


@pytest.fixture
def data_never_read(monkeypatch):
    def read(*args, **kwargs):
        raise AssertionError("the data was read before a usage check refused the run")

    monkeypatch.setattr("composerlite.data.corpus.prepare_corpus", read)


def tiny_config(run_dir, data, **overrides):
    return {"model": "gpt2-tiny", "data": str(data), "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
            "eval_interval": "2ba", "eval_batches": 1, "precision": "fp32", "device": "cpu", "run_dir": str(run_dir),
            **overrides}


def test_a_conflicting_pair_is_refused_before_the_data_is_read_or_anything_written(tmp_path, text_file, data_never_read):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="'alibi' and 'rotary' both take over position_embedding"):
        composerlite.train(tiny_config(run_dir, text_file, algorithms=["alibi", "rotary"]))
    assert not run_dir.exists()


def test_a_conflict_an_option_makes_is_refused_before_the_data_is_read_or_anything_written(tmp_path, text_file,
                                                                                           data_never_read):
    """alibi reshaping batches takes over their length: its class cannot say so, its instance does."""
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="'alibi' and 'seq_len_warmup' both take over sequence_length"):
        composerlite.train(tiny_config(run_dir, text_file,
                                       algorithms=["alibi:train_sequence_length_scaling=0.25", "seq_len_warmup"]))
    assert not run_dir.exists()


@pytest.mark.parametrize("prepare, message", [
    (lambda run_dir: run_dir.write_text("not a folder"), "is a file, not a folder"),
    (lambda run_dir: (run_dir.mkdir(), (run_dir / "config.yaml").write_text("model: gpt2-tiny\n")), "already holds a run"),
])
def test_a_bad_run_directory_is_refused_before_the_data_is_read(tmp_path, text_file, data_never_read, prepare, message):
    run_dir = tmp_path / "run"
    prepare(run_dir)
    with pytest.raises(ConfigError, match=message):
        composerlite.train(tiny_config(run_dir, text_file))


PLUGIN = textwrap.dedent('''
    from composerlite import Algorithm, Event


    class CountEvals(Algorithm):
        """Counts evaluations; its count is checkpointed."""

        name = "count_evals"

        def __init__(self):
            self.evals = 0

        def match(self, event, state):
            return event is Event.EVAL_START

        def apply(self, event, state, logger):
            self.evals += 1

        def state_dict(self):
            return {"evals": self.evals}

        def load_state_dict(self, state):
            self.evals = state["evals"]
''')


@pytest.mark.parametrize("remote", [False, True], ids=["local", "memory"])
def test_a_run_with_a_plugin_file_evaluates_and_exports_from_another_directory(tmp_path, text_file, monkeypatch, remote):
    started_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started_in.mkdir(), elsewhere.mkdir()
    (started_in / "plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(started_in)
    run_dir = f"memory://usage-checks-{tmp_path.name}/run" if remote else str(tmp_path / "run")
    trained = composerlite.train(tiny_config(run_dir, text_file, algorithms=["./plugin.py:CountEvals"]))
    run = location(run_dir)
    assert yaml.safe_load(run.child("config.yaml").read_bytes())["algorithms"] == [{"plugins/plugin.py:CountEvals": {}}]
    assert run.child("plugins", "plugin.py").read_bytes().decode() == PLUGIN
    (started_in / "plugin.py").unlink()  # only the run directory's copy is left
    monkeypatch.chdir(elsewhere)

    def no_trainer(*args, **kwargs):
        raise AssertionError("eval built a Trainer")

    monkeypatch.setattr("composerlite.run.loop.Trainer.__init__", no_trainer)
    result = composerlite.evaluate_run(run_dir, batch_size=2, max_batches=1)  # the run's own evaluation
    assert result["eval_loss"] == pytest.approx(trained.evals[-1]["eval_loss"], abs=1e-6)
    assert result["algorithms"] == ["plugins/plugin.py:CountEvals"]
    folder = composerlite.export_hf(run_dir, elsewhere / "hf")
    assert (folder / "config.json").is_file()
