"""Reading the ground truth `clasp synth` writes (format in `clasp.datasets.synth.writer`).

Keypoints are optional: a world written before they existed has none
(`keypoints` is None) and every other field loads as before; a world whose
lines carry them has them on every line, each 17 x [x, y, v] with v in 0, 1, 2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from clasp.datasets.errors import DatasetError
from clasp.datasets.keypoint_names import NUM_KEYPOINTS
from clasp.datasets.synth.writer import TRUTH_FORMAT, TRUTH_VERSION
from clasp.store import Vocabulary

IMAGES_PREFIX = "images/"


@dataclass
class SynthTruth:
    """One synthetic world: image paths (relative to `images/`) with identity, camera, attributes."""

    root: Path
    paths: list[str]
    identity: np.ndarray  # (N,) int64
    camera: np.ndarray  # (N,) int64
    attributes: list[dict[str, str]]
    part_names: list[str]
    keypoints: np.ndarray | None = None  # (N, 17, 3) float64 x, y, visibility; None: an older world

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def parts_file(self) -> Path:
        return self.root / "truth" / "parts.h5"

    def __len__(self) -> int:
        return len(self.paths)

    def index_of(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    def file_sha1(self) -> list[str | None]:
        """sha1 (hex) of each image file's bytes under `images/`, in `paths` order; None for a missing file."""
        out: list[str | None] = []
        for p in self.paths:
            try:
                out.append(hashlib.sha1((self.images_dir / p).read_bytes()).hexdigest())
            except OSError:
                out.append(None)
        return out

    def attribute_indices(self, vocab: Vocabulary) -> np.ndarray:
        """(N, G) index of each image's value within each group of `vocab`, matched by name."""
        out = np.empty((len(self.paths), len(vocab.attributes)), np.int64)
        for g, group in enumerate(vocab.attributes):
            lookup = {v.name: k for k, v in enumerate(group.values)}
            for i, attrs in enumerate(self.attributes):
                value = attrs.get(group.group)
                if value not in lookup:
                    raise DatasetError(f"{self.root / 'truth' / 'annotations.jsonl'}: image {self.paths[i]} has "
                                         f"{group.group}={value!r}, not a value of the vocabulary")
                out[i, g] = lookup[value]
        return out

    def read_masks(self, indices: np.ndarray | None = None) -> np.ndarray:
        """(n, 256, 128) uint8 part masks of the given rows (all rows when None), in that order."""
        with h5py.File(self.parts_file, "r", locking=False) as f:
            data = f["part_mask"]
            if indices is None:
                return data[:]
            indices = np.asarray(indices, np.int64)
            order = np.argsort(indices)
            sorted_idx = indices[order]
            unique, inverse = np.unique(sorted_idx, return_inverse=True)
            block = data[unique] if len(unique) else np.zeros((0, *data.shape[1:]), np.uint8)
            out = np.empty((len(indices), *data.shape[1:]), np.uint8)
            out[order] = block[inverse]
            return out

    @classmethod
    def load(cls, root: str | Path) -> "SynthTruth":
        """Load a folder written by `clasp synth` (or its `truth/` subfolder)."""
        root = Path(root)
        if root.name == "truth" and (root / "annotations.jsonl").exists():
            root = root.parent
        if not root.is_dir():
            raise DatasetError(f"{root}: folder does not exist")
        annotations = root / "truth" / "annotations.jsonl"
        parts = root / "truth" / "parts.h5"
        for need in (annotations, parts):
            if not need.is_file():
                raise DatasetError(f"{root}: no synthetic ground truth ({need.relative_to(root)} missing; "
                                     "`clasp synth` writes it)")
        paths, identity, camera, attributes, keypoints = [], [], [], [], []
        with open(annotations, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    paths.append(str(row["path"]))
                    identity.append(int(row["identity"]))
                    camera.append(int(row["camera"]))
                    attributes.append(dict(row["attributes"]))
                    keypoints.append(_keypoints(row.get("keypoints")))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise DatasetError(f"{annotations}:{line_no}: malformed annotation ({exc})") from None
        try:
            with h5py.File(parts, "r", locking=False) as f:
                fmt = f.attrs.get("format")
                fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
                if fmt != TRUTH_FORMAT or int(f.attrs.get("version", -1)) != TRUTH_VERSION:
                    raise DatasetError(f"{parts}: not a clasp synth ground truth (format {fmt!r})")
                part_names = json.loads(f.attrs["part_names"])
                mask_paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in f["path"][:]]
        except OSError as exc:
            raise DatasetError(f"{parts}: cannot read ({exc})") from None
        if mask_paths != paths:
            raise DatasetError(f"{parts}: image paths differ from {annotations.name} (files from different runs?)")
        return cls(root, paths, np.array(identity, np.int64), np.array(camera, np.int64), attributes, part_names,
                   _stacked_keypoints(keypoints, annotations, paths))


def _keypoints(value) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, np.float64)
    if array.shape != (NUM_KEYPOINTS, 3) or not np.isfinite(array).all() or not np.isin(array[:, 2], (0, 1, 2)).all():
        raise ValueError(f"keypoints must be {NUM_KEYPOINTS} finite [x, y, v] with v in 0, 1, 2")
    return array


def _stacked_keypoints(rows: list[np.ndarray | None], annotations: Path, paths: list[str]) -> np.ndarray | None:
    """(N, 17, 3), or None for a world without keypoints; a world with them on some lines only is refused."""
    given = sum(row is not None for row in rows)
    if given == 0:
        return None
    if given < len(rows):
        first = next(p for p, row in zip(paths, rows) if row is None)
        raise DatasetError(f"{annotations}: image {first} has no keypoints, while {given} other images have them")
    return np.stack(rows)


def truth_path_of(shard_path: str) -> str:
    """A shard row's `path` as a ground-truth key: `clasp label` may have been pointed at
    the world folder (paths start with `images/`) or at `images/` itself."""
    path = shard_path.replace("\\", "/")
    return path[len(IMAGES_PREFIX):] if path.startswith(IMAGES_PREFIX) else path
