"""Finding algorithms by name: built-ins and installed plugins alike come from the
`composerlite.algorithms` entry-point group; a local file comes from `path/to/file.py:ClassName`.

An algorithm spec is `TARGET[:key=value,...]` where TARGET is a registered name or `FILE.py:Class`.
Values are read as YAML scalars (`0.5`, `true`, `null`, `text`) and validated by the algorithm's
pydantic `Options`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any

import pydantic
import yaml

from composerlite.algorithm import Algorithm, NoOptions
from composerlite.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "composerlite.algorithms"


@functools.cache
def registered_algorithms() -> dict[str, importlib.metadata.EntryPoint]:
    """name -> entry point. A name two installed packages both claim is kept out of the table
    (see `duplicate_registrations`), so `--algo` never picks one of them silently."""
    claims: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        claims.setdefault(entry.name, {})[entry.value] = entry  # one package seen twice on sys.path is one claim
    return {name: next(iter(by_value.values())) for name, by_value in claims.items() if len(by_value) == 1}


def duplicate_registrations() -> dict[str, list[str]]:
    """Names registered by more than one installed package, with the classes that claim them."""
    claims: dict[str, set[str]] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        claims.setdefault(entry.name, set()).add(entry.value)
    return {name: sorted(values) for name, values in claims.items() if len(values) > 1}


def algorithm_class(target: str) -> type[Algorithm]:
    """The Algorithm class for a registered name or a `file.py:ClassName` target."""
    if ".py:" in target:
        return _class_from_file(*target.rsplit(":", 1))
    if target.endswith(".py"):
        raise ConfigError(f"algorithm file '{target}' needs a class: {target}:ClassName")
    entry = registered_algorithms().get(target)
    if entry is None:
        claimed = duplicate_registrations().get(target)
        if claimed:
            raise ConfigError(f"algorithm '{target}' is registered by several installed packages ({', '.join(claimed)}); uninstall all but one")
        known = ", ".join(sorted(registered_algorithms())) or "none installed"
        raise ConfigError(f"unknown algorithm '{target}'; choose one of: {known} (or path/to/file.py:ClassName)")
    try:
        cls = entry.load()
    except Exception as error:  # a broken third-party plugin: name it, do not crash the CLI
        raise ConfigError(f"algorithm '{target}' ({entry.value}) failed to import: {type(error).__name__}: {error}") from None
    _check_is_algorithm(cls, target)
    return cls


def _class_from_file(path: str, class_name: str) -> type[Algorithm]:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"algorithm file not found: {path}")
    cls = getattr(_module_from_file(file), class_name, None)
    if cls is None:
        raise ConfigError(f"{path} defines no '{class_name}'")
    _check_is_algorithm(cls, f"{path}:{class_name}")
    return cls


@functools.cache
def _module_from_file(file: Path) -> types.ModuleType:
    """Import a plugin file once per process, so naming it twice gives the same class."""
    module_name = f"composerlite_plugin_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(f"cannot load {file}: {_where(error, file)}{type(error).__name__}: {error}") from None
    return module


def _where(error: Exception, file: Path) -> str:
    """'line N: ' for the deepest frame of the plugin file itself, so the user sees their line."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"line {error.lineno}: "
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if Path(frame.filename) == file]
    return f"line {lines[-1]}: " if lines else ""


