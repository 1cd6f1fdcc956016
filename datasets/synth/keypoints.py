"""The 17 COCO keypoints of a drawn person, from the drawing's own geometry.

Positions come from the joints `drawing.py` draws the limbs between
(`arm_joints`, `leg_joints`, the head centre) mapped to pixels by the same
`to_pixels`, so a keypoint is exactly where its shape is. Pixel coordinates
have pixel centres at integers (pixel (0, 0) spans [-0.5, 0.5)), PIL's
convention for the shapes.

The rule for each point and its visibility is part of the truth format
(`clasp.datasets.synth.writer`'s docstring); the positions below implement it.
"""

from __future__ import annotations

import numpy as np

from clasp.datasets.keypoint_names import KEYPOINT_NAMES, NUM_KEYPOINTS
from clasp.datasets.synth.drawing import HEAD_CENTRE_Y, Pose, arm_joints, leg_joints, to_pixels
from clasp.datasets.synth.identities import Identity

KEYPOINT_PART: dict[str, str] = {
    "nose": "head", "eye": "head", "ear": "head", "shoulder": "arms", "elbow": "arms", "wrist": "arms",
    "hip": "lower body", "knee": "lower body", "ankle": "feet",
}
FACE_OFFSETS = {"nose": (0.0, 0.2), "eye": (0.15, 0.06), "ear": (0.33, 0.08)}  # from the head centre
HIDDEN_FROM_BEHIND = ("nose", "left_eye", "right_eye")


def part_of(name: str) -> str:
    return KEYPOINT_PART[name.split("_")[-1]]


def keypoint_positions(identity: Identity, pose: Pose) -> np.ndarray:
    """(17, 2) float pixel (x, y) of every keypoint in COCO order, where the drawing puts it."""
    person_left = 0 if pose.back_view else 1  # image-left is index 0 of the joint lists
    units: dict[str, tuple[float, float]] = {}
    hx = pose.head_dx
    for kind, (dx, dy) in FACE_OFFSETS.items():
        if kind == "nose":
            units["nose"] = (hx, HEAD_CENTRE_Y + dy)
            continue
        for side_name, sign in (("left", 1), ("right", -1)):
            flip = sign if not pose.back_view else -sign
            units[f"{side_name}_{kind}"] = (hx + flip * dx, HEAD_CENTRE_Y + dy)
    arms, legs = arm_joints(identity, pose), leg_joints(identity, pose)
    for side_name, index in (("left", person_left), ("right", 1 - person_left)):
        shoulder, elbow, wrist = arms[index]
        hip, ankle = legs[index]
        knee = ((hip[0] + ankle[0]) / 2, (hip[1] + ankle[1]) / 2)
        units.update({f"{side_name}_shoulder": shoulder, f"{side_name}_elbow": elbow, f"{side_name}_wrist": wrist,
                      f"{side_name}_hip": hip, f"{side_name}_knee": knee, f"{side_name}_ankle": ankle})
    return np.array(to_pixels(identity, pose, [units[n] for n in KEYPOINT_NAMES]), np.float64)


def keypoint_truth(identity: Identity, pose: Pose, part_mask: np.ndarray, part_names: list[str]) -> np.ndarray:
    """(17, 3) float (x, y, visibility) by the rules of the module docstring; `part_mask` is the drawn truth."""
    xy = np.round(keypoint_positions(identity, pose), 2)  # as written: visibility is judged on what is recorded
    h, w = part_mask.shape
    out = np.zeros((NUM_KEYPOINTS, 3), np.float64)
    for k, name in enumerate(KEYPOINT_NAMES):
        col, row = int(np.round(xy[k, 0])), int(np.round(xy[k, 1]))
        if not (0 <= col < w and 0 <= row < h):
            continue
        seen = part_names[part_mask[row, col]] == part_of(name)
        hidden = pose.back_view and name in HIDDEN_FROM_BEHIND
        out[k] = (xy[k, 0], xy[k, 1], 2 if seen and not hidden else 1)
    return out
