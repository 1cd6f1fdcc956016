"""Results files of `clasp eval`, `clasp eval-labels` and `clasp finetune`: strict JSON, never NaN.

A metric that cannot be computed (no positives in the test split, a part never
present, no query with a match) is NaN in Python; strict JSON has no NaN, so it
is written as null with the reason beside it (`clasp.evaluation.undefined`
gives the rule: `K_reason` beside a null `K`, `<map>_reason` beside a per-item
map holding nulls).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from clasp.evaluation.undefined import PerItem, reason_of
from clasp.common.durable import write_json_atomic


def _is_nan(value) -> bool:
    return isinstance(value, (float, np.floating)) and math.isnan(float(value))


def _first_nan(values) -> object | None:
    return next((v for v in values if _is_nan(v)), None)


def _jsonable_dict(obj: dict) -> dict:
    out = {}
    for key, value in obj.items():
        out[key] = jsonable(value)
        nan = _first_nan(value.values()) if isinstance(value, PerItem) else value if _is_nan(value) else None
        if nan is not None and f"{key}_reason" not in obj:
            out[f"{key}_reason"] = value.reason if isinstance(value, PerItem) else reason_of(nan)
    return out


def jsonable(obj):
    """`obj` with NumPy scalars and arrays as Python values, NaN as None and a reason beside each."""
    if isinstance(obj, PerItem):  # names and numbers only: its reason is written beside it
        return {key: jsonable(value) for key, value in obj.items()}
    if isinstance(obj, dict):
        return _jsonable_dict(obj)
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    return obj


def write_results(path: str | Path, results: dict) -> dict:
    """Write `jsonable(results)` atomically (a failed write leaves no half file); returns what was written."""
    written = jsonable(results)
    write_json_atomic(Path(path), written)
    return written
