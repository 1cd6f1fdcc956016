"""Format version 1 of a label shard: names, dtypes and shapes of its datasets.

This file is the single place the layout is spelled out; the writer, the reader
and `verify` all take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

FORMAT_VERSION = 1
SHARD_FORMAT = "clasp-shard"
MANIFEST_FORMAT = "clasp-shards"
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".h5"
SHARD_PATTERN = "shard-{index:06d}" + SHARD_SUFFIX
TMP_SUFFIX = ".tmp"  # a shard being written; never listed in a manifest
CHUNK_ROWS = 256
GZIP_LEVEL = 4

IMAGE_DTYPE = h5py.vlen_dtype(np.uint8)
PATH_DTYPE = h5py.string_dtype("utf-8")
KEY_DTYPE = np.dtype("S40")
ORIG_HW_DTYPE = np.dtype(np.uint16)
# The longest source side a row can record: `clasp label` skips (and records) an image with a longer side
# rather than store a wrapped-around size.
MAX_ORIG_SIDE = int(np.iinfo(ORIG_HW_DTYPE).max)


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index)


@dataclass(frozen=True)
class Field:
    """One dataset of a shard: dtype and the shape of one row."""

    name: str
    dtype: np.dtype
    row_shape: tuple[str, ...]  # symbolic: "h", "w", "A" or literal sizes as strings


FIELDS: tuple[Field, ...] = (
    Field("image", IMAGE_DTYPE, ()),
    Field("key", KEY_DTYPE, ()),
    Field("path", PATH_DTYPE, ()),
    Field("orig_hw", ORIG_HW_DTYPE, ("2",)),
    Field("part_mask", np.dtype(np.uint8), ("h", "w")),
    Field("part_conf", np.dtype(np.float16), ("h", "w")),
    Field("attr_logits", np.dtype(np.float16), ("A",)),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)


def row_shape(field: Field, grid: tuple[int, int], num_attributes: int) -> tuple[int, ...]:
    sizes = {"h": grid[0], "w": grid[1], "A": num_attributes}
    return tuple(sizes[s] if s in sizes else int(s) for s in field.row_shape)


@dataclass
class LabelRows:
    """A block of consecutive rows of one shard, as plain Python/NumPy values."""

    image: list[bytes]
    key: list[str]
    path: list[str]
    orig_hw: np.ndarray  # (N, 2) uint16
    part_mask: np.ndarray  # (N, h, w) uint8
    part_conf: np.ndarray  # (N, h, w) float16
    attr_logits: np.ndarray  # (N, A) float16

    def __len__(self) -> int:
        return len(self.key)

    def check(self, grid: tuple[int, int], num_attributes: int, source: str = "<rows>",
              num_parts: int | None = None) -> None:
        """Raise ValueError unless every field has N rows of the expected shape.

        Values that the on-disk dtypes would silently mangle are refused too: keys
        longer than the 40 bytes of `S40` or not ASCII, sizes beyond uint16, and
        (given `num_parts`) part indices outside the vocabulary.
        """
        n = len(self)
        for name in ("image", "path"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{source}: field {name} has {len(getattr(self, name))} rows, key has {n}")
        for field in FIELDS[3:]:
            arr = getattr(self, field.name)
            want = (n, *row_shape(field, grid, num_attributes))
            if tuple(arr.shape) != want:
                raise ValueError(f"{source}: field {field.name} has shape {tuple(arr.shape)}, expected {want}")
        for key in self.key:
            if not key or len(key) > KEY_DTYPE.itemsize or not key.isascii() or "\0" in key:
                raise ValueError(f"{source}: key {key!r} is not 1-{KEY_DTYPE.itemsize} ASCII characters")
        hw = np.asarray(self.orig_hw)
        if hw.size and (hw.min() < 0 or hw.max() > MAX_ORIG_SIDE):
            raise ValueError(f"{source}: orig_hw values must be in [0, {MAX_ORIG_SIDE}], got [{hw.min()}, {hw.max()}]")
        mask = np.asarray(self.part_mask)
        if num_parts is not None and mask.size and (mask.min() < 0 or mask.max() >= num_parts):
            raise ValueError(f"{source}: part_mask values must be in [0, {num_parts}), got [{mask.min()}, {mask.max()}]")

    @classmethod
    def concat(cls, parts: list["LabelRows"]) -> "LabelRows":
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(
            image=[b for p in parts for b in p.image],
            key=[k for p in parts for k in p.key],
            path=[s for p in parts for s in p.path],
            orig_hw=np.concatenate([p.orig_hw for p in parts]),
            part_mask=np.concatenate([p.part_mask for p in parts]),
            part_conf=np.concatenate([p.part_conf for p in parts]),
            attr_logits=np.concatenate([p.attr_logits for p in parts]),
        )

    @classmethod
    def empty(cls, grid: tuple[int, int], num_attributes: int) -> "LabelRows":
        h, w = grid
        return cls(
            image=[], key=[], path=[],
            orig_hw=np.zeros((0, 2), ORIG_HW_DTYPE),
            part_mask=np.zeros((0, h, w), np.uint8),
            part_conf=np.zeros((0, h, w), np.float16),
            attr_logits=np.zeros((0, num_attributes), np.float16),
        )
