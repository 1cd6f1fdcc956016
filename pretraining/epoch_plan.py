"""Which rows each (rank, worker) reads in an epoch, in which order, in which batch.

Everything here is plain integers computed from the manifest's row counts, so
every process derives the same plan before the epoch starts, without opening a
shard, and a resumed run can skip batches without reading them.

The scheme (each step a function below):

1. `epoch_segments`: a seeded permutation of the shards (a new one each epoch),
   and inside each shard a permutation of its 256-row chunks; concatenated, the
   chunks form the epoch's sequence of N rows ("positions" 0..N-1).
2. `rank_ranges`: the sequence is cut into R contiguous parts of
   floor(N/R) or ceil(N/R) rows. Every rank yields exactly
   K = ceil(ceil(N/R) / B) batches (`batches_per_rank`).
3. `batch_sizes`: a rank's n rows are dealt into its K batches: full batches of
   B first, then the remainder; if the remainder would be empty (a rank one row
   short of the largest), the last two batches share B-1 rows as B-1 and 1.
   This needs K <= n <= K*B: n <= K*B holds by the choice of K, and n >= K
   holds whenever N >= R and B >= 2 (n >= ceil(N/R)-1 >= (K-1)*B >= K for
   K >= 2); `plan_rank` raises otherwise.
4. Batch k of a rank is made by worker k mod W (the order in which a DataLoader
   collects from its workers), so the loader yields batches 0..K-1 in order.
   The rank's range is cut into W contiguous parts, worker w's part holding
   exactly as many rows as its batches need (`plan_worker`).
5. `shuffle_buffer_order`: inside a worker, rows flow through a shuffle buffer
   of S rows in sequence order (fill S, then each new row replaces a random
   one that is emitted; finally the rest in random order). It is simulated
   here over row numbers, so the output order is known up front; the reader
   keeps only the rows still waiting for their batch, bounded by about S.
   The worker's output order is cut into its batches in order.

Every row of the epoch lies in exactly one rank range, one worker part and one
batch, so over one epoch each row is read once; every rank yields K batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Distinct streams of randomness, mixed into every seed.
_SHARD_ORDER = 0
_SHUFFLE_BUFFER = 1
_AUGMENT = 2


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of shard `shard` (its index in manifest order); never crosses a chunk."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker of one rank reads and yields in one epoch."""

    segments: list[Segment]  # in reading order; local row i is the i-th row of these
    batch_ids: list[int]  # the rank's batch index k of each of this worker's batches
    batches: list[np.ndarray]  # local row numbers of each batch, in output order


def epoch_segments(shard_rows: list[int], seed: int, epoch: int, chunk_rows: int) -> list[Segment]:
    """The epoch's row sequence: shards in a seeded order, each one's chunks permuted."""
    rng = np.random.default_rng([seed, _SHARD_ORDER, epoch])
    segments: list[Segment] = []
    for shard in rng.permutation(len(shard_rows)):
        n = shard_rows[shard]
        starts = np.arange(0, n, chunk_rows)
        for start in starts[rng.permutation(len(starts))]:
            segments.append(Segment(int(shard), int(start), int(min(start + chunk_rows, n))))
    return segments


def rank_ranges(total_rows: int, world_size: int) -> list[tuple[int, int]]:
    """R contiguous, near-equal ranges of positions [a, b)."""
    return [(r * total_rows // world_size, (r + 1) * total_rows // world_size) for r in range(world_size)]


def batches_per_rank(total_rows: int, world_size: int, batch_size: int) -> int:
    largest = -(-total_rows // world_size)
    return -(-largest // batch_size)


def batch_sizes(rows: int, num_batches: int, batch_size: int) -> list[int]:
    """Deal `rows` into `num_batches` batches of 1..batch_size rows, full batches first."""
    if not num_batches <= rows <= num_batches * batch_size:
        raise ValueError(f"cannot deal {rows} rows into {num_batches} batches of 1..{batch_size} rows")
    sizes, spare = [], rows - num_batches  # every batch takes one row; spare rows fill up greedily
    for _ in range(num_batches):
        extra = min(batch_size - 1, spare)
        sizes.append(1 + extra)
        spare -= extra
    return sizes


def slice_segments(segments: list[Segment], start: int, stop: int) -> list[Segment]:
    """The segments covering positions [start, stop) of the sequence, cut at both ends."""
    out, pos = [], 0
    for seg in segments:
        seg_start, seg_stop = pos, pos + len(seg)
        pos = seg_stop
        if seg_stop <= start:
            continue
        if seg_start >= stop:
            break
        lo, hi = max(start, seg_start) - seg_start, min(stop, seg_stop) - seg_start
        out.append(Segment(seg.shard, seg.start + lo, seg.start + hi))
    return out


def shuffle_buffer_order(rows: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """Output order of rows 0..rows-1 pushed in order through a shuffle buffer."""
    size = max(1, min(buffer_size, rows))
    picks = rng.integers(0, size, max(0, rows - size)).tolist()
    buffer = list(range(size))
    out = []
    for incoming, slot in zip(range(size, rows), picks):
        out.append(buffer[slot])
        buffer[slot] = incoming
    tail = np.asarray(buffer[:rows], dtype=np.int64)
    out_arr = np.asarray(out, dtype=np.int64)
    return np.concatenate([out_arr, tail[rng.permutation(len(tail))]])


def plan_rank(total_rows: int, world_size: int, batch_size: int, rank: int) -> tuple[tuple[int, int], list[int]]:
    """The rank's position range and the sizes of its K batches; raises if no plan exists."""
    if total_rows < world_size:
        raise ValueError(f"the store has {total_rows} rows, fewer than the {world_size} processes")
    num_batches = batches_per_rank(total_rows, world_size, batch_size)
    ranges = rank_ranges(total_rows, world_size)
    smallest = min(b - a for a, b in ranges)
    if smallest < num_batches:
        raise ValueError(f"{total_rows} rows over {world_size} processes give a rank {smallest} rows, fewer than "
                         f"its {num_batches} batches of size {batch_size}; use a batch size of 2 or more")
    a, b = ranges[rank]
    return (a, b), batch_sizes(b - a, num_batches, batch_size)


def plan_worker(segments: list[Segment], total_rows: int, world_size: int, rank: int, num_workers: int,
                worker: int, batch_size: int, buffer_size: int, seed: int, epoch: int) -> WorkerPlan:
    """Rows, order and batches of one worker (see the module docstring)."""
    (rank_start, _), sizes = plan_rank(total_rows, world_size, batch_size, rank)
    rows_of_worker = [sum(sizes[w::num_workers]) for w in range(num_workers)]
    start = rank_start + sum(rows_of_worker[:worker])
    rows = rows_of_worker[worker]
    own = slice_segments(segments, start, start + rows)
    rng = np.random.default_rng([seed, _SHUFFLE_BUFFER, epoch, rank, num_workers, worker])
    order = shuffle_buffer_order(rows, buffer_size, rng)
    batch_ids = list(range(worker, len(sizes), num_workers))
    bounds = np.cumsum([0] + [sizes[k] for k in batch_ids])
    batches = [order[bounds[j]:bounds[j + 1]] for j in range(len(batch_ids))]
    return WorkerPlan(own, batch_ids, batches)


def augment_seed(seed: int, epoch: int, rank: int, batch_index: int) -> np.random.SeedSequence:
    """Root of the randomness of one batch's augmentation: independent of the worker count."""
    return np.random.SeedSequence([seed, _AUGMENT, epoch, rank, batch_index])
