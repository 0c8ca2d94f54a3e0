"""PNG plots for reports. Uses matplotlib's object API (`Figure`, rendered by its Agg canvas), so
no pyplot global state and no display are involved."""

from __future__ import annotations

import math
from itertools import cycle
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from composerlite.bench.analysis import AXIS_NAMES, VERDICT_AXES, Group, MethodSummary, seed_targets
from composerlite.bench.ladder import Ladder
from composerlite.bench.tuning import TuningOutcome

LINESTYLES = ["-", "--", ":", "-."]
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
          "tab:gray", "tab:olive", "tab:cyan"]
X_LABELS = {"wall_s": "training time (s, evaluation excluded)", "tokens": "tokens trained",
            "flops": "model FLOPs spent"}


def method_colors(groups: list[Group]) -> dict[str, str]:
    methods = list(dict.fromkeys(method for group in groups for method in group.methods))
    return {method: COLORS[i % len(COLORS)] for i, method in enumerate(methods)}


def group_labels(groups: list[Group]) -> list[str]:
    """Suffix for legend entries: empty with one group, the device (and a number if needed) otherwise."""
    if len(groups) == 1:
        return [""]
    devices = [group.device for group in groups]
    return [f" @ {device}" + (f" [{i + 1}]" if devices.count(device) > 1 else "") for i, device in enumerate(devices)]


