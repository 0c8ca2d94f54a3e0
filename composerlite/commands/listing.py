"""`composerlite list`: every model and every installed algorithm, with its options."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from composerlite.registry import registered_algorithms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def algorithm_rows() -> list[tuple[str, str, str]]:
    """(name, one-line description, options with defaults and help) for each installed algorithm."""
    rows = []
    for name, entry in sorted(registered_algorithms().items()):
        cls = entry.load()
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        options = "\n".join(
            f"{key}={field.default!r}  {field.description or ''}".rstrip()
            for key, field in cls.Options.model_fields.items()
        )
        rows.append((name, summary, options or "-"))
    return rows


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
