"""Experiment trackers as logger destinations: TensorBoard, MLflow and Weights & Biases.

Each is an optional extra (`pip install "composerlite[tensorboard]"`, `[mlflow]`, `[wandb]`) and
imports its library when built, so a missing one is refused with the install command before the
run writes anything. Each logs every record's numbers (`scalar_metrics`: `train/loss`,
`eval/eval_loss`, `throughput/tokens_per_s`, ...) against the optimizer step, and the resolved
configuration as the run's hyperparameters. A resumed run (`RunInfo.start_step` > 0) is a new
tracker run for MLflow and W&B, tagged with the step it continues from; TensorBoard drops the
interrupted run's events past that step, as the run's metrics.jsonl does.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import yaml

from composerlite.core.logger import LoggerDestination, RunInfo, scalar_metrics
from composerlite.errors import ConfigError
from composerlite.system.storage import Location


def _imported(tracker: type[LoggerDestination], module: str) -> ModuleType:
    """`module`, from the libraries `tracker` needs; refused with their install command when missing."""
    missing = tracker.missing_modules()
    if missing:
        packages = f"the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}"
        raise ConfigError(f"needs {packages}: pip install \"{tracker.install}\"")
    return importlib.import_module(module)


def _refuse_remote(tracker: LoggerDestination, run_dir: Location, setting: str) -> None:
    """A tracker writes local files, by default inside the run directory: a remote one needs `setting`."""
    if not run_dir.is_local:
        raise ConfigError(f"logger '{tracker.name}': the run directory {run_dir.url} is not local, and {tracker.name} "
                          f"writes its files locally: give it {setting}")


def _in_run_dir(run: RunInfo, name: str) -> Path:
    """`name` inside the run directory, which `check_run_dir` found local."""
    return Path(run.run_dir.path) / name


class TensorBoardLogger(LoggerDestination):
    """TensorBoard event files (default: the run directory's tensorboard/ folder); the resolved
    configuration as the `config` text."""

    name = "tensorboard"
    needs_modules = ("tensorboard",)
    install = "composerlite[tensorboard]"

    def __init__(self, log_dir: str | None = None, flush_secs: float = 10.0):
        self.summary_writer = _imported(type(self), "torch.utils.tensorboard").SummaryWriter
        self.log_dir = log_dir
        self.flush_secs = flush_secs
        self.writer = None

    def check_run_dir(self, run_dir: Location) -> None:
        if self.log_dir is None:
            _refuse_remote(self, run_dir, "a local folder: tensorboard:log_dir=LOCAL_PATH")

    def open(self, run: RunInfo) -> None:
        log_dir = self.log_dir or _in_run_dir(run, "tensorboard")
        # purge_step: the interrupted run's events past the checkpoint are hidden, as resume replays them
        self.writer = self.summary_writer(log_dir=str(log_dir), flush_secs=self.flush_secs,
                                          purge_step=run.start_step + 1 if run.start_step else None)
        self.writer.add_text("config", f"```\n{yaml.safe_dump(run.config, sort_keys=False)}```", run.start_step)

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for key, value in scalar_metrics(record).items():
            self.writer.add_scalar(key, value, step)

    def sync(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowLogger(LoggerDestination):
    """An MLflow run in `experiment`, at `tracking_uri` (default: $MLFLOW_TRACKING_URI, else a SQLite
    store in the run directory, `mlflow.db`: MLflow's local backend, which mlflow-skinny reads with
    SQLAlchemy). Metrics are sent in batches, every `flush_interval_s` and before each checkpoint,
    not a database write per step."""

    name = "mlflow"
    needs_modules = ("mlflow",)
    install = "composerlite[mlflow]"

    def __init__(self, tracking_uri: str | None = None, experiment: str = "composerlite", run_name: str | None = None,
                 flush_interval_s: float = 5.0):
        self.mlflow = _imported(type(self), "mlflow")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.flush_interval_s = flush_interval_s
        self.client = self.run_id = None
        self._metrics: list[Any] = []
        self._flushed_at = time.monotonic()

    def check_run_dir(self, run_dir: Location) -> None:
        if not self._given_uri():
            _refuse_remote(self, run_dir, "a store: mlflow:tracking_uri=URI (sqlite:///LOCAL_PATH/mlflow.db, say), "
                                          "or $MLFLOW_TRACKING_URI")

    def _given_uri(self) -> str | None:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")

    def open(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        uri = self._given_uri() or f"sqlite:///{_in_run_dir(run, 'mlflow.db').resolve()}"
        self.client = self.mlflow.MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.experiment)
        tags = {"composerlite.run_dir": run.run_dir.url, "composerlite.start_step": str(run.start_step)}
        name = self.run_name or Path(run.run_dir.path).name
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        params = [Param(key, value if isinstance(value, str) else json.dumps(value)) for key, value in run.config.items()]
        self.client.log_batch(self.run_id, params=params)

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now_ms, step = int(time.time() * 1000), record["step"]
        self._metrics.extend(Metric(key, value, now_ms, step) for key, value in scalar_metrics(record).items())
        if time.monotonic() - self._flushed_at >= self.flush_interval_s:
            self.sync()

    def sync(self) -> None:
        for start in range(0, len(self._metrics), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=self._metrics[start:start + 1000])
        self._metrics = []
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if self.run_id is not None:
            self.sync()
            self.client.set_terminated(self.run_id)


class WandBLogger(LoggerDestination):
    """A Weights & Biases run in `project`, its files in `dir`/wandb/ (default: the run directory);
    `mode` offline writes only those files (`wandb sync` uploads them later), and without it
    wandb decides as it always does ($WANDB_MODE, then whether you are logged in)."""

    name = "wandb"
    needs_modules = ("wandb",)
    install = "composerlite[wandb]"

    def __init__(self, project: str = "composerlite", name: str | None = None, entity: str | None = None,
                 mode: Literal["online", "offline", "disabled"] | None = None, tags: list[str] | None = None,
                 dir: str | None = None):
        self.wandb = _imported(type(self), "wandb")
        self.project, self.run_name, self.entity, self.mode, self.tags = project, name, entity, mode, tags
        self.dir = dir
        self.run = None

    def check_run_dir(self, run_dir: Location) -> None:
        if self.dir is None:
            _refuse_remote(self, run_dir, "a local folder: wandb:dir=LOCAL_PATH")

    def open(self, run: RunInfo) -> None:
        directory = Path(self.dir) if self.dir else _in_run_dir(run, "")
        config = {**run.config, "start_step": run.start_step}
        self.run = self.wandb.init(project=self.project, name=self.run_name or directory.name, entity=self.entity,
                                   dir=str(directory), mode=self.mode, tags=self.tags, config=config,
                                   reinit="create_new")

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalar_metrics(record), step=record["step"])

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
