"""Per-step schedules: learning rate, weight decay, teacher momentum.

As in DINO, each schedule is an array with one value per optimizer step,
computed once from the config and indexed by the global step. Resuming at
step k only needs k; nothing about a scheduler object has to be saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cosine_schedule(start: float, end: float, steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """`steps` values: linear warmup_start -> start over `warmup_steps`, then cosine start -> end."""
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {steps}")
    warmup_steps = min(max(warmup_steps, 0), steps)
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    rest = steps - warmup_steps
    t = np.arange(rest) / max(rest - 1, 1)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))
    out = np.concatenate([warmup, cosine])
    assert len(out) == steps
    return out


@dataclass(frozen=True)
class Schedules:
    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.lr)

    @classmethod
    def build(cls, total_steps: int, peak_lr: float, min_lr: float, warmup_fraction: float,
              weight_decay: float, weight_decay_end: float, momentum: float, momentum_end: float) -> "Schedules":
        warmup_steps = int(round(warmup_fraction * total_steps))
        return cls(
            lr=cosine_schedule(peak_lr, min_lr, total_steps, warmup_steps),
            weight_decay=cosine_schedule(weight_decay, weight_decay_end, total_steps),
            momentum=cosine_schedule(momentum, momentum_end, total_steps),
        )

    def at(self, step: int) -> tuple[float, float, float]:
        """(lr, weight decay, teacher momentum) for optimizer step `step` (0-based)."""
        return float(self.lr[step]), float(self.weight_decay[step]), float(self.momentum[step])
