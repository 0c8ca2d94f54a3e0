"""The built-in logger destinations: `console` (the progress bar) and `jsonl` (metrics.jsonl), which
every run has, and `RecordList` (every record in memory, for a caller of `composerlite.train`).
The interface they implement, and the `Logger` that fans records out to them, is
`composerlite.core.logger`; the experiment trackers are `composerlite.observe.trackers`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pydantic
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from composerlite.core.logger import LoggerDestination, RunInfo
from composerlite.system.storage import Location


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
