"""95 % intervals for probe scores, by bootstrap over test identities.

Images of one person are not independent samples (the same clothes, the same
attribute values), so resampling images would make intervals too narrow. Each
bootstrap round draws the test identities with replacement, takes every row of
each drawn identity (once per draw), and recomputes the score from those rows
exactly as the probe does (mA from the pooled predictions, mIoU from the summed
confusion matrices, mAP as the mean AP of the drawn identities' queries, the
gallery unchanged). The interval is the 2.5th-97.5th percentile of the rounds
(the percentile bootstrap); `value` is the score on all rows. Seeded: the same
rows give the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

ROUNDS = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def identity_bootstrap(identities: np.ndarray, statistic: Callable[[np.ndarray], float], rounds: int = ROUNDS,
                       seed: int = 0, level: float = LEVEL) -> Interval:
    """`statistic(rows)` on all rows, and its percentile interval over identity resamples."""
    identities = np.asarray(identities)
    if len(identities) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    unique, inverse = np.unique(identities, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(unique))]
    value = float(statistic(np.arange(len(identities))))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        picked = rng.integers(0, len(unique), len(unique))
        score = statistic(np.concatenate([rows_of[k] for k in picked]))
        if np.isfinite(score):
            draws.append(score)
    if not draws:
        return Interval(value, float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(value, float(low), float(high))
