"""Which images each process sees at each step: a pure function of (seed, epoch, rank, step).

- re-ID (`pk_batches`): the P x K sampler of the strong re-ID baselines. Each
  epoch every identity's images are shuffled and cut into chunks of K (the last
  chunk filled up with the identity's own images drawn again; an identity with
  fewer than K images is drawn with replacement). A batch takes one chunk from
  each of the P identities with the most chunks left (ties in a seeded random
  order); when fewer than P identities have chunks left, the batch is filled up
  with chunks drawn from other identities. So every image and every identity
  is used in every epoch, and every batch has P distinct identities x K images.
- attributes and parsing (`shuffled_batches`): a seeded permutation cut into
  batches, the incomplete last one dropped.
- `rank_batches`: process r of W takes global batches r, r + W, ...; every
  process gets the same number (the rest is dropped), so none waits at a
  collective for one that ran out.

`StepPlan` maps a global step to (epoch, batch in epoch) and caches one epoch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def pk_batches(labels: np.ndarray, p: int, k: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Global P x K batches of one epoch as arrays of row indices (identity-major: K rows per identity)."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    if len(ids) < p:
        raise ValueError(f"P = {p} identities per batch, but the training split has only {len(ids)}")
    rng = _rng(seed, epoch, 1)
    chunks: dict[int, list[np.ndarray]] = {}
    for pid in ids:
        rows = rng.permutation(np.flatnonzero(labels == pid))
        fill = (-len(rows)) % k
        rows = np.concatenate([rows, rng.choice(rows, fill, replace=fill > len(rows))])
        chunks[int(pid)] = list(rows.reshape(-1, k))
    batches = []
    while any(chunks.values()):
        left = np.array([len(chunks[int(pid)]) for pid in ids])
        order = np.lexsort((rng.random(len(ids)), -left))
        chosen = [int(ids[i]) for i in order[:p] if left[i] > 0]
        batch = [chunks[pid].pop() for pid in chosen]
        others = [int(pid) for pid in ids if int(pid) not in chosen]
        for pid in rng.choice(others, p - len(chosen), replace=False):
            rows = np.flatnonzero(labels == pid)
            batch.append(rng.choice(rows, k, replace=len(rows) < k))
        batches.append(np.concatenate(batch))
    return batches


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    if n < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the training split ({n} images)")
    order = _rng(seed, epoch, 2).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def rank_batches(batches: list[np.ndarray], rank: int, world: int) -> list[np.ndarray]:
    per_rank = len(batches) // world
    return batches[rank::world][:per_rank]


class StepPlan:
    """Global step -> this process's batch; `epoch_batches(epoch)` gives the global batches of an epoch."""

    def __init__(self, epoch_batches: Callable[[int], list[np.ndarray]], rank: int, world: int) -> None:
        self.epoch_batches, self.rank, self.world = epoch_batches, rank, world
        self._cached: tuple[int, list[np.ndarray]] | None = None
        self.per_epoch = len(self._epoch(0))
        if self.per_epoch < 1:
            raise ValueError(f"an epoch has fewer batches than the {world} processes")

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, rank_batches(self.epoch_batches(epoch), self.rank, self.world))
        return self._cached[1]

    def epoch_of(self, step: int) -> int:
        return step // self.per_epoch

    def batch(self, step: int) -> np.ndarray:
        return self._epoch(self.epoch_of(step))[step % self.per_epoch]
