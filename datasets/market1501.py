"""Reading a Market-1501 folder for re-ID, with torchreid's rules (the reference most users compare with).

Layout: `query/` (3,368 queries), `bounding_box_test/` (the gallery) and
`bounding_box_train/` (training images, read when present). File names are
`PPPP_cCsS_FFFFFF_NN.jpg`: person id, camera C, sequence S, frame, box number.

What the lists hold, as torchreid's `Market1501.process_dir` reads them:

- every `.jpg` named that way; other files (`Thumbs.db`) are ignored and counted;
- id -1 (*junk*) is dropped from every split when reading, and counted: nothing
  downstream (ranking, re-ranking, the gallery size) ever sees it;
- id 0000 (*distractors*, background) stays in the gallery as wrong answers and
  in training (one more class, as torchreid relabels it);
- ids must lie in 0..1501 and cameras in 1..6; anything else is refused, naming
  the file (torchreid asserts).

Where we differ, on purpose: a two-digit camera (`c12`) is refused, where
torchreid's one-digit pattern reads it as camera 1 and silently merges two
cameras; a 0000 query (none in the released data) is dropped and counted,
because a distractor has no identity: torchreid would score it with the other
distractors as its correct matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clasp.datasets.errors import DatasetError

NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
REQUIRED_PARTS = ("query", "bounding_box_test")
OPTIONAL_PARTS = ("bounding_box_train",)
JUNK_ID, DISTRACTOR_ID = -1, 0
MAX_ID = 1501  # identities 1..1501, and 0 for distractors
CAMERAS = range(1, 7)


@dataclass
class MarketSplit:
    paths: list[Path] = field(default_factory=list)
    identity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    camera: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignored: int = 0  # files whose names are not Market-1501 image names
    junk: int = 0  # images of id -1, dropped
    distractors_dropped: int = 0  # 0000 images dropped (queries only: a distractor has no identity to find)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Market1501:
    root: Path
    query: MarketSplit
    gallery: MarketSplit
    train: MarketSplit | None

    def splits(self) -> dict[str, MarketSplit]:
        found = {"query": self.query, "gallery": self.gallery, "train": self.train}
        return {name: split for name, split in found.items() if split is not None}

    def dropped(self) -> dict:
        """What reading left out, per split: reported with the results so that nothing is lost silently."""
        splits = self.splits()
        return {"junk_images": {name: s.junk for name, s in splits.items()},
                "distractor_queries": self.query.distractors_dropped,
                "distractor_gallery_images": int((self.gallery.identity == DISTRACTOR_ID).sum()),
                "ignored_files": sum(s.ignored for s in splits.values())}


def _identity_and_camera(path: Path, match: re.Match) -> tuple[int, int]:
    identity, camera = int(match.group(1)), int(match.group(2))
    if identity != JUNK_ID and not 0 <= identity <= MAX_ID:
        raise DatasetError(f"{path}: identity {match.group(1)} is outside Market-1501's 0..{MAX_ID} "
                             f"(and -1 for junk)")
    if camera not in CAMERAS:
        raise DatasetError(f"{path}: camera c{match.group(2)} is not one of Market-1501's c1..c6")
    return identity, camera


def read_split(folder: Path, drop_distractors: bool = False) -> MarketSplit:
    """The images of one folder; junk dropped (and distractors too, for queries), each counted."""
    split = MarketSplit()
    paths, ids, cams = [], [], []
    for path in sorted(folder.iterdir()):
        m = NAME.match(path.name)
        if not m or not path.is_file():
            split.ignored += 1
            continue
        identity, camera = _identity_and_camera(path, m)
        if identity == JUNK_ID or (drop_distractors and identity == DISTRACTOR_ID):
            split.junk += identity == JUNK_ID
            split.distractors_dropped += identity == DISTRACTOR_ID
            continue
        paths.append(path)
        ids.append(identity)
        cams.append(camera)
    split.paths, split.identity, split.camera = paths, np.array(ids, np.int64), np.array(cams, np.int64)
    return split


def is_market1501(root: str | Path) -> bool:
    root = Path(root)
    return any((root / part).is_dir() for part in (*REQUIRED_PARTS, *OPTIONAL_PARTS))


def read_market1501(root: str | Path) -> Market1501:
    """The query, gallery (and train, when present) lists of a Market-1501 folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder does not exist")
    missing = [p for p in REQUIRED_PARTS if not (root / p).is_dir()]
    if missing:
        raise DatasetError(f"{root}: not a complete Market-1501 folder, missing {', '.join(m + '/' for m in missing)}")
    query = read_split(root / "query", drop_distractors=True)
    gallery = read_split(root / "bounding_box_test")
    for name, split in (("query", query), ("bounding_box_test", gallery)):
        if len(split):
            continue
        if split.junk or split.distractors_dropped:
            raise DatasetError(f"{root / name}: no images left once its {split.junk} junk (-1) and "
                                 f"{split.distractors_dropped} distractor (0000) images are dropped")
        raise DatasetError(f"{root / name}: no images named like 0001_c1s1_000151_01.jpg")
    train = read_split(root / "bounding_box_train") if (root / "bounding_box_train").is_dir() else None
    return Market1501(root, query, gallery, train)
