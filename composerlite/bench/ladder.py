"""Speedups across model sizes (`composerlite bench --models a,b,c`): the same comparison on several
family members, and for each method and axis a line through its speedups against the model's
parameters, saying whether the speedup grows, holds or shrinks with size.

The fit: y = ln(speedup) against x = log10(non-embedding parameters, Kaplan et al.'s N), by
weighted least squares with each size's standard error of the mean log speedup (read off its 95%
interval) as known, weights 1/se^2. The slope is the change in ln(speedup) per 10x parameters; its
95% interval uses the Student t quantile at the smallest per-size degrees of freedom (seeds - 1),
which is conservative. "grows" when the whole interval lies above 0, "shrinks" below, "holds" when it
covers 0. It needs two sizes with an interval each.

The sizes may have run on different machines (a CPU ladder takes longer than one session on one
host): tokens and FLOPs to the target do not depend on the machine, so their trends are fitted
whatever ran each size; wall-clock and step speed do, and are fitted only when every size ran on
the same machine. Each size's own speedup is measured side by side on its machine either way.
"""

from __future__ import annotations

import dataclasses
import json
import math

from composerlite.bench.analysis import CONFIDENCE, STEP_SPEED, Group, MethodSummary, Speedup, t_quantile

GROWS, HOLDS, SHRINKS = "grows", "holds", "shrinks"
# A method that changes nothing has a speedup of exactly 1 with no spread on the deterministic axes
# (tokens, FLOPs); this floor on the standard error keeps such a size's weight finite.
MIN_STANDARD_ERROR = 1e-9
MACHINE_AXES = ("wall_s", STEP_SPEED)  # speedups that depend on the machine as well as the method


@dataclasses.dataclass(frozen=True)
class Trend:
    """The fitted line of ln(speedup) against log10(parameters), and its verdict."""

    slope: float  # change in ln(speedup) per 10x parameters
    low: float
    high: float
    intercept: float  # ln(speedup) at 1 parameter (log10 N = 0); with the slope, the line to draw
    sizes: int
    verdict: str  # grows / holds / shrinks


@dataclasses.dataclass
class Ladder:
    """The groups of one comparison run at several sizes (same settings but the model, same
    reference), smallest model first, with each group's summaries."""

    models: list[str]
    parameters: list[int]  # non-embedding parameters of each model
    groups: list[Group]
    summaries: list[dict[str, MethodSummary]]  # per model: method -> summary

    @property
    def methods(self) -> list[str]:
        """Every method but the reference and its repeats, in the order first listed."""
        seen = dict.fromkeys(method for group in self.groups for method in group.methods
                             if method != group.reference and method not in group.repeats)
        return list(seen)

    def speedups(self, method: str, axis: str) -> list[Speedup | None]:
        return [summaries[method].speedups[axis] if method in summaries else None for summaries in self.summaries]

    @property
    def devices(self) -> list[str]:
        """The machines the sizes ran on, each once, smallest model's first."""
        return list(dict.fromkeys(group.device for group in self.groups))

    def fits(self, axis: str) -> bool:
        """Whether a trend on `axis` compares sizes alone: not where the machine changed between them."""
        return axis not in MACHINE_AXES or len(self.devices) == 1

    def trend(self, method: str, axis: str) -> Trend | None:
        if not self.fits(axis):
            return None
        points = [(math.log10(parameters), speedup) for parameters, speedup in zip(self.parameters, self.speedups(method, axis))
                  if speedup is not None and speedup.low is not None]
        return fit_trend(points)

    def trend_summary(self, method: str, axis: str) -> str:
        if not self.fits(axis):
            return "not fitted: the sizes ran on different machines"
        return trend_text(self.trend(method, axis))


def ladders(groups: list[Group], summaries: list[list[MethodSummary]]) -> list[Ladder]:
    """Groups alike in all but the model (and the machine), two models or more: one Ladder each. A
    model measured on two machines (`composerlite report` merging them) is one ladder per machine."""
    alike: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        key = json.dumps([{**group.settings, "model": None}, group.reference, group.kind],
                         sort_keys=True, default=str)
        alike.setdefault(key, []).append(index)
    model = lambda index: str(groups[index].settings.get("model"))
    sets = []
    for indices in alike.values():
        if len({model(i) for i in indices}) == len(indices):
            sets.append(indices)
        else:
            by_device: dict[str, list[int]] = {}
            for index in indices:
                by_device.setdefault(groups[index].device, []).append(index)
            sets += by_device.values()
    found = []
    for indices in sets:
        if len(indices) < 2:
            continue
        from composerlite.models import count_parameters  # imports torch: only for a ladder

        ordered = sorted(indices, key=lambda i: count_parameters(str(groups[i].settings["model"]), non_embedding=True))
        found.append(Ladder(
            models=[str(groups[i].settings["model"]) for i in ordered],
            parameters=[count_parameters(str(groups[i].settings["model"]), non_embedding=True) for i in ordered],
            groups=[groups[i] for i in ordered],
            summaries=[{summary.method: summary for summary in summaries[i]} for i in ordered],
        ))
    return found


def fit_trend(points: list[tuple[float, Speedup]]) -> Trend | None:
    """Weighted least squares of ln(speedup) on x (log10 parameters), as the module says; None
    with fewer than two sizes."""
    if len({x for x, _ in points}) < 2:
        return None
    xs = [x for x, _ in points]
    ys = [math.log(speedup.point) for _, speedup in points]
    weights = [1 / max(speedup.log_standard_error, MIN_STANDARD_ERROR) ** 2 for _, speedup in points]
    total = sum(weights)
    x_mean = sum(w * x for w, x in zip(weights, xs)) / total
    y_mean = sum(w * y for w, y in zip(weights, ys)) / total
    spread = sum(w * (x - x_mean) ** 2 for w, x in zip(weights, xs))
    slope = sum(w * (x - x_mean) * (y - y_mean) for w, x, y in zip(weights, xs, ys)) / spread
    degrees_of_freedom = min(speedup.seeds for _, speedup in points) - 1
    half_width = t_quantile(0.5 + CONFIDENCE / 2, degrees_of_freedom) * math.sqrt(1 / spread)
    low, high = slope - half_width, slope + half_width
    verdict = GROWS if low > 0 else SHRINKS if high < 0 else HOLDS
    return Trend(slope, low, high, y_mean - slope * x_mean, len(points), verdict)


def trend_text(trend: Trend | None) -> str:
    if trend is None:
        return "needs 2+ sizes with an interval"
    signed = lambda value: f"{round(value, 3) + 0.0:+.3f}"  # + 0.0: a rounded -0.0 is shown as +0.000
    return f"{trend.verdict}: {signed(trend.slope)} [{signed(trend.low)}, {signed(trend.high)}]"

