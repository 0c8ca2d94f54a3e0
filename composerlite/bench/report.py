"""Reports: `report.md` (PNG plots beside it in plots/) and a self-contained `report.html` (the same
plots embedded as base64), built from result folders. Both come from the same rows, so they agree,
and `print_verdicts` shows the same verdict table on the console."""

from __future__ import annotations

import base64
import datetime
import html
import os
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from composerlite.bench.analysis import (AXIS_NAMES, BETTER, CONFIDENCE, NOT_SHOWN, QUALITY_MARGIN, SIGNIFICANCE, WORSE,
                                         VERDICT_AXES, Group, LossTest, MethodSummary, RaceRecord, Speedup, Stat,
                                         crossed_text, group_results, is_mixed, race_records, summarize)
from composerlite.bench.ladder import Ladder, ladders
from composerlite.bench.plots import plot_curves, plot_ladder, plot_speedups, plot_tuning
from composerlite.bench.results import load_results, write_atomic
from composerlite.bench.tuning import TuningOutcome, edge_text, format_value, group_outcomes, point_text

PLOTS = {
    "loss_vs_time.png": "Held-out loss vs training wall-clock time (mean over seeds, band: best to worst seed)",
    "loss_vs_tokens.png": "Held-out loss vs tokens trained",
    "loss_vs_flops.png": "Held-out loss vs model FLOPs spent",
    "speedups.png": "Speedup over the reference at the target loss per axis, and step speed, with 95% intervals",
}
VERDICT_COLUMNS = ["method", "seeds", *(f"{AXIS_NAMES[axis]}: verdict, speedup [95% CI]" for axis in VERDICT_AXES)]
QUALITY_COLUMNS = ["method", "seeds", "final eval loss", f"reaches the target (p < {SIGNIFICANCE})",
                   f"final loss vs reference (p < {SIGNIFICANCE}; equivalent: within ±{QUALITY_MARGIN} nats)"]
RUN_SUMMARY_COLUMNS = ["method", "final eval loss", "tokens/s per step: median [p10-p90]", "training time",
                       "peak memory", "time to target", "tokens to target", "FLOPs to target"]
RACE_COLUMNS = ["method", "crossed", "time to target (mean)", "tokens to target (mean)", "FLOPs to target (mean)",
                "every seed reached it within", "mean loss there", "p (mean loss >= target)"]
