"""Top-down pose: a training batch of augmented person crops with heat-map targets, and the evaluation.

Every person is cropped at `POSE_HW` = 256 x 192 around its box grown to that
aspect with 1.25 padding (`clasp.evaluation.pose_crops`). Training augments
as ViTPose's configs do, with the step's seeded generator: scale x N(1, 0.5)
clipped to [0.5, 1.5], rotation N(0, 40 degrees) clipped to +-80 in 60 % of
crops, mirror in 50 % (left and right keypoints swapped); targets are
`clasp.evaluation.heatmaps.encode` of the moved keypoints. No half-body
augmentation: the synthetic persons are whole, and it matters on COCO only
for long schedules.

Evaluation (`predict`): the plain crop and its mirror image through the model,
the mirror's heat maps flipped back and averaged in (the flip test), decoded
(argmax + quarter offset) and mapped back to image pixels; a person's score is
its box score times the mean keypoint score above 0.2, and OKS-NMS (0.9,
`clasp.evaluation.oks.nms_per_image`) keeps one of each overlapping set per
image, as mmpose does.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from clasp.datasets.coco_keypoints import PoseInstances
from clasp.evaluation.heatmaps import decode, encode, flip_back, person_score, to_input
from clasp.datasets.keypoint_names import FLIP_INDEX
from clasp.evaluation.pose_crops import affine, apply, crop_instances, expand_boxes, open_rgb, to_image, warp

POSE_HW = (256, 192)
SCALE_SPREAD = 0.5
ROTATION_SPREAD = 40.0
ROTATION_RATE = 0.6


def _normal(gen: torch.Generator, spread: float) -> float:
    return float(torch.randn((), generator=gen)) * spread


def training_batch(instances: PoseInstances, rows: np.ndarray, gen: torch.Generator,
                   input_hw: tuple[int, int] = POSE_HW) -> dict[str, torch.Tensor]:
    """{images (B, 3, H, W) uint8, heatmaps (B, 17, H/4, W/4), weights (B, 17)} of the persons `rows`."""
    centres, sizes = expand_boxes(instances.boxes[rows], input_hw)
    crops, keypoints = [], []
    for i, row in enumerate(rows):
        scale = float(np.clip(1 + _normal(gen, SCALE_SPREAD), 1 - SCALE_SPREAD, 1 + SCALE_SPREAD))
        turn = float(torch.rand((), generator=gen)) < ROTATION_RATE
        rotation = float(np.clip(_normal(gen, ROTATION_SPREAD), -2 * ROTATION_SPREAD, 2 * ROTATION_SPREAD))
        mirror = bool(torch.rand((), generator=gen) < 0.5)
        matrix = affine(centres[i], sizes[i] * scale, input_hw, rotation if turn else 0.0, mirror)
        crops.append(warp(open_rgb(instances.image_paths[row]), matrix, input_hw))
        moved = instances.keypoints[row].copy()
        moved[:, :2] = apply(matrix, moved[:, :2])
        keypoints.append(moved[list(FLIP_INDEX)] if mirror else moved)
    heatmaps, weights = encode(np.stack(keypoints), input_hw)
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return {"images": images, "heatmaps": torch.from_numpy(heatmaps), "weights": torch.from_numpy(weights)}


def heatmap_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error over keypoints and pixels, each keypoint's maps weighted by its target weight."""
    w = weights[:, :, None, None]
    return torch.nn.functional.mse_loss(predicted.float() * w, target * w)


def predict(model, instances: PoseInstances, batch_size: int, device, autocast,
            input_hw: tuple[int, int] = POSE_HW, log: Callable[[str], None] = lambda _: None):
    """(keypoints (n, 17, 3) image x, y, score; person scores (n,)) of every instance, with the flip test."""
    centres, sizes = expand_boxes(instances.boxes, input_hw)
    out_points, out_peaks = [], []
    with torch.inference_mode(), autocast():
        for start in range(0, len(instances), batch_size):
            rows = slice(start, start + batch_size)
            crops, matrices = crop_instances(instances.image_paths[rows], centres[rows], sizes[rows], input_hw)
            images = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().to(device)
            maps = model(images)["heatmaps"].float()
            maps = (maps + flip_back(model(images.flip(-1))["heatmaps"].float())) / 2
            coords, peaks = decode(maps.cpu().numpy())
            points = to_input(coords, input_hw)
            out_points.append(to_image(matrices, points))
            out_peaks.append(peaks)
    peaks = np.concatenate(out_peaks)
    keypoints = np.concatenate([np.concatenate(out_points), peaks[..., None]], -1)
    return keypoints, instances.scores * person_score(peaks)
