"""Reports: `report.md` (PNG plots beside it in plots/) and a self-contained `report.html` (the same
plots embedded as base64), built from result folders. Both come from the same rows, so they agree."""

from __future__ import annotations

import base64
import datetime
import html
import os
from pathlib import Path

from composerlite.bench.analysis import (Group, MethodSummary, Stat, group_results, is_mixed,
                                         summarize)
from composerlite.bench.plots import plot_curves, plot_pareto
from composerlite.bench.results import load_results, write_atomic

PLOTS = {
    "loss_vs_time.png": "Eval loss vs training wall-clock time",
    "loss_vs_tokens.png": "Eval loss vs tokens",
    "pareto.png": "Quality vs time: final eval loss against training time, with the Pareto frontier",
}
COLUMNS = ["method", "seeds", "final eval loss", "final ppl", "tokens/s", "training time",
           "peak memory", "time to reference loss", "tokens to reference loss", "speedup"]
DEFINITIONS = [
    "Loss is mean next-token cross-entropy (nats/token) on the held-out split, the same tokens for every run; "
    "ppl = exp(loss). Values are mean ± sample standard deviation over seeds (± from two seeds on).",
    "Training time counts training steps only (evaluation and checkpointing excluded); tokens/s is tokens "
    "trained / training time.",
    "Reference loss for seed s: the reference method's final eval loss with seed s. Time and tokens to reach it are "
    "read at the first eval where the loss is at or below it, interpolated linearly between that eval and the one "
    "before; a run already below it at its first eval is credited that eval's time.",
    "Speedup = reference's time to the reference loss / the method's time to it, per seed, then averaged "
    "(Composer's definition). A method that does not reach the reference loss with every seed has no speedup: "
    "the table says in how many seeds it got there.",
    "Peak memory: CUDA max allocated on a GPU; on CPU the process's peak resident set size. Both count from the end of the run's first (warmup) step.",
]


def build_report(folders: list[Path], out: Path, allow_mixed: bool = False) -> list[Group]:
    """Read results.json from each folder, write plots, report.md and report.html into `out`."""
    out = Path(out)
    # Named relative to the report, so run folders in it are links that work from the report.
    sources = [(os.path.relpath(folder, out), load_results(folder)) for folder in folders]
    groups = group_results(sources, allow_mixed=allow_mixed)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    summaries = [summarize(group) for group in groups]
    if any(group.runs for group in groups):
        plot_curves(groups, "wall_s", out / "plots" / "loss_vs_time.png")
        plot_curves(groups, "tokens", out / "plots" / "loss_vs_tokens.png")
        plot_pareto(groups, summaries, out / "plots" / "pareto.png")
    sections = [(group_header(group), [format_row(s) for s in group_summaries])
                for group, group_summaries in zip(groups, summaries)]
    runs = [run_row(group, run) for group in groups for run in group.runs]
    title = _title(groups)
    warning = ("These folders differ in their settings (budget, data, model or batch); each is its own group "
               "below and speedups are only computed within a group." if is_mixed(groups) else None)
    plots = [name for name in PLOTS if (out / "plots" / name).exists()]
    write_atomic(out / "report.md", markdown(title, warning, sections, plots, runs))
    write_atomic(out / "report.html", html_page(title, warning, sections, {name: out / "plots" / name for name in plots}, runs))
    return groups


def _title(groups: list[Group]) -> str:
    models = sorted({str(group.settings.get("model")) for group in groups})
    kind = "Sweep" if all(group.kind == "sweep" for group in groups) else "Benchmark"
    return f"{kind}: {', '.join(models)}"


def group_header(group: Group) -> list[tuple[str, str]]:
    """(label, text) lines stated above the group's table: budget, hardware, data, eval set, versions."""
    first = group.runs[0] if group.runs else None
    settings = group.settings
    hardware = first.hardware if first else {}
    tokens = sorted({run.train["tokens"] for run in group.runs})

    def value(key: str) -> str:
        """The resolved value every run used, or 'varies' (a sweep's grid)."""
        values = {str(run.config.get(key)) for run in group.runs} or {str(settings.get(key))}
        return values.pop() if len(values) == 1 else "varies by method"

    batch = f"{value('batch_size')} × {value('seq_len')}"
    lines = [
        ("Hardware", group.device + ("" if not hardware else (
            ("" if group.device.startswith("CPU") else f"; host CPU {hardware['cpu']} ({hardware['cpu_cores']} cores)")
            + f"; {hardware['torch_threads']} torch threads; {hardware['platform']}"))),
        ("Budget", f"{settings.get('max_duration')} per run (`{settings.get('model')}`), batch {batch} tokens, "
                   f"precision {value('precision')}; tokens trained per run: " + (", ".join(f"{t:,}" for t in tokens) or "-")),
        ("Data", f"{settings.get('data_name')} ({settings.get('data') or 'default corpus'}), "
                 f"{settings.get('train_tokens', 0):,} train tokens; eval: up to {value('eval_batches')} batches of {batch} "
                 f"held-out tokens every {value('eval_interval')}"),
        ("Recipe", f"LR {value('lr')}, warmup {value('warmup')}, {value('decay')} decay, dropout {value('dropout')}, "
                   f"weight decay {value('weight_decay')}"),
        ("Shared algorithms", ", ".join(str(a) for a in settings.get("algorithms") or []) or "none (baseline = plain training)"),
        ("Reference", f"{group.reference}; seeds {', '.join(str(s) for s in sorted({r.seed for r in group.runs}))}"),
    ]
    if first:
        lines.append(("Versions", ", ".join(f"{name} {version}" for name, version in first.versions.items())))
    for command in group.commands:
        lines.append(("Command", f"`{command['command']}` ({command['started']})"))
    if group.sources != ["."]:
        lines.append(("Results from", ", ".join(group.sources)))
    return lines


