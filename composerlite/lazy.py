"""Module attributes imported on first use (PEP 562), so `import composerlite` and the command
line's usage checks do not pay for torch. The `lazy_loader` package does this too; these few lines
do not warrant a dependency."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_attributes(module: str, sources: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `sources[name]` (a module path) and returns its `name`."""

    def __getattr__(name: str) -> Any:
        if name in sources:
            return getattr(importlib.import_module(sources[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
