"""Finding plugins by name: algorithms and logger destinations. Built-ins and installed plugins
alike come from an entry-point group (`composerlite.algorithms`, `composerlite.loggers`); a local
file comes from `path/to/file.py:ClassName`.

A spec is `TARGET[:key=value,...]` where TARGET is a registered name or `FILE.py:Class`. Values are
read as YAML scalars (`0.5`, `true`, `null`, `text`) and validated by the plugin's pydantic
`Options` (or its `__init__` signature).
"""

from __future__ import annotations

import ast
import dataclasses
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

from composerlite.core.algorithm import Algorithm, NoOptions
from composerlite.core.composition import Declaration, check_composition
from composerlite.core.logger import LoggerDestination
from composerlite.errors import ConfigError, PluginError


@dataclasses.dataclass(frozen=True)
class PluginKind:
    """What the registry finds: `noun` is how messages name one, `group` the entry-point group it
    registers in, `base` the class every plugin of the kind subclasses."""

    noun: str
    group: str
    base: type


ALGORITHMS = PluginKind("algorithm", "composerlite.algorithms", Algorithm)
LOGGERS = PluginKind("logger", "composerlite.loggers", LoggerDestination)


@functools.cache
def registered(kind: PluginKind) -> dict[str, importlib.metadata.EntryPoint]:
    """name -> entry point. A name two installed packages both claim is kept out of the table
    (see `duplicate_registrations`), so `--algo` or `--logger` never picks one of them silently."""
    claims: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
    for entry in importlib.metadata.entry_points(group=kind.group):
        claims.setdefault(entry.name, {})[entry.value] = entry  # one package seen twice on sys.path is one claim
    return {name: next(iter(by_value.values())) for name, by_value in claims.items() if len(by_value) == 1}


def registered_algorithms() -> dict[str, importlib.metadata.EntryPoint]:
    return registered(ALGORITHMS)


def registered_loggers() -> dict[str, importlib.metadata.EntryPoint]:
    return registered(LOGGERS)


def duplicate_registrations(kind: PluginKind = ALGORITHMS) -> dict[str, list[str]]:
    """Names registered by more than one installed package, with the classes that claim them."""
    claims: dict[str, set[str]] = {}
    for entry in importlib.metadata.entry_points(group=kind.group):
        claims.setdefault(entry.name, set()).add(entry.value)
    return {name: sorted(values) for name, values in claims.items() if len(values) > 1}


def plugin_class(kind: PluginKind, target: str) -> type:
    """The plugin class for a registered name or a `file.py:ClassName` target."""
    if ".py:" in target:
        return _class_from_file(kind, *target.rsplit(":", 1))
    if target.endswith(".py"):
        raise ConfigError(f"{kind.noun} file '{target}' needs a class: {target}:ClassName")
    entry = registered(kind).get(target)
    if entry is None:
        claimed = duplicate_registrations(kind).get(target)
        if claimed:
            raise ConfigError(f"{kind.noun} '{target}' is registered by several installed packages ({', '.join(claimed)}); uninstall all but one")
        known = ", ".join(sorted(registered(kind))) or "none installed"
        raise ConfigError(f"unknown {kind.noun} '{target}'; choose one of: {known} (or path/to/file.py:ClassName)")
    try:
        cls = entry.load()
    except Exception as error:  # a broken third-party plugin: name it, do not crash the CLI
        raise ConfigError(f"{kind.noun} '{target}' ({entry.value}) failed to import: {type(error).__name__}: {error}") from None
    _check_is_plugin(kind, cls, target)
    return cls


def algorithm_class(target: str) -> type[Algorithm]:
    """The Algorithm class for a registered name or a `file.py:ClassName` target."""
    return plugin_class(ALGORITHMS, target)


def _class_from_file(kind: PluginKind, path: str, class_name: str) -> type:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"{kind.noun} file not found: {path}")
    cls = getattr(_module_from_file(file), class_name, None)
    if cls is None:
        raise ConfigError(f"{path} defines no '{class_name}'")
    _check_is_plugin(kind, cls, f"{path}:{class_name}")
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


def _check_is_plugin(kind: PluginKind, cls: Any, target: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, kind.base)):
        raise ConfigError(f"'{target}' is not a composerlite {kind.base.__name__} subclass")


def check_combination(targets: list[str]) -> None:
    """Every target known, every plugin file there, and the combination possible by composition's
    rules, for most algorithms without importing them (see `declaration`): the command line's
    answer to a mistyped or impossible `--algo` list comes in a fraction of a second."""
    check_composition([declaration(target) for target in targets])


