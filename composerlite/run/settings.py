"""A run's settings, declared once: sections of typed fields, each with its default and its help.

    model          the family member and its dropout
    data           the corpus and the length of the sequences cut from it
    optimizer      AdamW's peak learning rate and weight decay
    schedule       the LR warmup and decay
    training       budget, batch, precision, device, seed, threads, the NaN policy, the card's recipe
    evaluation     when and how much to evaluate, and a held-out loss to stop at
    checkpointing  the run directory, checkpoint interval and retention, resuming
    parallelism    DDP or FSDP2 under torchrun
    algorithms, loggers   plugin entries: `name`, `name:key=value,...` or `{name: {key: value}}`

A YAML recipe takes the sections (`optimizer: {lr: 3e-3}`). Every setting also has a flat key, the
one mapping (`FLAT_KEYS`) that flags, `composerlite.train`'s mappings, older recipes and the records
(config.yaml, results.json) use (`lr: 3e-3`): the field's name, but for three settings

    flat key   section field
    model      model.name              under `model:`, a name is the flat key, a mapping the section
    data       data.source             likewise under `data:`
    parallel   parallelism.strategy

A flag is its flat key with dashes (`--max-duration`), except `--algo` and `--logger` (repeated).
A recipe may mix flat keys and sections; a setting given both ways is refused.

Everything is validated once, here, at the edge (a recipe, then flags over it), into frozen values;
a bad key or value is a one-line `ConfigError` naming it by its flat key, which the CLI turns into
exit code 2. `resolve` fills in the defaults that depend on the model, the device or the clock.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml

from composerlite.core.time import Time, parse_budget
from composerlite.errors import ConfigError
from composerlite.registry import split_spec
from composerlite.system.runtime import AUTO_PRECISION, check_device

# Runs that give a budget but no batch shape train 8 x 128; so does the CPU demo, a run with no
# budget at all, which finishes in a few minutes on 2 CPU cores. On a GPU the demo is longer.
SMALL_BATCH = {"batch_size": 8, "seq_len": 128}
CPU_DEMO = {"max_duration": "20ba", **SMALL_BATCH}
GPU_DEMO = {"max_duration": "1000ba", "batch_size": 32, "seq_len": 1024}
DEFAULT_LR = 1e-3  # for family members without a card (the card's members train at their card's)
DEFAULT_WARMUP = "0.05dur"


def _time(value: str, *, budget: bool = False) -> str:
    parse = parse_budget if budget else Time.parse
    try:
        time = parse(str(value))
    except ValueError as error:
        raise ValueError(str(error)) from None
    return str(time)


TimeText = Annotated[str, pydantic.AfterValidator(_time)]
Budget = Annotated[str, pydantic.AfterValidator(lambda value: _time(value, budget=True))]


def _microbatch_size(value: Any) -> Any:
    if value is None or value == "auto":
        return value
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a positive integer or 'auto', got {value!r}") from None
    if size <= 0:
        raise ValueError(f"must be a positive integer or 'auto', got {size}")
    return size


def _known_model(name: str) -> str:
    from composerlite.models import FAMILY

    if name not in FAMILY:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(FAMILY)}")
    return name


def _recordable(entries: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
    """Plugin options config.yaml can record, so the run can be resumed and evaluated from its folder."""
    try:
        yaml.safe_dump(entries)
    except yaml.representer.RepresenterError as error:
        raise ValueError(f"holds {error.args[1]!r}, which config.yaml cannot record: give options as YAML values "
                         "(an activation by name, say), or pass a Python object to a Trainer yourself") from None
    return entries


PluginEntries = Annotated[list[str | dict[str, Any]], pydantic.AfterValidator(_recordable)]


def setting(default: Any, help: str, *, flat: str | None = None, flag: str | None = None, metavar: str | None = None,
            **constraints: Any) -> Any:
    """A field of a section: its default and help (the flag's and the docs'), and where they differ
    from the field's name, its flat key and its flag."""
    extra = {key: value for key, value in (("flat", flat), ("flag", flag), ("metavar", metavar)) if value}
    if isinstance(default, list):
        return pydantic.Field(default_factory=list, description=help, json_schema_extra=extra, **constraints)
    return pydantic.Field(default, description=help, json_schema_extra=extra, **constraints)


class Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ModelConfig(Section):
    """The family member and its dropout."""

    name: Annotated[str, pydantic.AfterValidator(_known_model)] = setting(
        "gpt2-52m", "family member (see `composerlite models`)", flat="model")
    dropout: float | None = setting(
        None, "dropout probability (default: the model card's, 0 for members without a card)", ge=0, lt=1)


class DataConfig(Section):
    """The corpus and the sequences cut from it."""

    source: str | None = setting(
        None, "a prepared corpus (`composerlite data prepare`; a folder or URL), a text/jsonl/parquet file or folder, "
        "fsspec URL, or hf:NAME (default: the embedded corpus)", flat="data")
    seq_len: int | None = setting(
        None, "tokens per sequence, 2 at least: each position predicts the next (default 128; 1024 in the GPU demo; "
        "the card's with --card-recipe)", ge=2)


class OptimizerConfig(Section):
    """AdamW (betas 0.9, 0.95), weight decay on matrices only."""

    lr: float | None = setting(
        None, f"peak learning rate (default: the model card's; {DEFAULT_LR:g} for members without a card)", gt=0)
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay, on matrices only", ge=0)


class ScheduleConfig(Section):
    """Linear warmup, then a decay to zero."""

    warmup: TimeText | None = setting(
        None, f"LR warmup length: 90ba, 0.05dur, ... (default {DEFAULT_WARMUP}; the card's with --card-recipe)",
        metavar="TIME")
    decay: Literal["cosine", "linear", "constant"] = setting("cosine", "LR decay after warmup")


class TrainingConfig(Section):
    """How long, in what batches, where and how."""

    max_duration: Budget | None = setting(
        None, "training budget: 1000ba, 4.6e9tok, 2ep, 10min, ... (default: a short demo, 20 batches on a CPU, "
        "1000 on a GPU; the card's with --card-recipe)", metavar="TIME")
    batch_size: int | None = setting(
        None, "global batch size in sequences, split evenly over torchrun's processes (default 8; 32 in the GPU demo; "
        "the card's with --card-recipe)", gt=0)
    microbatch_size: Annotated[int | Literal["auto"] | None, pydantic.BeforeValidator(_microbatch_size)] = setting(
        None, "sequences per forward/backward (gradient accumulation), or 'auto': start at the whole batch and halve "
        "on GPU out-of-memory (default: the whole batch)", metavar="N|auto")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto", f"auto: {AUTO_PRECISION}")
    device: Annotated[str, pydantic.AfterValidator(check_device)] = setting("auto", "auto, cpu, cuda or cuda:N")
    seed: int = setting(17, "seed of the weights, the data order and dropout", ge=0)
    threads: int | None = setting(
        None, "intra-op CPU threads (default: the physical cores available, split over torchrun's processes on this "
        "machine; OMP_NUM_THREADS is not consulted): on a CPU the same seed, settings, data and thread count give "
        "the same losses bit for bit", gt=0)
    on_nan: Literal["stop", "skip"] = setting(
        "stop", "a non-finite loss: stop (exit 1, the last good checkpoint kept) or skip that step")
    card_recipe: bool = setting(
        False, "the model card's full recipe (batch 512x1024, its LR, warmup and step count) for what is not given")


class EvaluationConfig(Section):
    """Held-out evaluations."""

    eval_interval: TimeText | None = setting("0.25dur", "evaluate every 0.25dur, 100ba, ...", metavar="TIME")
    eval_batches: int = setting(16, "held-out batches per evaluation", gt=0)
    target_loss: float | None = setting(
        None, "stop at the first evaluation at or below this held-out loss (evaluations grow dense near it); "
        "the budget is then the cap", gt=0)


class CheckpointingConfig(Section):
    """The run directory, and checkpoints in it."""

    run_dir: str | None = setting(
        None, "where config.yaml, metrics.jsonl and checkpoints go: a path or fsspec URL (s3://bucket/run) "
        "(default: runs/MODEL-DATE-TIME)")
    save_interval: TimeText | None = setting(
        None, "checkpoint every 10ba, 0.5dur, 5min, ... (default: at the end only)", metavar="TIME")
    keep_checkpoints: int | None = setting(None, "keep only the newest K checkpoints (default: all)", gt=0, metavar="K")
    resume: str | None = setting(
        None, "continue exactly from a checkpoint folder, or from the newest valid checkpoint of a run directory",
        metavar="RUN_DIR_OR_CKPT")
    autoresume: bool = setting(
        False, "continue from the newest valid checkpoint in the run directory if there is one, else start fresh")


