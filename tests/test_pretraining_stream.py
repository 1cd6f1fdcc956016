"""The shard stream over a real (small) store: coverage, equal batch counts, order, resume, lazy files."""

from __future__ import annotations

import gc
import itertools
import pickle

import h5py
import numpy as np
import pytest
import torch

from clasp.pretraining import stream as stream_module
from clasp.pretraining.augment import MultiCropConfig
from clasp.pretraining.epoch_plan import batches_per_rank
from clasp.pretraining.stream import ShardStream, StreamConfig, make_loader
from clasp.store import ShardStore

UNEVEN = [300, 7, 129, 1]
SMALL_CROPS = MultiCropConfig(global_size=(64, 32), local_size=(32, 16), patch_size=4, local_crops=2)


@pytest.fixture
def small_store(make_store):
    """Uneven shards of 64x32 images (fast to decode and crop), label grid 16x8."""
    return make_store(UNEVEN, hw=(64, 32), grid=(16, 8))


def config(root, batch_size=16, buffer=40, seed=0) -> StreamConfig:
    return StreamConfig(root, batch_size=batch_size, shuffle_buffer=buffer, seed=seed, crops=SMALL_CROPS)


def round_robin(stream: ShardStream, workers: int) -> list:
    """What a DataLoader with `workers` workers yields: one batch from each worker in turn."""
    stream.num_workers = workers
    iters = [stream.iter_worker(w, workers) for w in range(workers)]
    out = []
    for batch in itertools.chain.from_iterable(itertools.zip_longest(*iters)):
        if batch is not None:
            out.append(batch)
    return out


def store_rows(root) -> dict[str, np.ndarray]:
    store = ShardStore.open(root)
    parts = []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            parts.append(shard.read(fields=("attr_logits", "key")))
    return {"attr": np.concatenate([p.attr_logits for p in parts]).astype(np.float32),
            "key": np.array([int(k) for p in parts for k in p.key])}


def assert_batches_equal(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("global_crops", "local_crops", "part_mask", "part_conf", "attr_logits", "row_id"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2])
def test_every_row_once_and_every_rank_same_batch_count(small_store, world, workers):
    truth = store_rows(small_store)
    total = sum(UNEVEN)
    expected_k = batches_per_rank(total, world, 16)
    seen = []
    for rank in range(world):
        stream = ShardStream(config(small_store), rank=rank, world_size=world)
        batches = round_robin(stream, workers)
        assert len(batches) == len(stream) == expected_k
        for b in batches:
            assert 1 <= b.batch_size <= 16
            assert b.global_crops.shape == (2, b.batch_size, 3, 64, 32) and b.global_crops.dtype == torch.uint8
            assert b.local_crops.shape == (2, b.batch_size, 3, 32, 16)
            assert b.part_mask.shape == (2, b.batch_size, 16, 8) and b.part_mask.dtype == torch.int64
            # the labels travel with their own row
            assert torch.equal(b.attr_logits, torch.from_numpy(truth["attr"][b.row_id.numpy()]))
            seen += b.row_id.tolist()
    assert sorted(seen) == list(range(total))
    assert truth["key"].tolist() == list(range(total))  # row_id = global row index = the fixture's key


def test_dataloader_with_two_workers_yields_the_documented_order(small_store):
    reference = round_robin(ShardStream(config(small_store), rank=1, world_size=2), 2)
    stream = ShardStream(config(small_store), rank=1, world_size=2)
    loader = make_loader(stream, num_workers=2)
    got = list(loader)
    assert_batches_equal(got, reference)
    assert stream.state_dict()["batches_yielded"] == len(reference) == batches_per_rank(sum(UNEVEN), 2, 16)
    # a second epoch through the same persistent workers follows set_epoch made in the parent
    stream.set_epoch(1)
    second = list(loader)
    fresh = ShardStream(config(small_store), rank=1, world_size=2)
    fresh.set_epoch(1)
    assert_batches_equal(second, round_robin(fresh, 2))


def test_resume_through_a_dataloader_keeps_the_order(small_store):
    """Resuming at an odd batch with two workers: the loader still yields s, s+1, ... in order."""
    reference = round_robin(ShardStream(config(small_store), rank=0, world_size=2), 2)
    stream = ShardStream(config(small_store), rank=0, world_size=2)
    loader = make_loader(stream, num_workers=2)
    stream.load_state_dict({**stream.state_dict(), "batches_yielded": 3})
    assert_batches_equal(list(loader), reference[3:])
    assert stream.batches_yielded == len(reference)


