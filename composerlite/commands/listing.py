"""`composerlite list`: every model and every installed algorithm, with its options."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from composerlite.errors import ConfigError
from composerlite.registry import algorithm_class, options_model, registered_algorithms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def algorithm_rows() -> list[tuple[str, str, str]]:
    """(name, one-line description, options with defaults and help) for each installed algorithm.
    A plugin that fails to import gets a row saying so instead of breaking the listing."""
    rows = []
    for name in sorted(registered_algorithms()):
        try:
            cls = algorithm_class(name)
        except ConfigError as error:
            rows.append((name, f"unavailable: {error}", "-"))
            continue
        rows.append((name, summary(cls), options_text(options_model(cls)) or "-"))
    return rows


def summary(cls: type) -> str:
    """The first line of the class docstring: the one-line description `list` shows."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


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
        algorithms.add_row(*row)
    console.print(algorithms)
    return 0
