"""SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) as a request to stop at the next safe
point, the same for a run and for a benchmark: the first signal is recorded and announced, a
second aborts at once."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from typing import Callable, Iterator


@dataclasses.dataclass
class StopRequest:
    signum: int | None = None  # the first signal received, until someone acts on it


@contextlib.contextmanager
def stop_on_signals(request: StopRequest, announce: Callable[[str], None]) -> Iterator[StopRequest]:
    """While inside, record the first SIGTERM or SIGINT in `request` and call `announce(its name)`;
    a second one raises KeyboardInterrupt. The previous handlers come back on leaving. Outside the
    main thread, where Python cannot install handlers, signals keep their usual effect."""
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum
        announce(signal.Signals(signum).name)

    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
