"""Where re-ID on a synthetic world starts and ends: raw pixels, with and without the person.

The re-ID probe scores cosine neighbours of backbone features. Before reading a
method's score it helps to know two references computed from the pixels alone:
the whole picture (what a feature that has learned nothing about people is
likely to see) and, using the world's truth masks, the person only (the
background replaced by grey) or the background only (the person replaced by
grey). Every reference uses the probe's own split (`identity_split`,
`query_gallery_split`) and the Market-1501 scoring, so the numbers sit beside a
method's. The masks are ground truth: these are diagnostics of the world, never
a method, and nothing here feeds training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from clasp.errors import InputError
from clasp.evaluation.probes import identity_split, query_gallery_split, reid_probe
from clasp.datasets.truth import SynthTruth

THUMBNAIL_WH = (32, 64)  # pixels are compared at this size: fine enough for clothes, blind to noise
NEUTRAL_GREY = 128.0


def _thumbnails(truth: SynthTruth) -> tuple[np.ndarray, np.ndarray]:
    """(N, 64, 32, 3) float pixels and (N, 64, 32) person masks (any part but background)."""
    pixels = np.stack([np.asarray(Image.open(truth.images_dir / p).convert("RGB").resize(THUMBNAIL_WH, Image.BILINEAR),
                                  np.float32) for p in truth.paths])
    masks = np.stack([np.asarray(Image.fromarray(m).resize(THUMBNAIL_WH, Image.NEAREST)) > 0
                      for m in truth.read_masks()])
    return pixels, masks


def pixel_references(world: str | Path) -> dict[str, dict]:
    """`reid_probe` results of raw-pixel features: whole picture, person only, background only."""
    truth = SynthTruth.load(world)
    pixels, person = _thumbnails(truth)
    _, test = identity_split(truth.identity)
    query, gallery = query_gallery_split(truth.identity, truth.camera, np.flatnonzero(test))
    views = {"whole picture": pixels,
             "person only": np.where(person[..., None], pixels, NEUTRAL_GREY),
             "background only": np.where(person[..., None], NEUTRAL_GREY, pixels)}
    out = {}
    for name, view in views.items():
        features = view.reshape(len(view), -1)
        features = features - features.mean(0, keepdims=True)
        out[name] = reid_probe(features[query], truth.identity[query], truth.camera[query], features[gallery],
                               truth.identity[gallery], truth.camera[gallery])
    return out


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world", type=Path, help="a `clasp synth` folder")
    args = parser.parse_args()
    try:
        scores = pixel_references(args.world)
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for name, score in scores.items():
        print(f"raw pixels, {name:16s} re-ID mAP {100 * score['mAP']:5.1f}  rank-1 {100 * score['rank1']:5.1f}")


if __name__ == "__main__":
    main()