def plot_curves(groups: list[Group], x: str, path: Path) -> None:
    """Eval loss against `x` ("wall_s", "tokens" or "flops"): the mean over seeds, shaded from the best
    to the worst seed at each evaluation (seeds aligned by evaluation index, up to the shortest run),
    with the target and the unigram/bigram reference lines."""
    colors, suffixes = method_colors(groups), group_labels(groups)
    figure = Figure(figsize=(8, 5), dpi=110)
    axes = figure.subplots()
    for style, suffix, group in zip(cycle(LINESTYLES), suffixes, groups):
        for method in group.methods:
            runs = group.runs_of(method)
            if not runs:
                continue
            length = min(len(run.evals) for run in runs)
            xs = [sum(getattr(run.evals[i], x) for run in runs) / len(runs) for i in range(length)]
            losses = [[run.evals[i].eval_loss for run in runs] for i in range(length)]
            axes.plot(xs, [sum(values) / len(values) for values in losses], style, marker="o", markersize=2,
                      color=colors[method], label=f"{method}{suffix}" + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""))
            if len(runs) > 1:
                axes.fill_between(xs, [min(v) for v in losses], [max(v) for v in losses], color=colors[method], alpha=0.2)
        targets = seed_targets(group)
        if targets:
            target = sum(targets.values()) / len(targets)
            axes.axhline(target, color="black", linestyle=style, linewidth=1,
                         label=f"target {target:.3f}{suffix}" + ("" if group.target_loss is not None else " (reference's final, mean)"))
        for name, color in (("unigram", "tab:gray"), ("bigram", "tab:olive")):
            if name in group.references:
                axes.axhline(group.references[name], color=color, linestyle=":", linewidth=1.2,
                             label=f"{name} model {group.references[name]:.2f}{suffix}")
    axes.set_xlabel(X_LABELS[x])
    axes.set_ylabel("held-out eval loss (nats/token)")
    axes.set_title(f"held-out loss vs {AXIS_NAMES[x]}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def plot_speedups(groups: list[Group], summaries: list[list[MethodSummary]], path: Path) -> None:
    """Each method's speedup over the reference on each axis (and its step speed): the point and its 95% interval as a
    whisker, on a log scale with 1x (no difference) marked. Methods without an interval are left out."""
    colors, suffixes = method_colors(groups), group_labels(groups)
    figure = Figure(figsize=(8, 1.5 + 0.45 * sum(len(s) for s in summaries) * len(VERDICT_AXES)), dpi=110)
    axes = figure.subplots()
    labels, row = [], 0
    for suffix, group, group_summaries in zip(suffixes, groups, summaries):
        for summary in group_summaries:
            if summary.method == group.reference:
                continue
            for axis in VERDICT_AXES:
                speedup = summary.speedups[axis]
                if speedup.low is not None:
                    axes.errorbar(speedup.point, row, xerr=[[speedup.point - speedup.low], [speedup.high - speedup.point]],
                                  fmt="o", color=colors[summary.method], capsize=3, markersize=4)
                    axes.annotate(speedup.verdict, (speedup.high, row), textcoords="offset points", xytext=(5, -3), fontsize=7)
                labels.append(f"{summary.method}{suffix}: {AXIS_NAMES[axis]}")
                row += 1
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("speedup over the reference: at the target, and per step (log scale; > 1 is faster)")
    axes.set_title("speedups with 95% intervals")
    axes.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    figure.savefig(path)


def plot_tuning(groups: list[Group], outcomes: list[list[TuningOutcome]], key: str, path: Path) -> bool:
    """Each tuned method's final held-out loss on the tuning seed against `key`'s values, the other
    tuned keys held at the method's best (a slice through its optimum), the chosen point ringed.
    Numbers spanning 10x or more go on a log axis; other values are placed in grid order. False
    (and no file) when no method has a finished run to show."""
    colors, suffixes = method_colors(groups), group_labels(groups)
    figure = Figure(figsize=(8, 5), dpi=110)
    axes = figure.subplots()
    values = list(dict.fromkeys(value for group in groups for value in group.settings.get("tune", {}).get(key, [])))
    numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
    position = (lambda value: value) if numeric else values.index
    drawn = False
    for style, suffix, group, group_outcomes in zip(cycle(LINESTYLES), suffixes, groups, outcomes):
        for outcome in group_outcomes:
            anchor = outcome.best or {}
            slice_ = [point for point in outcome.points if key in point.point and point.final_loss is not None
                      and all(point.point[other] == anchor[other] for other in anchor if other != key)]
            if not slice_:
                continue
            drawn = True
            xs, ys = [position(point.point[key]) for point in slice_], [point.final_loss for point in slice_]
            axes.plot(xs, ys, style, marker="o", markersize=4, color=colors[outcome.method],
                      label=f"{outcome.method}{suffix}")
            if outcome.best is not None and key in outcome.best:
                axes.plot([position(outcome.best[key])], [outcome.best_loss], "o", markersize=12, fillstyle="none",
                          color=colors[outcome.method])
    if not drawn:
        return False
    if numeric and min(values) > 0 and max(values) / min(values) >= 10:
        axes.set_xscale("log")
    if not numeric:
        axes.set_xticks(range(len(values)), [str(value) for value in values])
    axes.set_xlabel(key)
    axes.set_ylabel("final held-out loss on the tuning seed (nats/token)")
    axes.set_title(f"tuning {key}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return True


def plot_ladder(ladder: Ladder, path: Path) -> None:
    """One panel per verdict axis: each method's speedup at each size (point and 95% interval) against
    non-embedding parameters, and its fitted line, on log scales with 1x marked."""
    colors = method_colors(ladder.groups)
    figure = Figure(figsize=(10, 7), dpi=110)
    panels = figure.subplots(2, 2).flatten()
    for axes, axis in zip(panels, VERDICT_AXES):
        for method in ladder.methods:
            sizes = [(parameters, speedup) for parameters, speedup in zip(ladder.parameters, ladder.speedups(method, axis))
                     if speedup is not None and speedup.low is not None]
            if not sizes:
                continue
            xs = [parameters for parameters, _ in sizes]
            points = [speedup.point for _, speedup in sizes]
            axes.errorbar(xs, points, yerr=[[p - s.low for p, (_, s) in zip(points, sizes)],
                                           [s.high - p for p, (_, s) in zip(points, sizes)]],
                          fmt="o", color=colors[method], capsize=3, markersize=4, label=method)
            trend = ladder.trend(method, axis)
            if trend is not None:
                ends = [min(ladder.parameters), max(ladder.parameters)]
                axes.plot(ends, [math.exp(trend.intercept + trend.slope * math.log10(x)) for x in ends], "--",
                          color=colors[method], linewidth=1)
        axes.axhline(1.0, color="black", linewidth=1)
        axes.set_xscale("log")
        axes.set_yscale("log")
        for scale in (axes.xaxis, axes.yaxis):  # a ladder spans about a decade: minor labels would collide
            scale.set_minor_formatter(NullFormatter())
        axes.set_title(AXIS_NAMES[axis], fontsize=9)
        axes.set_xlabel("non-embedding parameters", fontsize=8)
        axes.set_ylabel("speedup over the reference", fontsize=8)
        axes.grid(alpha=0.3)
    legend = {label: handle for axes in panels for handle, label in zip(*axes.get_legend_handles_labels())}
    if legend:
        figure.legend(list(legend.values()), list(legend), fontsize=7, loc="lower center", ncol=min(3, len(legend)))
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path)
