"""An equal tuning budget (`composerlite bench --tune KEY=GRID`): before the verdict seeds, every
method, the reference included, trains once at each point of the same grid on a tuning seed; each
method's best point (lowest final held-out loss) is what its verdict runs use, so the verdicts
compare best with best, and a method cannot look faster only because the baseline was run at a
poor setting.

KEY is a run setting (`TUNABLE_SETTINGS`) or `ALGO.OPTION`, an option of the algorithm ALGO, which
applies to the methods that include ALGO. GRID is a comma list (`3e-3,1e-2,3e-2`) or
`log:LOW..HIGH:N`, N points evenly spaced on a log scale from LOW to HIGH inclusive, each rounded to
3 significant digits. Several keys make the product grid. The tuning seed is the one before the
first verdict seed (`tuning_seed`), so adding verdict seeds never meets it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Iterable

import yaml

from composerlite.bench.results import Method, RunRecord
from composerlite.errors import ConfigError

# Run settings a grid may vary: the recipe's hyperparameters. The others define the comparison
# itself (model, budget, data, eval set, seeds, precision, device) or do not change what is
# computed (microbatch size, threads, checkpointing).
TUNABLE_SETTINGS = ("lr", "weight_decay", "warmup", "decay", "dropout", "batch_size", "seq_len")
GRID_SYNTAX = "a comma list (3e-3,1e-2,3e-2) or log:LOW..HIGH:N (N log-spaced points)"
LOG_RANGE_DIGITS = 3  # significant digits of a log range's points: readable labels, distinct points


@dataclasses.dataclass(frozen=True)
class TunedKey:
    """One `--tune KEY=GRID`: the key and its grid's values, in the order given."""

    key: str
    values: tuple[Any, ...]

    @property
    def algorithm(self) -> str | None:
        """ALGO of an `ALGO.OPTION` key; None for a run setting (settings have no dots)."""
        return self.key.rpartition(".")[0] or None

    @property
    def option(self) -> str:
        return self.key.rpartition(".")[2]


def parse_tune(text: str) -> TunedKey:
    """`lr=3e-3,1e-2` or `muon.lr=log:1e-3..1e-1:5` -> a TunedKey (its values not yet validated)."""
    key, sep, grid = text.partition("=")
    key, grid = key.strip(), grid.strip()
    if not sep or not key:
        raise ConfigError(f"--tune '{text}' must be KEY=GRID, GRID {GRID_SYNTAX}")
    values = parse_grid(grid, key)
    labels = [format_value(value) for value in values]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"--tune {key}: the grid lists {', '.join(repeated)} more than once")
    return TunedKey(key, tuple(values))


def parse_grid(grid: str, key: str) -> list[Any]:
    if grid.startswith("log:"):
        return log_range(grid, key)
    values = [scalar(item) for item in (part.strip() for part in grid.split(",")) if item]
    if not values:
        raise ConfigError(f"--tune {key}: empty grid; give {GRID_SYNTAX}")
    return values


def log_range(grid: str, key: str) -> list[float]:
    """`log:1e-3..1e-1:5` -> [0.001, 0.00316, 0.01, 0.0316, 0.1]."""
    bounds, _, count = grid.removeprefix("log:").rpartition(":")
    low, sep, high = bounds.partition("..")
    try:
        low_value, high_value, points = float(low), float(high), int(count)
    except ValueError:
        raise ConfigError(f"--tune {key}: '{grid}' is not log:LOW..HIGH:N (e.g. log:1e-3..1e-1:5)") from None
    if not sep or not 0 < low_value < high_value or points < 2:
        raise ConfigError(f"--tune {key}: '{grid}' needs 0 < LOW < HIGH and N >= 2 points")
    ratio = high_value / low_value
    inner = [float(f"{low_value * ratio ** (i / (points - 1)):.{LOG_RANGE_DIGITS}g}") for i in range(1, points - 1)]
    return [low_value, *inner, high_value]


