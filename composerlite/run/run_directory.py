"""A run directory: what `train` writes and continues, and `evaluate_run`, `export_hf` and benchmarks
read. Local or an fsspec URL. Its layout, named here once:

    config.yaml          the resolved configuration under flat keys (`config_record`), which
                         `load_run_config` reads back, also from runs written before the settings had sections
    metrics.jsonl        one JSON record per line (the `jsonl` logger's); cut back to the checkpoint on resume
    checkpoints/baNNNNNNNN/  one folder per save, named by its step; what a folder holds, and
                         saving and loading it, is `composerlite.run.checkpoint`'s
    plugins/             copies of the plugin files the run's algorithms came from

This module creates a run directory (`prepare_run_dir`), finds a run and its checkpoints
(`find_run`, `find_checkpoints`, `newest_valid_checkpoint`), chooses the checkpoint a run continues
from (`checkpoint_to_resume`) and keeps the newest K (`prune_checkpoints`).

Plugin files: `train` copies each file an algorithm comes from (`--algo ./my_plugin.py:MyAlgo`) into
RUN_DIR/plugins/, and config.yaml names it there, relative to the run directory:
`{plugins/my_plugin.py:MyAlgo: {options}}`, so the run is evaluated and exported alike from any
working directory, or machine for a remote one. `run_algorithm_specs` turns those names back into
files this process imports: the run directory's own when it is local, else a copy in the local
cache. A plugin is copied alone: one that imports modules beside it needs them importable
(installed, or on PYTHONPATH) wherever the run is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from composerlite.errors import ConfigError
from composerlite.run.checkpoint import MANIFEST_FILE, CorruptCheckpoint, is_checkpoint, read_checkpoint
from composerlite.run.settings import SETTING_KEYS, RunConfig, algorithm_specs, validated
from composerlite.system.storage import Location, StorageError, location, remove_temporaries

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
PLUGINS_DIR = "plugins"
_CHECKPOINT_NAME = re.compile(r"^ba(\d{8,})$")


def checkpoint_folder(run_dir: Location, step: int) -> Location:
    """Where the checkpoint of `step` goes: RUN_DIR/checkpoints/baNNNNNNNN."""
    return run_dir.child(CHECKPOINTS_DIR, f"ba{step:08d}")


def run_dir_of(checkpoint: Location) -> Location:
    """The run directory a checkpoint folder is in."""
    return checkpoint.parent.parent


# -- writing ---------------------------------------------------------------------------------------


def config_record(config: RunConfig, world_size: int) -> dict[str, Any]:
    """What config.yaml holds: every setting under its flat key, each plugin algorithm named by its
    copy in the run directory, and the number of processes (a fact about the run, not a setting)."""
    return {**config.flat(), "algorithms": _stored_algorithms(config), "world_size": world_size}


def prepare_run_dir(run_dir: Location, config: RunConfig, record: dict[str, Any],
                    start_step: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's first writes (rank 0), once every check that can refuse the run has passed: create
    the run directory, failing now (not at the first checkpoint) if it is unwritable; in one being
    continued, remove what interrupted writes left and drop the metrics records past `start_step`
    (the resumed run writes them again; a fresh start, 0, keeps none); copy the plugin files; write
    config.yaml (`record`). Returns (the records kept, the leftovers removed)."""
    continuing = run_dir.exists()  # and, having passed `checkpoint_to_resume`, it is this run's
    _create_writable(run_dir)
    leftovers = [*remove_temporaries(run_dir), *(folder.url for folder in remove_unfinished(run_dir))] if continuing else []
    kept = truncate_metrics(run_dir.child(METRICS_FILE), start_step)
    _store_plugins(config, run_dir)  # before config.yaml, which names the copies
    run_dir.child(CONFIG_FILE).write_bytes(yaml.safe_dump(record, sort_keys=False).encode())
    return kept, leftovers


def _create_writable(run_dir: Location) -> None:
    try:
        run_dir.makedirs()
        probe = run_dir.child(".write-test")
        probe.write_bytes(b"")
        probe.remove()
    except StorageError:
        raise  # the store is down, not the path wrong: a runtime failure
    except OSError as error:
        raise ConfigError(f"cannot write to run directory {run_dir}: {error.strerror or error}") from None