class ParallelismConfig(Section):
    """Several processes (torchrun)."""

    strategy: Literal["ddp", "fsdp"] = setting("ddp", "under torchrun: DDP or FSDP2 sharding", flat="parallel")


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
    "training": TrainingConfig, "evaluation": EvaluationConfig, "checkpointing": CheckpointingConfig,
    "parallelism": ParallelismConfig,
}
PLUGIN_LISTS = ("algorithms", "loggers")


def _flat_key(name: str, field: pydantic.fields.FieldInfo) -> str:
    return (field.json_schema_extra or {}).get("flat", name)


# The one mapping: flat key -> (section, field).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    _flat_key(name, field): (section, name)
    for section, cls in SECTIONS.items() for name, field in cls.model_fields.items()
}
# Every key a mapping of settings may hold: flat keys, plugin lists and sections.
SETTING_KEYS = frozenset({*FLAT_KEYS, *PLUGIN_LISTS, *SECTIONS})


class RunConfig(pydantic.BaseModel):
    """Everything `composerlite run` needs, in sections (see the module's docstring). Built from a
    mapping of sections, flat keys or both (`RunConfig.model_validate({"model": "gpt2-tiny", "lr": 1e-3})`);
    `flat()` is the flat view the records keep."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    checkpointing: CheckpointingConfig = CheckpointingConfig()
    parallelism: ParallelismConfig = ParallelismConfig()
    algorithms: PluginEntries = setting(
        [], "an algorithm, by name or path/to/file.py:Class, with options as name:key=value,...; repeat for several",
        flag="--algo", metavar="NAME[:k=v,...]")
    loggers: PluginEntries = setting(
        [], "also log to tensorboard, mlflow, wandb, or path/to/file.py:Class; repeat for several (console and jsonl, "
        "always on, take options the same way)", flag="--logger", metavar="NAME[:k=v,...]")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _sectioned(cls, values: Any) -> Any:
        return as_sections(values) if isinstance(values, Mapping) else values

    def flat(self) -> dict[str, Any]:
        """Every setting under its flat key, section by section, then the plugin lists: what
        config.yaml and a benchmark's results.json record."""
        dumped = self.model_dump()
        return {**{key: dumped[section][field] for key, (section, field) in FLAT_KEYS.items()},
                **{key: dumped[key] for key in PLUGIN_LISTS}}

    def updated(self, values: Mapping[str, Any]) -> RunConfig:
        """This configuration with `values` (flat keys or sections) over it, validated."""
        return validated(overlay(self.model_dump(), as_sections(values)))

    def is_set(self, key: str) -> bool:
        """Whether the setting under flat key `key` was given, not left to its default."""
        if key in PLUGIN_LISTS:
            return key in self.model_fields_set
        section, field = FLAT_KEYS[key]
        return field in getattr(self, section).model_fields_set


