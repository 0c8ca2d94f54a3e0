"""The layering the README promises: the command line is on top and nothing below it imports it;
the core never imports a specific algorithm, and an algorithm never imports another (a bundle
names its members as data and builds them through the registry)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACES = {"composerlite/cli.py", "composerlite/__main__.py"}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def python_files(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def test_nothing_below_the_cli_imports_it():
    offenders = []
    for name, path in python_files("composerlite", "algorithms", "models", "benchmarks", "examples"):
        if name.startswith("composerlite/commands/") or name in FACES:
            continue
        offenders += [f"{name} imports {module}" for module in imports(path)
                      if module.startswith("composerlite.commands") or module == "composerlite.cli"]
    assert offenders == []


def test_the_core_imports_no_specific_algorithm():
    offenders = []
    for name, path in python_files("composerlite"):
        offenders += [f"{name} imports {module}" for module in imports(path)
                      if module.startswith("composerlite.algorithms.")]
    assert offenders == []


def test_an_algorithm_never_imports_another():
    offenders = []
    for name, path in python_files("algorithms"):
        own = name.split("/")[1]
        offenders += [f"{name} imports {module}" for module in imports(path)
                      if module.startswith("composerlite.algorithms.") and module.split(".")[2] != own]
    assert offenders == []
