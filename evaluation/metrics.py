"""The metrics of the downstream probes, each as the literature defines it.

- **mA** (pedestrian attribute recognition, PETA/PA-100K convention): every
  binary attribute j gets the mean of its positive and negative recall,
  (TP_j/P_j + TN_j/N_j) / 2, over the test images; mA is the mean over
  attributes. Our vocabulary groups mutually exclusive values, so a group is
  turned into binary attributes first (`clasp.datasets.attribute_data.binary_attributes`): a two-value group
  is ONE binary attribute (its first value, e.g. gender=male, backpack=yes; the
  second value's numbers are the same), a group of k > 2 values is k one-vs-rest
  attributes (age=child, age=adult, ...). An attribute whose test set has no
  positives or no negatives has no defined mA and is left out of the mean.
- **mIoU**: per class IoU = TP / (TP + FP + FN) accumulated over all pixels
  (or label-grid cells) of the test set; the mean is over classes whose union
  is non-empty (present in the truth or the prediction), as mmsegmentation
  does.
- **re-ID mAP and rank-1**, Market-1501 protocol as torchreid's
  `eval_market1501` computes it: for each query the gallery is ranked by
  similarity (ties keep gallery order); gallery images of the query's identity
  taken by the query's camera are removed from the ranking; every other identity
  (distractors 0000 included) stays as a wrong answer. AP is the
  non-interpolated average of the precision at each correct match; rank-k (CMC)
  is whether a correct image is among the first k remaining ones. Queries
  without any correct match in the gallery are left out, and their number is
  reported; with none left the scores are undefined (NaN with the reason).
  Junk (-1) never reaches the scoring: the readers drop it, so re-ranking and
  scoring see one and the same gallery.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clasp.evaluation.undefined import undefined

# Why a metric has no value (written beside its null in the results files)
NO_MATCH = "no query has a gallery match of another camera"
NO_ATTRIBUTE = "no attribute has both positive and negative test images"
ATTRIBUTE_UNDEFINED = "the attribute has no positive or no negative test image"
NO_PART = "no part is present in truth or prediction"
PART_UNDEFINED = "the part is absent from truth and prediction"


def label_based_accuracy(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per binary attribute (TP/P + TN/N) / 2; NaN where P or N is zero. Inputs (N, C) bool."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    pos = truth.sum(0)
    neg = (~truth).sum(0)
    tp = (pred & truth).sum(0)
    tn = (~pred & ~truth).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (tp / pos + tn / neg) / 2
    acc[(pos == 0) | (neg == 0)] = np.nan
    return acc


def mean_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """mA: the mean of `label_based_accuracy` over attributes where it is defined."""
    acc = label_based_accuracy(pred, truth)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = truth, columns = prediction."""
    pred = np.asarray(pred, np.int64).ravel()
    truth = np.asarray(truth, np.int64).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"prediction has {pred.size} elements, truth {truth.size}")
    return np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN for a class absent from truth and prediction."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    iou[union == 0] = np.nan
    return iou


def mean_iou(confusion: np.ndarray) -> float:
    iou = iou_per_class(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


@dataclass
class ReidScore:
    mAP: float
    rank1: float
    queries: int  # queries that had at least one correct match and were scored
    skipped_queries: int  # queries without any correct match in the gallery
    chance_rank1: float = float("nan")  # rank-1 of a random ranking: mean share of correct images per query
    rank5: float = float("nan")
    rank10: float = float("nan")
    # per scored query, for intervals: its index among the queries, AP and whether rank-1 was correct
    scored: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    per_query_ap: np.ndarray = field(default_factory=lambda: np.zeros(0))
    per_query_rank1: np.ndarray = field(default_factory=lambda: np.zeros(0))


def reid_scores(similarity: np.ndarray, query_ids: np.ndarray, query_cams: np.ndarray,
                gallery_ids: np.ndarray, gallery_cams: np.ndarray) -> ReidScore:
    """mAP and rank-1 from a (Q, G) similarity matrix (higher = more alike), Market-1501 protocol."""
    similarity = np.asarray(similarity, np.float64)
    query_ids, query_cams = np.asarray(query_ids), np.asarray(query_cams)
    gallery_ids, gallery_cams = np.asarray(gallery_ids), np.asarray(gallery_cams)
    if similarity.shape != (len(query_ids), len(gallery_ids)):
        raise ValueError(f"similarity has shape {similarity.shape}, expected ({len(query_ids)}, {len(gallery_ids)})")
    if (gallery_ids < 0).any() or (query_ids < 0).any():
        raise ValueError("identities below 0 (junk) must be dropped when the data is read, not scored")
    order = np.argsort(-similarity, axis=1, kind="stable")
    aps, first, chance, scored, skipped = [], [], [], [], 0
    for q in range(len(query_ids)):
        ranked = order[q]
        ids, cams = gallery_ids[ranked], gallery_cams[ranked]
        same_camera = (ids == query_ids[q]) & (cams == query_cams[q])
        good = (ids == query_ids[q])[~same_camera]
        if not good.any():
            skipped += 1
            continue
        positions = np.flatnonzero(good)  # 0-based ranks of the correct matches
        precision = np.arange(1, len(positions) + 1) / (positions + 1)
        aps.append(precision.mean())
        scored.append(q)
        first.append(int(positions[0]))
        chance.append(good.mean())
    if not aps:
        none = undefined(NO_MATCH)
        return ReidScore(none, none, 0, skipped, none, none, none)
    first = np.array(first)
    return ReidScore(float(np.mean(aps)), float(np.mean(first < 1)), len(aps), skipped, float(np.mean(chance)),
                     float(np.mean(first < 5)), float(np.mean(first < 10)), np.array(scored, np.int64),
                     np.array(aps), (first < 1).astype(np.float64))


def instance_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Example-based accuracy, precision, recall and F1 of (N, C) bool predictions (PA-100K/PETA papers).

    Per image: accuracy |P&T| / |P|T|, precision |P&T| / |P|, recall |P&T| / |T|
    (0 where the denominator is 0, as the Strong Baseline of pedestrian
    attribute recognition counts it), each averaged over images; F1 is
    2 * precision * recall / (precision + recall) of those means.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter = (pred & truth).sum(1).astype(np.float64)
    union, npred, ntrue = (pred | truth).sum(1), pred.sum(1), truth.sum(1)

    def ratio(a, b):
        return np.where(b > 0, a / np.maximum(b, 1), 0.0)

    accuracy, precision, recall = (float(ratio(inter, d).mean()) for d in (union, npred, ntrue))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}
