"""Results files of `clasp eval` and `clasp eval-labels`: plain JSON, NaN written as null.

A metric that cannot be computed (no positives in the test split, a part never
present) is NaN in Python; strict JSON has no NaN, so readers get null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def jsonable(obj):
    """`obj` with NumPy scalars and arrays as Python values and NaN as None."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    return obj


def write_results(path: str | Path, results: dict) -> None:
    """Through a temporary file and a rename: a failed write (disk full) leaves no half file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(jsonable(results), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
