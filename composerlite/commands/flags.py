"""Settings as flags: every flag of `run`, `bench` and `sweep` that sets a run setting is generated
from its field in `composerlite.run.settings` (name, type, choices, help and default written there once),
and the library's messages, which name settings by flat key (`lr`, `max_duration=10ba`), are shown
here as the flags that set them (`--lr`, `--max-duration 10ba`)."""

from __future__ import annotations

import argparse
import re
import types
import typing
from typing import Any, Literal

import pydantic
from rich.console import Console

from composerlite.run.settings import FLAT_KEYS, PLUGIN_LISTS, SECTIONS, RunConfig


def _fields() -> dict[str, pydantic.fields.FieldInfo]:
    """flat key -> its field, sections first, then the plugin lists."""
    fields = {key: SECTIONS[section].model_fields[name] for key, (section, name) in FLAT_KEYS.items()}
    return {**fields, **{key: RunConfig.model_fields[key] for key in PLUGIN_LISTS}}


def _extra(field: pydantic.fields.FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


FIELDS = _fields()
# flat key -> its flag: the key with dashes unless the field names another (`algorithms`: `--algo`).
FLAGS = {key: _extra(field).get("flag", "--" + key.replace("_", "-")) for key, field in FIELDS.items()}


def _value_kinds(annotation: Any) -> list[Any]:
    """The kinds of value a field takes, without None and validators: [float], [str], [Literal[...]], ..."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _value_kinds(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [kind for arg in typing.get_args(annotation) for kind in _value_kinds(arg)]
    return [] if annotation is type(None) else [annotation]


def _argument(key: str, field: pydantic.fields.FieldInfo) -> dict[str, Any]:
    """`add_argument`'s keywords for the setting under flat key `key`. Every default is None (or an
    empty list): a flag that is not given leaves the recipe's value, and the field's own default, alone."""
    extra = _extra(field)
    help_text = field.description or ""
    default = field.get_default(call_default_factory=True)
    if default is not None and default is not False and default != [] and "default" not in help_text:
        help_text += f" (default {default})"
    keywords: dict[str, Any] = {"dest": key, "help": help_text.replace("%", "%%")}
    if "metavar" in extra:
        keywords["metavar"] = extra["metavar"]
    kinds = _value_kinds(field.annotation)
    if key in PLUGIN_LISTS:
        return {**keywords, "action": "append", "default": []}
    if kinds == [bool]:
        return {**keywords, "action": "store_true", "default": None}
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is Literal:
        return {**keywords, "choices": list(typing.get_args(kinds[0]))}
    if kinds in ([int], [float]):
        return {**keywords, "type": kinds[0]}
    return keywords  # text, or a union (`microbatch_size`: a number or 'auto') the field validates


def add_setting_flags(parser: argparse.ArgumentParser, *, leave_out: tuple[str, ...] = ()) -> None:
    """A flag for every run setting but those under the flat keys in `leave_out` (what a command
    decides itself, as `bench` decides each run's directory)."""
    unknown = set(leave_out) - set(FIELDS)
    assert not unknown, f"not settings: {unknown}"
    for key, field in FIELDS.items():
        if key not in leave_out:
            parser.add_argument(FLAGS[key], **_argument(key, field))


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line set, by flat key (flags not given are left out)."""
    return {key: value for key, value in vars(args).items()
            if key in FIELDS and value is not None and value != []}


_OPTION = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")


def as_flags(message: str) -> str:
    """The library's `key` and `key=value` as the flags that set them: `--key`, `--key value`."""

    def flag(match: re.Match) -> str:
        key, value = match.groups()
        name = FLAGS.get(key, "--" + key.replace("_", "-"))
        return name if value is None or value == "True" else f"{name} {value}"

    return _OPTION.sub(flag, message)


class _FlagConsole(Console):
    def print(self, *objects, **kwargs) -> None:
        super().print(*(as_flags(o) if isinstance(o, str) else o for o in objects), **kwargs)


def flag_console(quiet: bool = False) -> Console:
    """The CLI's console (stderr): the library's notes on it name options as flags."""
    return _FlagConsole(stderr=True, quiet=quiet)