DEFINITIONS = [
    "Loss is mean next-token cross-entropy (nats/token) on the held-out split, the same tokens for every run. "
    "Final losses are mean ± sample standard deviation over seeds.",
    "Target for seed s: the benchmark's --target-loss when it races to one, else the reference method's final eval "
    "loss with seed s. The cost to reach it (training seconds, tokens, model FLOPs) is read at the first eval at or "
    "below it, interpolated linearly between that eval and the one before.",
    "Speedup for seed s = the reference's cost to the target / the method's cost; the table shows the geometric mean "
    f"over seeds and a {CONFIDENCE:.0%} Student-t interval on the mean log speedup (n-1 degrees of freedom).",
    "Wall-clock intervals use the larger of the seeds' own variance and the run-to-run timing noise of the A/A "
    "comparison: the reference runs twice per seed (its repeat row), same seed and same work, so their difference "
    "in time is the machine's noise. Runs are interleaved: the order of methods rotates by one for each seed; "
    "with interleave \"steps\" (the default on CPU) the runs of a seed also train side by side, one step each in "
    "turn (its evaluation and checkpoint included), so no step is timed while another run computes and consecutive "
    "steps of every method meet the same load. Each command below says how its runs were interleaved.",
    "Step speed for seed s = the method's median tokens/s per training step / the reference's (same seed; each run's "
    "first step left out), with the same interval, floored by the A/A repeat's step-speed noise. It is what a step "
    "costs, whatever the method does to quality: a method that never reaches the target still gets a speed verdict.",
    "Verdict: faster if the whole interval lies above 1, slower if below 1, else no different (then the point "
    "figure means nothing on its own). Tokens and FLOPs to target are deterministic for a seed and independent of "
    "the hardware: a method that changes nothing gets exactly 1 on them.",
    f"Reaches the target: the method's final held-out loss is below the target at p < {SIGNIFICANCE}, by a one-sided "
    "one-sample t-test over seeds (n-1 degrees of freedom) of H0 'the mean of final loss minus the seed's target is at "
    "or above 0', the test the public GPT-2 speedrun accepts records by. Otherwise 'not shown' with its p; one seed "
    "cannot be tested: 'not shown (needs 2+ seeds)'. The cost-to-target speedups need every seed's curve to cross the "
    "target and otherwise say 'crossed in k/n seeds': a count of curves, not a claim about reaching the target.",
    "Final loss vs reference: per seed, the method's final held-out loss minus the reference's. 'better' or 'worse' "
    f"when a one-sided t-test over seeds shows it at p < {SIGNIFICANCE}; else 'equivalent' when two one-sided tests "
    f"(TOST) put the mean difference within ±{QUALITY_MARGIN} nats at p < {SIGNIFICANCE} (the larger of their two "
    "p-values is shown), else 'not shown': the seeds cannot tell. A quality that is 'no different' is only ever "
    "claimed as 'equivalent'.",
    "Model FLOPs: 6 x parameters + 12 x layers x width x sequence length per token (forward and backward), on the "
    "model as converted by the method, at each batch's actual sequence length; added up over the steps.",
    "Training time counts training steps only (evaluation and checkpointing excluded). tokens/s per step is each "
    "step's tokens / its time over all runs of the method (each run's first step left out).",
    "Unigram and bigram references: held-out loss of an add-one unigram and an interpolated Kneser-Ney bigram model "
    "estimated on the training split (whole held-out split). A model above the unigram line has not learned more "
    "than word frequencies.",
    "Race (--target-loss): each run stops at its first eval at or below the target, or at the budget (a cap). "
    "Evaluations grow dense near the target (every 1% of the steps once the last two evals, extrapolated, reach it "
    "within 1.5 regular intervals), so the crossing is bracketed within 1% of the steps. The record is the mean cost "
    "over seeds; its length is the most tokens any seed needed, and p is a one-sided t-test over seeds of H0 'the mean "
    "held-out loss after that many tokens is at or above the target', the test the public GPT-2 speedrun judges "
    "records by (p < 0.01 there). A run that stopped earlier counts its last eval (conservative: its loss was still "
    "falling).",
    "Peak memory: CUDA max allocated on a GPU; on CPU the process's peak resident set size. Both count from the end "
    "of the run's first (warmup) step.",
]
TUNING_DEFINITION = (
    "Tuning (--tune): before the verdict seeds, every method, the reference included, trains once at each point of "
    "the grid (the product of the tuned keys that apply to it: ALGO.OPTION applies to the methods with ALGO) on the "
    "tuning seed, the one before the first verdict seed; the i-th points of all methods train side by side like a "
    "seed's runs. A method's best point is the one with the lowest final held-out loss there (a run that diverged or ran "
    "out of memory loses only its own point; a run that failed for another reason is retried by the next run of "
    "the command), and all its verdict runs use it, so every verdict compares a method at its best with the "
    "reference at its best. A best value at the lowest or highest value of a numeric key's grid is flagged: the "
    "optimum may lie beyond it. Tuning runs are in no verdict; the budget they cost is stated. They may have trained on "
    "another machine than the verdict runs: the point is chosen by held-out loss, which the machine does not change.")
LADDER_DEFINITION = (
    "Across sizes (bench --models): the same comparison on each model. Per method and axis, a line through "
    "ln(speedup) against log10(non-embedding parameters), by weighted least squares with weights 1/se² (se: the "
    "standard error of a size's mean log speedup, read off its interval). The slope is the change in ln(speedup) per "
    f"10x parameters, with a {CONFIDENCE:.0%} t interval at the fewest seeds' degrees of freedom: grows if the whole "
    "interval lies above 0, shrinks if below, else holds. Sizes that ran on different machines get lines on tokens "
    "and FLOPs only: wall-clock and step speed also depend on the machine.")


