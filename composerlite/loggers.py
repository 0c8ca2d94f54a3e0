"""Loggers: one `Logger` fans each record out to destinations (rich console, JSON-lines file).

Algorithms and callbacks call `logger.log_metrics({...})`; those metrics join the next record the
trainer writes, so each step is one line in `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from composerlite.algorithm import Callback
from composerlite.storage import Location


class LoggerDestination(Callback):
    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class Logger:
    def __init__(self, destinations: list[LoggerDestination]):
        self.destinations = destinations
        self._pending: dict[str, Any] = {}

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        self._pending.update(metrics)

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, **fields, **self._pending}
        self._pending = {}
        for destination in self.destinations:
            destination.log(record)
        return record

    def sync(self) -> None:
        """Bring every destination's copy up to date where it lives (the trainer calls this before
        each checkpoint, so no checkpoint is ever ahead of the records it continues from)."""
        for destination in self.destinations:
            destination.sync()

    def close(self) -> None:
        for destination in self.destinations:
            destination.close()


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


class JSONLinesLogger(LoggerDestination):
    """Appends one JSON object per line to `path`; flushed per line so a crash loses nothing logged
    (the flush costs ~3 us a line; the encoding, ~12 us, is most of a record's cost)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class UploadedJSONLinesLogger(JSONLinesLogger):
    """JSON lines for a run directory on an object store, which cannot append: lines go to a local
    mirror (`path`), and the whole file is uploaded atomically to `remote` at most every
    `upload_interval_s` seconds, on `sync` (before each checkpoint) and when the run ends. So the
    remote copy is never more than `upload_interval_s` behind, and never behind a checkpoint: a
    killed run loses no record, since the resumed one replays those past its checkpoint."""

    def __init__(self, path: Path, remote: Location, upload_interval_s: float):
        super().__init__(path)
        self.remote = remote
        self.upload_interval_s = upload_interval_s
        self._uploaded_at = time.monotonic()

    def log(self, record: dict[str, Any]) -> None:
        super().log(record)
        if time.monotonic() - self._uploaded_at < self.upload_interval_s:
            return
        try:
            self.sync()
        except OSError as error:  # the next checkpoint's sync raises if the store is still down
            self._uploaded_at = time.monotonic()
            print(f"composerlite: could not upload {self.remote} ({error}); will retry", file=sys.stderr)

    def sync(self) -> None:
        self.remote.write_bytes(self.path.read_bytes())
        self._uploaded_at = time.monotonic()


class ConsoleLogger(LoggerDestination):
    """A live progress bar (loss, tokens/s, ETA) and one printed line per evaluation."""

    def __init__(self, console: Console | None = None, description: str = "training"):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=2,  # each redraw costs about a millisecond of the training process's time
        )
        self.task = self.progress.add_task(description, total=1.0, status="")
        self._last_tokens = 0
        self._last_wall = 0.0

    def fit_start(self, state, logger) -> None:
        self.progress.start()

    def log(self, record: dict[str, Any]) -> None:
        if record["event"] == "train":
            elapsed = record["wall_s"] - self._last_wall
            rate = (record["tokens"] - self._last_tokens) / elapsed if elapsed > 0 else 0.0
            self._last_tokens, self._last_wall = record["tokens"], record["wall_s"]
            status = (
                f"step {record['step']}  loss {record['loss']:.3f}  lr {record['lr']:.2e}  "
                f"seq {record['seq_len']}  {rate:,.0f} tok/s"
            )
            self.progress.update(self.task, completed=record["fraction"], status=status)
        elif record["event"] == "eval":
            self.progress.console.print(
                f"eval @ step {record['step']}: loss {record['eval_loss']:.4f}  ppl {record['eval_ppl']:.2f}"
            )

    def fit_end(self, state, logger) -> None:
        self.progress.update(self.task, completed=1.0)
        self.progress.stop()

    def close(self) -> None:
        self.progress.stop()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)
