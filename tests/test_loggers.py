"""Logger destinations as plugins: TensorBoard, MLflow and W&B (offline) write real files that
their own libraries read back; bad names and options are refused before anything is written; a
plugin that raises is named in one line; the progress bar says when it evaluates."""

from __future__ import annotations

import glob
import io
import json
import struct
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SAMPLE_TEXT
from rich.console import Console

import composerlite
from composerlite import cli
from composerlite.commands.listing import logger_rows
from composerlite.errors import ConfigError
from composerlite.registry import build_logger, registered_loggers
from composerlite.run.settings import load_config
from composerlite.run.train import logger_specs
from composerlite.system.storage import location


def tiny_run(run_dir: Path, data: Path, *extra: str) -> list[str]:
    return ["run", "--model", "gpt2-tiny", "--data", str(data), "--max-duration", "2ba", "--batch-size", "2",
            "--seq-len", "16", "--eval-interval", "2ba", "--eval-batches", "1", "--precision", "fp32",
            "--device", "cpu", "--run-dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """One tiny run that logs to all three trackers, through the CLI; W&B offline (no network)."""
    root = tmp_path_factory.mktemp("tracked")
    data = root / "corpus.txt"
    data.write_text(SAMPLE_TEXT)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPOSERLITE_CACHE", str(root / "cache"))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = cli.main(tiny_run(root / "run", data, "--logger", "tensorboard", "--logger", "mlflow:experiment=tests",
                                 "--logger", "wandb:mode=offline,project=tests"))
    assert code == 0
    return root / "run"


def jsonl_records(run_dir: Path, event: str) -> list[dict]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [record for record in records if record["event"] == event]


def assert_series(actual: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """(step, value) series alike: the steps exactly, the values to float32 precision (trackers store
    float32). Apart because pytest.approx compares no nested structures (pytest 9.2 refuses them)."""
    assert [step for step, _ in actual] == [step for step, _ in expected]
    assert [value for _, value in actual] == pytest.approx([value for _, value in expected])


def test_tensorboard_event_files_hold_every_record(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard"))
    events.Reload()
    train = jsonl_records(tracked_run, "train")
    assert_series([(e.step, e.value) for e in events.Scalars("train/loss")], [(r["step"], r["loss"]) for r in train])
    assert [e.step for e in events.Scalars("throughput/tokens_per_s")] == [2]  # from the second step on
    (evaluation,) = jsonl_records(tracked_run, "eval")
    assert_series([(e.step, e.value) for e in events.Scalars("eval/eval_loss")], [(2, evaluation["eval_loss"])])
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_store_holds_the_metrics_and_the_config(tracked_run):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["model"] == "gpt2-tiny"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert_series([(m.step, m.value) for m in history], [(r["step"], r["loss"]) for r in jsonl_records(tracked_run, "train")])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/eval_ppl")] == [2]


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a W&B offline run file: a LevelDB-style log (7-byte header, then 32 KiB
    blocks of records, each a CRC, length and type before its bytes) of `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2

    raw, block, position, pending, rows = run_file.read_bytes(), 32768, 7, b"", []
    assert raw.startswith(b":W&B")
    while position + 7 <= len(raw):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # the padding at the end of a block
            position += left
            continue
        pending += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_offline_run_files_hold_the_metrics(tracked_run):
    (run_file,) = glob.glob(str(tracked_run / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = wandb_history(Path(run_file))
    losses = [(row["_step"], row["train/loss"]) for row in rows if "train/loss" in row]
    assert_series(losses, [(r["step"], r["loss"]) for r in jsonl_records(tracked_run, "train")])
    assert any("eval/eval_loss" in row for row in rows)


@pytest.mark.parametrize(
    "logger, message",
    [
        ("warp_drive", "unknown logger 'warp_drive'; choose one of: console, jsonl, mlflow, tensorboard, wandb"),
        ("console:speed=3", "logger 'console': unknown option 'speed' (options: refresh_per_second)"),
        ("console:refresh_per_second=0", "logger 'console': option 'refresh_per_second'"),
        ("tensorboard:flush_secs=soon", "logger 'tensorboard': option 'flush_secs'"),
        ("wandb:mode=online-ish", "logger 'wandb': option 'mode'"),
        ("mlflow:experiment", "logger 'mlflow': option 'experiment' is not key=value"),
        ("./nowhere.py:Logger", "logger file not found"),
    ],
)
def test_bad_logger_names_and_options_get_one_line_exit_2_and_write_nothing(tmp_path, text_file, capsys, logger, message):
    assert cli.main(tiny_run(tmp_path / "run", text_file, "--logger", logger)) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow:experiment=tests", "wandb:mode=offline"])
def test_a_tracker_on_a_remote_run_dir_without_a_local_folder_is_refused_before_anything_is_written(
        tmp_path, text_file, capsys, monkeypatch, logger):
    def read(*args, **kwargs):
        raise AssertionError("the data was read before the logger was refused")

    monkeypatch.setattr("composerlite.data.corpus.prepare_corpus", read)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # where a tracker's local files would land
    bucket = f"memory://composerlite-remote-tracker-{tmp_path.name}"
    assert cli.main(tiny_run(f"{bucket}/run", text_file, "--logger", logger)) == 2
    error = capsys.readouterr().err.strip()
    name = logger.split(":")[0]
    assert error.startswith(f"composerlite: error: logger '{name}': the run directory {bucket}/run is not local")
    assert "\n" not in error
    assert not location(bucket).exists() and sorted(tmp_path.iterdir()) == [text_file]  # nothing written anywhere


@pytest.mark.parametrize("logger, options", [("tensorboard", {"log_dir": "tb"}), ("wandb", {"dir": "wandb-files"}),
                                             ("mlflow", {"tracking_uri": "sqlite:///mlflow.db"})])
def test_a_tracker_given_a_local_place_takes_a_remote_run_dir_and_every_tracker_a_local_one(tmp_path, logger, options):
    build_logger(logger, options).check_run_dir(location("memory://composerlite-elsewhere/run"))
    build_logger(logger).check_run_dir(location(str(tmp_path / "run")))


def test_mlflow_takes_its_store_from_the_environment_for_a_remote_run_dir(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    build_logger("mlflow").check_run_dir(location("memory://composerlite-elsewhere/run"))


def test_a_missing_extra_names_its_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when it is not installed
    with pytest.raises(ConfigError, match=r"logger 'wandb': needs the wandb package: pip install \"composerlite\[wandb\]\""):
        build_logger("wandb")


def test_list_shows_every_logger_and_the_install_command_of_a_missing_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    rows = {name: (summary, options, installed) for name, summary, options, installed in logger_rows()}
    assert set(rows) == set(registered_loggers())
    assert rows["wandb"][2] == 'no: pip install "composerlite[wandb]"'
    assert rows["tensorboard"][2] == rows["mlflow"][2] == rows["console"][2] == rows["jsonl"][2] == "yes"
    assert rows["console"][0].startswith("A live progress bar") and "log_dir=None" in rows["tensorboard"][1]
    monkeypatch.setenv("COLUMNS", "1000")  # no cell wrapped
    assert cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "loggers (--logger NAME" in listing and 'no: pip install "composerlite[wandb]"' in listing


PLUGINS = '''
from composerlite.core.logger import LoggerDestination

class Broken(LoggerDestination):
    """Raises at the first record."""
    def log(self, record):
        raise RuntimeError("disk on fire")

class BrokenAtBatchEnd(LoggerDestination):
    """Takes its records, but its event handler raises at the first step's end."""
    def log(self, record):
        pass
    def batch_end(self, state, logger):
        raise KeyError("no_such_metric")

class Counting(LoggerDestination):
    """Counts the records it gets, in a file its option names."""
    name = "counting"
    def __init__(self, out: str):
        self.out, self.count = out, 0
    def log(self, record):
        self.count += 1
    def close(self):
        open(self.out, "w").write(str(self.count))
'''


@pytest.mark.parametrize(("plugin", "expected"), [
    ("Broken", "logger 'Broken' failed in log: RuntimeError: disk on fire"),
    ("BrokenAtBatchEnd", "logger 'BrokenAtBatchEnd' failed in batch_end: KeyError: 'no_such_metric'"),
])
def test_a_user_plugin_that_raises_gets_one_line_naming_it(tmp_path, text_file, capsys, plugin, expected):
    (tmp_path / "plugins.py").write_text(PLUGINS)
    assert cli.main(tiny_run(tmp_path / "run", text_file, "--logger", f"{tmp_path / 'plugins.py'}:{plugin}")) == 1
    stderr = capsys.readouterr().err
    (error,) = [line for line in stderr.splitlines() if line.startswith("composerlite: error:")]
    assert expected in error and "Traceback" not in stderr


def test_a_user_plugin_from_a_yaml_config_gets_every_record(tmp_path, text_file):
    (tmp_path / "plugins.py").write_text(PLUGINS)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        loggers:
          - {tmp_path / 'plugins.py'}:Counting:
              out: {tmp_path / 'count.txt'}
          - console:refresh_per_second=5
        """))
    assert cli.main([*tiny_run(tmp_path / "run", text_file), "--config", str(recipe)]) == 0
    assert (tmp_path / "count.txt").read_text() == "3"  # two train records and one eval


def test_the_built_ins_are_always_there_and_naming_one_sets_its_options():
    assert {"console", "jsonl"} <= set(registered_loggers())
    config = load_config(None, {"loggers": ["tensorboard:flush_secs=1", "console:refresh_per_second=5"]})
    assert logger_specs(config) == [("console", {"refresh_per_second": 5}), ("jsonl", {}), ("tensorboard", {"flush_secs": 1})]
    with pytest.raises(ConfigError, match="logger 'console' is given options twice"):
        logger_specs(load_config(None, {"loggers": ["console:refresh_per_second=5", "console:refresh_per_second=1"]}))


def test_sweep_passes_its_loggers_to_every_run():
    from composerlite.commands.bench import base_config

    args = cli.build_parser().parse_args(["sweep", "--ratios", "0.5", "--budget", "4ba", "--logger", "tensorboard"])
    assert base_config(args).loggers == ["tensorboard"]


def test_the_progress_bar_says_when_it_evaluates_and_shows_the_one_tokens_per_s(tmp_path, text_file):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)
    result = composerlite.train({"model": "gpt2-tiny", "data": str(text_file), "max_duration": "2ba", "batch_size": 2,
                                 "seq_len": 16, "eval_interval": "1ba", "eval_batches": 1, "precision": "fp32",
                                 "device": "cpu", "run_dir": str(tmp_path / "run")}, console=console)
    frames = screen.getvalue().replace("\n", "\r").split("\r")
    evaluating = [frame for frame in frames if "evaluating" in frame]
    assert len(evaluating) == 2 and all("ETA" in frame for frame in evaluating)  # one frame per evaluation
    assert "evaluating" not in frames[-2] and "100%" in frames[-2]  # the last frame, before the cursor comes back
    # One definition of tokens/s: the speed monitor's, in the summary, the speed line and the bar
    rate = result.summary["speed"]["throughput/tokens_per_s"]
    assert result.summary["tokens_per_s"] == rate == result.records[-2]["throughput/tokens_per_s"]
    assert f"{rate:,.0f} tok/s" in frames[-2]


def test_metrics_lines_are_json_dumps_text(tmp_path):
    """Every line of metrics.jsonl is exactly json.dumps's, for numbers of every kind, texts, keys
    that need escaping, NaN, bools, None and tensors."""
    import math
    import random

    import numpy as np
    import torch

    from composerlite.observe.loggers import JSONLinesLogger, _jsonable

    rng = random.Random(12)

    def number():
        pick = rng.random()
        if pick < 0.3:
            return struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]  # any double, NaN and inf included
        if pick < 0.5:
            return rng.choice([0.0, -0.0, 1e16, 1e-5, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan])
        if pick < 0.7:
            return rng.randint(-10**30, 10**30)
        if pick < 0.9:
            return float(np.float32(rng.random())) * 10 ** rng.randint(-8, 12)
        return rng.choice([True, False, None, "text", np.float32(1.5), torch.tensor(2.5), 3])

    keys = ["event", "step", "loss", "lr", "throughput/tokens_per_s", "100%", 'say "hi"', "é", "a\nb"]
    records = [{"event": "train", "step": 1, "loss": 2.5, "lr": 1e-3}]
    for _ in range(3000):
        chosen = keys[: rng.randint(1, len(keys))]
        records.append({key: rng.choice(["train", "eval", "%s", "é\n"]) if key == "event" else number()
                        for key in chosen})
    destination = JSONLinesLogger(tmp_path / "metrics.jsonl")
    for record in records:
        destination.log(record)
    destination.close()
    written = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
    assert written[:-1] == [json.dumps(record, default=_jsonable) for record in records] and written[-1] == ""