def build_report(folders: list[Path], out: Path, allow_mixed: bool = False) -> list[Group]:
    """Read results.json from each folder, write plots, report.md and report.html into `out`."""
    out = Path(out)
    # Named relative to the report, so run folders in it are links that work from the report.
    sources = [(os.path.relpath(folder, out), load_results(folder)) for folder in folders]
    groups = group_results(sources, allow_mixed=allow_mixed)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    summaries = [summarize(group) for group in groups]
    outcomes = [group_outcomes(group) for group in groups]
    found = ladders(groups, summaries)
    plots: list[tuple[str, str]] = []
    if any(group.runs for group in groups):
        for axis, name in (("wall_s", "loss_vs_time.png"), ("tokens", "loss_vs_tokens.png"), ("flops", "loss_vs_flops.png")):
            plot_curves(groups, axis, out / "plots" / name)
        plot_speedups(groups, summaries, out / "plots" / "speedups.png")
        plots += list(PLOTS.items())
    for key in dict.fromkeys(key for group in groups for key in group.settings.get("tune") or {}):
        name = f"tuning_{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.png"
        if plot_tuning(groups, outcomes, key, out / "plots" / name):
            plots.append((name, f"Tuning: each method's final held-out loss on the tuning seed against {key} (the other "
                                "tuned keys at the method's best; the chosen value ringed)"))
    for index, ladder in enumerate(found):
        name = "speedups_vs_size.png" if len(found) == 1 else f"speedups_vs_size_{index + 1}.png"
        plot_ladder(ladder, out / "plots" / name)
        plots.append((name, f"Speedup against model size ({machines_text(ladder)}): each size's speedup with its "
                            f"{CONFIDENCE:.0%} interval and the fitted line, per axis (log scales)"))
    headed = len(groups) > 1
    sections = [group_section(group, group_summaries, group_outcomes_, headed)
                for group, group_summaries, group_outcomes_ in zip(groups, summaries, outcomes)]
    sections += [ladder_section(ladder) for ladder in found]
    definitions = DEFINITIONS + ([TUNING_DEFINITION] if any(outcomes) else []) + ([LADDER_DEFINITION] if found else [])
    # A folder's tuning runs join each of its groups (one per device its verdict runs used): listed once.
    listed = {run.run_dir: run for group in groups for run in [*group.tuning_runs, *group.runs]}
    runs = [run_row(run) for run in listed.values()]
    title = _title(groups)
    warning = ("These folders differ in their settings (budget, data, model or batch); each is its own group "
               "below and speedups are only computed within a group." if is_mixed(groups) else None)
    write_atomic(out / "report.md", markdown(title, warning, sections, plots, definitions, runs))
    write_atomic(out / "report.html", html_page(title, warning, sections, [(name, caption, out / "plots" / name)
                                                                            for name, caption in plots], definitions, runs))
    return groups


def _title(groups: list[Group]) -> str:
    models = sorted({str(group.settings.get("model")) for group in groups})
    kind = "Sweep" if all(group.kind == "sweep" for group in groups) else "Benchmark"
    return f"{kind}: {', '.join(models)}"


