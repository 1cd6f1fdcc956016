"""`clasp synth-corpus`: image–caption pairs drawn by the synthetic renderer, for training a CLIP.

Layout (a generic caption corpus: any folder like it can train `clasp train-clip`):

```
OUT/
  images/{k // 1000:04d}/{k:06d}.jpg   JPEG q90, sizes vary (whole persons 256x128, crops smaller)
  captions.jsonl                       {"path": "images/0000/000000.jpg", "caption": "..."} one per line
```

What it holds: whole persons with free-text captions of their attributes, and
single items or regions as web photos show them (a head, a face, hair, a torso
in a top, an arm, trousers / shorts / a skirt, shoes, a backpack, a bag, a hat,
glasses: the region the renderer drew, alone on its camera's background, cropped
to it with a random margin), and bare background scenes (wall, ground, street).
Only images and caption text leave the writer: no mask, box or label file.
Captions mention only what shows (`captions.py`).

Disjoint from every evaluation world. `clasp synth --seed S` draws identity
`pid` from the random stream keyed `[S, 1, pid]`, camera `c` from `[S, 2, c]`
and image poses from `[S, 3, pid, n]`. The corpus draws its identities from
stream `[S, 101, 1_000_000 + k]`, its cameras from `[S, 102, c]` and each
picture from `[S, 103, k]`: no key is shared, so the same integer seed still
gives unrelated identities, backgrounds, lighting and poses, and corpus
identity numbers (from 1,000,000) are outside the range a world ever numbers.

Invariants: the output is a pure function of (seed, pairs, cameras): the same
arguments give the same bytes. Picture `k` is drawn by `draw_picture(k)` alone,
so any prefix of a larger corpus equals the smaller corpus.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clasp.datasets.synth.cameras import Camera, make_camera
from clasp.datasets.synth_config import CorpusConfig  # the settings of `clasp synth-corpus`
from clasp.datasets.synth.captions import Visible, person_caption, region_caption, scene_caption
from clasp.datasets.synth.drawing import MATERIALS, render, sample_pose
from clasp.datasets.synth.identities import check_vocabulary, sample_identity
from clasp.store import Vocabulary
from clasp.common.person_size import PERSON_HW

IDENTITY_STREAM = 101
CAMERA_STREAM = 102
PICTURE_STREAM = 103
IDENTITY_OFFSET = 1_000_000
JPEG_QUALITY = 90
CAPTIONS_FILE = "captions.jsonl"
MATERIAL_INDEX = np.arange(len(MATERIALS), dtype=np.uint8)  # render() then returns the material map itself

# Region name -> the materials it shows. Arms are one arm at a time (split at the body's centre line).
REGIONS: dict[str, tuple[str, ...]] = {
    "head": ("face", "hair", "hat", "glasses", "neck"),
    "face": ("face", "glasses"),
    "hair": ("hair",),
    "top": ("upper garment", "strap", "backpack"),
    "arm": ("sleeve", "arm skin"),
    "lower": ("lower garment", "leg skin"),
    "feet": ("shoes",),
    "backpack": ("backpack",),
    "bag": ("bag",),
    "hat": ("hat",),
    "glasses": ("glasses",),
}
# How often each kind of picture is drawn; regions that do not show in a drawing are redrawn as another.
PICTURE_MIX = (("person", 0.34), ("scene", 0.1), ("head", 0.08), ("face", 0.03), ("hair", 0.03), ("top", 0.09),
               ("arm", 0.09), ("lower", 0.09), ("feet", 0.07), ("backpack", 0.02), ("bag", 0.02),
               ("hat", 0.02), ("glasses", 0.02))
MIN_REGION_PIXELS = 40


@dataclass
class CorpusSummary:
    pairs: int
    seconds: float
    kinds: dict[str, int]

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)


def corpus_path(k: int) -> str:
    return f"images/{k // 1000:04d}/{k:06d}.jpg"


def _unpack(packed: np.ndarray) -> np.ndarray:
    return packed.view(np.uint8).reshape(*packed.shape, 4)[..., :3]


def _background(camera: Camera, rng: np.random.Generator, ys: slice = slice(0, PERSON_HW[0]),
                xs: slice = slice(0, PERSON_HW[1])) -> np.ndarray:
    """Rows `ys`, columns `xs` of a noisy 256x128 window of the camera's scene (a picture without the person)."""
    oy, ox = (int(rng.integers(camera.background.shape[i] - PERSON_HW[i] + 1)) for i in (0, 1))
    ys, xs = slice(ys.start + oy, ys.stop + oy), slice(xs.start + ox, xs.stop + ox)
    window = _unpack(camera.background[ys, xs]).astype(np.int16)
    return (window + camera.noise_field[ys, xs]).clip(0, 255).astype(np.uint8)