def truncate_metrics(metrics: Location, step: int) -> list[dict[str, Any]]:
    """Drop records past `step`, so a resumed run's metrics.jsonl reads as one uninterrupted run;
    returns the records kept."""
    if not metrics.exists():
        return []
    kept = [line for line in metrics.read_bytes().decode().splitlines(keepends=True)
            if line.strip() and _record_step(line) <= step]
    metrics.write_bytes("".join(kept).encode())
    return [json.loads(line) for line in kept]


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return 1 << 62  # a line torn by a crash mid-write: past any checkpoint


# -- reading ---------------------------------------------------------------------------------------


def find_run(target: str) -> tuple[Location, Location]:
    """(run directory, checkpoint): a run directory's newest valid checkpoint, or one checkpoint
    folder inside a run directory. Local paths or fsspec URLs."""
    where = location(target)
    if is_checkpoint(where):
        return run_dir_of(where), where
    if not where.exists():
        raise ConfigError(f"run directory not found: {target}")
    if not where.child(CONFIG_FILE).exists():
        raise ConfigError(f"{target} is not a composerlite run directory (no {CONFIG_FILE})")
    checkpoint = newest_valid_checkpoint(where)
    if checkpoint is None:
        raise ConfigError(f"{target} has no valid checkpoint to evaluate")
    return where, checkpoint


def load_run_config(run_dir: Location) -> RunConfig:
    """The resolved configuration `train` wrote (model, algorithms and their options), as written:
    `run_algorithm_specs` makes its plugin files importable."""
    path = run_dir.child(CONFIG_FILE)
    if not path.exists():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE} to say which model and algorithms it used")
    try:
        values = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of options")
    # config.yaml also records facts about the run that are not settings (e.g. world_size).
    options = {key: value for key, value in values.items() if key in SETTING_KEYS}
    try:
        return validated(options)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


# -- continuing ------------------------------------------------------------------------------------


def checkpoint_to_resume(config: RunConfig, run_dir: Location) -> Location | None:
    """The checkpoint this run continues from (None: a fresh start): with `autoresume` the run
    directory's newest valid one, else `resume`'s. Refuses, reading only, a run directory that is a
    file, one that holds another run, and one whose every checkpoint is damaged (starting over there
    would rewrite the metrics the checkpoints belong to)."""
    if run_dir.is_file():
        raise ConfigError(f"`run_dir={run_dir}` is a file, not a folder")
    problems: list[str] = []
    resume, autoresume = config.checkpointing.resume, config.checkpointing.autoresume
    checkpoint = newest_valid_checkpoint(run_dir, problems) if autoresume else None
    if checkpoint is None and problems and complete_checkpoints(run_dir):
        raise ConfigError(f"`autoresume`: every checkpoint in {run_dir} is damaged (newest: {problems[0]}); nothing was "
                          "written. Continue from one with `resume=CHECKPOINT`, or start over in a new `run_dir`")
    for problem in problems:
        print(f"composerlite: skipping {problem}", file=sys.stderr)
    if checkpoint is None and resume:
        checkpoint = resolve_resume(resume)
    continuing = autoresume or (checkpoint is not None and run_dir_of(checkpoint).same_place(run_dir))
    if not continuing and (run_dir.child(METRICS_FILE).exists() or run_dir.child(CONFIG_FILE).exists()):
        branch = " (to branch from `resume`, give a new `run_dir`)" if resume else ""
        raise ConfigError(f"run directory {run_dir} already holds a run; choose another `run_dir`, "
                          f"or continue it with `autoresume`{branch}")
    if checkpoint is not None:
        check_same_model(checkpoint, config.model.name)
    return checkpoint


def resolve_resume(target: str) -> Location:
    """`resume` takes a checkpoint folder (verified now, before the run writes anything) or a run
    directory (its newest valid checkpoint). Unlike `find_run` it needs no config.yaml: the
    checkpoint may come from anywhere."""
    where = location(target)
    if is_checkpoint(where):
        read_checkpoint(where)
        return where
    if not where.exists():
        raise ConfigError(f"`resume={target}`: no such checkpoint or run directory")
    newest = newest_valid_checkpoint(where)
    if newest is None:
        raise ConfigError(f"`resume={target}`: no valid checkpoint in it")
    return newest