def group_header(group: Group) -> list[tuple[str, str]]:
    """(label, text) lines stated above the group's tables: budget, hardware, data, references, versions."""
    first = group.runs[0] if group.runs else None
    settings = group.settings
    hardware = first.hardware if first else {}
    tokens = sorted({run.train["tokens"] for run in group.runs})

    def value(key: str) -> str:
        """The resolved value every run used, or 'varies' (a sweep's grid)."""
        values = {str(run.config.get(key)) for run in group.runs} or {str(settings.get(key))}
        return values.pop() if len(values) == 1 else "varies by method"

    batch = f"{value('batch_size')} × {value('seq_len')}"
    target = (f"race to held-out loss {group.target_loss} (budget {settings.get('max_duration')} is the cap)"
              if group.target_loss is not None else "each seed's reference final eval loss")
    lines = [
        ("Hardware", group.device + ("" if not hardware else (
            ("" if group.device.startswith("CPU") else f"; host CPU {hardware['cpu']} ({hardware['cpu_cores']} cores)")
            + f"; {hardware['torch_threads']} torch threads; {hardware['platform']}"))),
        ("Budget", f"{settings.get('max_duration')} per run (`{settings.get('model')}`), batch {batch} tokens, "
                   f"precision {value('precision')}; tokens trained per run: " + (", ".join(f"{t:,}" for t in tokens[:6]) or "-")
                   + (" ..." if len(tokens) > 6 else "")),
        ("Target", target),
        ("Data", f"{settings.get('data_name')} ({settings.get('data') or 'default corpus'}), "
                 f"{settings.get('train_tokens', 0):,} train tokens; eval: up to {value('eval_batches')} batches of {batch} "
                 f"held-out tokens every {value('eval_interval')}"),
        ("Recipe", f"LR {value('lr')}, warmup {value('warmup')}, {value('decay')} decay, dropout {value('dropout')}, "
                   f"weight decay {value('weight_decay')}"),
        ("Shared algorithms", ", ".join(str(a) for a in settings.get("algorithms") or []) or "none (baseline = plain training)"),
        ("Reference", f"{group.reference}; seeds {', '.join(str(s) for s in sorted({r.seed for r in group.runs}))}"),
    ]
    if group.settings.get("tune"):
        lines.append(("Tuning", tuning_text(group)))
    if group.references:
        lines.append(("Count-based references", reference_text(group)))
    if first:
        lines.append(("Versions", ", ".join(f"{name} {version}" for name, version in first.versions.items())))
    for command in group.commands:
        how = f", interleave: {command['interleave']}" if "interleave" in command else ""
        lines.append(("Command", f"`{command['command']}` ({command['started']}{how})"))
    if group.sources != ["."]:
        lines.append(("Results from", ", ".join(group.sources)))
    return lines


def tuning_text(group: Group) -> str:
    """The grid, the tuning seed and the budget the tuning cost each method."""
    grids = "; ".join(f"{key} over {', '.join(format_value(value) for value in values)}"
                      for key, values in group.settings["tune"].items())
    outcomes = group_outcomes(group)
    runs = {outcome.method: len(outcome.points) for outcome in outcomes}
    in_all = f"{sum(runs.values())} runs and {sum(outcome.tokens for outcome in outcomes):,} tokens in all"
    if len(set(runs.values())) == 1:
        budget = f"{next(iter(runs.values()))} runs per method (tokens per method: the Tuning table), {in_all}"
    else:
        budget = ("UNEQUAL, a key applies to some methods only: " + ", ".join(f"{method} {count} runs" for method, count
                                                                          in runs.items()) + f"; {in_all}")
    untuned = [method for method in group.methods if method not in runs and method not in group.repeats]
    return (f"{grids}, on seed {group.settings['tune_seed']} before the verdict seeds; each method's verdict runs use "
            f"its best point (lowest final held-out loss there). Budget: {budget}"
            + (f"; not tuned (no tuned key applies): {', '.join(untuned)}" if untuned else ""))


def reference_text(group: Group) -> str:
    unigram, bigram = group.references["unigram"], group.references["bigram"]
    text = f"unigram {unigram:.3f}, bigram {bigram:.3f} nats/token on the held-out split"
    runs = group.runs_of(group.reference)
    if runs:
        final = sum(run.final_eval_loss for run in runs) / len(runs)
        text += (f"; the reference ends at {final:.3f}, {unigram - final:+.2f} nats below the unigram"
                 if final < unigram else f"; the reference ends at {final:.3f}, ABOVE the unigram: it has not learned "
                 "more than word frequencies, so no quality verdict can be read from this benchmark")
    return text


def _stat(stat: Stat | None, digits: int, suffix: str = "", style: str = "f") -> str:
    """mean ± spread; style "e" for quantities spanning many magnitudes (FLOPs)."""
    if stat is None:
        return "-"
    number = f"{{:,.{digits}{style}}}" if style == "f" else f"{{:.{digits}{style}}}"
    return number.format(stat.mean) + suffix + (f" ± {number.format(stat.spread)}" if stat.spread is not None else "")


def interval_text(speedup: Speedup) -> str:
    """The point figure only ever with its interval."""
    return f"{speedup.point:.2f}× [{speedup.low:.2f}, {speedup.high:.2f}]"


