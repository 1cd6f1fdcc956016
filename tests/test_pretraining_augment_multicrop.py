"""Multi-crop: labels follow every crop and flip exactly; colour ops touch pixels only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clasp.pretraining.augment import (
    ColourConfig, MultiCrop, MultiCropConfig, crop_image, sample_crop_box, token_cells,
)

H, W = 256, 128
NO_COLOUR = ColourConfig(jitter_p=0.0, grayscale_p=0.0, blur_p_global=(0.0, 0.0), solarize_p_global=(0.0, 0.0),
                         blur_p_local=0.0)


def coordinate_image() -> Image.Image:
    """Pixel (y, x) holds R = x, G = y: a crop shows which image coordinates it sees."""
    y, x = np.mgrid[0:H, 0:W]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


def coordinate_labels(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """part_mask = the cell's row, part_conf = the cell's column: the labels name their own cell."""
    rows, cols = np.mgrid[0:grid[0], 0:grid[1]]
    return rows.astype(np.uint8), cols.astype(np.float16)


def seen_coordinates(crop: np.ndarray, tokens: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image (y, x) seen at each token centre: the mean of the 2x2 pixels around it (a ramp is exact)."""
    th, tw = tokens
    ph, pw = crop.shape[0] // th, crop.shape[1] // tw
    cy = np.arange(th) * ph + ph // 2
    cx = np.arange(tw) * pw + pw // 2
    block = crop.astype(np.float64)
    mean = (block[cy - 1][:, cx - 1] + block[cy - 1][:, cx] + block[cy][:, cx - 1] + block[cy][:, cx]) / 4
    # channel value v at a continuous coordinate c is c - 0.5 (pixel i has its centre at i + 0.5)
    return mean[..., 1] + 0.5, mean[..., 0] + 0.5


@pytest.mark.parametrize("grid", [(16, 8), (28, 14), (7, 3)])
def test_part_labels_follow_crop_and_flip_exactly(grid):
    image = coordinate_image()
    mask, conf = coordinate_labels(grid)
    cfg = MultiCropConfig(colour=NO_COLOUR)
    multicrop = MultiCrop(cfg)
    cell_h, cell_w = H / grid[0], W / grid[1]
    checked = total = 0
    flips = set()
    for seed in range(12):
        out = multicrop(image, mask, conf, np.random.default_rng(seed), np.random.default_rng(100 + seed))
        for g in range(cfg.global_crops):
            flips.add(out.boxes[g].flip)
            y, x = seen_coordinates(out.global_crops[g], cfg.token_grid)
            want_row = np.floor(y / cell_h)
            want_col = np.floor(x / cell_w)
            # a token whose centre lies within a pixel of a cell border may round either way
            clear = ((np.abs(y / cell_h - np.round(y / cell_h)) * cell_h > 1.0)
                     & (np.abs(x / cell_w - np.round(x / cell_w)) * cell_w > 1.0))
            assert np.array_equal(out.part_mask[g][clear], want_row[clear])
            assert np.array_equal(out.part_conf[g][clear], want_col[clear])
            checked += int(clear.sum())
            total += clear.size
    assert flips == {True, False}
    assert checked > 0.6 * total


