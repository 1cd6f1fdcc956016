"""COCO person keypoints: the folder layout, its reader, and the person instances top-down pose works on.

```
DIR/annotations/person_keypoints_{train,val}2017.json
DIR/{train,val}2017/<file_name>
```

Read as mmpose reads it for top-down pose: an instance is one non-crowd
annotation with at least one labeled keypoint and a box of positive size once
clipped to its image (the rest are counted in `dropped`). Its box is the
annotation's `bbox`, or, with a detections file (COCO results format:
`[{"image_id", "category_id", "bbox", "score"}]`, the usual detected-box
protocol), every person detection of the split's images instead, scored by the
detector. The files are checked before anything runs, each problem one
`DatasetError` naming the file: a missing key, a keypoint array that is not
17 x [x, y, v], a box outside its image (by more than a pixel), an annotation
or detection of an image that is not listed, an image listed but absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clasp.common.json_files import read_json
from clasp.datasets.errors import DatasetError
from clasp.datasets.keypoint_names import KEYPOINT_NAMES, NUM_KEYPOINTS, PERSON_CATEGORY, SKELETON

SPLITS = ("train", "val")
IMAGE_KEYS = ("id", "file_name", "height", "width")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "keypoints", "num_keypoints", "area", "iscrowd")
DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
BOX_SLACK = 1.0  # pixels a box may reach past its image (rounding in the released files)


def coco_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"person_keypoints_{split}2017.json"


def image_folder(root: Path, split: str) -> Path:
    return Path(root) / f"{split}2017"


def is_coco_keypoints(root: Path) -> bool:
    return any(coco_file(root, split).is_file() for split in SPLITS)


def keypoints_document(images: list[dict], annotations: list[dict]) -> dict:
    """A `person_keypoints_*.json` document with COCO's top-level keys and its person category."""
    return {"info": {"description": "clasp synth, COCO person keypoints layout"}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": [{"id": PERSON_CATEGORY, "name": "person", "supercategory": "person",
                            "keypoints": list(KEYPOINT_NAMES), "skeleton": [list(s) for s in SKELETON]}]}


@dataclass
class PoseInstances:
    """The persons of one split, one row each: where to crop and (with ground-truth boxes) the truth."""

    annotation_file: Path
    image_paths: list[Path]
    image_ids: np.ndarray  # (n,) int64
    boxes: np.ndarray  # (n, 4) float64 x, y, w, h, clipped to the image
    scores: np.ndarray  # (n,) box score: 1 for ground truth, the detector's otherwise
    keypoints: np.ndarray  # (n, 17, 3) float64 x, y, v; zeros for detections
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)


def read_coco_keypoints(root: Path, split: str, detections: Path | None = None) -> PoseInstances:
    """The instances of `split` (ground-truth boxes, or those of `detections`); input errors as DatasetError."""
    path = coco_file(root, split)
    document = _load_json(path, dict)
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DatasetError(f"{path}: missing key {key!r} (a list)")
    _check_person_category(path, document["categories"])
    images = _images(path, document["images"], image_folder(root, split))
    if detections is not None:
        return _detected(path, images, Path(detections))
    return _annotated(path, images, document["annotations"])


def read_coco_pose(root: Path, detections: Path | None = None) -> tuple[PoseInstances, PoseInstances]:
    """(train, val) instances, val with the boxes of `detections` when given; empty splits as DatasetError."""
    train, val = read_coco_keypoints(root, "train"), read_coco_keypoints(root, "val", detections)
    if detections is not None and not len(val):
        raise DatasetError(f"{detections}: no person box of an image of {val.annotation_file}")
    for instances in (train, val):
        if not len(instances):
            raise DatasetError(f"{instances.annotation_file}: no person with a labeled keypoint and a box")
    return train, val


def _load_json(path: Path, kind: type):
    data = read_json(path, DatasetError)
    if not isinstance(data, kind):
        raise DatasetError(f"{path}: expected a JSON {'object' if kind is dict else 'list'}")
    return data


def _check_person_category(path: Path, categories: list) -> None:
    person = [c for c in categories if isinstance(c, dict) and c.get("id") == PERSON_CATEGORY]
    if not person:
        raise DatasetError(f"{path}: no category with id {PERSON_CATEGORY} (person)")
    names = person[0].get("keypoints")
    if not isinstance(names, list) or len(names) != NUM_KEYPOINTS:
        raise DatasetError(f"{path}: the person category must list {NUM_KEYPOINTS} keypoints, "
                             f"found {len(names) if isinstance(names, list) else 'none'}")


def _required(path: Path, entry, keys: tuple[str, ...], what: str) -> dict:
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: {what} is not an object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"{path}: {what} {entry.get('id', '')} is missing key {missing[0]!r}".replace("  ", " "))
    return entry


