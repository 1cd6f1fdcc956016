"""Format version 1 on disk: every field survives a round trip, the layout is the documented one."""

from __future__ import annotations

import shutil
import subprocess

import h5py
import numpy as np
import pytest

from clasp.store import ClipInfo, LabelRows, Manifest, ShardStore, record_shard, shard_name, write_shard_for

GRID = (4, 3)


def _rows(vocab, n: int) -> LabelRows:
    """Rows with awkward content: non-ASCII paths, equal- and unequal-length images, extreme values."""
    rng = np.random.default_rng(7)
    sizes = [int(s) for s in rng.integers(1, 200, n)]
    sizes[: min(n, 3)] = [50] * min(n, 3)  # equal lengths: h5py's high-level setter trips on these
    paths = ["cam1/ünïcödé_☃.jpg", "日本語/画像.png", "a b/c,d;e.jpg"]
    return LabelRows(
        image=[rng.integers(0, 256, s, dtype=np.uint8).tobytes() for s in sizes],
        key=[f"{i:040x}" for i in range(n)],
        path=[paths[i % 3] + f".{i}" for i in range(n)],
        orig_hw=rng.integers(0, 65536, (n, 2)).astype(np.uint16),
        part_mask=rng.integers(0, vocab.num_parts, (n, *GRID)).astype(np.uint8),
        part_conf=rng.random((n, *GRID)).astype(np.float16),
        attr_logits=(rng.normal(size=(n, vocab.num_attributes)) * 30).astype(np.float16),
    )


def _write(tmp_path, vocab, rows: LabelRows):
    root = tmp_path / "shards"
    manifest = Manifest(ClipInfo("test-clip"), vocab, GRID)
    entry = write_shard_for(manifest, root, shard_name(0), rows)
    record_shard(manifest, root, entry)
    return root, entry


def _assert_same(a: LabelRows, b: LabelRows) -> None:
    assert a.image == b.image
    assert a.key == b.key
    assert a.path == b.path
    for name in ("orig_hw", "part_mask", "part_conf", "attr_logits"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name  # bit-exact, NaN-safe


@pytest.mark.parametrize("n", [300, 0])
def test_round_trip_keeps_every_field_exactly(tmp_path, vocab, n):
    rows = _rows(vocab, n)
    root, entry = _write(tmp_path, vocab, rows)
    assert entry.rows == n
    store = ShardStore.open(root, verify=True)
    with store.open_shard(store.shards[0]) as shard:
        assert shard.rows == n
        _assert_same(shard.read(), rows)
        chunks = list(shard.iter_chunks())
    assert [len(c) for c in chunks] == ([256, 44] if n else [])
    if n:
        _assert_same(LabelRows.concat(chunks), rows)


def test_read_ranges_fields_and_scattered_rows(tmp_path, vocab):
    rows = _rows(vocab, 300)
    root, _ = _write(tmp_path, vocab, rows)
    store = ShardStore.open(root)
    with store.open_shard(store.shards[0]) as shard:
        part = shard.read(250, 260, fields=("part_mask", "key"))
        assert part.key == rows.key[250:260]
        assert np.array_equal(part.part_mask, rows.part_mask[250:260])
        assert part.image == [] and part.attr_logits.shape == (0, vocab.num_attributes)
        picked = shard.read_rows([299, 0, 257, 0])
        assert picked.key == [rows.key[i] for i in (299, 0, 257, 0)]
        assert picked.image == [rows.image[i] for i in (299, 0, 257, 0)]
        assert np.array_equal(picked.part_conf, rows.part_conf[[299, 0, 257, 0]])
        assert len(shard.read(290, 10_000)) == 10
        with pytest.raises(ValueError, match="unknown fields"):
            shard.read(0, 1, fields=("nope",))
        with pytest.raises(IndexError, match="300"):
            shard.read_rows([300])


def test_layout_chunks_256_rows_gzip4_shuffle_and_attributes(tmp_path, vocab):
    root, _ = _write(tmp_path, vocab, _rows(vocab, 300))
    with h5py.File(root / shard_name(0), "r") as f:
        assert f.attrs["format"] == "clasp-shard"
        assert int(f.attrs["version"]) == 1
        assert int(f.attrs["rows"]) == 300
        assert f.attrs["vocab_sha256"] == vocab.sha256
        assert f.attrs["clip_model"] == "test-clip"
        expected = {
            "image": ((300,), None), "key": ((300,), np.dtype("S40")), "path": ((300,), None),
            "orig_hw": ((300, 2), np.dtype(np.uint16)), "part_mask": ((300, *GRID), np.dtype(np.uint8)),
            "part_conf": ((300, *GRID), np.dtype(np.float16)),
            "attr_logits": ((300, vocab.num_attributes), np.dtype(np.float16)),
        }
        assert set(f.keys()) == set(expected)
        for name, (shape, dtype) in expected.items():
            ds = f[name]
            assert ds.shape == shape, name
            if dtype is not None:
                assert ds.dtype == dtype, name
            assert ds.chunks == (256, *shape[1:]), name
            assert ds.compression == "gzip" and ds.compression_opts == 4, name
            assert ds.shuffle, name
        assert h5py.check_vlen_dtype(f["image"].dtype) == np.dtype(np.uint8)
        assert h5py.check_string_dtype(f["path"].dtype).encoding == "utf-8"


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="h5dump not installed (Debian/Ubuntu: apt install hdf5-tools)")
def test_h5dump_reads_a_shard(tmp_path, vocab):
    rows = _rows(vocab, 3)
    root, _ = _write(tmp_path, vocab, rows)
    shard = root / shard_name(0)
    out = subprocess.run(["h5dump", "-d", "/part_mask", str(shard)], capture_output=True, text=True, check=True).stdout
    assert "DATASPACE  SIMPLE { ( 3, 4, 3 ) / ( H5S_UNLIMITED, 4, 3 ) }" in out
    first_row = ", ".join(str(v) for v in rows.part_mask[0, 0])
    assert first_row in out
    header = subprocess.run(["h5dump", "-H", "-A", str(shard)], capture_output=True, text=True, check=True).stdout
    assert "clasp-shard" in header and vocab.sha256 in header
    for name in ("image", "key", "path", "orig_hw", "attr_logits", "part_conf"):
        assert f'DATASET "{name}"' in header
    keys = subprocess.run(["h5dump", "-d", "/key", str(shard)], capture_output=True, text=True, check=True).stdout
    assert rows.key[2] in keys


def test_writer_refuses_values_the_dtypes_would_mangle(tmp_path, vocab):
    manifest = Manifest(ClipInfo("test-clip"), vocab, GRID)
    for change, match in [
        (lambda r: r.key.__setitem__(0, "x" * 41), "key"),
        (lambda r: r.key.__setitem__(0, "ä" * 10), "key"),
        (lambda r: r.part_mask.__setitem__((0, 0, 0), vocab.num_parts), "part_mask"),
        (lambda r: setattr(r, "orig_hw", r.orig_hw.astype(np.int64) + 70_000), "orig_hw"),
        (lambda r: setattr(r, "part_mask", r.part_mask[:, :3]), "part_mask"),
        (lambda r: r.path.pop(), "path"),
    ]:
        rows = _rows(vocab, 4)
        change(rows)
        with pytest.raises(ValueError, match=match) as info:
            write_shard_for(manifest, tmp_path, shard_name(0), rows)
        assert shard_name(0) in str(info.value)
    assert list(tmp_path.iterdir()) == []
