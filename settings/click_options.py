"""Command-line options derived from declared settings: one `--flag` per setting, in field order.

Every option defaults to None ("not given"), so a command can layer flags over
a config file and the dataclass supplies the default; `--help` shows the
dataclass's default. Types, choices and bounds come from the declaration.
"""

from __future__ import annotations

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
    if info.required:
        kwargs.update(required=True, show_default=False)
    kwargs.update(extra)
    return click.option(info.option, info.name, **kwargs)


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


def given(params: dict[str, Any]) -> dict[str, Any]:
    """The options the command line gave (not None), Paths as text."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items() if v is not None}