def _images(path: Path, entries: list, folder: Path) -> dict[int, dict]:
    """{image id: entry with its `path`}; every listed image must exist."""
    images = {}
    for entry in entries:
        entry = _required(path, entry, IMAGE_KEYS, "image")
        if isinstance(entry["id"], bool) or not isinstance(entry["id"], int):
            raise DatasetError(f"{path}: image id {entry['id']!r} is not an integer")
        file = folder / str(entry["file_name"])
        if not file.is_file():
            raise DatasetError(f"{path}: image {entry['id']} is listed but {file} does not exist")
        images[entry["id"]] = {**entry, "path": file}
    return images


def _numbers(path: Path, value, length: int, what: str) -> np.ndarray:
    ok = isinstance(value, list) and len(value) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        size = len(value) if isinstance(value, list) else type(value).__name__
        raise DatasetError(f"{path}: {what} must be {length} numbers, found {size}")
    return np.asarray(value, np.float64)


def _box_in_image(path: Path, box: np.ndarray, image: dict, what: str) -> np.ndarray:
    """The box clipped to its image; one reaching past it by more than BOX_SLACK is refused."""
    x, y, w, h = box
    width, height = float(image["width"]), float(image["height"])
    if w < 0 or h < 0 or x < -BOX_SLACK or y < -BOX_SLACK or x + w > width + BOX_SLACK or y + h > height + BOX_SLACK:
        raise DatasetError(f"{path}: {what} has bbox {box.tolist()} outside its image "
                             f"{image['id']} ({int(width)}x{int(height)} pixels)")
    x0, y0 = max(x, 0.0), max(y, 0.0)
    return np.array([x0, y0, min(x + w, width) - x0, min(y + h, height) - y0])


def _annotated(path: Path, images: dict[int, dict], annotations: list) -> PoseInstances:
    rows, dropped = [], {"crowd": 0, "no_keypoints": 0, "empty_box": 0}
    for entry in annotations:
        entry = _required(path, entry, ANNOTATION_KEYS, "annotation")
        what = f"annotation {entry['id']}"
        if entry["image_id"] not in images:
            raise DatasetError(f"{path}: {what} is of image {entry['image_id']}, which is not listed")
        keypoints = _numbers(path, entry["keypoints"], 3 * NUM_KEYPOINTS, f"{what}: keypoints").reshape(-1, 3)
        if not np.isin(keypoints[:, 2], (0, 1, 2)).all():
            raise DatasetError(f"{path}: {what}: keypoint visibility must be 0, 1 or 2")
        image = images[entry["image_id"]]
        box = _box_in_image(path, _numbers(path, entry["bbox"], 4, f"{what}: bbox"), image, what)
        if entry["category_id"] != PERSON_CATEGORY:
            continue
        reason = ("crowd" if entry["iscrowd"] else "no_keypoints" if not (keypoints[:, 2] > 0).any()
                  else "empty_box" if box[2] <= 0 or box[3] <= 0 else None)
        if reason:
            dropped[reason] += 1
            continue
        rows.append((image, box, 1.0, keypoints))
    return _instances(path, rows, dropped)


def _detected(path: Path, images: dict[int, dict], detections_path: Path) -> PoseInstances:
    rows, dropped = [], {"not_person": 0, "empty_box": 0}
    for entry in _load_json(detections_path, list):
        entry = _required(detections_path, entry, DETECTION_KEYS, "detection")
        if entry["image_id"] not in images:
            raise DatasetError(f"{detections_path}: a detection is of image {entry['image_id']}, "
                                 f"which {path.name} does not list")
        if entry["category_id"] != PERSON_CATEGORY:
            dropped["not_person"] += 1
            continue
        image = images[entry["image_id"]]
        box = _box_in_image(detections_path, _numbers(detections_path, entry["bbox"], 4, "a detection's bbox"),
                            image, f"a detection of image {entry['image_id']}")
        if box[2] <= 0 or box[3] <= 0:
            dropped["empty_box"] += 1
            continue
        score = _numbers(detections_path, [entry["score"]], 1, "a detection's score")[0]
        rows.append((image, box, float(score), np.zeros((NUM_KEYPOINTS, 3))))
    return _instances(path, rows, dropped)


def _instances(path: Path, rows: list, dropped: dict[str, int]) -> PoseInstances:
    return PoseInstances(
        path, [image["path"] for image, *_ in rows], np.array([image["id"] for image, *_ in rows], np.int64),
        np.array([box for _, box, _, _ in rows], np.float64).reshape(-1, 4),
        np.array([score for _, _, score, _ in rows], np.float64),
        np.array([k for *_, k in rows], np.float64).reshape(-1, NUM_KEYPOINTS, 3), dropped)
