"""Command-line options derived from declared settings: one `--flag` per setting, in field order.

Every option defaults to None ("not given"), so a command can layer flags over
a config file and the dataclass supplies the default; `--help` shows the
dataclass's default. Types, choices, bounds and the parser of a text form
(`setting(parse=...)`, e.g. `--grid 16x8`) come from the declaration.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any, Callable, Collection

import click

from clasp.settings.fields import SettingInfo, settings_of


def click_type(info: SettingInfo):
    """The click type of a setting: its choices, its bounds, or its plain type."""
    if info.choices is not None:
        return click.Choice(info.choices)
    if info.kind is Path:
        return click.Path(path_type=Path)
    if info.kind in (int, float) and info.limits is None:
        return click.INT if info.kind is int else click.FLOAT
    if info.kind is int:
        low, high = info.limits
        return click.IntRange(int(low), None if math.isinf(high) else int(high))
    if info.kind is float:
        low, high = info.limits
        return click.FloatRange(low, high, min_open=info.open_low, max_open=info.open_high)
    return click.STRING


def option_for(info: SettingInfo, **extra: Any) -> Callable:
    """The click option of one setting; `extra` adds or replaces click arguments (e.g. a callback)."""
    kwargs: dict[str, Any] = dict(default=None, help=info.help, hidden=info.hidden, show_default=info.shown_default)
    if info.kind is bool:
        kwargs["is_flag"] = True
    else:
        kwargs["type"] = click_type(info)
        if info.metavar:
            kwargs["metavar"] = info.metavar
    if info.required:  # no default at all: click (8.2 and later) takes an explicit None for a given value
        del kwargs["default"]
        kwargs.update(required=True, show_default=False)
    if info.parse is not None:
        kwargs["callback"] = _parsing(info.parse)
    kwargs.update(extra)
    return click.option(info.option, info.name, **kwargs)


def _parsing(parse: Callable[[str], Any]) -> Callable:
    """A click callback applying a declared parser; its ValueError becomes the option's usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def click_options(cls: type, extra: dict[str, dict[str, Any]] | None = None,
                  names: Collection[str] | None = None) -> Callable:
    """A decorator adding the option of every command-line setting of `cls` (only those in `names`, when given)."""
    extra = extra or {}
    options = [option_for(info, **extra.get(info.name, {})) for info in settings_of(cls)
               if info.flag and (names is None or info.name in names)]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def config_from(cls: type, params: dict[str, Any], **fixed: Any) -> Any:
    """The config `cls` of what the command line gave (`fixed`: the command's arguments); the dataclass
    supplies every option left out."""
    return cls(**fixed, **{k: v for k, v in params.items() if v is not None})


def declared_options(module: str, name: str, extra: dict[str, dict[str, Any]] | None = None) -> Callable:
    """`click_options` of the config dataclass `name` of `module`, imported when the command is declared (the
    module must import no torch, numpy or h5py: `clasp --help` reads it)."""

    def decorate(func: Callable) -> Callable:
        cls = getattr(importlib.import_module(module), name)
        return click_options(cls, extra=extra)(func)

    return decorate


def given(params: dict[str, Any]) -> dict[str, Any]:
    """The options the command line gave (not None), Paths as text."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items() if v is not None}
