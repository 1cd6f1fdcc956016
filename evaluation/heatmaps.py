"""Keypoint heat maps: Gaussian targets with weights, and decoding by argmax with the quarter offset.

A heat map has a quarter of the input's size per side (64 x 48 for 256 x 192
input). Coordinates follow UDP (`clasp.evaluation.pose_crops`): input x maps
to heat-map x * (Wh - 1) / (W - 1), so both grids share their corner pixels'
centres and mirroring is exact on both.

- `encode`: per keypoint a Gaussian of `SIGMA` = 2 heat-map pixels centred on
  the keypoint's exact (sub-pixel) position, peak 1 (UDP's unbiased target),
  cut to 0 beyond 3 sigma in x or y as mmpose draws it (the tail would also be
  float32 subnormals, which make every product with the targets ~20x slower).
  Its weight is 0 for an unlabeled keypoint (v = 0) or one 3 sigma or more
  outside the map (nothing of its Gaussian falls inside), else 1; the loss is
  MSE weighted by it (mmpose's `KeypointMSELoss(use_target_weight=True)`).
- `decode`: the argmax, moved a quarter pixel towards the higher neighbour in
  x and in y when the argmax is not on the border (the "default" post-processing
  of SimpleBaseline and ViTPose); the peak value is the keypoint's score.
- `person_score`: the mean score of the keypoints above 0.2, as mmpose rescores
  a top-down person (times its box score).
- `flip_back`: the heat maps of a mirrored crop, mirrored back with left and
  right channels swapped: the flip test averages them with the plain ones.
"""

from __future__ import annotations

import numpy as np
import torch

from clasp.datasets.keypoint_names import FLIP_INDEX

STRIDE = 4
SIGMA = 2.0
SCORE_THRESHOLD = 0.2


def heatmap_hw(input_hw: tuple[int, int]) -> tuple[int, int]:
    return input_hw[0] // STRIDE, input_hw[1] // STRIDE


def to_heatmap(points: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Input (x, y) (..., 2) -> heat-map (x, y)."""
    (h, w), (hh, hw) = input_hw, heatmap_hw(input_hw)
    return points * np.array([(hw - 1) / (w - 1), (hh - 1) / (h - 1)])


def to_input(points: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Heat-map (x, y) (..., 2) -> input (x, y)."""
    (h, w), (hh, hw) = input_hw, heatmap_hw(input_hw)
    return points * np.array([(w - 1) / (hw - 1), (h - 1) / (hh - 1)])


def encode(keypoints: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(heat maps (n, 17, Hh, Wh) float32, weights (n, 17) float32) of keypoints (n, 17, 3) in input pixels."""
    hh, hw = heatmap_hw(input_hw)
    centre = to_heatmap(keypoints[..., :2], input_hw)
    xs, ys = np.arange(hw, dtype=np.float64), np.arange(hh, dtype=np.float64)
    reach = 3 * SIGMA
    gx, gy = (np.where(np.abs(d) <= reach, np.exp(-d ** 2 / (2 * SIGMA ** 2)), 0.0).astype(np.float32)
              for d in (xs - centre[..., :1], ys - centre[..., 1:]))  # (n, 17, Wh), (n, 17, Hh)
    inside = ((centre[..., 0] > -reach) & (centre[..., 0] < hw - 1 + reach)
              & (centre[..., 1] > -reach) & (centre[..., 1] < hh - 1 + reach))
    weights = ((keypoints[..., 2] > 0) & inside).astype(np.float32)
    return gy[..., :, None] * gx[..., None, :] * weights[..., None, None], weights


def decode(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(heat-map (x, y) (n, 17, 2), peak values (n, 17)) of heat maps (n, 17, Hh, Wh)."""
    n, k, hh, hw = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    index = flat.argmax(-1)
    peaks = np.take_along_axis(flat, index[..., None], -1)[..., 0]
    y, x = np.divmod(index, hw)
    coords = np.stack([x, y], -1).astype(np.float64)
    inner = (x > 0) & (x < hw - 1) & (y > 0) & (y < hh - 1)
    rows = np.arange(n)[:, None].repeat(k, 1)
    cols = np.arange(k)[None, :].repeat(n, 0)
    xc, yc = np.clip(x, 1, hw - 2), np.clip(y, 1, hh - 2)
    dx = heatmaps[rows, cols, yc, xc + 1] - heatmaps[rows, cols, yc, xc - 1]
    dy = heatmaps[rows, cols, yc + 1, xc] - heatmaps[rows, cols, yc - 1, xc]
    coords += 0.25 * np.stack([np.sign(dx), np.sign(dy)], -1) * inner[..., None]
    return coords, peaks


def person_score(peaks: np.ndarray) -> np.ndarray:
    """(n,) mean keypoint score above SCORE_THRESHOLD (0 where none is)."""
    above = peaks > SCORE_THRESHOLD
    return np.where(above.any(1), (peaks * above).sum(1) / np.maximum(above.sum(1), 1), 0.0)


def flip_back(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heat maps (n, 17, Hh, Wh) of mirrored crops as heat maps of the unmirrored ones."""
    return heatmaps.flip(-1)[:, list(FLIP_INDEX)]
