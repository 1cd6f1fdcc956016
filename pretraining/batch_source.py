"""Batches of the shard stream across epochs, moved to the device, with the wait for each timed.

The stream splits rows by rank itself, so its DataLoader is not passed to
`accelerator.prepare` (accelerate 1.x would re-split an IterableDataset with
`IterableDatasetShard`, or dispatch every batch from rank 0).
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from clasp.pretraining.step_stats import ThroughputWindow


class BatchSource:
    """Batches of the stream across epochs, on the device; times the wait for each."""

    def __init__(self, stream, loader, device: torch.device) -> None:
        self.stream, self.loader, self.device = stream, loader, device
        self._it: Iterator | None = None

    def next(self, window: ThroughputWindow):
        t0 = time.perf_counter()
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
                break
            except StopIteration:
                self._it = None
                self.stream.set_epoch(self.stream.epoch + 1)
        batch = batch.to(self.device, non_blocking=True)
        window.add_wait(time.perf_counter() - t0)
        return batch

    def close(self) -> None:
        self._it = None
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
