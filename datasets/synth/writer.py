"""`clasp synth`: write a synthetic person world and its ground truth to a folder.

Layout (all paths in the ground truth are relative to `images/`, exactly the
`path` that `clasp label --images OUT/images` records in its shards):

```
OUT/
  images/c{cam}/{pid:04d}_c{cam}_{n:03d}.jpg   256x128 RGB JPEG (quality 92)
  truth/world.json          settings, vocabulary names, cameras, identities
  truth/annotations.jsonl   one line per image: path, identity, camera, view, occluded, attributes,
                            keypoints (17 x [x, y, v], COCO's order and visibility, rules below;
                            worlds written before keypoints existed have none and still load)
  truth/parts.h5            `path` (N,) utf-8 and `part_mask` (N, 256, 128) uint8, same row order
                            as annotations.jsonl; part index in the vocabulary's part order
```

Keypoints are pixel (x, y) with pixel centres at integers, taken from the
drawing's own joints (`clasp.datasets.synth.keypoints`):

| keypoints | where (head units; x = 0 is the body's centre line, head centre at (head_dx, 0.5)) | part |
| --- | --- | --- |
| nose | head centre + (0, 0.2) | head |
| eyes | head centre +- (0.15, 0.06) | head |
| ears | head centre +- (0.33, 0.08) | head |
| shoulders, elbows, wrists | the arm's joints (the limbs' end points) | arms |
| hips | the legs' top joints | lower body |
| knees | half way from hip to ankle (the legs are straight) | lower body |
| ankles | the legs' bottom joints | feet |

Left and right are the person's: in a front view the left side is the image's
right, in a back view its left. Visibility, COCO's: 0 when the point's pixel is
outside the image (then x = y = 0, as COCO writes unlabeled points); 1 when it
is inside but not seen: the nose and eyes of a back view (the head is in front
of them), or a pixel whose ground-truth part is not the keypoint's part
(something in front of it: an occluder, a bag, a strap, the other limb); 2
otherwise. So a point marked 2 lies on its own part of the truth mask, by
construction.

Image `n` of identity `pid` is seen by camera `(pid + n) % cameras`, so every
identity with at least two images appears in at least two cameras. Every image
is a pure function of (seed, pid, n): the same seed gives the same bytes.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from clasp.datasets.synth.cameras import make_camera
from clasp.datasets.synth_config import SynthConfig  # the settings of `clasp synth`
from clasp.datasets.synth.drawing import part_table, render, sample_pose
from clasp.datasets.synth.identities import check_vocabulary, sample_identity
from clasp.datasets.synth.keypoints import keypoint_truth
from clasp.store import Vocabulary
from clasp.common.person_size import PERSON_HW

TRUTH_FORMAT = "clasp-synth-truth"
TRUTH_VERSION = 1
JPEG_QUALITY = 92
MASK_CHUNK_ROWS = 64


@dataclass
class SynthSummary:
    images: int
    identities: int
    cameras: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def image_path(pid: int, camera: int, n: int) -> str:
    """Path of image `n` of identity `pid`, relative to `images/`."""
    return f"c{camera}/{pid:04d}_c{camera}_{n:03d}.jpg"


def synthesize(config: SynthConfig, progress=None) -> SynthSummary:
    """Draw the world into `config.out`; `progress(n_done)` is called after each identity."""
    if config.identities < 1 or config.images_per_id < 1 or config.cameras < 1:
        raise ValueError("identities, images per identity and cameras must all be at least 1")
    vocab = config.vocab or Vocabulary.default()
    check_vocabulary(vocab)
    parts = part_table(vocab.part_names)
    start = time.perf_counter()
    images_dir, truth_dir = _make_folders(Path(config.out), config.cameras)
    cameras = [make_camera(config.seed, c) for c in range(config.cameras)]
    identities = [sample_identity(config.seed, pid, vocab) for pid in range(config.identities)]
    annotations = _draw_world(config, vocab, parts, cameras, identities, images_dir, truth_dir, progress)
    _write_annotations(truth_dir, annotations)
    _write_world_json(truth_dir, config, vocab, cameras, identities)
    return SynthSummary(len(annotations), config.identities, config.cameras, time.perf_counter() - start)


def _make_folders(out: Path, cameras: int) -> tuple[Path, Path]:
    """OUT/images/c{cam}/ for every camera and OUT/truth/; returns (images, truth)."""
    images_dir, truth_dir = out / "images", out / "truth"
    for c in range(cameras):
        (images_dir / f"c{c}").mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    return images_dir, truth_dir


def _draw_world(config: SynthConfig, vocab: Vocabulary, parts: np.ndarray, cameras: list, identities: list,
                images_dir: Path, truth_dir: Path, progress) -> list[dict]:
    """Every image into images/ and its part mask into truth/parts.h5 (a temp file renamed when complete).

    Returns the annotations, in the masks' row order.
    """
    total = config.identities * config.images_per_id
    tmp = truth_dir / "parts.h5.tmp"
    annotations: list[dict] = []
    with h5py.File(tmp, "w") as f:
        masks = _MaskRows(_create_mask_file(f, vocab, total))
        for identity in identities:
            for n in range(config.images_per_id):
                camera = cameras[(identity.pid + n) % config.cameras]
                mask, annotation = _draw_image(config.seed, identity, camera, n, vocab, parts, images_dir)
                masks.add(mask)
                annotations.append(annotation)
            if progress is not None:
                progress(identity.pid + 1)
        masks.flush()
        f.create_dataset("path", data=np.array([a["path"] for a in annotations], dtype=h5py.string_dtype("utf-8")))
    tmp.replace(truth_dir / "parts.h5")
    return annotations


def _create_mask_file(f: h5py.File, vocab: Vocabulary, total: int) -> h5py.Dataset:
    """The file's format attributes and its empty (total, 256, 128) `part_mask` dataset."""
    f.attrs["format"] = TRUTH_FORMAT
    f.attrs["version"] = TRUTH_VERSION
    f.attrs["part_names"] = json.dumps(vocab.part_names)
    return f.create_dataset("part_mask", shape=(total, *PERSON_HW), dtype=np.uint8,
                            chunks=(min(MASK_CHUNK_ROWS, total), *PERSON_HW), compression="gzip",
                            compression_opts=4, shuffle=True)


