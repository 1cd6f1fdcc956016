"""Multi-crop augmentation that carries the part labels through every crop.

Each crop is a random resized crop plus a horizontal flip. The geometry is
applied to the image and, with exactly the same box and flip, to the part label
grid and its confidence; colour jitter, grey scale, blur and solarisation then
act on the pixels only (DINO's recipe). Everything runs in DataLoader workers on
CPU, so it uses PIL's C routines (one `resize(box=...)` call crops and resizes),
stays uint8 from decode to batch, and takes all randomness from explicit NumPy
generators: a crop set is a pure function of the image, its labels and the
generators' seeds, which is what exact resume needs.

Coordinates are continuous pixel coordinates: pixel (y, x) covers
[y, y+1) x [x, x+1) and its centre is (y+0.5, x+0.5), the convention PIL's
`resize(box=...)` uses. A crop is a float box (x0, y0, x1, y1) in those
coordinates, so the pixels and the labels see the same region to the sub-pixel.

How a token's part label is chosen (nearest, at the token centre): the crop's
output is divided into a (th, tw) token grid (patch `patch_size`). Token
(i, j) has its centre at ((i+0.5)/th, (j+0.5)/tw) in normalised crop
coordinates; with a flip, the horizontal one becomes 1-(j+0.5)/tw (the
flipped column shows the mirror column). The centre is mapped back through the
crop box to image coordinates (y, x); the label grid (h, w) covers the whole
image, so the token takes the label (and confidence) of the grid cell that
contains that point: row floor(y*h/H), column floor(x*w/W), clamped to the
grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from clasp.common.person_size import PERSON_HW


@dataclass
class ColourConfig:
    """DINO's photometric recipe; probabilities per crop."""

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # The first global crop is always blurred, the second rarely but may be
    # solarised; local crops are blurred half the time (DINO's asymmetric views).
    # Global crops beyond the second follow the second's recipe.
    blur_p_global: tuple[float, float] = (1.0, 0.1)
    solarize_p_global: tuple[float, float] = (0.0, 0.2)
    blur_p_local: float = 0.5
    solarize_threshold: int = 128


@dataclass
class MultiCropConfig:
    """How many crops of which size, and from how much of the image."""

    global_crops: int = 2
    local_crops: int = 6
    global_size: tuple[int, int] = PERSON_HW  # H, W
    local_size: tuple[int, int] = (PERSON_HW[0] // 2, PERSON_HW[1] // 2)
    global_scale: tuple[float, float] = (0.4, 1.0)  # fraction of the image area
    local_scale: tuple[float, float] = (0.05, 0.4)
    # Aspect (w/h) is drawn log-uniformly from the output aspect times this range,
    # so a 2:1 person crop stays near 2:1.
    aspect_jitter: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    patch_size: int = 16  # token grid of a global crop = global_size / patch_size
    colour: ColourConfig = field(default_factory=ColourConfig)

    @property
    def token_grid(self) -> tuple[int, int]:
        h, w = self.global_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"global crop size {self.global_size} is not a multiple of patch {self.patch_size}")
        return h // self.patch_size, w // self.patch_size


@dataclass(frozen=True)
class CropBox:
    """A crop in continuous image coordinates, and whether the output is mirrored."""

    x0: float
    y0: float
    x1: float
    y1: float
    flip: bool


@dataclass
class CropSet:
    """The crops of one image, ready to be stacked into a batch."""

    global_crops: list[np.ndarray]  # G x (H, W, 3) uint8
    local_crops: list[np.ndarray]  # L x (h, w, 3) uint8
    part_mask: np.ndarray  # (G, th, tw) int64
    part_conf: np.ndarray  # (G, th, tw) float32
    boxes: list[CropBox]  # G global boxes then L local boxes (for tests and debugging)


