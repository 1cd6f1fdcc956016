"""Read a caption corpus (a folder of images plus `captions.jsonl`) into memory for `clasp train-clip`.

Format: `DIR/captions.jsonl`, one JSON object per line, `{"path": ..., "caption": ...}`,
`path` relative to DIR (POSIX separators). Any image PIL reads will do; there is
no other file and no label of any kind. `clasp synth-corpus` writes such a folder,
and so can anyone with image–text pairs.

Invariants: every problem with the input (no folder, no captions.jsonl, a line
that is not a JSON object with string `path` and `caption`, a path outside the
folder or without a file, an image that does not decode, an empty corpus) is a
`CaptionCorpusError` naming the file (and line) — one line for the user, before
any training starts. Pairs keep the file's line order, so the same file gives
the same tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clasp.labeling.errors import LabelingError

CAPTIONS_FILE = "captions.jsonl"
LETTERBOX_GREY = 128


class CaptionCorpusError(LabelingError):
    """A caption corpus that cannot be trained on; the message is `<file>: <problem>`."""


@dataclass(frozen=True)
class CaptionPair:
    path: Path  # absolute
    caption: str


def read_caption_pairs(folder: str | Path) -> list[CaptionPair]:
    """The (image, caption) pairs listed in `folder/captions.jsonl`, checked line by line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptionCorpusError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    index = folder / CAPTIONS_FILE
    if not index.is_file():
        raise CaptionCorpusError(f"{index}: missing (a caption corpus needs {CAPTIONS_FILE} beside its images)")
    root = folder.resolve()
    pairs = []
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{index}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaptionCorpusError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not isinstance(row.get("caption"), str):
            raise CaptionCorpusError(f"{where}: expected an object with string fields \"path\" and \"caption\"")
        path = (root / row["path"]).resolve()
        if not path.is_relative_to(root):
            raise CaptionCorpusError(f"{where}: path {row['path']!r} leaves the corpus folder")
        if not path.is_file():
            raise CaptionCorpusError(f"{where}: image {row['path']!r} does not exist")
        if not row["caption"].strip():
            raise CaptionCorpusError(f"{where}: empty caption")
        pairs.append(CaptionPair(path, row["caption"].strip()))
    if not pairs:
        raise CaptionCorpusError(f"{index}: empty corpus (no image-caption pairs)")
    return pairs


def _decode(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types for broken files
        raise CaptionCorpusError(f"{path}: cannot decode image ({type(exc).__name__})") from None


def letterbox(image: Image.Image, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: the image resized to fit (aspect kept, bicubic as the labeler), centred on grey."""
    height, width = hw
    scale = min(height / image.height, width / image.width)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = np.full((height, width, 3), LETTERBOX_GREY, np.uint8)
    resized = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = resized
    return canvas


@dataclass
class CorpusImages:
    """The whole corpus in memory: full views for the image-level loss, originals for mosaic tiles.

    Kept as numpy/PIL (channels last) because per-image torch copies are slow on
    small CPUs; a step converts its whole batch to a tensor once.
    """

    full: np.ndarray  # (N, H, W, 3) uint8, letterboxed to the training input
    originals: list[Image.Image]  # RGB at the file's own size
    captions: list[str]


def load_corpus_images(pairs: list[CaptionPair], hw: tuple[int, int]) -> CorpusImages:
    full = np.empty((len(pairs), *hw, 3), dtype=np.uint8)
    originals = []
    for i, pair in enumerate(pairs):
        image = _decode(pair.path)
        full[i] = letterbox(image, hw)
        originals.append(image)
    return CorpusImages(full, originals, [p.caption for p in pairs])