class _MaskRows:
    """Part masks appended to a dataset MASK_CHUNK_ROWS at a time (one compressed chunk per write)."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset, self.buffer, self.written = dataset, [], 0

    def add(self, mask: np.ndarray) -> None:
        self.buffer.append(mask)
        if len(self.buffer) == MASK_CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.dataset[self.written:self.written + len(self.buffer)] = np.stack(self.buffer)
            self.written += len(self.buffer)
            self.buffer = []


def _draw_image(seed: int, identity, camera, n: int, vocab: Vocabulary, parts: np.ndarray,
                images_dir: Path) -> tuple[np.ndarray, dict]:
    """Image `n` of `identity`, written as a JPEG; returns its part mask and its annotation line."""
    rng = np.random.default_rng([seed, 3, identity.pid, n])
    pose = sample_pose(rng, camera)
    rgb, mask = render(identity, camera, pose, rng, parts)
    rel = image_path(identity.pid, camera.index, n)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=JPEG_QUALITY)
    (images_dir / rel).write_bytes(buf.getvalue())
    annotation = {
        "path": rel, "identity": identity.pid, "camera": camera.index,
        "view": "back" if pose.back_view else "front", "occluded": pose.occluder is not None,
        "attributes": identity.attributes,
        "keypoints": keypoint_truth(identity, pose, mask, vocab.part_names).tolist(),
    }
    return mask, annotation


def _write_annotations(truth_dir: Path, annotations: list[dict]) -> None:
    """truth/annotations.jsonl: one JSON line per image."""
    with open(truth_dir / "annotations.jsonl", "w", encoding="utf-8") as fh:
        for a in annotations:
            fh.write(json.dumps(a, ensure_ascii=False) + "\n")


def _write_world_json(truth_dir: Path, config: SynthConfig, vocab: Vocabulary, cameras: list,
                      identities: list) -> None:
    """truth/world.json: the settings, the vocabulary's names, the cameras and every identity's attributes."""
    world = {
        "format": "clasp-synth", "version": TRUTH_VERSION, "seed": config.seed,
        "identities": config.identities, "images_per_id": config.images_per_id, "cameras": config.cameras,
        "image_hw": list(PERSON_HW), "image_root": "images", "vocab_sha256": vocab.sha256,
        "parts": vocab.part_names,
        "attributes": {g.group: [v.name for v in g.values] for g in vocab.attributes},
        "camera_settings": [{"index": c.index, "texture": c.texture, "gain": round(c.gain, 4),
                             "cast": [round(float(x), 4) for x in c.cast], "blur": c.blur,
                             "noise": round(c.noise, 3), "back_view_rate": round(c.back_view_rate, 3)}
                            for c in cameras],
        "identity_attributes": {str(i.pid): i.attributes for i in identities},
    }
    (truth_dir / "world.json").write_text(json.dumps(world, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
