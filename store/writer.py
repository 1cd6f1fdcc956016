"""Writing shards so that a crash never leaves one a reader would accept.

A shard goes to `shard-XXXXXX.h5.tmp`, is flushed and fsynced, hashed, then
renamed; only then is it added to the manifest (itself replaced atomically).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from clasp.store.digest import file_sha256
from clasp.common.durable import fsync_dir
from clasp.store.manifest import Manifest, ShardEntry
from clasp.store.schema import (
    CHUNK_ROWS, FIELDS, FORMAT_VERSION, GZIP_LEVEL, IMAGE_DTYPE, KEY_DTYPE, ORIG_HW_DTYPE, PATH_DTYPE,
    SHARD_FORMAT, TMP_SUFFIX, LabelRows, row_shape,
)


def write_shard(
    path: str | Path,
    rows: LabelRows,
    *,
    vocab_sha256: str,
    clip_model: str,
    label_grid: tuple[int, int],
    num_attributes: int,
    inputs_sha256: str | None = None,
    num_parts: int | None = None,
) -> ShardEntry:
    """Write `rows` as one shard at `path` (atomically) and return its manifest entry."""
    path = Path(path)
    rows.check(label_grid, num_attributes, str(path), num_parts=num_parts)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    values = _column_values(rows)
    try:
        with h5py.File(tmp, "w", libver="earliest") as f:
            _write_attributes(f, n, vocab_sha256, clip_model)
            for field in FIELDS:
                _write_column(f, field, values[field.name], n, row_shape(field, label_grid, num_attributes))
            f.flush()
        digest, size = _fsync_and_hash(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return ShardEntry(file=path.name, rows=n, sha256=digest, bytes=size, inputs_sha256=inputs_sha256)


def _column_values(rows: LabelRows) -> dict[str, np.ndarray]:
    """Each column of `rows` as an array of the shard's dtype."""
    n = len(rows)
    return {
        "image": _vlen_bytes(rows.image),
        "key": np.array([k.encode("ascii") for k in rows.key], dtype=KEY_DTYPE).reshape(n),
        "path": np.array(rows.path, dtype=PATH_DTYPE).reshape(n),
        "orig_hw": np.asarray(rows.orig_hw, dtype=ORIG_HW_DTYPE),
        "part_mask": np.asarray(rows.part_mask, dtype=np.uint8),
        "part_conf": np.asarray(rows.part_conf, dtype=np.float16),
        "attr_logits": np.asarray(rows.attr_logits, dtype=np.float16),
    }


def _write_attributes(f: h5py.File, n: int, vocab_sha256: str, clip_model: str) -> None:
    """The shard's file attributes: format, version, rows, vocabulary hash and labelling model."""
    f.attrs["format"] = SHARD_FORMAT
    f.attrs["version"] = FORMAT_VERSION
    f.attrs["rows"] = n
    f.attrs["vocab_sha256"] = vocab_sha256
    f.attrs["clip_model"] = clip_model


def _write_column(f: h5py.File, field, values: np.ndarray, n: int, shape: tuple[int, ...]) -> None:
    """One chunked, gzip-compressed dataset of `n` rows of `shape`."""
    f.create_dataset(
        field.name,
        shape=(n, *shape),
        maxshape=(None, *shape),
        dtype=field.dtype,
        chunks=(CHUNK_ROWS, *shape),
        compression="gzip",
        compression_opts=GZIP_LEVEL,
        shuffle=True,
    )
    if n and field.name == "image":
        # h5py's high-level setter stacks equal-length vlen rows into a
        # 2-D array and refuses it; the low-level write takes them as is.
        f[field.name].id.write(h5py.h5s.ALL, h5py.h5s.ALL, values)
    elif n:
        f[field.name][...] = values


def _fsync_and_hash(tmp: Path) -> tuple[str, int]:
    """Force the written file to disk; returns its (sha256, size in bytes)."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    return file_sha256(tmp), tmp.stat().st_size


def write_shard_for(manifest: Manifest, root: str | Path, file: str, rows: LabelRows,
                    inputs_sha256: str | None = None) -> ShardEntry:
    """`write_shard` with the vocabulary, model and grid taken from a manifest."""
    return write_shard(
        Path(root) / file,
        rows,
        vocab_sha256=manifest.vocab.sha256,
        clip_model=manifest.clip.model,
        label_grid=manifest.label_grid,
        num_attributes=manifest.vocab.num_attributes,
        inputs_sha256=inputs_sha256,
        num_parts=manifest.vocab.num_parts,
    )


def record_shard(manifest: Manifest, root: str | Path, entry: ShardEntry) -> None:
    """Add or replace a finished shard's entry (kept sorted by file) and save the manifest."""
    shards = [s for s in manifest.shards if s.file != entry.file]
    shards.append(entry)
    manifest.shards = sorted(shards, key=lambda s: s.file)
    manifest.save(root)


def _vlen_bytes(images: list[bytes]) -> np.ndarray:
    out = np.empty(len(images), dtype=IMAGE_DTYPE)
    for i, b in enumerate(images):
        out[i] = np.frombuffer(b, dtype=np.uint8)
    return out
