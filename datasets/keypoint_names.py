"""COCO's 17 person keypoints: names, skeleton, OKS sigmas and left/right pairs, as COCO defines them.

One module owns these facts; the synthetic world, the COCO reader and writer,
OKS scoring, the heat-map codec and the flip test import them. Order and
numbering are COCO's (`person_keypoints_*.json`, category 1): index k here is
keypoint k + 1 there; "left" is the person's left, so in a front view the left
shoulder is on the image's right. The sigmas are the per-keypoint spread of
COCO's annotators (`COCOeval.Params.kpt_oks_sigmas`), which OKS divides by.
"""

from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# Limbs as COCO lists them: pairs of 1-based keypoint numbers.
SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10),
    (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
OKS_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
# Index of each keypoint's mirror image (left <-> right; the nose is its own).
FLIP_INDEX: tuple[int, ...] = tuple(
    KEYPOINT_NAMES.index(n.replace("left", "right") if "left" in n else n.replace("right", "left"))
    for n in KEYPOINT_NAMES)
PERSON_CATEGORY = 1
