"""`composerlite list`: every model, and every installed algorithm and logger with its options
(a logger whose optional extra is not installed says how to install it)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from composerlite.errors import ConfigError
from composerlite.registry import ALGORITHMS, LOGGERS, PluginKind, options_model, plugin_class, registered


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def algorithm_rows() -> list[tuple[str, str, str]]:
    """(name, one-line description, options with defaults and help) for each installed algorithm.
    A plugin that fails to import gets a row saying so instead of breaking the listing."""
    return [(name, *described) for name, _, described in _plugins(ALGORITHMS)]


def logger_rows() -> list[tuple[str, str, str, str]]:
    """(name, one-line description, options, whether what it needs is installed) for each logger."""
    rows = []
    for name, cls, described in _plugins(LOGGERS):
        if cls is None:
            installed = "-"
        else:
            installed = f"no: pip install \"{cls.install}\"" if cls.missing_modules() else "yes"
        rows.append((name, *described, installed))
    return rows


def _plugins(kind: PluginKind) -> list[tuple[str, type | None, tuple[str, str]]]:
    """(name, class or None, (description, options)) for each registered plugin of `kind`; one
    that fails to import has no class and says why."""
    plugins = []
    for name in sorted(registered(kind)):
        try:
            cls = plugin_class(kind, name)
        except ConfigError as error:
            plugins.append((name, None, (f"unavailable: {error}", "-")))
            continue
        plugins.append((name, cls, (summary(cls), options_text(options_model(cls)) or "-")))
    return plugins


def summary(cls: type) -> str:
    """The first paragraph of the class docstring, as one line: the description `list` shows."""
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def options_text(model) -> str:
    lines = []
    for key, field in model.model_fields.items():
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        lines.append(f"{key}={default}  {field.description or ''}".rstrip())
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from composerlite.models import FAMILY

    console = Console()
    models = Table(title="models")
    for column in ("name", "layers", "d_model", "d_ff", "heads"):
        models.add_column(column)
    for spec in FAMILY.values():
        models.add_row(spec.name, str(spec.n_layer), str(spec.d_model), str(spec.d_ff), str(spec.n_heads))
    console.print(models)
    algorithms = Table(title="algorithms (--algo NAME[:key=value,...])")
    for column in ("name", "what it does", "options (default)"):
        algorithms.add_column(column)
    for row in algorithm_rows():
        algorithms.add_row(*map(escape, row))  # plain text: `composerlite[wandb]` and `[a, b]` are not markup
    console.print(algorithms)
    loggers = Table(title="loggers (--logger NAME[:key=value,...]; console and jsonl are always on)")
    for column in ("name", "what it writes", "options (default)", "installed"):
        loggers.add_column(column)
    for row in logger_rows():
        loggers.add_row(*map(escape, row))
    console.print(loggers)
    return 0
