"""Bootstrap intervals over test identities, and the per-row pieces the probes hand them."""

from __future__ import annotations

import numpy as np

from clasp.evaluation.intervals import identity_bootstrap
from clasp.evaluation.metrics import confusion_matrix, reid_scores
from clasp.evaluation.probes import per_image_confusion


def test_resampling_is_by_identity_not_by_image() -> None:
    # two people, 50 images each: one always right, one always wrong
    identities = np.repeat([7, 9], 50)
    right = (identities == 7).astype(float)
    interval = identity_bootstrap(identities, lambda rows: right[rows].mean(), rounds=400)
    assert interval.value == 0.5
    # resampling two identities gives 0, 0.5 or 1; resampling 100 images would stay within ~0.4-0.6
    assert interval.low == 0.0 and interval.high == 1.0


def test_interval_is_seeded_and_tightens_with_more_identities() -> None:
    rng = np.random.default_rng(0)
    few, many = np.repeat(np.arange(10), 5), np.repeat(np.arange(200), 5)
    score_few, score_many = rng.random(len(few)), rng.random(len(many))
    a = identity_bootstrap(few, lambda rows: score_few[rows].mean())
    assert a == identity_bootstrap(few, lambda rows: score_few[rows].mean())
    b = identity_bootstrap(many, lambda rows: score_many[rows].mean())
    assert a.low <= a.value <= a.high and b.low <= b.value <= b.high
    assert (b.high - b.low) < (a.high - a.low) / 3  # ~ 1 / sqrt(identities)
    nothing = identity_bootstrap(np.zeros(0), lambda rows: 1.0)  # e.g. no query had a match
    assert np.isnan([nothing.value, nothing.low, nothing.high]).all()
    constant = identity_bootstrap(few, lambda rows: 0.25)
    assert (constant.value, constant.low, constant.high) == (0.25, 0.25, 0.25)


def test_per_image_confusion_sums_to_the_whole() -> None:
    rng = np.random.default_rng(1)
    pred, truth = rng.integers(0, 4, (6, 3, 2)), rng.integers(0, 4, (6, 3, 2))
    per_image = per_image_confusion(pred, truth, 4)
    assert per_image.shape == (6, 4, 4)
    assert np.array_equal(per_image.sum(0), confusion_matrix(pred, truth, 4))
    assert np.array_equal(per_image[2], confusion_matrix(pred[2], truth[2], 4))


def test_reid_per_query_scores_average_to_map_and_rank1() -> None:
    rng = np.random.default_rng(2)
    query_ids, gallery_ids = np.array([1, 2, 3, 4]), np.array([1, 1, 2, 3, 3, 5])
    similarity = rng.random((4, 6))
    score = reid_scores(similarity, query_ids, np.zeros(4), gallery_ids, np.ones(6))
    assert list(score.scored) == [0, 1, 2]  # identity 4 has no match in the gallery
    assert score.per_query_ap.mean() == score.mAP and score.per_query_rank1.mean() == score.rank1
