"""How every clasp report writes a fraction: in percent, `n/a` when there is no value.

`clasp inspect`, `clasp eval`, `clasp eval-labels` and the reproduce tables all
print shares and scores; one function keeps them alike.
"""

from __future__ import annotations

import math


def percent(value: float | None, width: int = 0, digits: int = 1) -> str:
    """`value` x 100 with `digits` decimals, right-aligned in `width` characters; `n/a` for None or NaN."""
    if value is None or math.isnan(value):
        return "n/a".rjust(width)
    return f"{100 * value:{width}.{digits}f}"
