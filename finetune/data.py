"""The benchmark folder of a recipe: which layout it is, and its splits in one shape per task.

Readers live in `clasp.evaluation` (shared with `clasp eval`); this module
only picks one (`--layout`, or recognised from the folder's content) and turns
reader errors into `FinetuneInputError`, the one-line user error of the
recipes. Re-ID training identities are renumbered 0..C-1 in sorted order, as
torchreid relabels them: the readers already dropped Market-1501's junk (-1);
a distractor id 0000 in `bounding_box_train/` (none in the released data) is
one more class, as in torchreid. Pose reads COCO's person keypoints (`train`
trains, `val` is scored, with `detections` boxes when given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clasp.errors import InputError
from clasp.datasets.keypoint_names import KEYPOINT_NAMES
from clasp.finetune.config import LAYOUTS, FinetuneConfig


class FinetuneInputError(InputError):
    """Input the user must fix (data folder, backbone, run folder): one line, exit 2."""


@dataclass
class ReidData:
    layout: str
    train_paths: list[Path]
    train_labels: np.ndarray  # (N,) 0..C-1
    num_classes: int
    query: object  # MarketSplit
    gallery: object  # MarketSplit
    dropped: dict  # what reading left out (`Market1501.dropped`), reported with the results


@dataclass
class PoseData:
    layout: str
    train: object  # PoseInstances
    val: object  # PoseInstances, ground-truth or detected boxes
    class_names: tuple[str, ...] = KEYPOINT_NAMES  # the outputs: one heat map per keypoint


def detect_layout(task: str, data: Path) -> str:
    from clasp.datasets.coco_keypoints import is_coco_keypoints
    from clasp.datasets.lip import cihp_root, is_lip
    from clasp.datasets.msmt17 import is_msmt17
    from clasp.datasets.pa100k import is_pa100k
    from clasp.datasets.peta import is_peta

    if not data.is_dir():
        raise FinetuneInputError(f"{data}: data folder does not exist")
    tests = {"market1501": lambda d: any((d / p).is_dir() for p in ("bounding_box_train", "query", "bounding_box_test")),
             "msmt17": is_msmt17, "pa100k": is_pa100k, "peta": is_peta, "lip": is_lip,
             "cihp": lambda d: cihp_root(d) is not None, "coco": is_coco_keypoints}
    for layout in LAYOUTS[task]:
        if tests[layout](data):
            return layout
    raise FinetuneInputError(f"{data}: not a {' or '.join(LAYOUTS[task])} folder (each layout: docs/commands/finetune.md)")


def load_data(config: FinetuneConfig):
    """ReidData, AttributeData, ParsingData or PoseData for the recipe; input problems as FinetuneInputError."""
    data = Path(config.data)
    layout = config.layout or detect_layout(config.task, data)
    try:
        if config.task == "reid":
            return _reid(layout, data)
        if config.task == "attributes":
            return _attributes(layout, data, config)
        if config.task == "pose":
            return _pose(layout, data, config)
        return _parsing(layout, data)
    except InputError as exc:
        raise FinetuneInputError(str(exc)) from None


def _reid(layout: str, data: Path) -> ReidData:
    from clasp.datasets.market1501 import read_market1501
    from clasp.datasets.msmt17 import read_msmt17

    folder = read_market1501(data) if layout == "market1501" else read_msmt17(data)
    train = folder.train
    missing = "bounding_box_train/" if layout == "market1501" else "list_train.txt"
    if train is None or not len(train):
        raise FinetuneInputError(f"{data}: no training images (missing {missing})")
    ids, labels = np.unique(train.identity, return_inverse=True)
    if len(ids) < 2:
        raise FinetuneInputError(f"{data}: re-ID training needs at least 2 identities, found {len(ids)}")
    return ReidData(layout, list(train.paths), labels.astype(np.int64), len(ids), folder.query, folder.gallery,
                    folder.dropped())


def _attributes(layout: str, data: Path, config: FinetuneConfig):
    from clasp.datasets.pa100k import read_pa100k
    from clasp.datasets.peta import read_peta

    found = read_pa100k(data) if layout == "pa100k" else read_peta(data, partition=config.partition, seed=config.seed)
    found = found.select(config.attribute_names())
    for split in ("train", "test"):
        if not len(found.splits[split]):
            raise FinetuneInputError(f"{data}: the {split} split has no images")
    return found


def _parsing(layout: str, data: Path):
    from clasp.datasets.lip import read_cihp, read_lip

    return read_lip(data) if layout == "lip" else read_cihp(data)


def _pose(layout: str, data: Path, config: FinetuneConfig) -> PoseData:
    from clasp.datasets.coco_keypoints import read_coco_pose

    return PoseData(layout, *read_coco_pose(data, Path(config.detections) if config.detections else None))
