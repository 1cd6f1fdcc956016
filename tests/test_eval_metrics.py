"""Every metric against a small case computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clasp.datasets.attribute_data import binary_attribute_names, binary_attributes
from clasp.datasets.label_grid import cell_edges, majority_downsample
from clasp.evaluation.metrics import (
    confusion_matrix, iou_per_class, label_based_accuracy,
    mean_accuracy, mean_iou, reid_scores,
)


def test_label_based_accuracy_by_hand() -> None:
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 1]], bool)
    pred = np.array([[1, 0], [0, 1], [0, 0], [1, 1]], bool)
    # column 0: P=2 (rows 0,1), TP=1 -> 1/2; N=2 (rows 2,3), TN=1 -> 1/2; mA_0 = 0.5
    # column 1: P=3 (rows 1,2,3), TP=2 -> 2/3; N=1 (row 0), TN=1 -> 1; mA_1 = 5/6
    acc = label_based_accuracy(pred, truth)
    assert acc == pytest.approx([0.5, 5 / 6])
    assert mean_accuracy(pred, truth) == pytest.approx((0.5 + 5 / 6) / 2)


def test_attribute_without_negatives_is_left_out() -> None:
    truth = np.array([[1, 1], [1, 0]], bool)
    pred = np.array([[1, 1], [0, 0]], bool)
    acc = label_based_accuracy(pred, truth)
    assert math.isnan(acc[0])  # no negatives in column 0
    assert acc[1] == pytest.approx(1.0)
    assert mean_accuracy(pred, truth) == pytest.approx(1.0)


def test_groups_become_binary_attributes() -> None:
    # groups: gender (2 values) -> 1 column "is value 0"; age (3 values) -> 3 one-vs-rest columns
    labels = np.array([[0, 2], [1, 0], [1, 1]])
    cols = binary_attributes(labels, [2, 3])
    assert cols.tolist() == [[True, False, False, True], [False, True, False, False], [False, False, True, False]]
    assert binary_attribute_names([("gender", ["male", "female"]), ("age", ["a", "b", "c"])]) == [
        "gender=male", "age=a", "age=b", "age=c"]


def test_iou_by_hand() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    conf = confusion_matrix(pred, truth, 4)
    # class 0: TP 1, FP 1 (truth 2 predicted 0), FN 1 (truth 0 predicted 1) -> 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: TP 1, FN 1 -> 1/2; class 3 absent -> NaN
    iou = iou_per_class(conf)
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert mean_iou(conf) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert conf.sum() == 6 and conf[0, 1] == 1 and conf[2, 0] == 1


def test_class_only_predicted_counts_with_iou_zero() -> None:
    conf = confusion_matrix(np.array([0, 1]), np.array([0, 0]), 2)
    assert mean_iou(conf) == pytest.approx((0.5 + 0.0) / 2)


def test_reid_map_and_rank1_by_hand() -> None:
    # gallery:        0      1      2      3      4
    gallery_ids = np.array([1, 1, 2, 0, 1])
    gallery_cams = np.array([1, 2, 2, 3, 3])
    # query 0: id 1, cam 1. Similarities rank gallery as 0, 3, 1, 2, 4.
    #   0 is id 1 in cam 1 (same camera: removed) -> ranking 3 (distractor), 1 (good), 2, 4 (good)
    #   good at 0-based ranks 1 and 3 -> AP = (1/2 + 2/4) / 2 = 0.5; rank-1 miss
    # query 1: id 2, cam 1. Ranked 2, 0, 1, 3, 4 -> the only good one (2) first: AP 1, rank-1 hit
    # query 2: id 7 (nobody in the gallery) -> skipped
    sim = np.array([
        [0.8, 0.3, 0.1, 0.5, 0.05],
        [0.8, 0.7, 0.9, 0.3, 0.1],
        [0.1, 0.2, 0.3, 0.4, 0.6],
    ])
    score = reid_scores(sim, np.array([1, 2, 7]), np.array([1, 1, 1]), gallery_ids, gallery_cams)
    assert score.mAP == pytest.approx((0.5 + 1.0) / 2)
    assert score.rank1 == pytest.approx(0.5)
    assert (score.queries, score.skipped_queries) == (2, 1)
    # a random ranking: query 0 has 2 correct of 4 remaining images, query 1 has 1 of 5
    assert score.chance_rank1 == pytest.approx((2 / 4 + 1 / 5) / 2)


def test_reid_junk_is_refused_by_the_scoring() -> None:
    # junk (-1) is dropped by the readers; reaching the scoring it would be silently ranked
    with pytest.raises(ValueError, match="junk"):
        reid_scores(np.array([[0.9, 0.1]]), np.array([3]), np.array([2]), np.array([3, -1]), np.array([1, 1]))


def test_reid_same_camera_match_is_not_a_correct_answer() -> None:
    # the only other image of the identity is from the query's camera: the query has no answer
    score = reid_scores(np.array([[0.9, 0.1]]), np.array([3]), np.array([2]), np.array([3, 4]), np.array([2, 1]))
    assert score.queries == 0 and score.skipped_queries == 1 and math.isnan(score.mAP)
    assert score.mAP.reason == "no query has a gallery match of another camera"


def test_reid_ties_keep_gallery_order() -> None:
    score = reid_scores(np.array([[0.5, 0.5]]), np.array([1]), np.array([1]), np.array([2, 1]), np.array([2, 2]))
    # the wrong one (index 0) comes first among equals: AP = 1/2, rank-1 miss
    assert score.mAP == pytest.approx(0.5) and score.rank1 == 0.0


def test_majority_downsample_by_hand() -> None:
    mask = np.array([
        [1, 1, 2, 2],
        [1, 3, 2, 2],
        [0, 0, 4, 5],
        [0, 5, 5, 4],
    ])
    # cells 2x2: top-left 1 (3 of 4), top-right 2, bottom-left 0 (3 of 4), bottom-right 4 vs 5 tie -> 4
    assert majority_downsample(mask, (2, 2), 6).tolist() == [[1, 2], [0, 4]]
    assert majority_downsample(mask[None], (2, 2), 6).shape == (1, 2, 2)


def test_cell_edges_for_uneven_grids() -> None:
    edges = cell_edges(256, 28)
    sizes = np.diff(np.append(edges, 256))
    assert len(edges) == 28 and set(sizes.tolist()) <= {9, 10} and sizes.sum() == 256
    assert cell_edges(256, 16).tolist() == list(range(0, 256, 16))
    with pytest.raises(ValueError):
        cell_edges(8, 9)
