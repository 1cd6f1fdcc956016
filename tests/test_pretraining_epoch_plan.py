"""The epoch plan: which rows each (rank, worker) reads, in which batch — pure integers."""

from __future__ import annotations

import numpy as np
import pytest

from clasp.pretraining.epoch_plan import (
    batch_sizes, batches_per_rank, epoch_segments, plan_rank, plan_worker, shuffle_buffer_order,
)

SHARDS = [300, 7, 129, 1]


def rows_of(plan, segments_rows) -> list[list[int]]:
    """Global (shard, row) pairs of each batch of a worker plan."""
    flat = [(s.shard, r) for s in plan.segments for r in range(s.start, s.stop)]
    return [[flat[i] for i in batch] for batch in plan.batches]


@pytest.mark.parametrize("shards", [SHARDS, [5, 5, 5], [1000], [1, 1, 1, 1, 1, 1, 1]])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("batch", [2, 16, 64])
def test_every_row_once_and_equal_batches_per_rank(shards, world, workers, batch):
    total = sum(shards)
    if total < world:
        pytest.skip("fewer rows than ranks")
    segments = epoch_segments(shards, seed=3, epoch=1, chunk_rows=256)
    k = batches_per_rank(total, world, batch)
    seen: list[tuple[int, int]] = []
    for rank in range(world):
        by_index: dict[int, list] = {}
        for w in range(workers):
            plan = plan_worker(segments, total, world, rank, workers, w, batch, 50, seed=3, epoch=1)
            for bid, rows in zip(plan.batch_ids, rows_of(plan, shards)):
                assert bid % workers == w
                assert 1 <= len(rows) <= batch
                by_index[bid] = rows
        assert sorted(by_index) == list(range(k))  # K batches on every rank, made round-robin
        seen += [r for bid in range(k) for r in by_index[bid]]
    expected = [(s, r) for s, n in enumerate(shards) for r in range(n)]
    assert sorted(seen) == expected  # each row exactly once


def test_batch_sizes_full_first_and_never_empty():
    assert batch_sizes(10, 3, 4) == [4, 4, 2]
    assert batch_sizes(8, 3, 4) == [4, 3, 1]  # one row short of the largest rank: no empty batch
    assert batch_sizes(12, 3, 4) == [4, 4, 4]
    with pytest.raises(ValueError):
        batch_sizes(2, 3, 4)


def test_no_plan_when_fewer_rows_than_ranks():
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        plan_rank(3, 4, 8, 0)


def test_shard_order_seeded_and_new_each_epoch():
    a = epoch_segments(SHARDS * 3, seed=0, epoch=0, chunk_rows=256)
    assert a == epoch_segments(SHARDS * 3, seed=0, epoch=0, chunk_rows=256)
    assert [s.shard for s in a] != [s.shard for s in epoch_segments(SHARDS * 3, seed=0, epoch=1, chunk_rows=256)]
    assert [s.shard for s in a] != [s.shard for s in epoch_segments(SHARDS * 3, seed=1, epoch=0, chunk_rows=256)]
    assert all(s.stop - s.start <= 256 and s.start % 256 == 0 for s in a)  # whole chunks


def test_shuffle_buffer_is_a_bounded_permutation():
    rng = np.random.default_rng(0)
    order = shuffle_buffer_order(1000, 64, rng)
    assert sorted(order.tolist()) == list(range(1000))
    # a row leaves the buffer no earlier than it enters: output t holds an input < t + 64
    assert all(order[t] < t + 64 for t in range(1000))
    assert order.tolist() != list(range(1000))
    assert shuffle_buffer_order(5, 64, rng).shape == (5,)