def _stat(stat: Stat | None, digits: int, suffix: str = "") -> str:
    if stat is None:
        return "-"
    text = f"{stat.mean:,.{digits}f}{suffix}"
    return text + (f" ± {stat.spread:,.{digits}f}" if stat.spread is not None else "")


def format_row(summary: MethodSummary) -> list[str]:
    if summary.compared == 0:
        to_target = tokens_to_target = speedup = "no reference run"
    elif summary.time_to_target is None:
        to_target = tokens_to_target = speedup = f"never reached ({summary.reached}/{summary.compared} seeds)"
    else:
        to_target = _stat(summary.time_to_target, 1, " s")
        tokens_to_target = _stat(summary.tokens_to_target, 0)
        speedup = _stat(summary.speedup, 2, "×")
    memory = f"{summary.peak_memory_bytes / 2**20:,.0f} MiB" if summary.peak_memory_bytes else "-"
    ppl_digits = 2 if summary.final_ppl.mean < 1000 else 0
    return [summary.method, str(len(summary.seeds)), _stat(summary.final_loss, 4), _stat(summary.final_ppl, ppl_digits),
            _stat(summary.tokens_per_s, 0), _stat(summary.wall_s, 1, " s"), memory, to_target, tokens_to_target, speedup]


def run_row(group: Group, run) -> list[str]:
    algorithms = ", ".join(str(a) for a in run.config.get("algorithms") or []) or "none"
    return [run.method, str(run.seed), group.device, algorithms, f"{run.train['steps']:,}", f"{run.train['tokens']:,}",
            f"{run.train['wall_s']:.1f} s", f"{run.final_eval_loss:.4f}", run.run_dir]


RUN_COLUMNS = ["method", "seed", "device", "algorithms", "steps", "tokens", "training time", "final eval loss", "run folder"]


def markdown(title, warning, sections, plots, runs) -> str:
    lines = [f"# {title}", "", f"_Built {datetime.datetime.now():%Y-%m-%d %H:%M} by `composerlite report`._", ""]
    if warning:
        lines += [f"> **Warning:** {warning}", ""]
    for header, rows in sections:
        for label, text in header:
            lines.append(f"- **{label}:** {text}")
        lines += ["", *_md_table(COLUMNS, rows), ""]
    for name in plots:
        lines += [f"![{PLOTS[name]}](plots/{name})", ""]
    lines += ["## How the numbers are computed", "", *(f"- {text}" for text in DEFINITIONS), "",
              "## Runs", "", *_md_table(RUN_COLUMNS, runs), ""]
    return "\n".join(lines)


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda cell: cell.replace("|", "\\|")
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows)]


def html_page(title, warning, sections, plots: dict[str, Path], runs) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head>"
             f"<body><h1>{e(title)}</h1><p class='muted'>Built {datetime.datetime.now():%Y-%m-%d %H:%M} by "
             "<code>composerlite report</code>; self-contained (plots embedded).</p>"]
    if warning:
        parts.append(f"<p class='warning'><b>Warning:</b> {e(warning)}</p>")
    for header, rows in sections:
        parts.append("<ul>" + "".join(f"<li><b>{e(label)}:</b> {_inline_code(text)}</li>" for label, text in header) + "</ul>")
        parts.append(_html_table(COLUMNS, rows))
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{e(PLOTS[name])}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(PLOTS[name])}</figcaption></figure>")
    parts.append("<h2>How the numbers are computed</h2><ul>" + "".join(f"<li>{e(t)}</li>" for t in DEFINITIONS) + "</ul>")
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


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code{background:#f3f3f3;padding:0 3px}
.muted{color:#777}.warning{background:#fff3cd;padding:0.5em}figure{margin:1em 0}img{max-width:100%}"""
