"""A live display of a corpus being prepared: documents, tokens, MB/s of source text and an ETA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

from composerlite.data.prepare import Progress


@contextlib.contextmanager
def progress_display(console: Console, what: str, transient: bool = False) -> Iterator[Callable[[Progress], None]]:
    """A callback for `prepare(on_progress=...)` that redraws one line on `console`. The line appears
    with the first report (so a source refused at once prints only its error); once the block exits
    it stays with the final counts, or, `transient`, goes."""
    display: RichProgress | None = None
    task = None

    def update(progress: Progress) -> None:
        nonlocal display, task
        if display is None:
            display = RichProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                   TimeElapsedColumn(), console=console, refresh_per_second=2, transient=transient)
            display.start()
            task = display.add_task(what, total=None, counts="")
        eta = progress.eta_s
        counts = (f"{progress.documents:,} documents, {progress.tokens:,} tokens, "
                  f"{progress.bytes_per_s / 1e6:.1f} MB/s" + (f", ETA {_duration(eta)}" if eta is not None else ""))
        display.update(task, total=1.0 if progress.fraction is not None else None,
                       completed=progress.fraction or 0.0, counts=counts)

    try:
        yield update
    finally:
        if display is not None:
            display.stop()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
