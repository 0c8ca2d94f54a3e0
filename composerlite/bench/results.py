"""What a benchmark folder records: `results.json`, one file holding every finished run.

A run is finished exactly when its `RunRecord` is in `results.json`; the file is rewritten
atomically after each run, so an interrupted benchmark never leaves a half-written record and
resumes by skipping what is already there.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pydantic

from composerlite.errors import ConfigError

RESULTS_FILE = "results.json"
FORMAT_VERSION = 2  # 2: FLOPs at evals, per-step times, reference repeats, reference losses


class EvalPoint(pydantic.BaseModel):
    """One held-out evaluation. `wall_s` is training time only (evaluation is not counted); `flops`
    the model FLOPs trained so far (the steps' `model_flops` added up)."""

    step: int
    tokens: int
    wall_s: float
    flops: float
    eval_loss: float


class Method(pydantic.BaseModel):
    """One contender: a label, the algorithms it adds, and the settings it changes, by flat key (sweeps,
    tuned settings)."""

    model_config = pydantic.ConfigDict(frozen=True)

    label: str
    algorithms: tuple[str, ...] = ()
    overrides: dict[str, Any] = pydantic.Field(default_factory=dict)
    repeat_of: str | None = None  # a second timing of that method (the A/A noise measurement)
    tuning_of: str | None = None  # a tuning run of that method (`--tune`), at `point`
    # The tuned keys' values (`lr`, `muon.lr`) this method runs with: a tuning run's grid point,
    # or the point a tuned method chose (already applied to `overrides` and `algorithms`).
    point: dict[str, Any] = pydantic.Field(default_factory=dict)


class TuningFailure(pydantic.BaseModel):
    """A tuning run whose settings could not train (its loss diverged, it ran out of device memory):
    that grid point's result, kept so a rerun chooses the same best. A run that failed for any other
    reason is not one: it is retried."""

    method: str
    seed: int
    reason: str


class RunRecord(pydantic.BaseModel):
    method: str
    seed: int
    run_dir: str  # relative to the benchmark folder
    config: dict[str, Any]  # the run's resolved config.yaml
    evals: list[EvalPoint]
    train: dict[str, Any]  # steps, tokens, wall_s, first/final/min train loss
    step_seconds: list[float]  # each training step's time, in order
    step_tokens: list[int]  # each training step's tokens (sequence-length methods vary them)
    tokens_per_s: float
    peak_memory_bytes: int | None
    peak_memory_kind: str  # what the number measures ("cuda max_memory_allocated", "process peak RSS", ...)
    device: str  # the label runs are grouped by in reports: a GPU's name, or the CPU's
    hardware: dict[str, Any]
    versions: dict[str, str]
    finished_at: str

    @property
    def final_eval_loss(self) -> float:
        return self.evals[-1].eval_loss


class BenchResults(pydantic.BaseModel):
    format: int = FORMAT_VERSION
    kind: str = "bench"  # "bench" or "sweep"
    settings: dict[str, Any]  # what every run shares: model, budget, data, batch, eval set, ...
    reference: str  # the method others are measured against (speedup 1.0)
    references: dict[str, float] = pydantic.Field(default_factory=dict)  # unigram/bigram held-out losses
    methods: list[Method]
    commands: list[dict[str, str]] = pydantic.Field(default_factory=list)  # each invocation: command, started
    runs: list[RunRecord] = pydantic.Field(default_factory=list)
    tuning_failures: list[TuningFailure] = pydantic.Field(default_factory=list)

    def finished(self, method: str, seed: int) -> bool:
        return any(run.method == method and run.seed == seed for run in self.runs)

    def settled(self, method: str, seed: int) -> bool:
        """Finished, or a tuning run that could not train (not retried: that is its grid point's result)."""
        return self.finished(method, seed) or any(failure.method == method and failure.seed == seed
                                                  for failure in self.tuning_failures)


def load_results(folder: Path) -> BenchResults:
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise ConfigError(f"no {RESULTS_FILE} in {folder}")
    try:
        found = json.loads(path.read_text()).get("format")
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"{path} is not a composerlite results file: {str(error).splitlines()[0]}") from None
    if found != FORMAT_VERSION:
        raise ConfigError(f"{path} has results format {found!r}, this composerlite reads format {FORMAT_VERSION}: "
                         "rerun the benchmark with this version (its runs lack what verdicts need)")
    try:
        return BenchResults.model_validate_json(path.read_text())
    except (pydantic.ValidationError, ValueError) as error:
        raise ConfigError(f"{path} is not a composerlite results file: {str(error).splitlines()[0]}") from None


def save_results(folder: Path, results: BenchResults) -> None:
    write_atomic(Path(folder) / RESULTS_FILE, json.dumps(results.model_dump(mode="json"), indent=1) + "\n")


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary sibling, then rename over `path`: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; reports and results are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
