"""Reading a Market-1501 folder for the re-ID evaluation.

Layout: `query/` (3,368 queries), `bounding_box_test/` (the gallery) and
`bounding_box_train/` (training images, not used by a frozen-backbone kNN
evaluation; read when present). File names are `PPPP_cCsS_FFFFFF_NN.jpg`:
person id, camera C, sequence S, frame, box number. As in the official
protocol, gallery images with id -1 are *junk* (removed from every ranking)
and id 0000 are *distractors* (kept as wrong answers); files whose names do
not follow the pattern (e.g. `Thumbs.db`) are ignored and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clasp.evaluation.errors import EvalInputError

NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpe?g$", re.IGNORECASE)
REQUIRED_PARTS = ("query", "bounding_box_test")
OPTIONAL_PARTS = ("bounding_box_train",)


@dataclass
class MarketSplit:
    paths: list[Path] = field(default_factory=list)
    identity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    camera: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignored: int = 0  # files whose names are not Market-1501 image names

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Market1501:
    root: Path
    query: MarketSplit
    gallery: MarketSplit
    train: MarketSplit | None


def read_split(folder: Path) -> MarketSplit:
    paths, ids, cams, ignored = [], [], [], 0
    for path in sorted(folder.iterdir()):
        m = NAME.match(path.name)
        if not m or not path.is_file():
            ignored += 1
            continue
        paths.append(path)
        ids.append(int(m.group(1)))
        cams.append(int(m.group(2)))
    return MarketSplit(paths, np.array(ids, np.int64), np.array(cams, np.int64), ignored)


def is_market1501(root: str | Path) -> bool:
    root = Path(root)
    return any((root / part).is_dir() for part in (*REQUIRED_PARTS, *OPTIONAL_PARTS))


def read_market1501(root: str | Path) -> Market1501:
    """The query, gallery (and train, when present) lists of a Market-1501 folder."""
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"{root}: folder does not exist")
    missing = [p for p in REQUIRED_PARTS if not (root / p).is_dir()]
    if missing:
        raise EvalInputError(f"{root}: not a complete Market-1501 folder, missing {', '.join(m + '/' for m in missing)}")
    query, gallery = read_split(root / "query"), read_split(root / "bounding_box_test")
    for name, split in (("query", query), ("bounding_box_test", gallery)):
        if not len(split):
            raise EvalInputError(f"{root / name}: no images named like 0001_c1s1_000151_01.jpg")
    train = read_split(root / "bounding_box_train") if (root / "bounding_box_train").is_dir() else None
    return Market1501(root, query, gallery, train)
