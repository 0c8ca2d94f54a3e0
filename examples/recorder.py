"""A plugin that records every event it sees: the one docs/writing-an-algorithm.md builds.

    composerlite run --model gpt2-tiny --max-duration 2ba --algo ./examples/recorder.py:Recorder

writes RUN_DIR/events.txt, one event name per line, in the order the trainer fired them. It writes
through `state.run_dir`, a storage location, so a run directory on S3 (`--run-dir s3://bucket/run`)
gets the file as a local one does.
"""

from __future__ import annotations

import pydantic

from composerlite import Algorithm, Event, Logger, State


class RecorderOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    filename: str = pydantic.Field("events.txt", description="file in the run directory to write the events to")


class Recorder(Algorithm):
    """Record every event the trainer fires, in order, to RUN_DIR/events.txt."""

    name = "recorder"
    Options = RecorderOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.events: list[str] = []

    def match(self, event: Event, state: State) -> bool:
        return True  # every event

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        self.events.append(event.value)
        if event is Event.FIT_END:
            state.run_dir.child(self.options.filename).write_bytes(("\n".join(self.events) + "\n").encode())
