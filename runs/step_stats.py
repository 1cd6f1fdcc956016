"""The statistics of one step, summed over the processes in one all-reduce that also carries the stop flag.

Every process flattens its statistics (any shapes, in sorted name order), appends its image count and its
stop flag (1.0 once a stop signal arrived), and sums the vector with the others'. Invariants:

- every process gets the same sums, so all of them see the same stop flag and stop after the same step;
- a non-finite loss on any process is seen by all of them before any gradient of it is applied
  (`check_finite` raises `NonFiniteLossError` naming the step and the term), so the last checkpoint stays
  the last good one.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from clasp.errors import RunError

IMAGES, STOP = "_images", "_stop"  # the two entries every reduction adds


class NonFiniteLossError(RunError, RuntimeError):
    """A loss term became NaN or infinite; training stopped without applying that step."""


def reduce_stats(accelerator, stats: dict[str, torch.Tensor], images: int = 0,
                 stop_flag: float = 0.0) -> dict[str, torch.Tensor]:
    """Sum every statistic over the processes in one all-reduce (plus IMAGES and the STOP flag)."""
    device = accelerator.device
    names, shapes, flat = [], [], []
    for name, value in sorted(stats.items()):
        value = torch.as_tensor(value).detach().float().to(device)
        names.append(name)
        shapes.append(value.shape)
        flat.append(value.reshape(-1))
    flat.append(torch.tensor([float(images), float(stop_flag)], device=device))
    vector = torch.cat(flat)
    if accelerator.num_processes > 1:
        vector = accelerator.reduce(vector, reduction="sum")
    vector = vector.cpu()  # one copy (one device sync on a GPU), then slices of it
    out, offset = {}, 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        out[name] = vector[offset:offset + n].reshape(shape)
        offset += n
    out[IMAGES], out[STOP] = vector[offset], vector[offset + 1]
    return out


def first_non_finite(summed: dict[str, torch.Tensor], first: Sequence[str] = ()) -> str | None:
    """The first statistic holding a NaN or infinity (the names in `first` before the others), or None."""
    names = [n for n in first if n in summed] + sorted(n for n in summed if n not in first)
    for name in names:
        if not torch.isfinite(summed[name]).all():
            return name
    return None


def check_finite(summed: dict[str, torch.Tensor], step: int, world: int, last_checkpoint: Callable[[], str],
                 first: Sequence[str] = ()) -> None:
    """NonFiniteLossError for step `step` (1-based) when a summed statistic is NaN or infinite; the message
    names the last good checkpoint (`last_checkpoint()`, only asked then)."""
    bad = first_non_finite(summed, first)
    if bad is not None:
        value = summed[bad].item() if summed[bad].numel() == 1 else summed[bad].tolist()
        raise NonFiniteLossError(
            f"step {step}: loss term {bad!r} is {value} (summed over {world} process(es)); stopped without "
            f"applying it. Last good checkpoint: {last_checkpoint()}")
