"""Loggers: one `Logger` fans each record out to destinations, which are plugins like algorithms.

Algorithms and callbacks call `logger.log_metrics({...})`; those metrics join the next record the
trainer writes, so each step is one line in `metrics.jsonl`.

Destinations register in the `composerlite.loggers` entry-point group (see `composerlite.registry`):
the built-ins `console` (the progress bar) and `jsonl` (metrics.jsonl), which every run has, and
`tensorboard`, `mlflow` and `wandb` (`composerlite.observe.trackers`, each an optional extra). A destination
is built from its options alone (`--logger NAME:key=value`), asked whether it can work with the
run directory (`check_run_dir`, before the run writes anything), then `open`ed once the run
directory is written (rank 0 only), gets every record through `log`, `sync` before each checkpoint
and `close` at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

import pydantic
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from composerlite.core.algorithm import NoOptions
from composerlite.core.callback import Callback
from composerlite.errors import ConfigError, PluginError
from composerlite.system.storage import Location


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a destination learns when it is opened.

    run_dir     the run directory (local or a URL)
    config      the resolved run configuration, as config.yaml holds it (hyperparameters)
    console     where the run's notes and progress bar go
    start_step  the checkpoint's step a resumed run continues from (0 for a fresh run): records
                past it were written by the interrupted run and are written again
    """

    run_dir: Location
    config: dict[str, Any]
    console: Console
    start_step: int = 0


class LoggerDestination(Callback):
    """Base class for destinations. `name` is what users type after `--logger`; `Options` a pydantic
    model of the options (or, without one, the keyword arguments of `__init__`). Being a Callback,
    a destination may also define event methods (`eval_start(state, logger)`, ...)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[pydantic.BaseModel]] = NoOptions
    # What a destination needs beyond composerlite's own dependencies: the top-level modules it
    # imports, and the `pip install` argument that adds them (an optional extra, for the trackers,
    # which refuse to be built without them). `composerlite list` says which are missing.
    needs_modules: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = ""

    @classmethod
    def missing_modules(cls) -> list[str]:
        """The modules of `needs_modules` this environment lacks (found without importing them)."""
        return [module for module in cls.needs_modules if importlib.util.find_spec(module) is None]

    def check_run_dir(self, run_dir: Location) -> None:
        """Raise `ConfigError` if this destination cannot work with a run in `run_dir` (a tracker
        that writes local files into a remote one, say). Called before the run writes anything;
        `open` may then rely on it."""

    def open(self, run: RunInfo) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def destination_label(destination: LoggerDestination) -> str:
    return destination.name or type(destination).__name__


class Logger:
    """Fans records out to `destinations`. A destination that raises is named in a `PluginError`."""

    def __init__(self, destinations: list[LoggerDestination]):
        self.destinations = destinations
        self._pending: dict[str, Any] = {}

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        self._pending.update(metrics)

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, **fields, **self._pending}
        self._pending = {}
        for destination in self.destinations:
            try:
                destination.log(record)
            except Exception as error:
                raise destination_failed(destination, "log", error) from error
        return record

    def check_run_dir(self, run_dir: Location) -> None:
        for destination in self.destinations:
            destination.check_run_dir(run_dir)

    def open(self, run: RunInfo) -> None:
        for destination in self.destinations:
            try:
                destination.open(run)
            except ConfigError:
                raise  # a setting that cannot work here, in the destination's own words
            except Exception as error:
                raise destination_failed(destination, "open", error) from error

    def sync(self) -> None:
        """Bring every destination's copy up to date where it lives (the trainer calls this before
        each checkpoint, so no checkpoint is ever ahead of the records it continues from)."""
        for destination in self.destinations:
            try:
                destination.sync()
            except OSError:
                raise  # a store or disk that is down: the caller says what was kept
            except Exception as error:
                raise destination_failed(destination, "sync", error) from error

    def close(self) -> None:
        """Close every destination, even after one fails; then report the first failure."""
        failure = None
        for destination in self.destinations:
            try:
                destination.close()
            except Exception as error:
                failure = failure or destination_failed(destination, "close", error)
        if failure is not None:
            raise failure from failure.__cause__


def destination_failed(destination: LoggerDestination, method: str, error: Exception) -> PluginError:
    failure = PluginError(f"logger '{destination_label(destination)}' failed in {method}: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


def scalar_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers as experiment trackers name them: `train/loss`, `eval/eval_loss`, and
    keys that already have a namespace (`throughput/tokens_per_s`, `ema/...`) as they are. The step
    is the trackers' x axis, not a metric."""
    event = record["event"]
    return {(key if "/" in key else f"{event}/{key}"): float(value) for key, value in record.items()
            if key not in ("event", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)}


class RecordList(LoggerDestination):
    """Keeps every record in memory, in order (`records`), and hands each to `on_record` as it is
    logged: how a caller of `composerlite.train` follows a run without reading its files."""

    def __init__(self, on_record: Callable[[dict[str, Any]], None] | None = None):
        self.records: list[dict[str, Any]] = []
        self.on_record = on_record

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# One encoder for every line: `json.dumps(..., default=...)` builds a new encoder per call, which
# was a third of a record's cost.
_ENCODER = json.JSONEncoder(default=_jsonable)


