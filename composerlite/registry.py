"""Finding algorithms by name: built-ins and installed plugins alike come from the
`composerlite.algorithms` entry-point group; a local file comes from `path/to/file.py:ClassName`.

An algorithm spec is `TARGET[:key=value,...]` where TARGET is a registered name or `FILE.py:Class`.
Values are read as YAML scalars (`0.5`, `true`, `null`, `text`) and validated by the algorithm's
pydantic `Options`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pydantic
import yaml

from composerlite.algorithm import Algorithm
from composerlite.errors import UsageError

ENTRY_POINT_GROUP = "composerlite.algorithms"


@functools.cache
def registered_algorithms() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def algorithm_class(target: str) -> type[Algorithm]:
    """The Algorithm class for a registered name or a `file.py:ClassName` target."""
    if ".py:" in target:
        return _class_from_file(*target.rsplit(":", 1))
    entry = registered_algorithms().get(target)
    if entry is None:
        known = ", ".join(sorted(registered_algorithms())) or "none installed"
        raise UsageError(f"unknown algorithm '{target}'; choose one of: {known} (or path/to/file.py:ClassName)")
    cls = entry.load()
    _check_is_algorithm(cls, target)
    return cls


def _class_from_file(path: str, class_name: str) -> type[Algorithm]:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise UsageError(f"algorithm file not found: {path}")
    module_name = f"composerlite_plugin_{file.stem}_{abs(hash(str(file)))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(f"{path} defines no '{class_name}'")
    _check_is_algorithm(cls, f"{path}:{class_name}")
    return cls


def _check_is_algorithm(cls: Any, target: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise UsageError(f"'{target}' is not a composerlite Algorithm subclass")


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`name:k=v,k2=v2` or `file.py:Class:k=v` -> (target, {k: v})."""
    if ".py:" in spec:
        path, rest = spec.split(".py:", 1)
        class_name, _, options_text = rest.partition(":")
        target = f"{path}.py:{class_name}"
    else:
        target, _, options_text = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in options_text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"algorithm '{target}': option '{item}' is not key=value")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return target, options


def validate_options(cls: type[Algorithm], target: str, options: dict[str, Any]) -> dict[str, Any]:
    try:
        return cls.Options(**options).model_dump()
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        option = ".".join(str(part) for part in first["loc"]) or "options"
        raise UsageError(f"algorithm '{target}': option '{option}': {first['msg']}") from None


def build_algorithm(target: str, options: dict[str, Any] | None = None) -> Algorithm:
    cls = algorithm_class(target)
    return cls(**validate_options(cls, target, options or {}))


def build_from_spec(spec: str) -> Algorithm:
    return build_algorithm(*split_spec(spec))