def test_pixels_show_the_crop_box_for_every_crop():
    """The crop's pixels come from its box (flipped when the box says so), globals and locals alike."""
    image = coordinate_image()
    mask, conf = coordinate_labels((16, 8))
    cfg = MultiCropConfig(colour=NO_COLOUR)
    for seed in range(6):
        out = MultiCrop(cfg)(image, mask, conf, np.random.default_rng(seed), np.random.default_rng(seed))
        crops = out.global_crops + out.local_crops
        assert len(crops) == 8
        for crop, box in zip(crops, out.boxes):
            tokens = (crop.shape[0] // 16, crop.shape[1] // 16)
            y, x = seen_coordinates(crop, tokens)
            v = (np.arange(tokens[0]) + 0.5) / tokens[0]
            u = (np.arange(tokens[1]) + 0.5) / tokens[1]
            if box.flip:
                u = 1 - u
            assert np.abs(y - (box.y0 + v * (box.y1 - box.y0))[:, None]).max() < 0.75
            assert np.abs(x - (box.x0 + u * (box.x1 - box.x0))[None, :]).max() < 0.75


def test_colour_ops_never_touch_labels_or_geometry():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    mask = rng.integers(0, 6, (16, 8)).astype(np.uint8)
    conf = rng.random((16, 8)).astype(np.float16)
    strong = ColourConfig(jitter_p=1.0, grayscale_p=0.5, blur_p_global=(1.0, 1.0), solarize_p_global=(1.0, 1.0),
                          blur_p_local=1.0)
    for seed in range(5):
        plain = MultiCrop(MultiCropConfig(colour=NO_COLOUR))(
            image, mask, conf, np.random.default_rng(seed), np.random.default_rng(seed))
        coloured = MultiCrop(MultiCropConfig(colour=strong))(
            image, mask, conf, np.random.default_rng(seed), np.random.default_rng(seed))
        assert plain.boxes == coloured.boxes
        assert np.array_equal(plain.part_mask, coloured.part_mask)
        assert np.array_equal(plain.part_conf, coloured.part_conf)
        for a, b in zip(plain.global_crops + plain.local_crops, coloured.global_crops + coloured.local_crops):
            assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape
            assert not np.array_equal(a, b)


def test_crops_are_a_pure_function_of_the_generators():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    mask = rng.integers(0, 6, (16, 8)).astype(np.uint8)
    conf = rng.random((16, 8)).astype(np.float16)
    mc = MultiCrop(MultiCropConfig())
    a = mc(image, mask, conf, np.random.default_rng(5), np.random.default_rng(6))
    b = mc(image, mask, conf, np.random.default_rng(5), np.random.default_rng(6))
    c = mc(image, mask, conf, np.random.default_rng(7), np.random.default_rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a.global_crops + a.local_crops, b.global_crops + b.local_crops))
    assert a.boxes == b.boxes and a.boxes != c.boxes
    assert a.part_mask.dtype == np.int64 and a.part_mask.shape == (2, 16, 8)
    assert a.part_conf.dtype == np.float32


@pytest.mark.parametrize("out_hw,scale", [((256, 128), (0.4, 1.0)), ((128, 64), (0.05, 0.4))])
def test_crop_boxes_keep_scale_and_about_two_to_one(out_hw, scale):
    rng = np.random.default_rng(0)
    for _ in range(300):
        box = sample_crop_box((H, W), out_hw, scale, (3 / 4, 4 / 3), 0.5, rng)
        w, h = box.x1 - box.x0, box.y1 - box.y0
        assert 0 <= box.x0 and box.x1 <= W + 1e-9 and 0 <= box.y0 and box.y1 <= H + 1e-9
        assert scale[0] - 1e-9 <= w * h / (H * W) <= scale[1] + 1e-9
        assert 0.5 * 3 / 4 - 1e-9 <= w / h <= 0.5 * 4 / 3 + 1e-9


def test_token_cells_take_the_cell_under_the_token_centre():
    from clasp.pretraining.augment import CropBox

    # the right half of the image, mirrored: token column 0 shows the image's right edge
    box = CropBox(64.0, 0.0, 128.0, 256.0, flip=True)
    rows, cols = token_cells(box, (H, W), (16, 8), (16, 4))
    assert rows.tolist() == list(range(16))
    assert cols.tolist() == [7, 6, 5, 4]
    out = crop_image(coordinate_image(), box, (256, 64))
    assert out.size == (64, 256) and np.asarray(out)[0, 0, 0] == 127


def test_jitter_matrix_composes_the_ops_in_the_drawn_order():
    from clasp.pretraining.augment import jitter_matrix

    rng = np.random.default_rng(3)
    pixels = rng.random((50, 3)) * 255
    mean = pixels.mean(0)
    luma = np.array([0.299, 0.587, 0.114])

    def apply(m, x):
        return x @ m[:, :3].T + m[:, 3]

    def grey(x):
        return np.repeat((x @ luma)[:, None], 3, 1)

    # brightness then saturation then contrast, step by step (no clamping in between)
    b, c, s = 1.3, 0.7, 0.0
    step = pixels * b
    step = s * step + (1 - s) * grey(step)
    step = c * step + (1 - c) * (step.mean(0) @ luma)
    assert np.allclose(apply(jitter_matrix((b, c, s, 0.0), [0, 2, 1], mean, False), pixels), step)
    # a hue rotation keeps the luma and a whole turn is the identity; grey scale makes R = G = B
    hue = apply(jitter_matrix((1, 1, 1, 0.3), [3], mean, False), pixels)
    assert np.allclose(hue @ luma, pixels @ luma, atol=1e-6) and not np.allclose(hue, pixels)
    assert np.allclose(apply(jitter_matrix((1, 1, 1, 1.0), [3], mean, False), pixels), pixels)
    g = apply(jitter_matrix((1, 1, 1, 0), [], mean, True), pixels)
    assert np.allclose(g[:, 0], g[:, 1]) and np.allclose(g[:, 1], g[:, 2])
