"""A live display of a corpus being prepared: documents, tokens, MB/s of source text and an ETA."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from composerlite.data.prepare import Progress

LOG_EVERY_S = 60.0  # without a terminal (a job's log file), a plain line this often


@contextlib.contextmanager
def progress_display(console: Console, what: str) -> Iterator[Callable[[Progress], None]]:
    """A callback for `prepare(on_progress=...)`. On a terminal it redraws one line while the block
    runs and clears it when it ends (the caller prints the outcome: a summary, or one line of error);
    elsewhere it writes a line every `LOG_EVERY_S` seconds, so a long preparation's log shows it
    advancing."""
    display: RichProgress | None = None
    task = None
    last_line = time.monotonic()

    def update(progress: Progress) -> None:
        nonlocal display, task, last_line
        if not console.is_terminal:
            if time.monotonic() - last_line >= LOG_EVERY_S:
                console.print(f"{what}: {describe(progress)}", highlight=False)
                last_line = time.monotonic()
            return
        if display is None:
            display = RichProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                   TimeElapsedColumn(), console=console, refresh_per_second=2, transient=True)
            display.start()
            task = display.add_task(what, total=None, counts="")
        display.update(task, total=1.0 if progress.fraction is not None else None,
                       completed=progress.fraction or 0.0, counts=describe(progress))

    try:
        yield update
    finally:
        if display is not None:
            display.stop()


def describe(progress: Progress) -> str:
    eta = progress.eta_s
    return (f"{progress.documents:,} documents, {progress.tokens:,} tokens, {progress.bytes_per_s / 1e6:.1f} MB/s"
            + (f", ETA {_duration(eta)}" if eta is not None else ""))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
