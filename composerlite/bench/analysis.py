"""From run records to the numbers in a report: groups, per-method statistics, time to a target
loss, speedups and the quality/time Pareto frontier.

Definitions (also printed under every report's table):
- A *group* is the runs that share settings (model, budget, data, batch, eval set), reference
  method and device. Speedups are only computed inside a group: a baseline timed on one machine
  says nothing about a method timed on another.
- *Target* for seed s: the reference method's final eval loss with seed s (same seed: same
  initialisation and data order). Time and tokens to the target are read off the run's eval
  curve at its first crossing, interpolated linearly between the two eval points around it; a
  run already below the target at its first eval is credited that eval's time (no
  extrapolation towards zero).
- *Speedup* for seed s = reference time to target / method time to target (Composer's
  definition); the reference's own speedup is 1 by construction. Reported as mean over seeds;
  a method whose run with some seed never reaches that seed's target gets no number.
- Spread is the sample standard deviation over seeds (shown from two seeds on).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

from composerlite.bench.results import BenchResults, EvalPoint, RunRecord
from composerlite.errors import UsageError


@dataclasses.dataclass
class Group:
    settings: dict[str, Any]
    reference: str
    device: str
    kind: str
    methods: list[str]  # in the order the benchmark listed them, reference first
    runs: list[RunRecord]
    commands: list[dict[str, str]]
    sources: list[str]  # the result folders the runs came from

    def runs_of(self, method: str) -> list[RunRecord]:
        return sorted((run for run in self.runs if run.method == method), key=lambda run: run.seed)


@dataclasses.dataclass(frozen=True)
class Stat:
    mean: float
    spread: float | None  # sample std over seeds; None with one seed

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        values = list(values)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclasses.dataclass
class MethodSummary:
    method: str
    seeds: list[int]
    final_loss: Stat
    final_ppl: Stat
    tokens_per_s: Stat
    wall_s: Stat  # training time of the whole run
    tokens: Stat  # tokens trained in the whole run
    peak_memory_bytes: int | None  # largest over seeds
    compared: int  # seeds that have a reference run to compare with
    reached: int  # of those, how many reached the target
    time_to_target: Stat | None  # None unless every compared seed reached it
    tokens_to_target: Stat | None
    speedup: Stat | None


def crossing(evals: list[EvalPoint], target: float) -> tuple[float, float] | None:
    """(wall_s, tokens) where the eval curve first reaches `target`, or None if it never does."""
    previous = None
    for point in evals:
        if point.eval_loss <= target:
            if previous is None:
                return point.wall_s, float(point.tokens)
            fraction = (previous.eval_loss - target) / (previous.eval_loss - point.eval_loss)
            return (previous.wall_s + fraction * (point.wall_s - previous.wall_s),
                    previous.tokens + fraction * (point.tokens - previous.tokens))
        previous = point
    return None


def summarize(group: Group) -> list[MethodSummary]:
    reference = {run.seed: run for run in group.runs_of(group.reference)}
    summaries = []
    for method in group.methods:
        runs = group.runs_of(method)
        if not runs:
            continue
        times, tokens, speedups, compared = [], [], [], 0
        for run in runs:
            baseline = reference.get(run.seed)
            if baseline is None:
                continue
            compared += 1
            target = baseline.final_eval_loss
            hit, baseline_hit = crossing(run.evals, target), crossing(baseline.evals, target)
            if hit is None:
                continue
            times.append(hit[0])
            tokens.append(hit[1])
            speedups.append(baseline_hit[0] / hit[0] if hit[0] > 0 else math.inf)
        all_reached = compared > 0 and len(times) == compared
        summaries.append(MethodSummary(
            method=method,
            seeds=[run.seed for run in runs],
            final_loss=Stat.of(run.final_eval_loss for run in runs),
            final_ppl=Stat.of(math.exp(min(run.final_eval_loss, 50.0)) for run in runs),
            tokens_per_s=Stat.of(run.tokens_per_s for run in runs),
            wall_s=Stat.of(run.train["wall_s"] for run in runs),
            tokens=Stat.of(run.train["tokens"] for run in runs),
            peak_memory_bytes=max((run.peak_memory_bytes or 0 for run in runs), default=0) or None,
            compared=compared,
            reached=len(times),
            time_to_target=Stat.of(times) if all_reached else None,
            tokens_to_target=Stat.of(tokens) if all_reached else None,
            speedup=Stat.of(speedups) if all_reached else None,
        ))
    return summaries


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both time and loss (lower is better), by time."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for index in order:
        if points[index][1] < best:
            front.append(index)
            best = points[index][1]
    return front


def group_results(sources: list[tuple[str, BenchResults]], allow_mixed: bool = False) -> list[Group]:
    """Split each results file by device and merge runs with equal settings into one group.

    Folders whose settings differ (another budget, data set, model, batch) are refused unless
    `allow_mixed`, in which case each becomes its own group and the report says so.
    """
    first_name, first = sources[0]
    for name, results in sources[1:]:
        differences = _differences(first, results)
        if differences and not allow_mixed:
            raise UsageError(
                f"cannot merge {name} into {first_name}: they differ in {'; '.join(differences)}. "
                "Pass --allow-mixed to report them side by side as separate groups"
            )
    groups: dict[tuple, Group] = {}
    for name, results in sources:
        for run in results.runs:
            key = (json.dumps(results.settings, sort_keys=True, default=str), results.reference, results.kind, run.device)
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group(results.settings, results.reference, run.device, results.kind,
                                            [], [], [], [])
            if any(other.method == run.method and other.seed == run.seed for other in group.runs):
                raise UsageError(f"{name} and another folder both hold '{run.method}' seed {run.seed} on {run.device}")
            group.runs.append(run.model_copy(update={"run_dir": str(Path(name) / run.run_dir)}))
            if name not in group.sources:
                group.sources.append(name)
                group.commands.extend(results.commands)
            for method in [results.reference, *(m.label for m in results.methods)]:
                if method not in group.methods:
                    group.methods.append(method)
    return list(groups.values())


def _differences(a: BenchResults, b: BenchResults) -> list[str]:
    differences = [f"{key} ({a.settings.get(key)!r} vs {b.settings.get(key)!r})"
                   for key in sorted(set(a.settings) | set(b.settings)) if a.settings.get(key) != b.settings.get(key)]
    if a.reference != b.reference:
        differences.append(f"reference method ({a.reference!r} vs {b.reference!r})")
    return differences


def is_mixed(groups: list[Group]) -> bool:
    return len({json.dumps(group.settings, sort_keys=True, default=str) for group in groups}) > 1
