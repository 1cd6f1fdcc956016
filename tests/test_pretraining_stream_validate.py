"""validate_store: every bad store is refused before the first step, naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from clasp.pretraining.stream import validate_store
from clasp.store import StoreError


def test_a_good_store_passes_and_leaves_no_file_open(make_store):
    root = make_store([5, 3], hw=(32, 16))
    store = validate_store(root)
    assert [e.rows for e in store.shards] == [5, 3]
    assert h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE) == 0


def _rewrite_manifest(root: Path, change) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set_shard_attr(path: Path, name: str, value) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[name] = value
    # keep the manifest's byte count in step, so that only the attribute is wrong
    root = path.parent
    _rewrite_manifest(root, lambda d: [s.update(bytes=path.stat().st_size) for s in d["shards"] if s["file"] == path.name])


EXPECTED = {
    "no folder": "does not exist", "no manifest": "manifest not found", "bad json": "does not parse",
    "no rows": "no rows", "missing shard": "missing", "truncated": "truncated", "other vocabulary": "another vocabulary",
    "unknown version": "unknown shard format version 99", "grid differs": "label grid [8, 4]",
    "rows differ": "the manifest says 5", "image does not decode": "does not decode",
}


@pytest.mark.parametrize("case", ["no folder", "no manifest", "bad json", "no rows", "missing shard", "truncated",
                                  "other vocabulary", "unknown version", "grid differs", "rows differ",
                                  "image does not decode"])
def test_bad_stores_are_refused_naming_the_file(make_store, tmp_path, case):
    root = make_store([4, 3], hw=(32, 16))
    shard = root / "shard-000001.h5"
    named = shard
    if case == "no folder":
        root = named = tmp_path / "nowhere"
    elif case == "no manifest":
        (root / "manifest.json").unlink()
        named = root / "manifest.json"
    elif case == "bad json":
        (root / "manifest.json").write_text("{not json")
        named = root / "manifest.json"
    elif case == "no rows":
        root = make_store([])
        named = root / "manifest.json"
    elif case == "missing shard":
        shard.unlink()
    elif case == "truncated":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    elif case == "other vocabulary":
        _set_shard_attr(shard, "vocab_sha256", "0" * 64)
    elif case == "unknown version":
        _set_shard_attr(shard, "version", 99)
    elif case == "grid differs":
        _rewrite_manifest(root, lambda d: d.update(label_grid=[8, 4]))
        named = root / "shard-000000.h5"
    elif case == "rows differ":
        _rewrite_manifest(root, lambda d: d["shards"][1].update(rows=5))
    elif case == "image does not decode":
        with h5py.File(shard, "r+") as f:
            f["image"].id.write(h5py.h5s.ALL, h5py.h5s.ALL, _garbage_images(3))
        _set_shard_attr(shard, "rows", 3)
    with pytest.raises(StoreError) as err:
        validate_store(root)
    assert err.value.path == named
    assert EXPECTED[case] in err.value.problem
    assert str(named) in str(err.value)
    assert h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE) == 0


def _garbage_images(n: int):
    import numpy as np

    out = np.empty(n, dtype=h5py.vlen_dtype(np.uint8))
    for i in range(n):
        out[i] = np.frombuffer(b"not a jpeg at all", dtype=np.uint8)
    return out
