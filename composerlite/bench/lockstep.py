"""Runs trained side by side, one step each in turn, so a loaded machine slows them all alike.

Interleaving whole runs (rotating their order per seed) keeps drift from favouring one method, but
on a shared host the load changes within minutes: one run can meet a busy neighbour and the next an
idle machine, and run-to-run timing noise of +-25% hid even a method that sleeps 30% of every step.
Here the runs of one seed live in worker processes and take turns: a worker trains one step
(with that step's evaluation and checkpoint), hands the machine back and waits; the benchmark then
gives the next worker its turn. Only one run ever computes at a time, so no run's step is timed
while another run competes for the cores, and consecutive steps of different methods, seconds
apart, meet the same load. The cost is memory: every run of the seed is alive at once.

Workers are forked from a fork server that has imported torch but run nothing (no thread pools, no
CUDA context), so each starts in milliseconds and the benchmark's own threads are never forked.
Each worker leads its own process group: Ctrl-C and a scheduler's SIGTERM reach the benchmark only,
which then stops every run at its next turn, a checkpoint saved, as a signal would stop `composerlite run`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
from collections import deque
from typing import Any, Callable

import torch

from composerlite.core.callback import Callback
from composerlite.errors import Diverged, RunHalted

GO, STOP = "go", "stop"
# Imported once by the fork server, so workers start with them loaded.
PRELOAD = ["composerlite.bench.runner"]


class Baton(Callback):
    """Inside a worker: after each step, its evaluation and checkpoint included, tell the benchmark
    and wait for the next turn. Told to stop (or finding the benchmark gone), the run halts as on
    SIGTERM: a checkpoint after this batch, then `RunHalted`."""

    def __init__(self, connection: multiprocessing.connection.Connection):
        self.connection = connection

    def wait_turn(self) -> bool:
        """True when told to go on; False when told to stop or when the benchmark is gone."""
        try:
            return self.connection.recv() == GO
        except (EOFError, OSError):
            return False

    def batch_checkpoint(self, state, logger) -> None:
        if state.device.type == "cuda":  # its queued kernels must not run into the next run's timed step
            torch.cuda.synchronize(state.device)
        try:
            self.connection.send(("yield",))
        except OSError:
            pass  # the benchmark is gone; wait_turn says stop
        if not self.wait_turn():
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's own stop: saved after this batch


def worker_main(connection: multiprocessing.connection.Connection, execute: Callable[..., dict[str, Any]],
                job: Any, cwd: str, environment: dict[str, str]) -> None:
    """A worker's life: wait for the first turn (so even its setup is not timed against another
    run's step), run `execute(job, callbacks, on_record)` and send back what it returns. It works in
    the benchmark's directory and environment of now, not the fork server's of when it started."""
    os.setpgid(0, 0)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    baton = Baton(connection)

    def send(*message: Any) -> None:
        try:
            connection.send(message)
        except OSError:
            pass  # the benchmark is gone; the run still ends cleanly

    try:
        if baton.wait_turn():
            run_to_end(execute, job, [baton], send)
        else:
            send("not_started")
    finally:
        connection.close()


def run_to_end(execute: Callable[..., dict[str, Any]], job: Any, callbacks: list[Callback],
               send: Callable[..., None]) -> None:
    """Run `job` here and `send` its records and its end as messages: how a run reports, in a
    worker or in the benchmark's own process."""
    try:
        send("done", execute(job, callbacks=callbacks, on_record=lambda record: send("record", record)))
    except (Diverged, torch.OutOfMemoryError) as error:  # the run's settings cannot train here: a result
        send("cannot_train", f"diverged: loss {error.loss} at step {error.step}" if isinstance(error, Diverged)
             else "out of device memory")
    except RunHalted as halted:
        send("halted", str(halted), halted.exit_code)
    except Exception as error:  # noqa: BLE001 -- one run's failure is reported, not raised
        text = str(error).splitlines()[0] if str(error) else ""
        send("failed", f"{type(error).__name__}: {text}" if text else type(error).__name__)


class Stop(Exception):
    """The benchmark was asked to stop (a signal): every run has stopped, its checkpoint saved."""


def take_turns(jobs: list[Any], execute: Callable[..., dict[str, Any]], on_message: Callable[[Any, tuple], None],
               stop_requested: Callable[[], bool]) -> None:
    """Train `jobs` in worker processes, one step each in turn, in the order given.

    `on_message(job, message)` gets each worker's messages: ("record", r) as the run logs, then
    its end: ("done", result), ("cannot_train", text) (its loss diverged or it ran out of device
    memory: an outcome of its settings), ("halted", text, exit_code), ("failed", text), ("died", text)
    or, stopped before its first turn, ("not_started",).
    `stop_requested()` is asked after every step; when true, every worker is told to stop (each saves
    a checkpoint), and `Stop` is raised once they all have."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    workers: deque[tuple[Any, multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]] = deque()
    try:
        for job in jobs:
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs, execute, job, os.getcwd(), dict(os.environ)))
            process.start()
            theirs.close()
            workers.append((job, process, ours))
        while workers:
            if stop_requested():
                raise Stop
            job, process, connection = workers.popleft()
            if _turn(job, process, connection, on_message):
                workers.append((job, process, connection))
    except BaseException:
        for job, process, connection in workers:  # each saves a checkpoint and ends, all at once
            _send(connection, STOP)
        for job, process, connection in workers:
            while _follow(job, process, connection, on_message):  # should one yield, tell it again
                _send(connection, STOP)
        raise
    finally:
        for job, process, connection in workers:
            connection.close()
            process.join()


def _turn(job: Any, process, connection, on_message) -> bool:
    """One step of one worker; True while its run goes on."""
    _send(connection, GO)
    return _follow(job, process, connection, on_message)


def _follow(job: Any, process, connection, on_message) -> bool:
    """Pass on a worker's messages until it yields its turn (True) or its run ends (False)."""
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            process.join()
            message = ("died", f"its worker process ended without a result (exit code {process.exitcode})")
        if message[0] == "yield":
            return True
        on_message(job, message)
        if message[0] != "record":
            process.join()
            return False


def _send(connection, message: str) -> None:
    try:
        connection.send(message)
    except OSError:
        pass  # the worker has died; _follow reports it