def sample_crop_box(image_hw: tuple[int, int], out_hw: tuple[int, int], scale: tuple[float, float],
                    aspect_jitter: tuple[float, float], flip_p: float, rng: np.random.Generator) -> CropBox:
    """Random resized crop (torchvision's algorithm, on a float box) plus a flip.

    Ten tries to find a box of the drawn area and aspect that fits; otherwise the
    largest centred box whose aspect is in range.
    """
    height, width = image_hw
    area = float(height * width)
    target_aspect = out_hw[1] / out_hw[0]
    lo, hi = target_aspect * aspect_jitter[0], target_aspect * aspect_jitter[1]
    log_lo, log_hi = math.log(lo), math.log(hi)
    for _ in range(10):
        crop_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = math.sqrt(crop_area * aspect)
        h = math.sqrt(crop_area / aspect)
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.uniform(0.0, width - w)
            y0 = rng.uniform(0.0, height - h)
            return CropBox(x0, y0, x0 + w, y0 + h, bool(rng.random() < flip_p))
    image_aspect = width / height
    if image_aspect < lo:
        w, h = float(width), width / lo
    elif image_aspect > hi:
        w, h = height * hi, float(height)
    else:
        w, h = float(width), float(height)
    x0, y0 = (width - w) / 2, (height - h) / 2
    return CropBox(x0, y0, x0 + w, y0 + h, bool(rng.random() < flip_p))


def crop_image(image: Image.Image, box: CropBox, out_hw: tuple[int, int]) -> Image.Image:
    """Crop and resize in one PIL call (bilinear, antialiased when shrinking), then flip."""
    out = image.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR, box=(box.x0, box.y0, box.x1, box.y1))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if box.flip else out


def token_cells(box: CropBox, image_hw: tuple[int, int], grid_hw: tuple[int, int],
                tokens_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Label-grid row and column under each token centre of the crop (see module docstring)."""
    height, width = image_hw
    grid_h, grid_w = grid_hw
    th, tw = tokens_hw
    v = (np.arange(th) + 0.5) / th
    u = (np.arange(tw) + 0.5) / tw
    if box.flip:
        u = 1.0 - u
    y = box.y0 + v * (box.y1 - box.y0)
    x = box.x0 + u * (box.x1 - box.x0)
    rows = np.clip(np.floor(y * grid_h / height).astype(np.int64), 0, grid_h - 1)
    cols = np.clip(np.floor(x * grid_w / width).astype(np.int64), 0, grid_w - 1)
    return rows, cols


def crop_labels(grid: np.ndarray, box: CropBox, image_hw: tuple[int, int],
                tokens_hw: tuple[int, int]) -> np.ndarray:
    """The label grid resampled (nearest, at token centres) to the crop's token grid."""
    rows, cols = token_cells(box, image_hw, grid.shape[-2:], tokens_hw)
    return grid[..., rows[:, None], cols[None, :]]


# Luma weights of ITU-R 601 (PIL's and torchvision's grey scale).
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def jitter_matrix(factors: tuple[float, float, float, float], order: list[int], mean_rgb: np.ndarray,
                  grayscale: bool) -> np.ndarray:
    """Colour jitter (and grey scale) as one affine map RGB -> RGB, a 3x4 matrix.

    Brightness (scale), contrast (blend with the mean grey level), saturation
    (blend with the grey image) and hue (a rotation of the chroma plane in YIQ)
    are each affine in RGB, so any order of them composes into one affine map
    that PIL applies in a single C pass. Unlike torchvision's ColorJitter the
    values are clamped once at the end rather than after every op, and hue is
    rotated in YIQ rather than shifted in HSV: the same kind of augmentation at
    a fraction of the cost. `mean_rgb` is the crop's mean colour; contrast
    needs the mean grey level of the image as it is at that point of the chain.
    """
    a, b = np.eye(3), np.zeros(3)
    eye, grey = np.eye(3), np.outer(np.ones(3), _LUMA)
    for op in order:
        if op == 0:  # brightness: blend with black
            m, c = factors[0] * eye, np.zeros(3)
        elif op == 1:  # contrast: blend with the mean grey level
            level = float(_LUMA @ (a @ mean_rgb + b))
            m, c = factors[1] * eye, (1 - factors[1]) * level * np.ones(3)
        elif op == 2:  # saturation: blend with the grey image
            m, c = factors[2] * eye + (1 - factors[2]) * grey, np.zeros(3)
        else:  # hue: rotate I and Q by the given fraction of a turn
            theta = 2 * math.pi * factors[3]
            rot = np.array([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]])
            m, c = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ, np.zeros(3)
        a, b = m @ a, m @ b + c
    if grayscale:
        a, b = grey @ a, grey @ b
    return np.concatenate([a, b[:, None]], axis=1)


