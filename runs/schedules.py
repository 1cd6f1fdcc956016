"""Per-step schedules (learning rate, weight decay, teacher momentum), DINO style, for every training command.

Each schedule is an array with one value per optimizer step, computed once from the config and indexed by
the global step (0-based). Resuming at step k only needs k; nothing about a scheduler object is saved.

Both shapes start with DINO's linear warm-up `np.linspace(warmup_start, peak, warmup_steps)`, which reaches
`peak` on its last step; over the remaining n steps (i = 0 .. n-1):

- cosine (`cosine_schedule`, DINO's `utils.cosine_scheduler`): `end + (peak - end) / 2 * (1 + cos(pi i / n))`,
  which starts at `peak` and ends just above `end` (as DINO's does) rather than on it;
- step decay (`step_schedule`): `peak * gamma ** m`, m the number of milestones (fractions of all steps,
  as step numbers `round(f * steps)`) at or before the step.

Invariant: `len(schedule) == steps` and every value is finite; `clasp pretrain`, `clasp finetune` and
`clasp train-clip` all take their learning rate from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SHAPES = ("cosine", "step")


def _warmup(peak: float, steps: int, warmup_steps: int, warmup_start: float) -> tuple[np.ndarray, int]:
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {steps}")
    warmup_steps = min(max(warmup_steps, 0), steps)
    return np.linspace(warmup_start, peak, warmup_steps), steps - warmup_steps


def cosine_schedule(start: float, end: float, steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """`steps` values of DINO's `utils.cosine_scheduler`: warm-up to `start`, then cosine towards `end`."""
    warmup, rest = _warmup(start, steps, warmup_steps, warmup_start)
    i = np.arange(rest)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * i / max(rest, 1)))
    return np.concatenate([warmup, cosine])


def step_schedule(peak: float, steps: int, milestones: Sequence[float], gamma: float, warmup_steps: int = 0,
                  warmup_start: float = 0.0) -> np.ndarray:
    """`steps` values: warm-up to `peak`, then `peak` times `gamma` once per milestone (a fraction of `steps`)."""
    warmup, rest = _warmup(peak, steps, warmup_steps, warmup_start)
    at = np.round(np.asarray(sorted(milestones), dtype=np.float64) * steps)
    step_numbers = np.arange(steps - rest, steps)
    return np.concatenate([warmup, peak * gamma ** np.searchsorted(at, step_numbers, side="right")])


def lr_schedule(shape: str, steps: int, peak: float, warmup_fraction: float, min_lr: float = 0.0,
                milestones: Sequence[float] = (), gamma: float = 0.1) -> np.ndarray:
    """The learning rate of every step: `shape` cosine (to `min_lr`) or step; warm-up over a fraction of them."""
    warmup_steps = int(round(warmup_fraction * steps))
    if shape == "cosine":
        return cosine_schedule(peak, min_lr, steps, warmup_steps)
    if shape == "step":
        return step_schedule(peak, steps, milestones, gamma, warmup_steps)
    raise ValueError(f"unknown schedule {shape!r}; choose one of {', '.join(SHAPES)}")


@dataclass(frozen=True)
class Schedules:
    """DINO's three: learning rate (warm-up + cosine), weight decay and teacher momentum (cosine)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.lr)

    @classmethod
    def build(cls, total_steps: int, peak_lr: float, min_lr: float, warmup_fraction: float,
              weight_decay: float, weight_decay_end: float, momentum: float, momentum_end: float) -> "Schedules":
        return cls(
            lr=lr_schedule("cosine", total_steps, peak_lr, warmup_fraction, min_lr),
            weight_decay=cosine_schedule(weight_decay, weight_decay_end, total_steps),
            momentum=cosine_schedule(momentum, momentum_end, total_steps),
        )

    def at(self, step: int) -> tuple[float, float, float]:
        """(lr, weight decay, teacher momentum) for optimizer step `step` (0-based)."""
        return float(self.lr[step]), float(self.weight_decay[step]), float(self.momentum[step])
