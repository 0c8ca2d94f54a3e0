"""The `Logger` algorithms and callbacks log through, and `LoggerDestination`, the interface of
the places it writes to: one `Logger` fans each record out to destinations, which are plugins like
algorithms.

Algorithms and callbacks call `logger.log_metrics({...})`; those metrics join the next record the
trainer writes, so each step is one line in `metrics.jsonl`.

Destinations register in the `composerlite.loggers` entry-point group (see `composerlite.registry`):
the built-ins `console` (the progress bar) and `jsonl` (metrics.jsonl), which every run has
(`composerlite.observe.loggers`), and `tensorboard`, `mlflow` and `wandb`
(`composerlite.observe.trackers`, each an optional extra). A destination is built from its options
alone (`--logger NAME:key=value`), asked whether it can work with the run directory
(`check_run_dir`, before the run writes anything), then `open`ed once the run directory is written
(rank 0 only), gets every record through `log`, `sync` before each checkpoint and `close` at the
end.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

from composerlite.core.algorithm import NoOptions
from composerlite.core.callback import Callback
from composerlite.errors import ConfigError, PluginError
from composerlite.system.storage import Location

if TYPE_CHECKING:
    from rich.console import Console


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
