"""Keypoint results in COCO's results format, scored by OKS AP with pycocotools' `COCOeval`.

The recipe and the COCO pose probe write their predictions with
`write_keypoint_results` (a list of `{"image_id", "category_id": 1,
"keypoints": [x, y, score] x 17, "score"}`, the file COCO's evaluation server
takes, `KEYPOINT_RESULTS` by name) and `coco_keypoint_ap` scores that
file against the annotation file with `COCOeval(iouType="keypoints")`: AP
averaged over OKS thresholds 0.50:0.05:0.95, AP at 0.5 and 0.75, AP of medium
(32^2-96^2 pixels of segment area) and large persons, and AR, as fractions. A
number COCOeval cannot compute (-1: no person of that size) is NaN with its
reason.

OKS of a prediction with a truth of area s^2 is the mean over the truth's
labeled keypoints of exp(-d^2 / (2 s^2 (2 sigma_k)^2)). `single_person_ap`
is COCOeval's accumulation for the case of one person per image and one
prediction each (the synthetic world): sorted by score, a true positive where
OKS >= t, precision made monotone and read at 101 recall points, averaged over
the ten thresholds. It equals COCOeval's AP there (tested) at a thousandth of
the cost, which is what lets the bootstrap interval recompute it 1000 times.
`nms_per_image` is mmpose's OKS-NMS of top-down results, image by image.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from clasp.datasets.keypoint_names import OKS_SIGMAS, PERSON_CATEGORY
from clasp.evaluation.pose_crops import expand_boxes
from clasp.evaluation.undefined import explain, undefined

THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
STATS = ("ap", "ap50", "ap75", "ap_m", "ap_l", "ar")
NO_SIZE = "no person of this size in the ground truth"
NO_PREDICTION = "no keypoint predictions to score"
NO_KEYPOINT = "no person with a labeled keypoint to score"
NMS_THRESHOLD = 0.9  # mmpose's OKS-NMS threshold for top-down results
KEYPOINT_RESULTS = "keypoints_val_results.json"  # the predictions of val, in a run folder or beside results.json


def keypoint_results(image_ids: np.ndarray, keypoints: np.ndarray, scores: np.ndarray) -> list[dict]:
    """COCO results: `keypoints` (n, 17, 3) x, y, score per keypoint; `scores` (n,) per person."""
    return [{"image_id": int(i), "category_id": PERSON_CATEGORY,
             "keypoints": [round(float(v), 3) for v in k.reshape(-1)], "score": round(float(s), 6)}
            for i, k, s in zip(image_ids, keypoints, scores)]


def write_keypoint_results(path: Path, results: list[dict]) -> Path:
    Path(path).write_text(json.dumps(results), encoding="utf-8")
    return Path(path)


def coco_keypoint_ap(annotation_file: Path, results_file: Path) -> dict[str, float]:
    """{ap, ap50, ap75, ap_m, ap_l, ar} of the results file by COCOeval (its printing kept off the console)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads(Path(results_file).read_text(encoding="utf-8"))
    if not results:
        return {k: undefined(NO_PREDICTION) for k in STATS}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotation_file))
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats  # AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl
    return {name: explain(float(v) if v >= 0 else float("nan"), NO_SIZE)
            for name, v in zip(STATS, (*stats[:5], stats[5]))}


def oks(predicted: np.ndarray, truth: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """(n,) OKS of predicted (n, 17, >=2) x, y against truth (n, 17, 3) of segment areas (n,); NaN without
    labeled keypoints."""
    variances = (2 * OKS_SIGMAS) ** 2
    d2 = ((predicted[:, :, :2] - truth[:, :, :2]) ** 2).sum(-1)
    e = d2 / variances / (np.asarray(areas, np.float64)[:, None] + np.spacing(1)) / 2
    labeled = truth[:, :, 2] > 0
    count = labeled.sum(1)
    total = (np.exp(-e) * labeled).sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def single_person_ap(similarity: np.ndarray, scores: np.ndarray,
                     thresholds: np.ndarray = THRESHOLDS) -> tuple[float, float]:
    """(AP, AR) over `thresholds` of one prediction per image against one person per image, as COCOeval
    accumulates them (AP50: `thresholds=(0.5,)`).

    Rows whose `similarity` is NaN (a person with no labeled keypoint) are ignored, as COCOeval ignores them."""
    keep = np.isfinite(similarity)
    similarity, scores = similarity[keep], np.asarray(scores, np.float64)[keep]
    if not len(similarity):
        return float("nan"), float("nan")
    order = np.argsort(-scores, kind="mergesort")
    ranked = similarity[order]
    aps, ars = [], []
    for t in thresholds:
        hits = ranked >= t
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        recall, precision = tp / len(ranked), tp / (tp + fp)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        aps.append(np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0).mean())
        ars.append(recall[-1])
    return float(np.mean(aps)), float(np.mean(ars))


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
            threshold: float = NMS_THRESHOLD) -> np.ndarray:
    """Indices kept by OKS non-maximum suppression among the predictions of one image (mmpose's `oks_nms`):
    best score first, dropping every later one whose OKS with a kept one (mean area of the two) exceeds
    `threshold`."""
    order = list(np.argsort(-np.asarray(scores), kind="mergesort"))
    keep = []
    while order:
        best, order = order[0], order[1:]
        keep.append(best)
        if not order:
            break
        rest = np.array(order)
        reference = np.repeat(np.concatenate([keypoints[best:best + 1, :, :2], np.ones((1, keypoints.shape[1], 1))],
                                             axis=2), len(rest), 0)
        similarity = oks(keypoints[rest], reference, (areas[best] + areas[rest]) / 2)
        order = [i for i, s in zip(order, similarity) if not s > threshold]
    return np.array(keep, np.int64)


def nms_per_image(instances, keypoints: np.ndarray, scores: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Rows of `instances` (PoseInstances) kept by OKS-NMS within each image; the area of a person is that of
    its box expanded to `input_hw`."""
    _, sizes = expand_boxes(instances.boxes, input_hw)
    areas = sizes.prod(1)
    kept = []
    for image_id in np.unique(instances.image_ids):
        rows = np.flatnonzero(instances.image_ids == image_id)
        kept.append(rows[oks_nms(keypoints[rows], scores[rows], areas[rows])])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
