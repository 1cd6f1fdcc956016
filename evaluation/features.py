"""Running a frozen backbone once over a set of images.

A *feature extractor* is any callable mapping a (B, 3, 256, 128) uint8 image
tensor to (cls (B, D), patches (B, N, D)) — what `clasp.pretraining.load_backbone`
returns, or a stand-in in tests. Features are computed once, in batches, under
`torch.inference_mode`, and kept as float32 NumPy arrays for the probes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from clasp.evaluation.errors import EvalInputError
from clasp.pretraining.vit import PromptedViT
from clasp.common.person_size import PERSON_HW

FeatureExtractor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Features:
    cls: np.ndarray  # (N, D) float32
    patches: np.ndarray | None  # (N, P, D) float32, None when not kept
    grid: tuple[int, int] | None  # (h, w) of the patch tokens

    def __len__(self) -> int:
        return len(self.cls)


def load_image(path: str | Path, hw: tuple[int, int] = PERSON_HW) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8, resized (plain, bilinear) to `hw` when it differs.

    Market-1501 crops are 128x64; they are stretched to 256x128 as re-ID code does."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (hw[1], hw[0]):
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
        return np.asarray(im)


def patch_grid(num_patches: int, hw: tuple[int, int] = PERSON_HW) -> tuple[int, int]:
    """The (h, w) token grid of `num_patches` tokens on an image of aspect `hw`."""
    w = max(1, round(math.sqrt(num_patches * hw[1] / hw[0])))
    h = num_patches // w
    if h * w != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a grid of aspect {hw[0]}:{hw[1]}")
    return h, w


def load_images(paths: Sequence[str | Path]) -> torch.Tensor:
    """The images at `paths` as one (B, 3, 256, 128) uint8 tensor, in order (`load_image` each)."""
    return torch.from_numpy(np.stack([load_image(p) for p in paths])).permute(0, 3, 1, 2).contiguous()


def _image_batches(paths: Sequence[str | Path], batch_size: int):
    """(start, (B, 3, 256, 128) uint8 tensor) per batch of `paths`, in order."""
    for start in range(0, len(paths), batch_size):
        yield start, load_images(paths[start:start + batch_size])


def _features(cls_out: list[np.ndarray], patch_out: list[np.ndarray] | None) -> Features:
    if not cls_out:
        raise ValueError("no images to extract features from")
    patches = np.concatenate(patch_out) if patch_out is not None else None
    grid = patch_grid(patches.shape[1]) if patches is not None else None
    return Features(np.concatenate(cls_out), patches, grid)


def extract_features(extractor: FeatureExtractor, paths: Sequence[str | Path], batch_size: int = 64,
                     keep_patches: bool = True, progress: Callable[[int], None] | None = None,
                     autocast: torch.dtype | None = None) -> Features:
    """Features of every image in `paths`, in that order; `autocast` runs the extractor in that dtype (CPU)."""
    cls_out, patch_out = [], []
    for start, images in _image_batches(paths, batch_size):
        cls, patches = batch_features(extractor, images, keep_patches, autocast)
        cls_out.append(cls)
        patch_out.append(patches)
        if progress is not None:
            progress(start + len(images))
    return _features(cls_out, patch_out if keep_patches else None)


def batch_features(extractor: FeatureExtractor, images: torch.Tensor, keep_patches: bool = True,
                   autocast: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(cls (B, D), patches (B, P, D) or None) as float32 arrays of one uint8 batch (B, 3, H, W)."""
    if isinstance(extractor, torch.nn.Module):
        extractor.eval()
    lower = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.inference_mode(), lower:
        cls, patches = extractor(images)
        return cls.float().cpu().numpy(), patches.float().cpu().numpy() if keep_patches else None


def native_hw(extractor: FeatureExtractor) -> tuple[int, int]:
    """The input size of a loaded backbone (that of its position embedding); PERSON_HW for other extractors."""
    config = getattr(getattr(extractor, "backbone", extractor), "config", None)
    return tuple(getattr(config, "img_hw", PERSON_HW))


def finite_features(features: Features, backbone: object) -> Features:
    """`features`, or EvalInputError naming `backbone` when any image got a NaN or infinite feature."""
    bad = ~np.isfinite(features.cls).all(axis=1)
    if features.patches is not None:
        bad |= ~np.isfinite(features.patches).all(axis=(1, 2))
    if bad.any():
        raise EvalInputError(f"{backbone}: the backbone gives NaN or infinite features for {int(bad.sum())} "
                             f"of {len(bad)} images; its weights are not usable (nothing was scored)")
    return features


def extract_prompted_features(backbone: PromptedViT, prompts: Mapping[str, str], paths: Sequence[str | Path],
                              batch_size: int = 64, keep_patches: Collection[str] = (),
                              autocast: torch.dtype | None = None) -> dict[str, Features]:
    """{name: features of every image read through task prompt `prompts[name]`}, in one pass over the images.

    Reading a backbone once per prompt decodes every image and runs the shared
    lower blocks once per prompt; here both happen once and only the PC-MoE upper
    blocks run per prompt (a backbone without MoE runs nothing per prompt): for
    `clasp eval --task-prompt per-probe` about a third of the time.
    Names not in `keep_patches` skip the last block's patch tokens. Each prompt's
    features equal those of `backbone.for_task(prompt)`.
    """
    backbone.eval()
    tasks = tuple(dict.fromkeys(prompts.values()))
    cls_only = [t for t in tasks if not any(prompts[n] == t for n in keep_patches)]
    cls_out: dict[str, list] = {t: [] for t in tasks}
    patch_out: dict[str, list] = {t: [] for t in tasks if t not in cls_only}
    lower = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.inference_mode(), lower:
        for _, images in _image_batches(paths, batch_size):
            (features,), _ = backbone.forward_groups([(images, tasks)], cls_only=cls_only)
            for task, (cls, patches) in features.items():
                cls_out[task].append(cls.float().cpu().numpy())
                if task in patch_out:
                    patch_out[task].append(patches.float().cpu().numpy())
    per_task = {t: _features(cls_out[t], patch_out.get(t)) for t in tasks}
    return {name: per_task[task] for name, task in prompts.items()}