def check_same_model(checkpoint: Location, model: str) -> None:
    """Compare the checkpoint's run config with this one (weights are checked by shape, and the
    algorithms by name, once the model is built)."""
    saved_config = run_dir_of(checkpoint).child(CONFIG_FILE)
    if saved_config.exists():
        saved_model = (yaml.safe_load(saved_config.read_bytes()) or {}).get("model")
        if saved_model and saved_model != model:
            raise ConfigError(f"checkpoint {checkpoint} is a {saved_model} run; this run is {model}: pass `model={saved_model}`")


# -- the checkpoints folder ------------------------------------------------------------------------


def find_checkpoints(run_dir: Location) -> list[Location]:
    """Checkpoint folders under `run_dir/checkpoints`, oldest first (by step, not by name)."""
    root = run_dir.child(CHECKPOINTS_DIR)
    names = [name for name in root.listdir() if _CHECKPOINT_NAME.match(name)]
    return [root.child(name) for name in sorted(names, key=lambda name: int(_CHECKPOINT_NAME.match(name)[1]))]


def complete_checkpoints(run_dir: Location) -> list[Location]:
    """Checkpoint folders that have a manifest (finished saves, damaged or not), oldest first."""
    return [folder for folder in find_checkpoints(run_dir) if folder.child(MANIFEST_FILE).exists()]


def newest_valid_checkpoint(run_dir: Location, problems: list[str] | None = None) -> Location | None:
    """The newest checkpoint that verifies; each newer broken one is skipped, and reported on stderr
    or, when the caller passes a `problems` list, added to it (newest first)."""
    for folder in reversed(find_checkpoints(run_dir)):
        try:
            read_checkpoint(folder)
        except CorruptCheckpoint as problem:
            if problems is None:
                print(f"composerlite: skipping {problem}", file=sys.stderr)
            else:
                problems.append(str(problem))
            continue
        return folder
    return None


def prune_checkpoints(run_dir: Location, keep: int) -> list[Location]:
    """Delete all but the newest `keep` complete checkpoints (rank 0 only); returns what was deleted.
    Unfinished folders are left for `find_checkpoints` to report; only complete ones count toward `keep`."""
    complete = complete_checkpoints(run_dir)
    doomed = complete[:-keep] if keep > 0 else []
    for folder in doomed:
        folder.remove()
    return doomed


def remove_unfinished(run_dir: Location) -> list[Location]:
    """Delete checkpoint folders without a manifest (saves a kill interrupted; the resumed run
    writes them again when it gets there), for a run directory being continued (rank 0 only)."""
    unfinished = [folder for folder in find_checkpoints(run_dir) if not folder.child(MANIFEST_FILE).exists()]
    for folder in unfinished:
        folder.remove()
    return unfinished


# -- plugin copies ---------------------------------------------------------------------------------


def _plugin_copies(config: RunConfig) -> dict[Path, str]:
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


def _stored_algorithms(config: RunConfig) -> list[str | dict[str, Any]]:
    """The `algorithms` entries config.yaml records: each plugin file's target names its copy in
    the run directory, relative to it; the others are as given."""
    copies = _plugin_copies(config)
    entries: list[str | dict[str, Any]] = []
    for entry, (target, options) in zip(config.algorithms, algorithm_specs(config)):
        if ".py:" in target:
            path, class_name = target.rsplit(":", 1)
            entry = {f"{PLUGINS_DIR}/{copies[Path(path).expanduser().resolve()]}:{class_name}": options}
        entries.append(entry)
    return entries


def _store_plugins(config: RunConfig, run_dir: Location) -> None:
    """Copy the run's plugin files into RUN_DIR/plugins/ (a resumed run's copies are replaced by the
    files it ran with)."""
    copies = _plugin_copies(config)
    if copies:
        run_dir.child(PLUGINS_DIR).makedirs()
    for file, name in copies.items():
        run_dir.child(PLUGINS_DIR, name).write_bytes(file.read_bytes())


def run_algorithm_specs(config: RunConfig, run_dir: Location) -> list[tuple[str, dict[str, Any]]]:
    """The algorithms of `config` (read from `run_dir`'s config.yaml) as (target, options), plugin
    targets as files this process can import, whatever the working directory. (Runs from before the
    copies name their plugins as given then: relative to the directory they were started in.)"""
    specs = []
    for target, options in algorithm_specs(config):
        if target.startswith(f"{PLUGINS_DIR}/") and ".py:" in target:
            path, class_name = target.rsplit(":", 1)
            target = f"{_local_copy(run_dir.child(*path.split('/')))}:{class_name}"
        specs.append((target, options))
    return specs


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
