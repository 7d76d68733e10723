"""Settings declared once: a dataclass field carries its name, type, default, help and validation.

Each layer declares its own settings as a frozen dataclass whose fields are made with :func:`setting`
(``pipelines.options.RunSettings``, ``transforms.settings.TaskSettings``, ``inference.settings.ModelSettings``).
From those declarations alone come the command-line flags, the parsed and validated job config, the Flex
Template's parameters and the handler's arguments, so a setting cannot be spelled, defaulted or checked
differently in two places.

Beam keeps its options as plain values (they travel to workers as JSON), so flags are parsed as str, int, float
or bool by argparse; richer types (label lists, dates) are converted by :func:`convert`, in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_SPEC_KEY = "setting"

# Flex Template validation patterns for types that say enough on their own.
INTEGER = r"^-?[0-9]+$"
NON_NEGATIVE = r"^[0-9]+$"
NUMBER = r"^[0-9]+([.][0-9]+)?$"
BOOLEAN = r"^(true|false)$"
DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


@dataclass(frozen=True)
class SettingSpec:
    """What a setting declares besides its name, type and default."""

    help: str
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None  # a callable is read when used
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None  # the flag/parameter name when it differs from the field name
    off_flag: str | None = None  # a bool that defaults to True: the flag that turns it off (--no_calibration)
    metavar: str | None = None
    pattern: str | None = None  # the template's validation regex when the type alone does not say enough


def setting(default: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field declaring one setting; no default makes it required."""
    return dataclasses.field(default=default, metadata={_SPEC_KEY: SettingSpec(**spec)})


@dataclass(frozen=True)
class Declared:
    """One declared setting, resolved: what the flag, the template parameter and the validation need."""

    name: str  # the dataclass field
    kind: type  # str, int, float, bool, tuple (a comma-separated list) or datetime.date
    optional: bool  # None is a valid value
    default: Any
    spec: SettingSpec

    @property
    def flag(self) -> str:
        """The flag and template parameter: ``off_flag`` for a bool that defaults to True."""
        return self.spec.off_flag or self.spec.flag or self.name

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    def choices(self) -> tuple[str, ...] | None:
        choices = self.spec.choices
        return tuple(choices()) if callable(choices) else choices


def _kind(annotation: Any) -> tuple[type, bool]:
    """(base type, whether None is allowed) of an annotation such as ``int | None`` or ``tuple[str, ...]``."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"a setting must have one type (or that type | None), got {annotation}")
        return _kind(kinds[0])[0], True
    origin = typing.get_origin(annotation) or annotation
    if origin is typing.Literal:  # a closed set of strings (the setting's choices say which)
        return str, False
    if origin not in (str, int, float, bool, tuple, datetime.date):
        raise TypeError(f"settings of type {annotation} are not supported")
    return origin, False


def declared(group: type) -> list[Declared]:
    """The settings a dataclass declares, in field order."""
    hints = typing.get_type_hints(group)
    out = []
    for field in dataclasses.fields(group):
        spec = field.metadata.get(_SPEC_KEY)
        if spec is None:
            continue
        kind, optional = _kind(hints[field.name])
        out.append(Declared(field.name, kind, optional, field.default, spec))
    return out


def add_arguments(parser: argparse.ArgumentParser, group: type, aliases: dict[str, str] | None = None) -> None:
    """One flag per setting on ``parser`` (Beam's, or a plain one for --help). ``aliases`` shows a flag under
    another name (the CLI's --labels for Beam's --task_labels)."""
    aliases = aliases or {}
    for item in declared(group):
        name = "--" + aliases.get(item.flag, item.flag)
        if item.kind is bool:
            parser.add_argument(name, dest=item.flag, action="store_true", help=item.spec.help)
            continue
        parser.add_argument(
            name,
            dest=item.flag,
            type=item.kind if item.kind in (int, float) else str,
            default=None if item.required else _flag_default(item),
            choices=item.choices(),
            metavar=item.spec.metavar,
            help=item.spec.help,
        )


def _flag_default(item: Declared) -> Any:
    """The default as the flag holds it (lists as comma-separated text, dates as ISO text)."""
    if item.default in ("", ()):
        return None
    if item.kind is tuple:
        return ",".join(item.default)
    if item.kind is datetime.date and item.default is not None:
        return item.default.isoformat()
    return item.default


def convert(item: Declared, raw: Any) -> Any:
    """A flag's value as the setting's type; ValueError names the flag and says what to write."""
    if item.kind is bool:
        value = bool(raw)
        return not value if item.spec.off_flag else value
    if raw is None or (raw == "" and (item.optional or item.kind is tuple)):
        return item.default if item.default is not dataclasses.MISSING else ""
    if item.kind is tuple:
        return tuple(part.strip() for part in str(raw).split(",") if part.strip())
    if item.kind is datetime.date:
        return parse_date(item.flag, raw)
    return raw


def parse_date(flag: str, raw: Any) -> datetime.date:
    """An ISO date flag (``--run_date``); ValueError names the flag and the form it takes."""
    try:
        return datetime.date.fromisoformat(str(raw))
    except ValueError:
        raise ValueError(f"--{flag} must be a date like 2026-01-31, got {raw!r}") from None


def values_from(namespace: Any, group: type) -> dict[str, Any]:
    """Field values for ``group`` from parsed flags (an argparse namespace or Beam's options view)."""
    return {item.name: convert(item, getattr(namespace, item.flag, None)) for item in declared(group)}


def problems(obj: Any, group: type) -> list[str]:
    """What breaks the declared choices and bounds of ``group``'s settings on ``obj``."""
    found = []
    for item in declared(group):
        value = getattr(obj, item.name)
        flag = "--" + item.flag
        if item.required and value in (None, ""):
            found.append(f"{flag} is required: {item.spec.help}")
            continue
        if value is None:
            continue
        choices = item.choices()
        if choices is not None and value not in choices:
            found.append(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        if item.spec.minimum is not None and value < item.spec.minimum:
            found.append(f"{flag} must be >= {item.spec.minimum:g}, got {value}")
        if item.spec.maximum is not None and value > item.spec.maximum:
            found.append(f"{flag} must be <= {item.spec.maximum:g}, got {value}")
    return found


def raise_problems(found: list[str]) -> None:
    """One problem is one line (the CLI prints it as is); several are listed one per line."""
    if len(found) == 1:
        raise ValueError(f"invalid options: {found[0]}")
    if found:
        raise ValueError("invalid options:\n  " + "\n  ".join(found))


def pattern_for(item: Declared) -> str | None:
    """The Flex Template validation regex of a setting."""
    if item.spec.pattern is not None:
        return item.spec.pattern
    choices = item.choices()
    if choices is not None:
        return "^(" + "|".join(choices) + ")$"
    if item.kind is bool:
        return BOOLEAN
    if item.kind is int:
        return NON_NEGATIVE if (item.spec.minimum or 0) >= 0 else INTEGER
    if item.kind is float:
        return NUMBER
    if item.kind is datetime.date:
        return DATE
    return None


def default_of(group: type, name: str) -> Any:
    """The declared default of one setting, for types that take it without the whole group."""
    for field in dataclasses.fields(group):
        if field.name == name:
            return field.default
    raise KeyError(f"{group.__name__} declares no setting {name!r}")
