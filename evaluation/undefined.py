"""A metric that cannot be computed: NaN that remembers why.

Arithmetic on results (means, intervals, table formatting) keeps working with
NaN, so a metric that has no value stays a float: `undefined(reason)` is a NaN
carrying `reason`. The results files (`clasp.evaluation.results_json`) write
every NaN as `null` and put the reason beside it:

- a null metric `K` gets `K_reason` in the same object
  (`"map": null, "map_reason": "no query has a gallery match of another camera"`);
- a per-item map (one entry per attribute, part or group: `PerItem`) keeps only
  names and numbers, so code that iterates it never meets a string; the reason of
  its nulls is written once beside it, as `<map>_reason`.

A NaN nobody explained gets `NOT_COMPUTABLE`.
"""

from __future__ import annotations

import math
from typing import Iterable

NOT_COMPUTABLE = "not computable from this data"


class Undefined(float):
    """NaN with the reason it has no value."""

    reason: str

    def __new__(cls, reason: str) -> "Undefined":
        value = super().__new__(cls, "nan")
        value.reason = reason
        return value


def undefined(reason: str) -> float:
    return Undefined(reason)


def explain(value: float, reason: str) -> float:
    """`value` as a float, or `undefined(reason)` when it is NaN (keeps a reason already given)."""
    if isinstance(value, Undefined):
        return value
    value = float(value)
    return Undefined(reason) if math.isnan(value) else value


def reason_of(value: float) -> str:
    return getattr(value, "reason", NOT_COMPUTABLE)


class PerItem(dict):
    """{item name: metric}; its NaNs share one reason, written beside the map (see the module docstring)."""

    def __init__(self, names: Iterable[str], values: Iterable[float], reason: str) -> None:
        super().__init__((name, explain(value, reason)) for name, value in zip(names, values))
        self.reason = reason


def failure_line(metrics: dict, key: str, data: object, detail: str = "") -> str | None:
    """The one error line's text when the run's main metric `metrics[key]` has no value, else None."""
    value = metrics.get(key)
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        return None
    reason = metrics.get(f"{key}_reason") if value is None else reason_of(value)
    return f"{reason or NOT_COMPUTABLE}: {data}{detail}"