def verdict_cell(speedup: Speedup) -> str:
    """'faster 1.21× [1.05, 1.39]', or the reason there is no verdict."""
    if speedup.point is None or speedup.low is None:
        return speedup.verdict
    return f"{speedup.verdict} {interval_text(speedup)}"


def verdict_row(summary: MethodSummary) -> list[str]:
    name = summary.method + (" (A/A)" if summary.repeat_of else "")
    seeds = str(len(summary.seeds)) + (f" ({summary.compared} compared)" if summary.compared < len(summary.seeds) else "")
    return [name, seeds, *(verdict_cell(summary.speedups[axis]) for axis in VERDICT_AXES)]


def quality_row(summary: MethodSummary) -> list[str]:
    """The loss statements, each a test: below the target, and against the reference."""
    name = summary.method + (" (A/A)" if summary.repeat_of else "")
    return [name, str(len(summary.seeds)), _stat(summary.final_loss, 4), attainment_cell(summary.attainment),
            quality_cell(summary.quality)]


def attainment_cell(test: LossTest) -> str:
    """'reached, p 0.003', 'not shown, p 0.2', or why there is no test."""
    return test.verdict if test.p_value is None else f"{test.verdict}, p {test.p_value:.2g}"


def quality_cell(test: LossTest) -> str:
    """'better by 0.120 nats, p 0.004', 'equivalent (+0.004 nats), p 0.002', 'not shown (+0.031 nats), p 0.4'."""
    if test.p_value is None:
        return test.verdict
    if test.verdict in (BETTER, WORSE):
        return f"{test.verdict} by {abs(test.mean_difference):.3f} nats, p {test.p_value:.2g}"
    return f"{test.verdict} ({test.mean_difference:+.3f} nats), {'TOST ' if test.verdict == NOT_SHOWN else ''}p {test.p_value:.2g}"


def summary_row(summary: MethodSummary) -> list[str]:
    memory = f"{summary.peak_memory_bytes / 2**20:,.0f} MiB" if summary.peak_memory_bytes else "-"
    spread = summary.step_tokens_per_s
    speed = f"{spread.median:,.0f} [{spread.p10:,.0f}-{spread.p90:,.0f}]" if spread else "-"
    costs = summary.cost_to_target
    if costs is None:
        crossed = crossed_text(summary.reached, summary.compared) if summary.compared else "no reference run"
        to_target = [crossed] * 3
    else:
        to_target = [_stat(costs["wall_s"], 1, " s"), _stat(costs["tokens"], 0), _stat(costs["flops"], 3, style="e")]
    return [summary.method, _stat(summary.final_loss, 4), speed, _stat(summary.wall_s, 1, " s"), memory, *to_target]


def race_row(record: RaceRecord) -> list[str]:
    reached = sum(cost is not None for cost in record.costs.values())
    mean = record.mean_cost
    costs = ([f"{mean['wall_s']:.1f} s", f"{mean['tokens']:,.0f}", f"{mean['flops']:.3e}"] if mean
             else ["not reached"] * 3)
    budget = "-" if record.budget_tokens is None else f"{record.budget_tokens:,.0f} tokens"
    loss = f"{sum(record.loss_at_budget) / len(record.loss_at_budget):.4f}" if record.loss_at_budget else "-"
    p_value = "-" if record.p_value is None else f"{record.p_value:.3g}"
    return [record.method, f"{reached}/{len(record.costs)} seeds", *costs, budget, loss, p_value]


def group_section(group: Group, summaries: list[MethodSummary], outcomes: list[TuningOutcome] = (),
                  headed: bool = False) -> dict:
    """`headed`: the report holds several groups (sizes, devices), so each gets a heading."""
    tables = [("Verdicts", VERDICT_COLUMNS, [verdict_row(s) for s in summaries]),
              ("Quality", QUALITY_COLUMNS, [quality_row(s) for s in summaries]),
              ("Runs by method", RUN_SUMMARY_COLUMNS, [summary_row(s) for s in summaries])]
    if group.target_loss is not None:
        tables.append(("Race to the target", RACE_COLUMNS, [race_row(r) for r in race_records(group)]))
    if outcomes:
        keys = list(group.settings["tune"])
        tables.append((f"Tuning (seed {group.settings['tune_seed']})", TUNING_COLUMNS,
                       [tuning_row(outcome) for outcome in outcomes]))
        tables.append(("Tuning runs", ["method", *keys, "final eval loss"],
                       [tuning_point_row(outcome, point, keys) for outcome in outcomes for point in outcome.points]))
    return {"heading": f"{group.settings.get('model')} on {group.device}" if headed else None,
            "header": group_header(group), "tables": tables, "noise": noise_text(summaries)}


