"""`composerlite.train`: what `composerlite run` does, as a call; progress seen through callbacks and
loggers while it runs; every record in the result, a resumed run's earlier ones included."""

from __future__ import annotations

import json

import pytest
import yaml
from rich.console import Console

import composerlite
from composerlite import Callback, ConfigError
from composerlite.observe.loggers import RecordList

QUIET = Console(quiet=True)


class Steps(Callback):
    def __init__(self):
        self.seen: list[int] = []

    def batch_end(self, state, logger):
        self.seen.append(state.timestamp.batch)


def test_train_returns_the_run_and_shows_it_as_it_goes(tmp_path, text_file):
    run_dir = tmp_path / "run"
    config = {"model": "gpt2-tiny", "data": str(text_file), "max_duration": "3ba", "batch_size": 2, "seq_len": 16,
              "eval_interval": "2ba", "eval_batches": 1, "save_interval": "2ba", "device": "cpu", "precision": "fp32",
              "run_dir": str(run_dir)}
    steps, live = Steps(), RecordList()
    result = composerlite.train(config, callbacks=[steps], loggers=[live], console=QUIET)
    on_disk = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert result.records == live.records == on_disk
    assert steps.seen == [1, 2, 3]
    assert [(r["event"], r["step"]) for r in result.records] == [("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("eval", 3)]
    assert result.summary["steps"] == 3 and result.summary["eval_loss"] == result.evals[-1]["eval_loss"]
    assert result.checkpoint.endswith("ba00000003") and result.run_dir == str(run_dir)
    assert result.config == yaml.safe_load((run_dir / "config.yaml").read_text())

    resumed = composerlite.train({**config, "max_duration": "5ba", "autoresume": True}, console=QUIET)
    assert [r["step"] for r in resumed.records if r["event"] == "train"] == [1, 2, 3, 4, 5]
    assert resumed.records[:5] == result.records


def test_bad_configurations_raise_config_error_before_writing(tmp_path, text_file):
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        composerlite.train({"model": "gpt2-tiny", "learning_rate": 1.0}, console=QUIET)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # The library names options as it takes them; the CLI shows the same message with flags.
    with pytest.raises(ConfigError, match=r"`run_dir=.*a-file` is a file"):
        composerlite.train({"model": "gpt2-tiny", "data": str(text_file), "max_duration": "1ba", "batch_size": 2,
                            "seq_len": 16, "device": "cpu", "run_dir": str(blocker)}, console=QUIET)
    assert blocker.read_text() == ""


def test_loggers_passed_in_are_checked_and_opened_as_configured_ones_are(tmp_path, text_file):
    from composerlite.core.logger import LoggerDestination
    from composerlite.errors import PluginError

    class Opened(RecordList):
        def check_run_dir(self, run_dir):
            self.checked = run_dir.url

        def open(self, run):
            self.run = run

    class Broken(LoggerDestination):
        name = "broken"

        def open(self, run):
            raise RuntimeError("no place to write")

        def log(self, record):
            pass

    config = {"model": "gpt2-tiny", "data": str(text_file), "max_duration": "1ba", "batch_size": 2, "seq_len": 16,
              "device": "cpu", "precision": "fp32", "run_dir": str(tmp_path / "run")}
    opened = Opened()
    result = composerlite.train(config, loggers=[opened], console=QUIET)
    assert opened.checked == str(tmp_path / "run") and opened.run.run_dir.url == str(tmp_path / "run")
    assert opened.run.config == result.config and opened.records == result.records
    with pytest.raises(PluginError, match="^logger 'broken' failed in open: RuntimeError: no place to write$"):
        composerlite.train({**config, "run_dir": str(tmp_path / "broken")}, loggers=[Broken()], console=QUIET)