def colour_jitter(image: Image.Image, cfg: ColourConfig, rng: np.random.Generator, jitter: bool,
                  grayscale: bool) -> Image.Image:
    """Brightness, contrast, saturation and hue in a random order, then grey scale; one PIL pass."""
    factors = tuple(float(f) for f in (
        rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
        rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
        rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
        rng.uniform(-cfg.hue, cfg.hue),
    ))
    order = rng.permutation(4).tolist()
    if not jitter:
        order = []
    # the mean colour, by PIL's box filter shrinking the crop to one pixel
    mean_rgb = np.asarray(image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)), float) if 1 in order else np.zeros(3)
    matrix = jitter_matrix(factors, order, mean_rgb, grayscale)
    return image.convert("RGB", tuple(matrix.ravel().tolist()))


def photometric(image: Image.Image, cfg: ColourConfig, blur_p: float, solarize_p: float,
                rng: np.random.Generator) -> Image.Image:
    """Pixel-only ops: jitter (in a random order), grey scale, blur, solarise."""
    jitter, grey, blur, solarize, sigma = rng.random(5).tolist()
    jitter, grey = jitter < cfg.jitter_p, grey < cfg.grayscale_p
    if jitter or grey:
        image = colour_jitter(image, cfg, rng, jitter, grey)
    if blur < blur_p:
        radius = cfg.blur_sigma[0] + sigma * (cfg.blur_sigma[1] - cfg.blur_sigma[0])
        image = image.filter(ImageFilter.GaussianBlur(radius))
    if solarize < solarize_p:
        image = ImageOps.solarize(image, cfg.solarize_threshold)
    return image


class MultiCrop:
    """Turns one decoded image and its label grid into G global and L local crops.

    Geometry and colour draw from separate generators, so switching colour ops
    off (or changing them) leaves every crop box, flip and label unchanged.
    """

    def __init__(self, config: MultiCropConfig) -> None:
        self.config = config
        self.tokens_hw = config.token_grid

    def __call__(self, image: Image.Image, part_mask: np.ndarray, part_conf: np.ndarray,
                 geometry_rng: np.random.Generator, colour_rng: np.random.Generator) -> CropSet:
        cfg = self.config
        image_hw = (image.height, image.width)
        boxes = [sample_crop_box(image_hw, cfg.global_size, cfg.global_scale, cfg.aspect_jitter, cfg.flip_p, geometry_rng)
                 for _ in range(cfg.global_crops)]
        boxes += [sample_crop_box(image_hw, cfg.local_size, cfg.local_scale, cfg.aspect_jitter, cfg.flip_p, geometry_rng)
                  for _ in range(cfg.local_crops)]
        colour = cfg.colour
        globals_, locals_ = [], []
        th, tw = self.tokens_hw
        mask = np.empty((cfg.global_crops, th, tw), np.int64)
        conf = np.empty((cfg.global_crops, th, tw), np.float32)
        for g, box in enumerate(boxes[:cfg.global_crops]):
            view = min(g, 1)
            crop = crop_image(image, box, cfg.global_size)
            crop = photometric(crop, colour, colour.blur_p_global[view], colour.solarize_p_global[view], colour_rng)
            globals_.append(np.asarray(crop))
            mask[g] = crop_labels(part_mask, box, image_hw, self.tokens_hw)
            conf[g] = crop_labels(part_conf, box, image_hw, self.tokens_hw)
        for box in boxes[cfg.global_crops:]:
            crop = crop_image(image, box, cfg.local_size)
            crop = photometric(crop, colour, colour.blur_p_local, 0.0, colour_rng)
            locals_.append(np.asarray(crop))
        return CropSet(globals_, locals_, mask, conf, boxes)