def _check_is_algorithm(cls: Any, target: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ConfigError(f"'{target}' is not a composerlite Algorithm subclass")


# Options read from an `__init__` signature: unknown keys refused, any annotation accepted.
_SIGNATURE_CONFIG = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@functools.cache
def _init_options(cls: type[Algorithm]) -> tuple[type[pydantic.BaseModel] | None, type[pydantic.BaseModel] | None]:
    """(the model the registry validates options against before passing them to `cls`, or None;
    the model `Algorithm.__init__` validates the rest against, or None). Each `__init__` up the
    class tree is read for as long as it passes `**kwargs` on (as `super().__init__(**kwargs)` does):
    the parameters they name themselves are the registry's to validate (a Composer-style
    `__init__(self, a=1)`, or a subclass adding options to a built-in), and what reaches
    `Algorithm.__init__` is validated there by the declared `Options`. An `__init__` that forwards
    nothing but takes the declared `Options` as its arguments gets them validated by the registry."""
    fields: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        if klass is Algorithm:
            return _fields_model(cls, fields), cls.Options
        if klass is object:
            break
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # unresolvable annotations: accept any value, __init__ still checks
            hints = {}
        parameters = list(inspect.signature(init).parameters.values())[1:]  # past self
        for parameter in parameters:
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                default = ... if parameter.default is parameter.empty else parameter.default
                fields.setdefault(parameter.name, (hints.get(parameter.name, Any), default))  # the subclass's wins
        if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
            break
    if cls.Options is not NoOptions:
        return cls.Options, None
    return _fields_model(cls, fields), None


def _fields_model(cls: type[Algorithm], fields: dict[str, Any]) -> type[pydantic.BaseModel] | None:
    return pydantic.create_model(f"{cls.__name__}Options", __config__=_SIGNATURE_CONFIG, **fields) if fields else None


@functools.cache
def options_model(cls: type[Algorithm]) -> type[pydantic.BaseModel]:
    """Every option `cls(**options)` takes, as a pydantic model, for `composerlite list` and for
    checking option names: the declared `Options`, plus the options a Composer-style `__init__`
    names in its signature (a Composer algorithm ported by changing its imports, or a subclass that
    adds options and forwards `**kwargs` to its parent's)."""
    own, forwarded = _init_options(cls)
    if own is None or forwarded is None:
        return own or forwarded or NoOptions
    fields = {name: (field.annotation, field) for model in (forwarded, own) for name, field in model.model_fields.items()}
    return pydantic.create_model(f"{cls.__name__}Options", __config__=_SIGNATURE_CONFIG, **fields)


def option_names(model: type[pydantic.BaseModel]) -> set[str]:
    """The keys `model` accepts: its field names and their aliases (Composer's `min_seq_length`
    for seq_len_warmup's `min_seq_len`, say)."""
    names = set(model.model_fields)
    for field in model.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, pydantic.AliasChoices) else [alias]
        names.update(choice for choice in choices if isinstance(choice, str))
    return names


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`name:k=v,k2=v2` or `file.py:Class:k=v` -> (target, {k: v})."""
    if ".py:" in spec:
        path, rest = spec.split(".py:", 1)
        class_name, _, options_text = rest.partition(":")
        target = f"{path}.py:{class_name}"
    else:
        target, _, options_text = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _top_level_items(options_text))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"algorithm '{target}': option '{item}' is not key=value")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as error:
            problem = str(getattr(error, "problem", None) or error).splitlines()[0]
            raise ConfigError(f"algorithm '{target}': option {key.strip()}={value!r} is not a valid value ({problem})") from None
    return target, options


def _top_level_items(text: str) -> list[str]:
    """`text` split at the commas outside [...] and {...}, so `exclude=[a,b],k=1` is two options."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    return [*items, text[start:]]


def build_algorithm(target: str, options: dict[str, Any] | None = None) -> Algorithm:
    """The algorithm `target` names, built with `options`. Each option is validated once: those
    an `__init__` takes as its own arguments here (against its signature, or the declared `Options`
    it takes them as); the rest by the declared `Options` in `Algorithm.__init__`. Either way a bad one is a `ConfigError` naming the algorithm
    and the option; unknown keys are refused up front, even when a plugin's model would ignore them."""
    cls = algorithm_class(target)
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ConfigError(f"algorithm '{target}': options must be a mapping of key: value, got {options!r}")
    model = options_model(cls)
    for key in options:
        if key not in option_names(model):
            known = ", ".join(model.model_fields) or "none"
            raise ConfigError(f"algorithm '{target}': unknown option '{key}' (options: {known})")
    try:
        own, _ = _init_options(cls)
        if own is not None:
            keys = option_names(own)
            validated = own(**{key: value for key, value in options.items() if key in keys}).model_dump()
            options = {**{key: value for key, value in options.items() if key not in keys}, **validated}
        return cls(**options)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        option = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        where = f"option '{option}': " if option else ""  # a check across several options names none
        raise ConfigError(f"algorithm '{target}': {where}{message}") from None
    except ConfigError:
        raise  # a bundle's member refused its options: the message already names it
    except ValueError as error:  # an __init__ that checks its own arguments (Composer style)
        raise ConfigError(f"algorithm '{target}': {error}") from None
    except Exception as error:
        raise PluginError(f"algorithm '{target}' failed in __init__: {type(error).__name__}: {error}") from error


def build_from_spec(spec: str) -> Algorithm:
    return build_algorithm(*split_spec(spec))