def test_same_seed_same_order_new_epoch_or_seed_new_order(small_store):
    def order(seed: int, epoch: int) -> list[int]:
        s = ShardStream(config(small_store, seed=seed))
        s.set_epoch(epoch)
        return [i for b in s for i in b.row_id.tolist()]

    first = order(0, 0)
    assert first == order(0, 0)
    assert first != order(0, 1)
    assert first != order(1, 0)
    assert sorted(order(0, 1)) == sorted(first)


@pytest.mark.parametrize("workers,skip", [(1, 5), (2, 7), (2, 1)])
def test_resume_yields_exactly_the_remaining_batches(small_store, workers, skip):
    full_stream = ShardStream(config(small_store), rank=0, world_size=2)
    full_stream.set_epoch(3)
    full = round_robin(full_stream, workers)
    assert full_stream.state_dict()["epoch"] == 3

    resumed = ShardStream(config(small_store), rank=0, world_size=2)
    resumed.num_workers = workers
    state = {**full_stream.state_dict(), "batches_yielded": skip}
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the loop re-announces the epoch: the position is kept
    assert resumed.state_dict() == state
    assert_batches_equal(round_robin(resumed, workers), full[skip:])


def test_state_dict_counts_batches_handed_out_and_refuses_another_plan(small_store):
    stream = ShardStream(config(small_store))
    it = iter(stream)
    next(it), next(it)
    assert stream.state_dict()["batches_yielded"] == 2
    stream.set_epoch(1)
    assert (stream.epoch, stream.batches_yielded) == (1, 0)
    other = ShardStream(config(small_store, batch_size=8, seed=4))
    with pytest.raises(ValueError, match="seed was 0, is now 4") as err:
        other.load_state_dict(stream.state_dict())
    assert "batch_size was 16, is now 8" in str(err.value)


def test_skipped_batches_are_not_decoded_and_their_chunks_not_read(make_store, monkeypatch):
    root = make_store([600], hw=(64, 32))
    decoded, rows_read = [], []
    real_decode = stream_module.decode_image
    monkeypatch.setattr(stream_module, "decode_image", lambda data: decoded.append(1) or real_decode(data))
    real_read = stream_module.ShardFile.read

    def counting_read(self, start=0, stop=None, fields=()):
        rows_read.append(stop - start)
        return real_read(self, start, stop, fields)

    monkeypatch.setattr(stream_module.ShardFile, "read", counting_read)
    stream = ShardStream(config(root, batch_size=32, buffer=16))
    k = len(stream) - 3
    stream.load_state_dict({**stream.state_dict(), "batches_yielded": k})
    remaining = list(stream)
    assert len(remaining) == 3
    assert len(decoded) == sum(b.batch_size for b in remaining) == 600 - 32 * k
    assert sum(rows_read) < 600  # at least one whole chunk held only skipped rows


def open_h5_files() -> int:
    gc.collect()  # files of earlier tests that only a cycle still holds
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)


def test_no_file_is_open_before_iteration_and_the_stream_pickles(small_store):
    before = open_h5_files()
    stream = ShardStream(config(small_store))
    assert open_h5_files() == before
    clone = pickle.loads(pickle.dumps(stream))  # h5py objects would refuse to pickle
    it = iter(clone)
    first = next(it)
    assert open_h5_files() == before + 1  # opened lazily, while iterating
    it.close()
    assert open_h5_files() == before
    assert_batches_equal([first], [next(iter(stream))])


HOLD_A_LOADER_AND_EXIT = """
import sys
from clasp.pretraining.augment import MultiCropConfig
from clasp.pretraining.stream import ShardStream, StreamConfig, make_loader

crops = MultiCropConfig(global_size=(32, 16), local_size=(16, 8), patch_size=4, local_crops=1)
loader = make_loader(ShardStream(StreamConfig(sys.argv[1], batch_size=2, shuffle_buffer=4, crops=crops)), 1)
batches = iter(loader)
next(batches)
held = (loader, batches)  # still referenced at exit, workers running
print("exiting", flush=True)
"""


def test_a_process_holding_a_loader_exits_and_takes_its_workers(make_store) -> None:
    """Workers ignore SIGTERM, which multiprocessing sends at exit before joining them: they are killed instead."""
    import subprocess
    import sys

    root = make_store([6], grid=(8, 4), hw=(32, 16))
    done = subprocess.run([sys.executable, "-c", HOLD_A_LOADER_AND_EXIT, str(root)], capture_output=True, text=True,
                          timeout=120)  # before the exit handler this never returned
    assert done.returncode == 0 and done.stdout.strip() == "exiting", done.stderr[-2000:]
    assert "Traceback" not in done.stderr  # an orderly shutdown, not a killed worker reported at exit