class JSONLinesLogger(LoggerDestination):
    """metrics.jsonl: one JSON object per line, flushed per line, so a killed run loses nothing it
    logged (the flush costs ~3 us a line). `path` is for direct use; built by name (`jsonl`), it
    writes the run directory's metrics.jsonl when opened. A remote run directory (an object store,
    which cannot append) gets a local mirror, uploaded whole at most every `upload_interval_s`, on
    `sync` (before each checkpoint) and at the end: the remote copy is never behind a checkpoint,
    so a killed run loses no record that its resumed run does not write again."""

    name = "jsonl"

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        upload_interval_s: float = pydantic.Field(30.0, ge=0, description="a remote run directory's upload period")

    def __init__(self, path: Path | None = None, remote: Location | None = None, upload_interval_s: float = 30.0):
        self.path = None if path is None else Path(path)
        self.remote = remote
        self.upload_interval_s = upload_interval_s
        self._file = None
        if self.path is not None:
            self._open_file()

    def open(self, run: RunInfo) -> None:
        if self._file is not None:
            return
        if run.run_dir.is_local:
            self.path = Path(run.run_dir.path) / "metrics.jsonl"
        else:
            cache = Path(os.environ.get("COMPOSERLITE_CACHE") or Path.home() / ".cache" / "composerlite")
            self.path = cache / "runs" / hashlib.sha256(run.run_dir.url.encode()).hexdigest()[:20] / "metrics.jsonl"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.remote = run.run_dir.child("metrics.jsonl")
            self.path.write_bytes(self.remote.read_bytes() if self.remote.exists() else b"")
        self._open_file()

    def _open_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._uploaded_at = time.monotonic()

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(_ENCODER.encode(record) + "\n")
        self._file.flush()
        if self.remote is None or time.monotonic() - self._uploaded_at < self.upload_interval_s:
            return
        try:
            self.sync()
        except OSError as error:  # the next checkpoint's sync raises if the store is still down
            self._uploaded_at = time.monotonic()
            print(f"composerlite: could not upload {self.remote} ({error}); will retry", file=sys.stderr)

    def sync(self) -> None:
        if self.remote is not None:
            self.remote.write_bytes(self.path.read_bytes())
            self._uploaded_at = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Status:
    """The progress bar's status text, formatted when the bar is drawn, not per step."""

    def __init__(self):
        self.record: dict[str, Any] | None = None
        self.evaluating = False

    def __format__(self, spec: str) -> str:
        record = self.record
        if record is None:
            return "evaluating" if self.evaluating else ""
        rate = record.get("throughput/tokens_per_s")
        text = (f"step {record['step']}  loss {record['loss']:.3f}  lr {record['lr']:.2e}  seq {record['seq_len']}"
                + (f"  {rate:,.0f} tok/s" if rate is not None else ""))
        return f"{text}  evaluating" if self.evaluating else text


class _RemainingColumn(ProgressColumn):
    """ETA from the average pace since training (re)started, evaluations and checkpoints included:
    they recur through the rest of the run too."""

    def render(self, task) -> Text:
        start, elapsed, done = task.fields["start_fraction"], task.elapsed, task.completed
        if not elapsed or done <= start:
            return Text("ETA -:--:--", style="progress.remaining")
        remaining = elapsed * (task.total - done) / (done - start)
        minutes, seconds = divmod(int(remaining), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"ETA {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class ConsoleLogger(LoggerDestination):
    """A live progress bar (loss, LR, sequence length, tokens/s, status, ETA) and one printed line
    per evaluation. The bar is redrawn with the newest record at most `refresh_per_second` times a
    second (each redraw costs 1-2 ms), by the training thread as records arrive (a refresh thread
    cost more, contending for the GIL), and when an evaluation starts."""

    name = "console"

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        refresh_per_second: float = pydantic.Field(2.0, gt=0, le=60, description="progress bar redraws per second")

    def __init__(self, console: Console | None = None, refresh_per_second: float = 2.0, description: str = "training"):
        self.console = console
        self.refresh_per_second = refresh_per_second
        self.description = description
        self.progress: Progress | None = None
        self._status = _Status()
        self._updated_at = -math.inf

    def open(self, run: RunInfo) -> None:
        self.console = self.console or run.console

    def fit_start(self, state, logger) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            _RemainingColumn(),
            console=self.console or Console(stderr=True),
            transient=False,
            auto_refresh=False,  # redrawn from `log`: no refresh thread contending with training for the GIL
        )
        self.task = self.progress.add_task(self.description, total=1.0, completed=state.fraction_done,
                                           status=self._status, start_fraction=state.fraction_done)
        self.progress.start()

    def log(self, record: dict[str, Any]) -> None:
        if self.progress is None:  # a record outside `fit` (a direct `Trainer.evaluate`): nothing to show
            return
        if record["event"] == "train":
            self._status.record = record
            now = time.monotonic()
            if now - self._updated_at >= 1.0 / self.refresh_per_second:
                self._updated_at = now
                self.progress.update(self.task, completed=record["fraction"], refresh=True)
        elif record["event"] == "eval":
            self.progress.console.print(
                f"eval @ step {record['step']}: loss {record['eval_loss']:.4f}  ppl {record['eval_ppl']:.2f}"
            )

    def eval_start(self, state, logger) -> None:
        self._status.evaluating = True
        if self.progress is not None:
            self.progress.update(self.task, completed=state.fraction_done, refresh=True)

    def eval_end(self, state, logger) -> None:
        self._status.evaluating = False
        if self.progress is not None:
            self.progress.refresh()  # the bar is drawn again under the evaluation's line: without "evaluating"

    def fit_end(self, state, logger) -> None:
        self.progress.update(self.task, completed=1.0 if state.fraction_done >= 1.0 else state.fraction_done)
        self.progress.stop()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
