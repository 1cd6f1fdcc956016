"""Cameras of the synthetic world: a background scene, lighting and a colour cast each.

Re-identification is only meaningful when the same person looks different from
camera to camera, so every camera gets its own scene texture (wall and ground
with bricks, tiles, stripes or blotches), brightness, colour cast, sharpness and
sensor noise. The background is drawn once per camera, larger than an image, and
each image takes a randomly shifted window of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from clasp.common.person_size import PERSON_HW

# The background is this much larger than an image so that windows of it differ.
BACKGROUND_MARGIN = (32, 48)
TEXTURES = ("bricks", "tiles", "stripes", "blotches")


@dataclass(frozen=True)
class Camera:
    index: int
    texture: str
    background: np.ndarray  # (H + margin, W + margin) uint32: RGBA bytes, lighting and cast applied
    gain: float  # overall brightness
    cast: np.ndarray  # (3,) per-channel multiplier
    blur: float  # Gaussian blur radius in pixels (0 = sharp)
    noise: float  # sensor noise standard deviation, in grey levels
    noise_field: np.ndarray  # (H + margin, W + margin, 3) int16; images take shifted windows
    back_view_rate: float  # share of images that see a person from behind
    occluder_colour: tuple[int, int, int]


def _random_colour(rng: np.random.Generator, low: int = 40, high: int = 220) -> np.ndarray:
    return rng.integers(low, high, 3).astype(np.float32)


def _draw_background(rng: np.random.Generator, texture: str) -> np.ndarray:
    h, w = PERSON_HW[0] + BACKGROUND_MARGIN[0], PERSON_HW[1] + BACKGROUND_MARGIN[1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wall, ground = _random_colour(rng), _random_colour(rng)
    horizon = int(rng.integers(int(0.55 * h), int(0.75 * h)))
    img = np.empty((h, w, 3), np.float32)
    img[:horizon] = wall
    img[horizon:] = ground
    if texture == "bricks":
        bh, bw = int(rng.integers(10, 18)), int(rng.integers(22, 40))
        row = (yy // bh).astype(int)
        mortar = ((yy % bh) < 2) | (((xx + (row % 2) * bw / 2) % bw) < 2)
        shade = 1.0 + 0.12 * np.sin(row * 1.7 + (xx + (row % 2) * bw / 2) // bw * 2.3)
        img[:horizon] *= shade[:horizon, :, None]
        img[:horizon][mortar[:horizon]] = 0.55 * wall + 0.45 * 200.0
    elif texture == "tiles":
        s = int(rng.integers(12, 24))
        checker = ((yy // s + xx // s) % 2).astype(np.float32)
        img *= (0.82 + 0.18 * checker)[:, :, None]
    elif texture == "stripes":
        period = float(rng.uniform(8, 30))
        angle = float(rng.uniform(0, np.pi))
        phase = xx * np.cos(angle) + yy * np.sin(angle)
        img *= (0.85 + 0.15 * np.sign(np.sin(2 * np.pi * phase / period)))[:, :, None]
    else:  # blotches: low-frequency noise
        coarse = rng.normal(size=(h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(((coarse * 18) + 128).clip(0, 255).astype(np.uint8)).resize(
            (w, h), Image.BICUBIC), np.float32) - 128
        img += smooth
    # Ground perspective: darker towards the bottom, a kerb line at the horizon.
    img[horizon:] *= np.linspace(1.0, 0.8, h - horizon, dtype=np.float32)[:, None, None]
    img[horizon:horizon + 2] *= 0.6
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return img.clip(0, 255)


def _pack_rgba(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint32 holding RGBA bytes: one word per pixel is cheap to select."""
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    return np.ascontiguousarray(rgba).view(np.uint32)[..., 0]


CAMERA_STREAM = 2  # `clasp synth`; the caption corpus draws its cameras from its own stream


def make_camera(seed: int, index: int, stream: int = CAMERA_STREAM) -> Camera:
    """Camera `index` of world `seed`: a pure function of (seed, stream, index)."""
    rng = np.random.default_rng([seed, stream, index])
    texture = TEXTURES[(index + int(rng.integers(len(TEXTURES)))) % len(TEXTURES)]
    background = _draw_background(rng, texture)
    gain = float(rng.uniform(0.7, 1.2))
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    noise = float(rng.uniform(2.0, 7.0))
    return Camera(
        index=index,
        texture=texture,
        background=_pack_rgba((background * cast * gain).clip(0, 255).astype(np.uint8)),
        gain=gain,
        cast=cast,
        blur=float(rng.choice([0.0, 0.0, 0.6, 1.0])),
        noise=noise,
        noise_field=np.round(rng.normal(0, noise, background.shape)).astype(np.int16),
        back_view_rate=float(rng.uniform(0.2, 0.5)),
        occluder_colour=tuple(int(x) for x in rng.integers(30, 200, 3)),
    )
