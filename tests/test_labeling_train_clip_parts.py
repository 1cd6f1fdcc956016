"""Pieces of `clasp train-clip`'s patch objective: native-scale mosaics and cells without a target."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clasp.labeling.caption_corpus import LETTERBOX_GREY, CorpusImages
from clasp.labeling.train_clip import NO_TARGET, build_native_mosaic, corpus_scale


def _images(sizes: list[tuple[int, int]]) -> CorpusImages:
    originals = [Image.new("RGB", (w, h), (10 * k, 0, 0)) for k, (h, w) in enumerate(sizes)]
    return CorpusImages(np.zeros((len(sizes), 4, 4, 3), np.uint8), originals, [str(k) for k in range(len(sizes))])


def test_native_tiles_keep_the_corpus_scale_and_uncovered_cells_have_no_owner() -> None:
    images = _images([(256, 128), (64, 32), (32, 96)])  # the largest picture fixes the scale: 0.5 for 128x64
    assert corpus_scale(images, (128, 64)) == 0.5
    canvas, owner, chosen = build_native_mosaic(torch.Generator().manual_seed(0), images, torch.tensor([1, 2]),
                                                (128, 64), patch=16, scale=0.5)
    for tile, i in enumerate(chosen):
        rows, cols = np.nonzero((owner == tile).numpy())
        assert (np.ptp(rows) + 1, np.ptp(cols) + 1) == {1: (2, 1), 2: (1, 3)}[i]  # (64x32 and 32x96) / 2 / 16
        assert (canvas[rows[0] * 16, cols[0] * 16] == (10 * i, 0, 0)).all()
    assert (canvas[np.repeat(np.repeat((owner < 0).numpy(), 16, 0), 16, 1)] == LETTERBOX_GREY).all()
    assert len(chosen) >= 2


def test_no_target_is_the_ignore_index_of_the_patch_loss() -> None:
    logits = torch.randn(3, 2)
    target = torch.tensor([0, NO_TARGET, 1])
    assert torch.isclose(F.cross_entropy(logits, target, ignore_index=NO_TARGET),
                         F.cross_entropy(logits[[0, 2]], target[[0, 2]]))


def test_settings_are_checked_once_by_their_declaration(tmp_path) -> None:
    import pytest

    from clasp.labeling.errors import LabelingError
    from clasp.labeling.train_clip_config import TrainClipConfig

    TrainClipConfig(corpus=tmp_path, out=tmp_path).check()
    with pytest.raises(LabelingError, match="tile scale 'tiles'; tile_scale must be native or row"):
        TrainClipConfig(corpus=tmp_path, out=tmp_path, tile_scale="tiles").check()
    with pytest.raises(LabelingError, match="steps must be at least 1, got 0"):
        TrainClipConfig(corpus=tmp_path, out=tmp_path, steps=0).check()
