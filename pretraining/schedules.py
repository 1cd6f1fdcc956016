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
    """`steps` values of DINO's `utils.cosine_scheduler`, counted in optimizer steps.

    A linear warm-up `np.linspace(warmup_start, start, warmup_steps)` that reaches
    `start` on its last step, then over the remaining n steps
    `end + (start - end) / 2 * (1 + cos(pi * i / n))` for i = 0 .. n-1, which ends
    just above `end` (as DINO's does) rather than on it.
    """
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {steps}")
    warmup_steps = min(max(warmup_steps, 0), steps)
    warmup = np.linspace(warmup_start, start, warmup_steps)
    rest = np.arange(steps - warmup_steps)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * rest / max(len(rest), 1)))
    return np.concatenate([warmup, cosine])


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
