"""What a reader refuses, and that each refusal names the file it is about."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from clasp.store import (
    Manifest, NotAStoreError, ShardStore, StoreError, record_shard, shard_name, write_shard,
)


def _manifest_json(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def _save_json(root: Path, data: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


def _read_all(root: Path, verify: bool = False) -> int:
    store = ShardStore.open(root, verify=verify)
    n = 0
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            n += len(shard.read())
    return n


def _expect(root: Path, named: Path, match: str, verify: bool = False) -> StoreError:
    with pytest.raises(StoreError, match=match) as info:
        _read_all(root, verify=verify)
    assert info.value.path == named
    assert str(named) in str(info.value)
    return info.value


def test_good_store_reads(make_store):
    assert _read_all(make_store([3, 2]), verify=True) == 5


def test_unknown_manifest_version(make_store):
    root = make_store([2])
    data = _manifest_json(root)
    data["version"] = 2
    _save_json(root, data)
    _expect(root, root / "manifest.json", "unknown format version 2")


def test_manifest_of_another_format(make_store):
    root = make_store([2])
    _save_json(root, {"format": "something-else", "version": 1})
    _expect(root, root / "manifest.json", "not a CLASP manifest")


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe"])
def test_manifest_that_is_not_json(make_store, text):
    root = make_store([2])
    (root / "manifest.json").write_bytes(text.encode("latin-1"))
    _expect(root, root / "manifest.json", "does not parse as JSON")


def test_manifest_vocab_hash_must_match_its_content(make_store):
    root = make_store([2])
    data = _manifest_json(root)
    data["vocab"]["parts"][1]["prompts"].append("a photo of a hat.")  # content edited, hash kept
    _save_json(root, data)
    _expect(root, root / "manifest.json", "vocabulary hash .* does not match its content")


@pytest.mark.parametrize("bad", ["../x.h5", "/abs.h5", "sub/x.h5", "..", "a\\b.h5", "shard-000000.h5.tmp", ""])
def test_shard_path_that_leaves_the_folder(make_store, bad):
    root = make_store([2])
    data = _manifest_json(root)
    data["shards"][0]["file"] = bad
    _save_json(root, data)
    err = _expect(root, root / "manifest.json", "shard path")
    assert repr(bad) in err.problem


def test_shard_listed_twice(make_store):
    root = make_store([2])
    data = _manifest_json(root)
    data["shards"].append(dict(data["shards"][0]))
    _save_json(root, data)
    _expect(root, root / "manifest.json", "listed twice")


def _rewrite_attr(path: Path, name: str, value) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[name] = value


def _rerecord(root: Path, index: int = 0) -> None:
    """Update the manifest entry after a shard was changed on purpose, so only the change is wrong."""
    from clasp.store.digest import file_sha256

    data = _manifest_json(root)
    path = root / shard_name(index)
    data["shards"][index].update(sha256=file_sha256(path), bytes=path.stat().st_size)
    _save_json(root, data)


def test_unknown_shard_version(make_store):
    root = make_store([2])
    _rewrite_attr(root / shard_name(0), "version", 7)
    _rerecord(root)
    _expect(root, root / shard_name(0), "unknown shard format version 7")


def test_shard_from_another_vocabulary(make_store, make_rows):
    root = make_store([2, 2])
    manifest = Manifest.load(root)
    entry = write_shard(root / shard_name(1), make_rows(2), vocab_sha256="0" * 64, clip_model=manifest.clip.model,
                        label_grid=manifest.label_grid, num_attributes=manifest.vocab.num_attributes)
    record_shard(manifest, root, entry)
    _expect(root, root / shard_name(1), "another vocabulary", verify=True)


def test_shard_from_another_clip_model(make_store):
    root = make_store([2])
    _rewrite_attr(root / shard_name(0), "clip_model", "openai/some-other-clip")
    _rerecord(root)
    _expect(root, root / shard_name(0), "labeled by CLIP model 'openai/some-other-clip'")


def test_label_grid_mismatch_between_shard_and_manifest(make_store):
    root = make_store([2], grid=(16, 8))
    data = _manifest_json(root)
    data["label_grid"] = [28, 14]
    _save_json(root, data)
    _expect(root, root / shard_name(0), r"part_mask has shape \(2, 16, 8\), expected \(2, 28, 14\).*label grid \[28, 14\]")


def test_sha256_mismatch_when_verifying(make_store):
    root = make_store([2])
    path = root / shard_name(0)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    assert _read_all(root, verify=False) == 2  # the byte sits in image data the reader does not check
    _expect(root, path, "sha256 mismatch", verify=True)


def test_truncated_shard(make_store):
    root = make_store([2])
    path = root / shard_name(0)
    path.write_bytes(path.read_bytes()[:-100])
    _expect(root, path, "truncated")


def test_truncated_shard_is_refused_when_opened_directly(make_store):
    from clasp.store import ShardFile

    root = make_store([2])
    path = root / shard_name(0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StoreError, match="cannot open as HDF5") as info:
        ShardFile(path, Manifest.load(root))
    assert info.value.path == path


def test_missing_shard(make_store):
    root = make_store([2, 2])
    (root / shard_name(1)).unlink()
    _expect(root, root / shard_name(1), "missing")


def test_row_count_differs_from_manifest(make_store):
    root = make_store([2])
    data = _manifest_json(root)
    data["shards"][0]["rows"] = 3
    _save_json(root, data)
    _expect(root, root / shard_name(0), "shard has 2 rows, the manifest says 3")


def test_not_a_store(tmp_path):
    for root, named, match in [
        (tmp_path / "nope", tmp_path / "nope", "does not exist"),
        (tmp_path, tmp_path / "manifest.json", "manifest not found"),
    ]:
        with pytest.raises(NotAStoreError, match=match) as info:
            ShardStore.open(root)
        assert info.value.path == named
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAStoreError, match="not a folder"):
        ShardStore.open(tmp_path / "file")


def test_leftover_tmp_is_never_listed(make_store, make_rows):
    root = make_store([2])
    manifest = Manifest.load(root)
    # A crash after the temp file was written but before the rename.
    write_shard(root / shard_name(1), make_rows(2), vocab_sha256=manifest.vocab.sha256,
                clip_model=manifest.clip.model, label_grid=manifest.label_grid,
                num_attributes=manifest.vocab.num_attributes)
    (root / shard_name(1)).rename(root / (shard_name(1) + ".tmp"))
    store = ShardStore.open(root, verify=True)
    assert [e.file for e in store.shards] == [shard_name(0)]
    assert _read_all(root) == 2
    # Listing the temp file by hand is refused.
    data = _manifest_json(root)
    data["shards"].append({**data["shards"][0], "file": shard_name(1) + ".tmp"})
    _save_json(root, data)
    _expect(root, root / "manifest.json", "does not end in .h5")


def test_empty_store_reads_as_zero_rows(make_store):
    root = make_store([])
    assert ShardStore.open(root, verify=True).shards == []
    assert Manifest.load(root).to_dict()["totals"] == {"rows": 0, "skipped": 0}


def test_manifest_round_trip(make_store):
    root = make_store([3, 1])
    first = Manifest.load(root)
    first.save(root)
    again = Manifest.load(root)
    assert again == first
    assert again.to_dict()["totals"]["rows"] == 4
    assert np.array_equal(again.label_grid, (16, 8))


def test_save_records_the_writing_clasp_version(make_store):
    from clasp import __version__

    root = make_store([1])
    data = _manifest_json(root)
    data["clasp_version"] = "0.0.1"
    _save_json(root, data)
    manifest = Manifest.load(root)
    assert manifest.clasp_version == "0.0.1"
    manifest.save(root)
    assert _manifest_json(root)["clasp_version"] == __version__


def test_vocabulary_file_errors_name_the_file(tmp_path):
    from clasp.store import Vocabulary

    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    (tmp_path / "short.json").write_text(json.dumps({"parts": [{"name": "bg", "prompts": ["x"]}], "attributes": []}))
    for path, match in [(tmp_path / "missing.json", "not found"), (tmp_path, "cannot read vocabulary"),
                        (tmp_path / "list.json", "not a vocabulary"), (tmp_path / "short.json", "background plus")]:
        with pytest.raises(StoreError, match=match) as info:
            Vocabulary.load(path)
        assert info.value.path == path
