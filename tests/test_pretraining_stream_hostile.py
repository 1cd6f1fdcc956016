"""The training stream on hostile stores: each bad row stops it with one line naming shard, row and field
(BadRowError), or is skipped and counted under on_bad_row="skip"; a store rewritten under a running stream
stops it with StoreChangedError naming the file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import h5py
import numpy as np
import pytest

from clasp.pretraining.augment import MultiCropConfig
from clasp.pretraining.config import ConfigError, build_config
from clasp.pretraining.stream import BadRowError, ShardStream, StoreChangedError, StreamConfig, make_loader
from tests.test_store_hostile import rehash

CROPS = MultiCropConfig(global_size=(32, 16), local_size=(16, 8), patch_size=4, local_crops=1)


def stream_for(root: Path, on_bad_row: str = "stop", batch_size: int = 8, buffer: int = 16) -> ShardStream:
    return ShardStream(StreamConfig(root, batch_size=batch_size, shuffle_buffer=buffer, crops=CROPS,
                                    on_bad_row=on_bad_row))


def set_values(shard: Path, name: str, rows, value) -> None:
    with h5py.File(shard, "r+") as f:
        data = f[name][...]
        data[rows] = value
        f[name][...] = data
    rehash(shard.parent)


def row_ids(batches) -> list[int]:
    return sorted(int(r) for b in batches for r in b.row_id)


@pytest.fixture
def store(make_store):
    return make_store([4, 3], hw=(32, 16), grid=(8, 4))


CASES = {
    "part_conf NaN": ("part_conf", np.nan, "part_conf: value nan outside [0, 1]"),
    "part_mask outside the vocabulary": ("part_mask", 9, "part_mask: value 9 outside the vocabulary [0, 6)"),
    "attr_logits NaN": ("attr_logits", np.nan, "attr_logits: value nan is not finite"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_value_stops_with_one_line_or_is_skipped_and_counted(store, case):
    name, value, problem = CASES[case]
    set_values(store / "shard-000001.h5", name, 1, value)
    before = (store / "shard-000001.h5").read_bytes()
    with pytest.raises(BadRowError) as info:
        list(stream_for(store))
    assert str(info.value) == f"{store / 'shard-000001.h5'}: row 1: {problem}"
    skipping = stream_for(store, "skip")
    batches = list(skipping)
    assert len(batches) == skipping.batches_per_epoch == 1
    assert row_ids(batches) == [0, 1, 2, 3, 4, 6]  # global row 5 = shard 1, row 1
    assert skipping.rows_skipped == 1
    assert np.isfinite(batches[0].attr_logits.numpy()).all() and (batches[0].part_mask < 6).all()
    assert (store / "shard-000001.h5").read_bytes() == before


def test_part_conf_all_nan_never_reaches_the_loss(store):
    set_values(store / "shard-000000.h5", "part_conf", slice(None), np.nan)
    with pytest.raises(BadRowError, match="shard-000000.h5: row 0: part_conf: value nan"):
        list(stream_for(store))
    skipping = stream_for(store, "skip")
    assert row_ids(skipping) == [4, 5, 6] and skipping.rows_skipped == 4


def test_a_chunk_that_does_not_decompress_names_its_rows(store):
    shard = store / "shard-000000.h5"
    with h5py.File(shard, "r") as f:
        info = f["part_mask"].id.get_chunk_info(0)
    raw = bytearray(shard.read_bytes())
    raw[info.byte_offset + info.size // 2:info.byte_offset + info.size // 2 + 16] = bytes(range(16))
    shard.write_bytes(bytes(raw))
    rehash(store)
    with pytest.raises(BadRowError) as info_:
        list(stream_for(store))
    assert str(info_.value).startswith(f"{shard}: rows 0-3: part_mask: stored chunk does not decode")
    skipping = stream_for(store, "skip")
    assert row_ids(skipping) == [4, 5, 6] and skipping.rows_skipped == 4


def test_an_image_that_does_not_decode_is_named(store):
    shard = store / "shard-000001.h5"
    with h5py.File(shard, "r+") as f:
        images = [f["image"][i].tobytes() for i in range(3)]
        images[2] = b"\xff\xd8 not really a jpeg"
        f["image"].id.write(h5py.h5s.ALL, h5py.h5s.ALL,
                            np.array([np.frombuffer(b, np.uint8) for b in images], dtype=f["image"].dtype))
    rehash(store)
    with pytest.raises(BadRowError, match=r"shard-000001.h5: row 2: image: does not decode"):
        list(stream_for(store))
    skipping = stream_for(store, "skip")
    assert row_ids(skipping) == [0, 1, 2, 3, 4, 5] and skipping.rows_skipped == 1


def test_flipped_bytes_inside_a_stored_jpeg_stop_under_either_setting(store):
    shard = store / "shard-000001.h5"
    with h5py.File(shard, "r") as f:
        jpeg = f["image"][0].tobytes()
    raw = bytearray(shard.read_bytes())
    at = raw.find(jpeg[len(jpeg) // 2:len(jpeg) // 2 + 64])
    raw[at:at + 8] = bytes(b ^ 0x5A for b in raw[at:at + 8])
    shard.write_bytes(bytes(raw))  # same size, manifest untouched
    for policy in ("stop", "skip"):
        with pytest.raises(BadRowError) as info:
            list(stream_for(store, policy))
        assert not isinstance(info.value, StoreChangedError)
        assert str(info.value).startswith(f"{shard}: sha256 mismatch")


def test_a_batch_with_no_good_row_stops_even_when_skipping(store):
    for name in ("shard-000000.h5", "shard-000001.h5"):
        set_values(store / name, "attr_logits", slice(None), np.inf)
    with pytest.raises(BadRowError, match="every row of batch 0 of epoch 0 is bad"):
        list(stream_for(store, "skip"))


def test_a_store_rewritten_under_the_stream_stops_it_naming_the_file(make_store):
    root = make_store([4, 4], hw=(32, 16), grid=(8, 4), name="live")
    stream = stream_for(root, batch_size=2, buffer=1)
    batches = iter(stream)
    next(batches)  # one shard is open and being read
    make_store([3, 5], hw=(32, 16), grid=(8, 4), seed=7, name="live")  # e.g. `clasp label --force` on it
    with pytest.raises(StoreChangedError) as info:
        list(batches)
    assert str(info.value).startswith(f"{root / 'manifest.json'}: manifest changed since this command started")
    assert isinstance(info.value, BadRowError)


def test_a_shard_replaced_by_another_size_is_a_store_change(store):
    stream = stream_for(store)
    shard = store / "shard-000001.h5"
    shard.write_bytes(shard.read_bytes() + b"\0" * 10)
    with pytest.raises(StoreChangedError, match=r"shard-000001.h5: shard has \d+ bytes, the run started with"):
        list(stream)


def test_the_error_stays_one_line_through_a_dataloader_worker(store):
    set_values(store / "shard-000000.h5", "part_mask", 3, 200)
    loader = make_loader(stream_for(store), num_workers=1)
    with pytest.raises(BadRowError) as info:
        list(loader)
    message = str(info.value)
    for child in multiprocessing.active_children():  # the worker that raised stays alive with its iterator
        child.kill()
        child.join()
    assert message == f"{store / 'shard-000000.h5'}: row 3: part_mask: value 200 outside the vocabulary [0, 6)"


def test_on_bad_row_is_a_setting_of_pretrain():
    assert build_config(shards="s", out="o").on_bad_row == "stop"
    assert build_config(shards="s", out="o", on_bad_row="skip").on_bad_row == "skip"
    with pytest.raises(ConfigError, match="on_bad_row must be stop or skip"):
        build_config(shards="s", out="o", on_bad_row="ignore")
    with pytest.raises(ValueError, match="on_bad_row must be one of stop|skip"):
        StreamConfig(Path("s"), on_bad_row="ignore")
