"""The numbers of one optimizer step: summed over processes, checked, and written as a metrics row.

Every process sums its statistics with the others' in one all-reduce that also
carries the image count and the stop flag, so a non-finite loss on any process
is seen by all of them before any gradient of it is applied, and every process
stops at the same step.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

# The loss terms, in the order a non-finite one is reported.
LOSS_TERMS = ("dino", "part", "attribute", "balance", "loss")


def reduce_stats(accelerator, stats: dict[str, torch.Tensor], images: int, stop_flag: float) -> dict[str, torch.Tensor]:
    """Sum every statistic over the processes in one all-reduce (plus images and the stop flag)."""
    device = accelerator.device
    names, shapes, flat = [], [], []
    for name, value in sorted(stats.items()):
        value = value.detach().float().to(device)
        names.append(name)
        shapes.append(value.shape)
        flat.append(value.reshape(-1))
    flat.append(torch.tensor([float(images), stop_flag], device=device))
    vector = torch.cat(flat)
    if accelerator.num_processes > 1:
        vector = accelerator.reduce(vector, reduction="sum")
    out, offset = {}, 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        out[name] = vector[offset:offset + n].reshape(shape).cpu()
        offset += n
    out["_images"], out["_stop"] = vector[offset].cpu(), vector[offset + 1].cpu()
    return out


def first_non_finite(summed: dict[str, torch.Tensor]) -> str | None:
    """The first statistic holding a NaN or infinity (loss terms first), or None."""
    names = [n for n in LOSS_TERMS if n in summed] + sorted(n for n in summed if n not in LOSS_TERMS)
    for name in names:
        if not torch.isfinite(summed[name]).all():
            return name
    return None


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
