"""A crash while writing never leaves a half shard or a half manifest that a reader would accept."""

from __future__ import annotations

import json

import pytest

import clasp.common.durable as durable
import clasp.store.writer as writer
from clasp.store import Manifest, ShardStore, record_shard, shard_name, write_shard_for


class Crash(Exception):
    pass


def _files(root):
    return sorted(p.name for p in root.iterdir())


def test_crash_while_writing_a_shard_leaves_nothing(make_store, make_rows, monkeypatch):
    root = make_store([2])
    before_files = _files(root)
    before_manifest = (root / "manifest.json").read_bytes()
    manifest = Manifest.load(root)

    def crash_after_data_is_written(path):
        assert path.name == shard_name(1) + ".tmp" and path.stat().st_size > 0  # the temp file was complete
        raise Crash("disk on fire")

    monkeypatch.setattr(writer, "file_sha256", crash_after_data_is_written)
    with pytest.raises(Crash):
        entry = write_shard_for(manifest, root, shard_name(1), make_rows(3, start=2))
        record_shard(manifest, root, entry)
    assert _files(root) == before_files
    assert (root / "manifest.json").read_bytes() == before_manifest
    assert [e.file for e in ShardStore.open(root, verify=True).shards] == [shard_name(0)]


def test_crash_while_rewriting_a_shard_keeps_the_old_one(make_store, make_rows, monkeypatch):
    root = make_store([2])
    old_bytes = (root / shard_name(0)).read_bytes()
    manifest = Manifest.load(root)
    monkeypatch.setattr(writer.os, "replace", lambda *a: (_ for _ in ()).throw(Crash("power cut")))
    with pytest.raises(Crash):
        write_shard_for(manifest, root, shard_name(0), make_rows(5, seed=9))
    assert (root / shard_name(0)).read_bytes() == old_bytes
    assert _files(root) == ["manifest.json", shard_name(0)]
    ShardStore.open(root, verify=True)


def test_crash_while_writing_the_manifest_keeps_the_old_one(make_store, make_rows, monkeypatch):
    root = make_store([2])
    before = (root / "manifest.json").read_bytes()
    manifest = Manifest.load(root)
    entry = write_shard_for(manifest, root, shard_name(1), make_rows(3, start=2))

    real_dump = json.dump

    def half_dump(data, f, **kw):
        f.write(json.dumps(data, **kw)[:50])  # half of the new manifest reaches the temp file
        raise Crash("killed mid-write")

    monkeypatch.setattr(durable.json, "dump", half_dump)
    with pytest.raises(Crash):
        record_shard(manifest, root, entry)
    monkeypatch.setattr(durable.json, "dump", real_dump)
    assert (root / "manifest.json").read_bytes() == before
    assert not [n for n in _files(root) if n.endswith(".tmp")]
    # The finished shard is on disk but unlisted: readers see the old, consistent store.
    assert [e.file for e in ShardStore.open(root, verify=True).shards] == [shard_name(0)]


def test_record_shard_replaces_an_entry_and_keeps_files_sorted(make_store, make_rows):
    root = make_store([2, 2])
    manifest = Manifest.load(root)
    entry = write_shard_for(manifest, root, shard_name(0), make_rows(4, seed=5))
    record_shard(manifest, root, entry)
    loaded = Manifest.load(root)
    assert [(e.file, e.rows) for e in loaded.shards] == [(shard_name(0), 4), (shard_name(1), 2)]
    assert loaded.to_dict()["totals"]["rows"] == 6
    ShardStore.open(root, verify=True)