def scalar(text: str) -> Any:
    """A grid item as a number where it reads as one (YAML would keep `3e-3` a string), else as YAML
    reads it (`true`, `cosine`, `20ba`); the option's own validation then checks it."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # the option's validation names what is wrong with it


def format_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{key}={format_value(value)}" for key, value in point.items())


def tuning_seed(seeds: list[int]) -> int:
    return seeds[0] - 1


# -- which methods a key applies to, and the grid each method gets -----------------------------

def algorithm_targets(method: Method) -> list[str]:
    from composerlite.registry import split_spec

    return [split_spec(spec)[0] for spec in method.algorithms]


def applies(key: TunedKey, method: Method) -> bool:
    return key.algorithm is None or key.algorithm in algorithm_targets(method)


def method_grid(method: Method, keys: Iterable[TunedKey]) -> list[dict[str, Any]]:
    """The grid points for `method`: the product of the keys that apply to it ([] when none does)."""
    own = [key for key in keys if applies(key, method)]
    if not own:
        return []
    return [dict(zip((key.key for key in own), values)) for values in itertools.product(*(key.values for key in own))]


def at_point(method: Method, point: dict[str, Any]) -> Method:
    """`method` with the tuned keys set to `point`: run settings into its overrides, `ALGO.OPTION`
    into that algorithm's spec. The label stays: this is how the method's verdict runs run."""
    from composerlite.registry import split_spec

    settings = {key: value for key, value in point.items() if "." not in key}
    algorithms = []
    for spec in method.algorithms:
        target, options = split_spec(spec)
        tuned = {key.rpartition(".")[2]: value for key, value in point.items() if key.rpartition(".")[0] == target}
        algorithms.append(join_spec(target, {**options, **tuned}) if tuned else spec)
    return method.model_copy(update={"overrides": {**method.overrides, **settings}, "algorithms": tuple(algorithms),
                                     "point": dict(point)})


def tuning_method(method: Method, point: dict[str, Any]) -> Method:
    """The tuning run of `method` at `point`, labelled so results.json and folders tell it apart."""
    return at_point(method, point).model_copy(update={"label": f"{method.label} @ {point_text(point)}",
                                                      "tuning_of": method.label})


def join_spec(target: str, options: dict[str, Any]) -> str:
    """The inverse of `registry.split_spec`: each value written as YAML, which is how it is read back."""
    def text(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()

    return target + ("" if not options else ":" + ",".join(f"{key}={text(value)}" for key, value in options.items()))


# -- checking a grid before anything runs ------------------------------------------------------

def check_tuning(keys: list[TunedKey], base, methods: list[Method]) -> None:
    """Refuse, in one line and before any run, a key given twice, a key that is no tunable run
    setting or no option of an algorithm some method has, and a value its option refuses."""
    from composerlite.registry import build_algorithm, split_spec
    from composerlite.run.settings import FLAT_KEYS, algorithm_specs

    names = [key.key for key in keys]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"--tune {twice[0]} given twice; list all its values in one grid")
    for key in keys:
        if key.algorithm is None:
            if key.key not in TUNABLE_SETTINGS:
                what = ("defines the comparison, not a hyperparameter to tune" if key.key in FLAT_KEYS
                        else "is not a run setting")
                raise ConfigError(f"--tune {key.key}: '{key.key}' {what}; tune one of {', '.join(TUNABLE_SETTINGS)} "
                                  "or ALGO.OPTION")
            for value in key.values:
                try:
                    base.updated({key.key: value})
                except ConfigError as error:
                    raise ConfigError(f"--tune {key.key}={format_value(value)}: {error}") from None
            continue
        if key.algorithm in (target for target, _ in algorithm_specs(base)):
            raise ConfigError(f"--tune {key.key}: {key.algorithm} comes with the shared recipe, so every method has it; "
                              "tuning a shared algorithm is not supported (make it part of the methods instead)")
        owners = [method for method in methods if applies(key, method)]
        if not owners:
            raise ConfigError(f"--tune {key.key}: no method includes {key.algorithm} "
                              f"(methods: {', '.join(method.label for method in methods)})")
        for method in owners:
            for spec in method.algorithms:
                target, options = split_spec(spec)
                if target != key.algorithm:
                    continue
                for value in key.values:
                    try:
                        build_algorithm(target, {**options, key.option: value})
                    except ConfigError as error:
                        raise ConfigError(f"--tune {key.key}={format_value(value)}: {error}") from None


# -- each method's best ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TuningPoint:
    """One grid point of one method: its final held-out loss on the tuning seed, or why it has none."""

    point: dict[str, Any]
    final_loss: float | None
    tokens: int
    failure: str | None  # the failed run's reason; both None while the run is still to come


@dataclasses.dataclass(frozen=True)
class TuningOutcome:
    """A method's tuning: every grid point, the best one (once every point has a result), and the
    keys whose best value lies at an end of their grid (the optimum may lie beyond it)."""

    method: str
    points: list[TuningPoint]
    best: dict[str, Any] | None
    edges: dict[str, str]  # key -> "lowest" or "highest"

    @property
    def settled(self) -> int:
        """Grid points with a result: a final loss or a failure."""
        return sum(point.final_loss is not None or point.failure is not None for point in self.points)

    @property
    def complete(self) -> bool:
        return self.settled == len(self.points)

    @property
    def failed(self) -> int:
        return sum(point.failure is not None for point in self.points)

    @property
    def tokens(self) -> int:
        return sum(point.tokens for point in self.points)

    @property
    def best_loss(self) -> float | None:
        return next((point.final_loss for point in self.points if point.point == self.best), None)


def tuning_outcome(method: str, tuning_runs: list[Method], grids: dict[str, list[Any]], runs: dict[str, RunRecord],
                   failures: dict[str, str]) -> TuningOutcome:
    """`method`'s outcome over its `tuning_runs` (in grid order), with the finished `runs` and the
    `failures` by label, and every key's grid values in `grids` (for the edge flag). The best is the
    lowest finite final held-out loss, the first in grid order on a tie; a failed point only loses
    itself; no best until every point has a result, and none if every point failed."""
    points = []
    for tuning_run in tuning_runs:
        run = runs.get(tuning_run.label)
        points.append(TuningPoint(tuning_run.point, run.final_eval_loss if run is not None else None,
                                  run.train["tokens"] if run is not None else 0, failures.get(tuning_run.label)))
    outcome = TuningOutcome(method, points, None, {})
    candidates = [point for point in points if point.final_loss is not None and math.isfinite(point.final_loss)]
    if not outcome.complete or not candidates:
        return outcome
    best = min(candidates, key=lambda point: point.final_loss).point
    return dataclasses.replace(outcome, best=best, edges=edge_flags(best, grids))


def edge_flags(best: dict[str, Any], grids: dict[str, list[Any]]) -> dict[str, str]:
    """Numeric keys of 2+ values whose best value is the grid's lowest or highest: widen the grid."""
    edges = {}
    for key, value in best.items():
        values = grids[key]
        if len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        if value == min(values):
            edges[key] = "lowest"
        elif value == max(values):
            edges[key] = "highest"
    return edges


def edge_text(outcome: TuningOutcome) -> str:
    return "; ".join(f"{key} at the grid's {end} value: widen the grid" for key, end in outcome.edges.items())


def group_outcomes(group) -> list[TuningOutcome]:
    """The tuning outcome of each tuned method of a report's `analysis.Group`, in its method order."""
    grids = group.settings.get("tune") or {}
    runs = {run.method: run for run in group.tuning_runs}
    outcomes = []
    for method in group.methods:
        tuning_runs = [spec for spec in group.method_specs.values() if spec.tuning_of == method]
        if tuning_runs:
            outcomes.append(tuning_outcome(method, tuning_runs, grids, runs, group.tuning_failures))
    return outcomes
