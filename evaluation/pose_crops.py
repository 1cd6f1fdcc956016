"""Top-down crops: a person box expanded to the network's aspect, and the affine map into the crop.

Boxes (x, y, w, h) become a centre and a size as mmpose's `bbox_xywh2cs`
makes them: the centre of the box; the shorter side lengthened until w / h is
the input's aspect (192 / 256 for pose), then both sides x 1.25 (`PADDING`),
so the crop holds the whole person with a margin.

Coordinates follow UDP (Huang et al., CVPR 2020, as ViTPose's configs use it):
pixel centres at integers, and a crop of W x H pixels spans the box so that
the box's centre lands on ((W - 1) / 2, (H - 1) / 2) with x scaled by
(W - 1) / w and y by (H - 1) / h. Mirroring the crop is then exactly
x -> W - 1 - x, so a flipped heat map needs no one-pixel shift. `affine`
returns the 2 x 3 map from image to crop (rotation, then the optional
mirror, composed in); `warp` samples the image through its inverse
(bilinear, zeros outside), and `apply` moves points with any such map.
`crop_instances` crops a batch of persons unrotated (evaluation: `clasp
finetune pose` and the pose probe of `clasp eval` on COCO), `to_crop` moves
their keypoints into the crops and `to_image` brings crop points back.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from clasp.evaluation.errors import EvalInputError

PADDING = 1.25


def expand_boxes(boxes: np.ndarray, aspect_hw: tuple[int, int],
                 padding: float = PADDING) -> tuple[np.ndarray, np.ndarray]:
    """(centres (n, 2) x, y; sizes (n, 2) w, h) of xywh `boxes` grown to aspect h : w = aspect_hw, times `padding`."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    w, h = boxes[:, 2].copy(), boxes[:, 3].copy()
    ratio = aspect_hw[1] / aspect_hw[0]  # w / h of the input
    wider = w > ratio * h
    h[wider] = w[wider] / ratio
    w[~wider] = h[~wider] * ratio
    return centres, np.stack([w, h], 1) * padding


def affine(centre, size, out_hw: tuple[int, int], rotation: float = 0.0, mirror: bool = False) -> np.ndarray:
    """2 x 3 map of image (x, y) to crop (x, y): rotate by `rotation` degrees about the centre, scale, mirror."""
    (height, width), (w, h) = out_hw, size
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    sx, sy = (width - 1) / w, (height - 1) / h
    linear = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]])
    if mirror:
        linear[0] *= -1
    offset = np.array([(width - 1) / 2, (height - 1) / 2]) - linear @ np.asarray(centre, np.float64)
    return np.concatenate([linear, offset[:, None]], 1)


def invert(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.concatenate([linear, -(linear @ matrix[:, 2])[:, None]], 1)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (..., 2) moved by the 2 x 3 map."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: Image.Image, matrix: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 crop of an RGB image through the image-to-crop `matrix`.

    PIL samples output pixel (i, j) at its centre (j + 0.5, i + 0.5) and reads
    the input with the same half-pixel convention: the inverse map is shifted by
    half a pixel on both sides so that integer coordinates are pixel centres."""
    back = invert(matrix)
    a, b, c = back[0]
    d, e, f = back[1]
    data = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    crop = image.transform((out_hw[1], out_hw[0]), Image.AFFINE, data=data, resample=Image.BILINEAR)
    return np.asarray(crop)


def open_rgb(path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:
        raise EvalInputError(f"{path}: cannot be read as an image ({exc})") from None


def crop_instances(paths, centres: np.ndarray, sizes: np.ndarray,
                   out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(crops (n, H, W, 3) uint8, image-to-crop maps (n, 2, 3)) of the boxes (centres, sizes) of the images `paths`."""
    matrices = np.array([affine(c, s, out_hw) for c, s in zip(centres, sizes)]).reshape(-1, 2, 3)
    crops = [warp(open_rgb(p), m, out_hw) for p, m in zip(paths, matrices)]
    return np.array(crops, np.uint8).reshape(-1, *out_hw, 3), matrices


def to_crop(matrices: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Keypoints (n, K, 3) x, y, v moved into the crops of `matrices` (n, 2, 3); v is kept."""
    moved = np.array(keypoints, np.float64)
    moved[..., :2] = [apply(m, k[:, :2]) for m, k in zip(matrices, moved)]
    return moved


def to_image(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (n, K, 2) in the crops of `matrices` (n, 2, 3) back in their images' pixels."""
    return np.array([apply(invert(m), p) for m, p in zip(matrices, points)]).reshape(points.shape)
