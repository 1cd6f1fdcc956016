"""Bringing a pixel part mask down to a coarse label grid.

Each grid cell covers the pixel rows floor(i*H/h) .. floor((i+1)*H/h) and the
matching columns (so a 256x128 mask on a 28x14 grid gives cells of 9 or 10
pixels); the cell takes the part that covers most of its pixels, ties going to
the lower part index. This is how the ground truth is compared with labels and
probe predictions on the 16x8 token grid or the labeler's grid.
"""

from __future__ import annotations

import numpy as np


def cell_edges(size: int, cells: int) -> np.ndarray:
    """Start index of each of `cells` cells over `size` pixels."""
    if cells < 1 or cells > size:
        raise ValueError(f"cannot cut {size} pixels into {cells} cells")
    return (np.arange(cells) * size) // cells


def majority_downsample(masks: np.ndarray, grid: tuple[int, int], num_classes: int) -> np.ndarray:
    """(N, H, W) or (H, W) integer masks -> (N, h, w) / (h, w) uint8, majority per cell."""
    masks = np.asarray(masks)
    single = masks.ndim == 2
    if single:
        masks = masks[None]
    n, height, width = masks.shape
    rows, cols = cell_edges(height, grid[0]), cell_edges(width, grid[1])
    counts = np.empty((num_classes, n, grid[0], grid[1]), np.int32)
    for c in range(num_classes):
        hit = (masks == c).astype(np.int32)
        counts[c] = np.add.reduceat(np.add.reduceat(hit, rows, axis=1), cols, axis=2)
    out = counts.argmax(0).astype(np.uint8)  # argmax keeps the first maximum: lower index wins ties
    return out[0] if single else out
