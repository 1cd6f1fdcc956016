"""`setting(...)`: one dataclass field with everything the CLI, config files, checks and docs need."""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

KEY = "clasp.setting"


@dataclass(frozen=True)
class SettingInfo:
    """One declared setting of a config dataclass."""

    name: str
    kind: type  # int, float, str, bool, Path or tuple (None removed)
    optional: bool  # None is a value (meaning: decided elsewhere)
    default: Any
    help: str
    shown: str | None = None  # the default as documented, where the value alone does not say it
    choices: tuple[str, ...] | None = None
    limits: tuple[float, float] | None = None  # inclusive bounds (the lower one open with `open_low`)
    open_low: bool = False
    open_high: bool = False
    flag: bool = True  # offered on the command line (else: config file only)
    hidden: bool = False  # a debugging flag, left out of --help and the command pages
    required: bool = False  # the command line must give it
    resumable: bool = False  # may differ between a checkpoint and --resume
    inherited: bool = True  # a resumed run starts from the saved value
    metavar: str | None = None
    flag_name: str | None = None  # the option's name where the field's would not read well ("-n": a short option)
    parse: Callable[[str], Any] | None = None  # text (a flag, a config-file string) -> value; ValueError says why

    @property
    def option(self) -> str:
        name = self.flag_name or self.name.replace("_", "-")
        return name if name.startswith("-") else "--" + name

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.required:
            return "required"
        if self.kind is bool:
            return "on" if self.default else "off"
        if self.default is None or self.default == "":
            return "none"
        if isinstance(self.default, tuple):
            return "x".join(str(v) for v in self.default)
        return str(self.default)


def setting(default: Any, help: str, **info: Any) -> Any:
    """A dataclass field declaring a setting; keyword arguments are `SettingInfo` fields."""
    return field(default=default, metadata={KEY: {"help": help, **info}})


def same_as(cls: type, name: str, default: Any = MISSING, note: str = "", **info: Any) -> Any:
    """A field declared like `cls`'s setting `name` (same default, help, choices, bounds).

    What one command must say otherwise is given here and nothing else: `default` (its own default), `note`
    (a sentence added to the help) and `SettingInfo` keywords (e.g. `resumable=True`).
    """
    original: Field = cls.__dataclass_fields__[name]
    declared = {**original.metadata[KEY], **info}
    if note:
        declared["help"] = f"{declared['help']} {note}"
    return field(default=original.default if default is MISSING else default, metadata={KEY: declared})


@functools.cache
def settings_of(cls: type) -> tuple[SettingInfo, ...]:
    """The declared settings of a config dataclass: its own in the order it declares them (a redeclared shared
    setting in its place), then those it inherits unchanged (`clasp.runs.settings.RunSettings`), so a command's
    options begin with what is particular to it."""
    hints = typing.get_type_hints(cls)
    own = inspect.get_annotations(cls)
    out = []
    for f in sorted(fields(cls), key=lambda f: f.name not in own):  # a stable sort: each part keeps its order
        if KEY not in f.metadata:
            continue
        kind, optional = _kind(hints[f.name])
        default = None if f.default is MISSING else f.default
        out.append(SettingInfo(f.name, kind, optional, default, **f.metadata[KEY]))
    return tuple(out)


def _kind(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _kind(rest[0])[0], type(None) in args
    origin = typing.get_origin(hint)
    return (origin or hint), False


def _number(value: float) -> str:
    """A bound or value as written in a config: integers in full, other numbers short."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def check_value(info: SettingInfo, value: Any) -> str | None:
    """Why `value` cannot be this setting (choices, finiteness, bounds), or None; one phrase naming it."""
    name = info.name
    if value is None:
        return None
    if info.choices is not None and value not in info.choices:
        options = ", ".join(info.choices[:-1]) + " or " + info.choices[-1] if len(info.choices) > 1 else info.choices[0]
        return f"unknown {name.replace('_', ' ')} {value!r}; {name} must be {options}"
    if info.limits is None:
        return None
    low, high = info.limits
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if value < low or (info.open_low and value == low):
        if low == 0:
            return f"{name} must {'be positive' if info.open_low else 'not be negative'}, got {_number(value)}"
        return f"{name} must be at least {_number(low)}, got {_number(value)}"
    if value > high or (info.open_high and value == high):
        return (f"{name} must be in {'(' if info.open_low else '['}{_number(low)}, {_number(high)}"
                f"{')' if info.open_high else ']'}, got {_number(value)}")
    return None


def first_problem(config: Any) -> tuple[SettingInfo, str] | None:
    """The first declared setting of a config object whose value `check_value` refuses, with why; None: all fit."""
    for info in settings_of(type(config)):
        problem = check_value(info, getattr(config, info.name))
        if problem is not None:
            return info, problem
    return None


def coerce(info: SettingInfo, value: Any, source: str) -> Any:
    """`value` from a config file or the command line as the setting's type (ints stay ints; '1e-4' from
    YAML becomes a float), or ValueError naming the source and key."""
    kind = info.kind
    if value is None:
        if info.optional:
            return None
        raise ValueError(f"{source}: setting {info.name!r} cannot be empty")
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(_wrong_type(info, value, source))
    if info.parse is not None and isinstance(value, str):
        try:
            return info.parse(value)
        except ValueError as exc:
            raise ValueError(f"{source}: setting {info.name!r}: {exc}") from None
    try:
        if kind is int and not (isinstance(value, float) and not value.is_integer()):
            return int(value)
        if kind is float:
            return float(value)
        if kind is bool and isinstance(value, bool):
            return value
        if kind is str and isinstance(value, (str, Path)):
            return str(value)
        if kind is Path and isinstance(value, (str, Path)):
            return Path(value)
        if kind is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(_wrong_type(info, value, source))


def _wrong_type(info: SettingInfo, value: Any, source: str) -> str:
    wanted = "an integer" if info.kind is int else info.kind.__name__
    return f"{source}: setting {info.name!r} must be {wanted}, got {value!r}"
