"""PNG plots for reports. Uses matplotlib's object API (`Figure`, rendered by its Agg canvas), so
no pyplot global state and no display are involved."""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

from matplotlib.figure import Figure

from composerlite.bench.analysis import Group, MethodSummary, pareto_front

LINESTYLES = ["-", "--", ":", "-."]
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
          "tab:gray", "tab:olive", "tab:cyan"]


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
    """Eval loss against `x` ("wall_s" or "tokens"): the mean over seeds, shaded from the best to the
    worst seed at each evaluation. Seeds are aligned by evaluation index (same eval schedule)."""
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
            axes.plot(xs, [sum(values) / len(values) for values in losses], style, marker="o", markersize=3,
                      color=colors[method], label=f"{method}{suffix}" + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""))
            if len(runs) > 1:
                axes.fill_between(xs, [min(v) for v in losses], [max(v) for v in losses], color=colors[method], alpha=0.2)
    axes.set_xlabel("training time (s, evaluation excluded)" if x == "wall_s" else "tokens trained")
    axes.set_ylabel("held-out eval loss (nats/token)")
    axes.set_title(f"eval loss vs {'wall-clock time' if x == 'wall_s' else 'tokens'}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def plot_pareto(groups: list[Group], summaries: list[list[MethodSummary]], path: Path) -> None:
    """Final eval loss against training time per method (error bars: std over seeds), with the
    frontier of methods no other method beats on both."""
    colors, suffixes = method_colors(groups), group_labels(groups)
    figure = Figure(figsize=(8, 5), dpi=110)
    axes = figure.subplots()
    for style, suffix, group_summaries in zip(cycle(LINESTYLES), suffixes, summaries):
        points = [(s.wall_s.mean, s.final_loss.mean) for s in group_summaries]
        for summary, (time, loss) in zip(group_summaries, points):
            axes.errorbar(time, loss, xerr=summary.wall_s.spread, yerr=summary.final_loss.spread, fmt="o",
                          color=colors[summary.method], capsize=3, label=f"{summary.method}{suffix}")
            axes.annotate(summary.method, (time, loss), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front = [points[i] for i in pareto_front(points)]
        axes.plot([p[0] for p in front], [p[1] for p in front], style, color="black", alpha=0.5, linewidth=1,
                  drawstyle="steps-post", label=f"Pareto frontier{suffix}")
    axes.set_xlabel("training time of the run (s)")
    axes.set_ylabel("final held-out eval loss (nats/token)")
    axes.set_title("quality vs time (lower left is better)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
