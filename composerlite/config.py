"""Run configuration: validated once, here, at the edge (YAML recipe, then CLI flags over it).

Everything past `RunConfig` is plain values; a bad model, algorithm, option or value is reported
as one line naming it (`ConfigError`), which the CLI turns into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from composerlite.errors import ConfigError
from composerlite.registry import split_spec
from composerlite.runtime import check_device
from composerlite.time import Time, TimeUnit


def _valid_time(value: str | None, field: str, allow_dur: bool = True) -> str | None:
    if value is None:
        return None
    try:
        time = Time.parse(str(value))
    except ValueError as error:
        raise ValueError(str(error)) from None
    if not allow_dur and time.unit is TimeUnit.DURATION:
        raise ValueError(f"{field} cannot be in 'dur' (it is what 'dur' is a fraction of)")
    if time.value == 0 and field == "max_duration":
        raise ValueError("max_duration must be greater than zero")
    return str(time)


class RunConfig(pydantic.BaseModel):
    """Everything `composerlite run` needs. Field names are the YAML keys; flags use dashes."""

    model_config = pydantic.ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "gpt2-52m"
    algorithms: list[str | dict[str, Any]] = pydantic.Field(default_factory=list)
    loggers: list[str | dict[str, Any]] = pydantic.Field(default_factory=list)  # besides console and metrics.jsonl
    data: str | None = None
    max_duration: str | None = None
    batch_size: int | None = pydantic.Field(None, gt=0)
    microbatch_size: int | Literal["auto"] | None = None  # "auto": halve on CUDA out-of-memory
    seq_len: int | None = pydantic.Field(None, ge=2, description="tokens per sequence (2 at least: each position predicts the next)")
    lr: float | None = pydantic.Field(None, gt=0)
    weight_decay: float = pydantic.Field(0.0, ge=0)
    warmup: str | None = None
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    dropout: float | None = pydantic.Field(None, ge=0, lt=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    seed: int = pydantic.Field(17, ge=0)
    run_dir: str | None = None
    save_interval: str | None = None
    eval_interval: str | None = "0.25dur"
    eval_batches: int = pydantic.Field(16, gt=0)
    target_loss: float | None = pydantic.Field(None, gt=0, description="stop at the first eval at or below this loss")
    card_recipe: bool = False
    resume: str | None = None  # a checkpoint folder or run directory (local or fsspec URL)
    autoresume: bool = False
    keep_checkpoints: int | None = pydantic.Field(None, gt=0)
    on_nan: Literal["stop", "skip"] = "stop"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    threads: int | None = pydantic.Field(None, gt=0, description="intra-op CPU threads (default: the physical cores, split over a launch's local processes)")

    @pydantic.field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from composerlite.models import FAMILY

        if name not in FAMILY:
            raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(FAMILY)}")
        return name

    @pydantic.field_validator("algorithms", "loggers")
    @classmethod
    def _recordable(cls, entries: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        """Options config.yaml can record, so the run can be resumed and evaluated from its folder."""
        try:
            yaml.safe_dump(entries)
        except yaml.representer.RepresenterError as error:
            raise ValueError(f"holds {error.args[1]!r}, which config.yaml cannot record: give options as YAML values "
                             "(an activation by name, say), or pass a Python object to a Trainer yourself") from None
        return entries

    @pydantic.field_validator("microbatch_size", mode="before")
    @classmethod
    def _microbatch_size(cls, value):
        if value is None or value == "auto":
            return value
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a positive integer or 'auto', got {value!r}") from None
        if size <= 0:
            raise ValueError(f"must be a positive integer or 'auto', got {size}")
        return size

    @pydantic.field_validator("max_duration")
    @classmethod
    def _max_duration(cls, value):
        return _valid_time(value, "max_duration", allow_dur=False)

    @pydantic.field_validator("save_interval", "eval_interval", "warmup")
    @classmethod
    def _interval(cls, value, info):
        return _valid_time(value, info.field_name)

    @pydantic.field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)


def plugin_specs(entries: list[str | dict[str, Any]], noun: str) -> list[tuple[str, dict[str, Any]]]:
    """`algorithms` or `loggers` entries (`name`, `name:k=v`, or `{name: {k: v}}`) as (target, options)."""
    specs = []
    for entry in entries:
        if isinstance(entry, dict):
            if len(entry) != 1:
                raise ConfigError(f"{noun} entry {entry} must be a single name: {{options}} mapping")
            (target, options), = entry.items()
            if options is not None and not isinstance(options, dict):
                raise ConfigError(f"{noun} '{target}': options must be a mapping of key: value, not {options!r}")
            specs.append((target, dict(options or {})))
        else:
            specs.append(split_spec(entry, noun))
    return specs


def algorithm_specs(config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    return plugin_specs(config.algorithms, "algorithm")


def load_config(recipe: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
    """The recipe YAML (if any), with every override that is not None applied on top."""
    values: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"config file not found: {recipe}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {recipe} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {recipe} must hold a mapping of options")
    for key, value in overrides.items():
        if value is not None and value != []:
            values[key] = value
    return validated(values)


def validated(values: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig(**values)
    except pydantic.ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


def describe_validation_error(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown option '{field}'"
    return f"invalid {field}: {message}" if field else message