TUNING_COLUMNS = ["method", "tuning runs", "tokens trained", "chosen", "final eval loss there", "edge of the grid"]


def tuning_row(outcome: TuningOutcome) -> list[str]:
    runs = f"{len(outcome.points)}" + (f" ({outcome.failed} failed)" if outcome.failed else "")
    if outcome.best is not None:
        chosen, loss = point_text(outcome.best), f"{outcome.best_loss:.4f}"
    elif not outcome.complete:
        chosen, loss = f"tuning: {outcome.settled} of {len(outcome.points)} runs done", "-"
    else:
        chosen, loss = "no point could train: no verdict runs", "-"
    return [outcome.method, runs, f"{outcome.tokens:,}", chosen, loss, edge_text(outcome) or "-"]


def tuning_point_row(outcome: TuningOutcome, point, keys: list[str]) -> list[str]:
    if point.failure is not None:
        result = point.failure  # what stopped it: "diverged: loss nan at step 12", "out of device memory"
    elif point.final_loss is None:
        result = "to run"
    else:
        result = f"{point.final_loss:.4f}" + (" (chosen)" if point.point == outcome.best else "")
    return [outcome.method, *(format_value(point.point[key]) if key in point.point else "-" for key in keys), result]


def ladder_section(ladder: Ladder) -> dict:
    """Each method's speedup per size and axis, and the fitted trend against parameters."""
    columns = ["method", "axis", *(f"{model} ({parameters / 1e6:.2f}M)" for model, parameters in
                                   zip(ladder.models, ladder.parameters)), "ln(speedup) per 10x parameters [95% CI]"]
    rows = [[method, AXIS_NAMES[axis], *("-" if speedup is None else verdict_cell(speedup)
                                         for speedup in ladder.speedups(method, axis)), ladder.trend_summary(method, axis)]
            for method in ladder.methods for axis in VERDICT_AXES]
    header = [("Models", ", ".join(f"{model} ({parameters:,} non-embedding parameters)"
                                   for model, parameters in zip(ladder.models, ladder.parameters)))]
    if len(ladder.devices) > 1:
        header.append(("Machines", "; ".join(f"{model} on {group.device}" for model, group in zip(ladder.models, ladder.groups))
                       + ". Each size's speedups are measured side by side on its machine; trends are fitted only "
                         "on the axes the machine does not change (tokens, FLOPs)"))
    return {"heading": f"Across sizes on {machines_text(ladder)}", "header": header,
            "tables": [("Speedup by model size", columns, rows)], "noise": None}


def machines_text(ladder: Ladder) -> str:
    return ladder.devices[0] if len(ladder.devices) == 1 else f"{len(ladder.devices)} machines"


def noise_text(summaries: list[MethodSummary]) -> str | None:
    repeats = [s for s in summaries if s.repeat_of]
    if not repeats or repeats[0].speedups["wall_s"].low is None:
        return None
    aa = repeats[0].speedups["wall_s"]
    return (f"Timing noise (A/A): the reference against its own repeat measured {interval_text(aa)} on wall-clock "
            f"over {aa.seeds} seeds; wall-clock differences inside that range are this machine's noise.")


def run_row(run) -> list[str]:
    algorithms = ", ".join(str(a) for a in run.config.get("algorithms") or []) or "none"
    return [run.method, str(run.seed), run.device, algorithms, f"{run.train['steps']:,}", f"{run.train['tokens']:,}",
            f"{run.train['wall_s']:.1f} s", f"{run.final_eval_loss:.4f}", run.finished_at, run.run_dir]


