"""A run directory keeps the plugin files its algorithms came from (`--algo ./my_plugin.py:MyAlgo`),
so it is evaluated and exported alike from any working directory, or machine for a remote one.

`train` copies each file into RUN_DIR/plugins/ (`stored_algorithms`, `store_plugins`), and
config.yaml names it there, relative to the run directory: `{plugins/my_plugin.py:MyAlgo: {options}}`.
`run_algorithms` turns those names back into files this process imports: the run directory's own
when it is local, else a copy in the local cache. A plugin is copied alone: one that imports
modules beside it needs them importable (installed, or on PYTHONPATH) wherever the run is read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from composerlite.config import RunConfig, algorithm_specs
from composerlite.storage import Location

PLUGINS_DIR = "plugins"


def plugin_copies(config: RunConfig) -> dict[Path, str]:
    """Each plugin file the run's algorithms come from -> its name under RUN_DIR/plugins/ (the file's
    own name; a second file of the same name gets -2, -3, ...)."""
    copies: dict[Path, str] = {}
    for target, _ in algorithm_specs(config):
        if ".py:" not in target:
            continue
        file = Path(target.rsplit(":", 1)[0]).expanduser().resolve()
        if file not in copies:
            taken = set(copies.values())
            name, number = file.name, 2
            while name in taken:
                name, number = f"{file.stem}-{number}.py", number + 1
            copies[file] = name
    return copies


def stored_algorithms(config: RunConfig) -> list[str | dict[str, Any]]:
    """The `algorithms` entries config.yaml records: each plugin file's target names its copy in
    the run directory, relative to it; the others are as given."""
    copies = plugin_copies(config)
    entries: list[str | dict[str, Any]] = []
    for entry, (target, options) in zip(config.algorithms, algorithm_specs(config)):
        if ".py:" in target:
            path, class_name = target.rsplit(":", 1)
            entry = {f"{PLUGINS_DIR}/{copies[Path(path).expanduser().resolve()]}:{class_name}": options}
        entries.append(entry)
    return entries


def store_plugins(config: RunConfig, run_dir: Location) -> None:
    """Copy the run's plugin files into RUN_DIR/plugins/ (a resumed run's copies are replaced by the
    files it ran with)."""
    copies = plugin_copies(config)
    if copies:
        run_dir.child(PLUGINS_DIR).makedirs()
    for file, name in copies.items():
        run_dir.child(PLUGINS_DIR, name).write_bytes(file.read_bytes())


def run_algorithms(config: RunConfig, run_dir: Location) -> RunConfig:
    """`config` (read from `run_dir`'s config.yaml) with its plugin targets as files this process
    can import, whatever the working directory. (Runs from before the copies name their plugins as
    given then: relative to the directory they were started in.)"""
    entries: list[str | dict[str, Any]] = []
    for target, options in algorithm_specs(config):
        if target.startswith(f"{PLUGINS_DIR}/") and ".py:" in target:
            path, class_name = target.rsplit(":", 1)
            target = f"{_local_copy(run_dir.child(*path.split('/')))}:{class_name}"
        entries.append({target: options})
    return config.updated({"algorithms": entries})


def _local_copy(file: Location) -> Path:
    if file.is_local:
        return Path(file.path)
    data = file.read_bytes()
    cache = Path(os.environ.get("COMPOSERLITE_CACHE") or Path.home() / ".cache" / "composerlite")
    # Named by content: a cached copy is always the file's current text.
    local = cache / PLUGINS_DIR / hashlib.sha256(data).hexdigest()[:20] / file.name
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    return local