def declaration(target: str) -> Declaration:
    """What `target`'s class declares about composition. Importing an algorithm imports torch and
    transformers (seconds), so the declaration is read from the class's source where that states
    it as literals on a direct subclass of Algorithm or ModelConverter (every built-in does);
    otherwise, and for every mistake in `target`, from the imported class. A declaration an
    instance changes in its `__init__` is caught when the run composes its built algorithms."""
    source = _class_source(target)
    declared = _literal_declaration(*source) if source else None
    if declared is None:
        cls = algorithm_class(target)
        declared = Declaration(cls.name or cls.__name__, tuple(cls.provides), tuple(cls.requires), tuple(cls.conflicts))
    return declared


def _class_source(target: str) -> tuple[Path, str] | None:
    """(source file, class name) of a `file.py:Class` target or a registered name; None when it
    cannot be told without importing."""
    if ".py:" in target:
        path, class_name = target.rsplit(":", 1)
        return Path(path).expanduser().resolve(), class_name
    entry = registered_algorithms().get(target)
    if entry is None or "." in entry.attr:
        return None
    try:
        spec = importlib.util.find_spec(entry.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin), entry.attr


_DECLARED = {"name": str, "provides": tuple, "requires": tuple, "conflicts": tuple}


def _literal_declaration(file: Path, class_name: str) -> Declaration | None:
    try:
        tree = ast.parse(file.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    if not classes:
        return None
    node = classes[-1]  # the definition the module ends with
    bases = [base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None) for base in node.bases]
    if not bases or not set(bases) <= {"Algorithm", "ModelConverter"} or node.keywords or node.decorator_list:
        return None  # inherited or computed declarations: only the class knows them
    values: dict[str, Any] = {"name": "", "provides": (), "requires": (), "conflicts": ()}
    for statement in node.body:
        if isinstance(statement, ast.Assign):
            names = statement.targets
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            names = [statement.target]
        else:
            continue
        for name in names:
            if isinstance(name, ast.Name) and name.id in values:
                try:
                    values[name.id] = ast.literal_eval(statement.value)
                except (ValueError, TypeError):  # not a literal
                    return None
    for key, kind in _DECLARED.items():
        value = values[key]
        if kind is tuple and isinstance(value, list):
            value = values[key] = tuple(value)
        if not isinstance(value, kind) or (kind is tuple and not all(isinstance(item, str) for item in value)):
            return None
    return Declaration(values["name"] or class_name, values["provides"], values["requires"], values["conflicts"])


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


def split_spec(spec: str, noun: str = "algorithm") -> tuple[str, dict[str, Any]]:
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
            raise ConfigError(f"{noun} '{target}': option '{item}' is not key=value")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as error:
            problem = str(getattr(error, "problem", None) or error).splitlines()[0]
            raise ConfigError(f"{noun} '{target}': option {key.strip()}={value!r} is not a valid value ({problem})") from None
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


def build_plugin(kind: PluginKind, target: str, options: dict[str, Any] | None = None) -> Any:
    """The plugin `target` names, built with `options`. Each option is validated once: those an
    `__init__` takes as its own arguments here (against its signature, or the declared `Options` it
    takes them as); for an algorithm, the rest by the declared `Options` in `Algorithm.__init__`.
    Either way a bad one is a `ConfigError` naming the plugin and the option; unknown keys are
    refused up front, even when a plugin's model would ignore them."""
    cls = plugin_class(kind, target)
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ConfigError(f"{kind.noun} '{target}': options must be a mapping of key: value, got {options!r}")
    model = options_model(cls)
    for key in options:
        if key not in option_names(model):
            known = ", ".join(model.model_fields) or "none"
            raise ConfigError(f"{kind.noun} '{target}': unknown option '{key}' (options: {known})")
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
        raise ConfigError(f"{kind.noun} '{target}': {where}{message}") from None
    except ValueError as error:  # an __init__ that checks its own arguments (Composer style)
        if isinstance(error, ConfigError) and str(error).startswith(f"{kind.noun} '{target}"):
            raise  # a bundle's member refused its options: the message already names it
        raise ConfigError(f"{kind.noun} '{target}': {error}") from None
    except Exception as error:
        raise PluginError(f"{kind.noun} '{target}' failed in __init__: {type(error).__name__}: {error}") from error


def build_algorithm(target: str, options: dict[str, Any] | None = None) -> Algorithm:
    return build_plugin(ALGORITHMS, target, options)


def build_logger(target: str, options: dict[str, Any] | None = None) -> LoggerDestination:
    return build_plugin(LOGGERS, target, options)


def build_from_spec(spec: str) -> Algorithm:
    return build_algorithm(*split_spec(spec))