RUN_COLUMNS = ["method", "seed", "device", "algorithms", "steps", "tokens", "training time", "final eval loss",
               "finished", "run folder"]


def print_verdicts(groups: list[Group], console: Console) -> None:
    """The verdict table(s) on the console, as in the report, with each method's tuned choice and,
    for a size ladder, each method's trend."""
    summaries = [summarize(group) for group in groups]
    for group, group_summaries in zip(groups, summaries):
        title = f"{group.settings.get('model')} · {group.settings.get('max_duration')} · {group.device}"
        for kind, columns, row in (("", VERDICT_COLUMNS, verdict_row), (" · quality", QUALITY_COLUMNS, quality_row)):
            table = Table(title=title + kind)
            for column in columns:
                table.add_column(column, justify="right")
            for summary in group_summaries:
                table.add_row(*row(summary))
            console.print(table)
        for outcome in group_outcomes(group):
            if outcome.best is not None:
                flag = f" ({edge_text(outcome)})" if outcome.edges else ""
                console.print(f"tuned {outcome.method}: {point_text(outcome.best)}{flag}")
        for line in filter(None, [noise_text(group_summaries), group.references and reference_text(group)]):
            console.print(line)
    for ladder in ladders(groups, summaries):
        for method in ladder.methods:
            console.print(f"{method} across {', '.join(ladder.models)}: " + "; ".join(
                f"{AXIS_NAMES[axis]} {ladder.trend_summary(method, axis)}" for axis in VERDICT_AXES))


def markdown(title, warning, sections, plots: list[tuple[str, str]], definitions: list[str], runs) -> str:
    lines = [f"# {title}", "", f"_Built {datetime.datetime.now():%Y-%m-%d %H:%M} by `composerlite report`._", ""]
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    for section in sections:
        if section["heading"]:
            lines += [f"## {section['heading']}", ""]
        for label, text in section["header"]:
            lines.append(f"- **{label}:** {text}")
        lines.append("")
        for heading, columns, rows in section["tables"]:
            lines += [f"### {heading}", "", *_md_table(columns, rows), ""]
        if section["noise"]:
            lines += [section["noise"], ""]
    for name, caption in plots:
        lines += [f"![{caption}](plots/{name})", ""]
    lines += ["## How the numbers are computed", "", *(f"- {text}" for text in definitions), "",
              "## Runs", "", *_md_table(RUN_COLUMNS, runs), ""]
    return "\n".join(lines)


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda cell: cell.replace("|", "\\|")
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows)]


def html_page(title, warning, sections, plots: list[tuple[str, str, Path]], definitions: list[str], runs) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head>"
             f"<body><h1>{e(title)}</h1><p class='muted'>Built {datetime.datetime.now():%Y-%m-%d %H:%M} by "
             "<code>composerlite report</code>; self-contained (plots embedded).</p>"]
    if warning:
        parts.append(f"<p class='warning'><b>Warning:</b> {e(warning)}</p>")
    for section in sections:
        if section["heading"]:
            parts.append(f"<h2>{e(section['heading'])}</h2>")
        parts.append("<ul>" + "".join(f"<li><b>{e(label)}:</b> {_inline_code(text)}</li>"
                                      for label, text in section["header"]) + "</ul>")
        for heading, columns, rows in section["tables"]:
            parts.append(f"<h3>{e(heading)}</h3>" + _html_table(columns, rows))
        if section["noise"]:
            parts.append(f"<p>{e(section['noise'])}</p>")
    for name, caption, path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>How the numbers are computed</h2><ul>" + "".join(f"<li>{e(t)}</li>" for t in definitions) + "</ul>")
    parts.append("<h2>Runs</h2>" + _html_table(RUN_COLUMNS, runs) + "</body></html>")
    return "\n".join(parts)


def _inline_code(text: str) -> str:
    """Escape, turning `backquoted` spans into <code>."""
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{piece}</code>" if i % 2 else piece for i, piece in enumerate(pieces))


def _html_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code{background:#f3f3f3;padding:0 3px}
.muted{color:#777}.warning{background:#fff3cd;padding:0.5em}figure{margin:1em 0}img{max-width:100%}"""