def as_sections(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values`, in flat keys, sections or both, as sections: {"optimizer": {"lr": 3e-3}, ...}.
    Keys that are neither are kept, for validation to name; a setting given twice is refused."""
    nested: dict[str, Any] = {}
    written_as: dict[tuple[str, str], str] = {}

    def put(section: str, field: str, value: Any, key: str) -> None:
        if (section, field) in written_as:
            raise ValueError(f"`{key}` and `{written_as[section, field]}` are the same setting; give it once")
        written_as[section, field] = key
        nested.setdefault(section, {})[field] = value

    for key, value in values.items():
        if key in SECTIONS and isinstance(value, (Mapping, Section)):
            fields = {name: getattr(value, name) for name in value.model_fields_set} if isinstance(value, Section) else value
            for field, field_value in fields.items():
                put(key, field, field_value, f"{key}.{field}")
        elif key in FLAT_KEYS:
            put(*FLAT_KEYS[key], value, key)
        elif key in SECTIONS:
            raise ValueError(f"`{key}` must be a mapping of its settings ({', '.join(SECTIONS[key].model_fields)}), "
                             f"not {value!r}")
        else:
            nested[key] = value
    return nested


def overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Sectioned `over` on top of sectioned `base`, section by section."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = {**merged[key], **value} if key in SECTIONS and isinstance(merged.get(key), dict) else value
    return merged


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


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    """A YAML recipe's mapping of settings, not yet validated."""
    path = Path(recipe)
    if not path.is_file():
        raise ConfigError(f"config file not found: {recipe}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {recipe} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {recipe} must hold a mapping of options")
    return values


def load_config(recipe: str | Path | None, overrides: Mapping[str, Any]) -> RunConfig:
    """The recipe (if any), with every override that is not None (nor an empty list) on top."""
    try:
        values = as_sections(read_recipe(recipe)) if recipe is not None else {}
        given = as_sections({key: value for key, value in overrides.items() if value is not None and value != []})
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return validated(overlay(values, given))


def validated(values: Mapping[str, Any] | RunConfig) -> RunConfig:
    """`values` (flat keys, sections or both) as a RunConfig; a bad one is a `ConfigError`."""
    if isinstance(values, RunConfig):
        return values
    try:
        return RunConfig.model_validate(values)
    except pydantic.ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


def describe_validation_error(error: pydantic.ValidationError) -> str:
    """The first problem in one line, naming the setting by its flat key."""
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    known = {(section, field): key for key, (section, field) in FLAT_KEYS.items()}
    if len(location) >= 2 and tuple(location[:2]) in known:
        location = [known[location[0], location[1]], *location[2:]]
    field = ".".join(location)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown option '{field}'"
    return f"invalid {field}: {message}" if field else message


def resolve(config: RunConfig) -> tuple[RunConfig, list[str]]:
    """`config` with every default filled in, as config.yaml records it, and notes explaining the
    defaults a user may not expect. The defaults that depend on something:

        budget and batch shape   the card's with `card_recipe`; without a budget a demo (`CPU_DEMO`,
                                 `GPU_DEMO`); else 8 x 128 (`SMALL_BATCH`)
        lr, dropout              the model card's, else `DEFAULT_LR` and 0
        warmup                   the card's with `card_recipe` (where it lists one), else `DEFAULT_WARMUP`
        precision, device        `runtime.resolve_runtime`
        threads                  `runtime.default_threads()`
        run_dir                  runs/MODEL-DATE-TIME
    """
    from composerlite.models import get_spec
    from composerlite.system.runtime import default_threads, resolve_runtime

    model, training = config.model, config.training
    card = get_spec(model.name).recipe
    runtime = resolve_runtime(training.device, training.precision)
    notes = []
    warmup = DEFAULT_WARMUP
    if training.card_recipe:
        if card is None:
            raise ConfigError(f"{model.name} has no card recipe; it is a test/demo configuration")
        shape = {"max_duration": f"{card.steps}ba", "batch_size": card.global_batch_size, "seq_len": card.seq_len}
        warmup = f"{card.warmup_batches}ba" if card.warmup_batches else warmup
        notes.append(f"card recipe: {card.steps} steps of {card.global_batch_size}x{card.seq_len} tokens")
    elif training.max_duration is None:
        shape = CPU_DEMO if runtime.device.type == "cpu" else GPU_DEMO
        notes.append(
            f"no `max_duration`: a short {'CPU demo' if runtime.device.type == 'cpu' else 'GPU run'} of "
            f"{shape['max_duration']} at batch {training.batch_size or shape['batch_size']} x "
            f"{config.data.seq_len or shape['seq_len']} tokens. The card's full recipe is `card_recipe=True`."
        )
    else:
        shape = SMALL_BATCH
    given = {"max_duration": training.max_duration, "batch_size": training.batch_size, "seq_len": config.data.seq_len}
    filled = {key: value if value is not None else shape.get(key) for key, value in given.items()}
    filled.update(
        lr=config.optimizer.lr or (card.lr if card else DEFAULT_LR),
        dropout=model.dropout if model.dropout is not None else (card.dropout if card else 0.0),
        warmup=config.schedule.warmup or warmup,
        precision=runtime.precision,
        device=str(runtime.device),
        threads=training.threads or default_threads(),
        run_dir=config.checkpointing.run_dir or f"runs/{model.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}",
    )
    return config.updated(filled), notes
