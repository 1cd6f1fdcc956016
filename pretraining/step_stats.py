"""The numbers of one pre-training step as a metrics row, and the throughput window behind its speed.

The statistics arrive summed over the processes (`clasp.runs.step_stats.reduce_stats`, whose all-reduce
also carries the image count and the stop flag); a row holds their per-process means, the schedules'
values and the images per second since the last row.
"""

from __future__ import annotations

import time
from typing import Any

import torch

# The loss terms, in the order a non-finite one is reported.
LOSS_TERMS = ("dino", "part", "attribute", "balance", "loss")


def metrics_row(step: int, stats: dict[str, torch.Tensor], world: int, lr: float, wd: float, momentum: float,
                grad_norm, window: tuple[float, float, float]) -> dict[str, Any]:
    """One line of metrics.jsonl: per-process means of the statistics, the schedules' values, throughput."""
    seconds, waiting, images = window
    row: dict[str, Any] = {"step": step}
    for name, value in stats.items():
        if name.startswith("_"):
            continue
        mean = value / world
        row[name] = mean.tolist() if mean.ndim else float(mean)
    row.update({"lr": lr, "wd": wd, "momentum": momentum,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "data_wait": waiting / seconds if seconds > 0 else 0.0,
                "images_per_s": images / seconds if seconds > 0 else 0.0})
    return row


class ThroughputWindow:
    """Images and time spent waiting for data since the last metrics line."""

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.wait = 0.0
        self.images = 0.0

    def add_wait(self, seconds: float) -> None:
        self.wait += seconds

    def step_done(self, images: float) -> None:
        self.images += images

    def take(self) -> tuple[float, float, float]:
        """(seconds, waiting seconds, images) since the last take; starts a new window."""
        now = time.perf_counter()
        out = (now - self.t0, self.wait, self.images)
        self.t0, self.wait, self.images = now, 0.0, 0.0
        return out