def _crop(rng: np.random.Generator, keep: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of `keep` with a random margin, at least 16 px a side, aspect at most 3:1."""
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = y1 - y0, x1 - x0
    h2 = max(h * (1 + rng.uniform(0.05, 0.4)), w / 3, 16)
    w2 = max(w * (1 + rng.uniform(0.05, 0.4)), h2 / 3, 16)
    h2 = max(h2, w2 / 3)
    cy, cx = (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * h, (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * w
    top = int(np.clip(round(cy - h2 / 2), 0, max(PERSON_HW[0] - h2, 0)))
    left = int(np.clip(round(cx - w2 / 2), 0, max(PERSON_HW[1] - w2, 0)))
    return slice(top, top + int(round(h2))), slice(left, left + int(round(w2)))


class CorpusDrawer:
    """Draws picture `k` of a corpus: a pure function of (seed, cameras, k)."""

    def __init__(self, seed: int, cameras: int, vocab: Vocabulary) -> None:
        check_vocabulary(vocab)
        self.seed, self.vocab = seed, vocab
        self.cameras = [make_camera(seed, c, stream=CAMERA_STREAM) for c in range(cameras)]
        self.kinds = [k for k, _ in PICTURE_MIX]
        weights = np.array([p for _, p in PICTURE_MIX])
        self.weights = weights / weights.sum()

    def draw_picture(self, k: int) -> tuple[str, np.ndarray, str]:
        """(kind, image (H, W, 3) uint8, caption) of picture k."""
        rng = np.random.default_rng([self.seed, PICTURE_STREAM, k])
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.weights))]
        camera = self.cameras[int(rng.integers(len(self.cameras)))]
        if kind == "scene":
            return kind, *self._scene(rng, camera)
        identity = sample_identity(self.seed, IDENTITY_OFFSET + k, self.vocab, stream=IDENTITY_STREAM)
        pose = sample_pose(rng, camera)
        image, materials = render(identity, camera, pose, rng, MATERIAL_INDEX)
        if kind == "person":
            return kind, image, person_caption(rng, identity, Visible.of(materials), pose.back_view)
        keep = np.isin(materials, [MATERIALS.index(m) for m in REGIONS[kind]])
        if kind == "arm":
            columns = np.arange(PERSON_HW[1])[None, :]
            keep &= (columns < pose.centre_x) if rng.random() < 0.5 else (columns >= pose.centre_x)
        if keep.sum() < MIN_REGION_PIXELS:  # the region does not show here: the person is pictured instead
            return "person", image, person_caption(rng, identity, Visible.of(materials), pose.back_view)
        ys, xs = _crop(rng, keep)
        keep = keep[ys, xs]
        isolated = np.where(keep[..., None], image[ys, xs], _background(camera, rng, ys, xs))
        shown = Visible.of(np.where(keep, materials[ys, xs], 0))
        return kind, isolated, region_caption(rng, kind, identity, shown, pose.back_view)

    def _scene(self, rng: np.random.Generator, camera: Camera) -> tuple[np.ndarray, str]:
        """A bare background: the whole street, its upper part (wall) or its lower part (ground)."""
        full = _background(camera, rng)
        view = ("street", "wall", "ground")[int(rng.integers(3))]
        h = PERSON_HW[0]
        if view == "wall":
            full = full[: int(h * rng.uniform(0.25, 0.45))]
        elif view == "ground":
            full = full[h - int(h * rng.uniform(0.12, 0.2)):]
        return full, scene_caption(rng, view, camera.texture)


def write_corpus(config: CorpusConfig, progress=None) -> CorpusSummary:
    """Write `config.pairs` pairs to `config.out`; `progress(n_done)` is called every 100 pairs."""
    if config.pairs < 1 or config.cameras < 1:
        raise ValueError("pairs and cameras must both be at least 1")
    start = time.perf_counter()
    out = Path(config.out)
    drawer = CorpusDrawer(config.seed, config.cameras, config.vocab or Vocabulary.default())
    kinds: dict[str, int] = {}
    lines = []
    for k in range(config.pairs):
        kind, image, caption = drawer.draw_picture(k)
        kinds[kind] = kinds.get(kind, 0) + 1
        rel = corpus_path(k)
        if k % 1000 == 0:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buf, "JPEG", quality=JPEG_QUALITY)
        (out / rel).write_bytes(buf.getvalue())
        lines.append(json.dumps({"path": rel, "caption": caption}, ensure_ascii=False))
        if progress is not None and (k + 1) % 100 == 0:
            progress(k + 1)
    tmp = out / (CAPTIONS_FILE + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out / CAPTIONS_FILE)
    return CorpusSummary(config.pairs, time.perf_counter() - start, dict(sorted(kinds.items())))
