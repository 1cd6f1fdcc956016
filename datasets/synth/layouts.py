"""`clasp synth --layout NAME`: the synthetic world in a benchmark's own folder format.

The world is drawn once (`synthesize`, into a temporary folder inside OUT) and
rearranged, so every reader and fine-tuning recipe runs offline on files shaped
like the real ones:

- `market1501`: `bounding_box_train/` (the lower half of the identities),
  `query/` (first image of each test identity per camera), `bounding_box_test/`
  (the rest), named `PPPP_cCs1_FFFFFF_00.jpg`; extra identities go to the
  gallery as distractors (`0000_...`) and junk (`-1_...`); one `Thumbs.db`.
- `msmt17`: `train/PPPP/…jpg`, `test/PPPP/…jpg`, `list_train.txt`,
  `list_val.txt`, `list_query.txt`, `list_gallery.txt` (labels from 0 in
  train and in test, as MSMT17 numbers them).
- `pa100k`: `data/NNNNNN.jpg` and `annotation.mat` (binary attributes
  'group=value' as `clasp.datasets.attribute_data.binary_attribute_names` makes them;
  train / val / test = 60 / 10 / 30 % of the identities).
- `peta`: `images/NNNNN.png` and `PETA.mat` (struct `peta`: data with 4 meta
  columns, attribute names plus one not evaluated (`occluded`),
  selected_attribute, two partitions in partion_attribute).
- `lip` / `cihp`: images and PNG label maps in LIP's 20 classes (background 0,
  head -> face 13, upper body -> upper-clothes 5, arms -> left-arm 14, lower
  body -> pants 9, feet -> left-shoe 18), 255 (ignore) on class boundaries.
- `coco`: `annotations/person_keypoints_{train,val}2017.json` and
  `{train,val}2017/NNNNNNNNNNNN.jpg` as COCO has them (identities split
  50/50; image and annotation id = row + 1). Each person is pasted at a seeded
  offset on a 320x256 canvas whose surround is its camera's background scene
  stretched, so a box is a part of its image; `bbox` is the tight box of the
  person's truth mask, `area` its pixel count (occluded pixels excluded, as
  COCO's segment areas), keypoints shifted with the person (v = 0 stays 0, 0, 0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from clasp.datasets.attribute_data import binary_attribute_names, binary_attributes
from clasp.datasets.coco_keypoints import coco_file, keypoints_document
from clasp.datasets.keypoint_names import PERSON_CATEGORY
from clasp.datasets.synth.cameras import make_camera
from clasp.datasets.synth.writer import JPEG_QUALITY, SynthConfig, synthesize
from clasp.store import Vocabulary

LAYOUTS = ("market1501", "msmt17", "pa100k", "peta", "lip", "cihp", "coco")
COCO_CANVAS_HW = (320, 256)
PART_TO_LIP = {"background": 0, "head": 13, "upper body": 5, "arms": 14, "lower body": 9, "feet": 18}


def write_layout(layout: str, config: SynthConfig) -> Path:
    """Draw the world of `config` and write it to `config.out` in `layout`; return the folder."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    check_layout_limits(layout, config)
    out = Path(config.out)
    world = out / ".world"
    extra = max(2, config.identities // 10) if layout in ("market1501", "msmt17") else 0
    synthesize(SynthConfig(out=world, identities=config.identities + extra, images_per_id=config.images_per_id,
                           cameras=config.cameras, seed=config.seed, vocab=config.vocab))
    from clasp.datasets.truth import SynthTruth

    truth = SynthTruth.load(world)
    WRITERS[layout](truth, out, config.identities)
    shutil.rmtree(world)
    return out


def check_layout_limits(layout: str, config: SynthConfig) -> None:
    """The readers refuse what the real data sets cannot hold: never write a folder they would refuse."""
    from clasp.datasets.market1501 import CAMERAS, MAX_ID
    from clasp.datasets.msmt17 import CAMERAS as MSMT_CAMERAS

    cameras = {"market1501": CAMERAS, "msmt17": MSMT_CAMERAS}.get(layout)
    if cameras is not None and config.cameras > cameras[-1]:
        raise ValueError(f"the {layout} layout has at most {cameras[-1]} cameras, asked for {config.cameras}")
    if layout == "market1501" and config.identities > MAX_ID:
        raise ValueError(f"the market1501 layout has at most {MAX_ID} identities, asked for {config.identities}")


def _split_ids(identity: np.ndarray, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """Row masks of consecutive identity groups with the given shares of the identities."""
    ids = np.unique(identity)
    cuts = np.round(np.cumsum(fractions) * len(ids)).astype(int)
    groups = np.split(ids, cuts[:-1])
    return [np.isin(identity, g) for g in groups]


def _copy(truth, row: int, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(truth.images_dir / truth.paths[row], target)


def _reid_roles(truth, identities: int) -> dict[str, list[int]]:
    """Rows per role: train, query, gallery, distractor, junk (extra identities beyond `identities`)."""
    real = truth.identity < identities
    train, _ = _split_ids(truth.identity[real], (0.5, 0.5))
    roles: dict[str, list[int]] = {k: [] for k in ("train", "query", "gallery", "distractor", "junk")}
    seen = set()
    rows = np.flatnonzero(real)
    for row, is_train in zip(rows, train):
        key = (truth.identity[row], truth.camera[row])
        if is_train:
            roles["train"].append(row)
        elif key not in seen:
            seen.add(key)
            roles["query"].append(row)
        else:
            roles["gallery"].append(row)
    extra = np.flatnonzero(~real)
    extra_ids = np.unique(truth.identity[extra])
    for row in extra:
        half = truth.identity[row] < extra_ids[len(extra_ids) // 2]
        roles["distractor" if half or len(extra_ids) < 2 else "junk"].append(row)
    return roles


def _market1501(truth, out: Path, identities: int) -> None:
    roles = _reid_roles(truth, identities)
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test",
               "distractor": "bounding_box_test", "junk": "bounding_box_test"}
    for role, rows in roles.items():
        for row in rows:
            pid = {"distractor": "0000", "junk": "-1"}.get(role, f"{truth.identity[row] + 1:04d}")
            frame = truth.identity[row] * 100 + int(truth.paths[row].rsplit("_", 1)[1].split(".")[0])
            _copy(truth, row, out / folders[role] / f"{pid}_c{truth.camera[row] + 1}s1_{frame:06d}_00.jpg")
    (out / "query" / "Thumbs.db").write_bytes(b"not an image")


def _msmt17(truth, out: Path, identities: int) -> None:
    roles = _reid_roles(truth, identities)
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    for role in ("train", "query", "gallery", "distractor"):
        folder = "train" if role == "train" else "test"
        rows = roles[role]
        labels = {pid: i for i, pid in enumerate(np.unique(truth.identity[roles["train"] if role == "train" else
                                                                          roles["query"] + roles["gallery"] + roles["distractor"]]))}
        for row in rows:
            pid = truth.identity[row]
            n = int(truth.paths[row].rsplit("_", 1)[1].split(".")[0])
            rel = f"{pid:04d}/{pid:04d}_{n:03d}_{truth.camera[row] + 1:02d}_0303morning_{n:04d}_0.jpg"
            _copy(truth, row, out / folder / rel)
            lists["train" if role == "train" else ("query" if role == "query" else "gallery")].append(f"{rel} {labels[pid]}")
    lists["val"] = lists["train"][: max(1, len(lists["train"]) // 10)]
    for name, lines in lists.items():
        (out / f"list_{name}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _binary_truth(truth) -> tuple[list[str], np.ndarray]:
    vocab = Vocabulary.default()
    groups = [(g.group, [v.name for v in g.values]) for g in vocab.attributes]
    labels = binary_attributes(truth.attribute_indices(vocab), [len(v) for _, v in groups])
    return binary_attribute_names(groups), labels


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def _pa100k(truth, out: Path, identities: int) -> None:
    from scipy.io import savemat

    names, labels = _binary_truth(truth)
    (out / "data").mkdir(parents=True, exist_ok=True)
    files = [f"{i + 1:06d}.jpg" for i in range(len(truth))]
    for row, name in enumerate(files):
        _copy(truth, row, out / "data" / name)
    mat = {"attributes": _cell(names)}
    for split, mask in zip(("train", "val", "test"), _split_ids(truth.identity, (0.6, 0.1, 0.3))):
        rows = np.flatnonzero(mask)
        mat[f"{split}_images_name"] = _cell([files[r] for r in rows])
        mat[f"{split}_label"] = labels[rows].astype(np.uint8)
    savemat(str(out / "annotation.mat"), mat)


def _peta(truth, out: Path, identities: int) -> None:
    from scipy.io import savemat

    names, labels = _binary_truth(truth)
    occluded = np.array([json.loads(line)["occluded"] for line in
                         (truth.root / "truth" / "annotations.jsonl").read_text().splitlines()], np.uint8)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for row in range(len(truth)):
        with Image.open(truth.images_dir / truth.paths[row]) as im:
            im.save(out / "images" / f"{row + 1:05d}.png")
    meta = np.stack([np.arange(1, len(truth) + 1), truth.identity + 1, truth.camera + 1, np.zeros(len(truth))], 1)
    data = np.concatenate([meta, labels.astype(np.float64), occluded[:, None]], axis=1)
    ids = np.unique(truth.identity)
    partitions = np.empty((2, 1), dtype=object)
    for p in range(2):
        order = np.random.default_rng(p).permutation(ids)
        groups = np.split(order, [int(0.5 * len(ids)), int(0.6 * len(ids))])
        rows = [np.flatnonzero(np.isin(truth.identity, g)) + 1 for g in groups]
        partitions[p, 0] = {"train": rows[0].reshape(-1, 1).astype(np.float64),
                            "val": rows[1].reshape(-1, 1).astype(np.float64),
                            "test": rows[2].reshape(-1, 1).astype(np.float64)}
    peta = {"data": data, "attribute": _cell(names + ["occluded"]),
            "selected_attribute": np.arange(1, len(names) + 1, dtype=np.float64).reshape(1, -1),
            "partion_attribute": partitions}
    savemat(str(out / "PETA.mat"), {"peta": peta})


def lip_label_map(mask: np.ndarray, part_names: list[str]) -> np.ndarray:
    """A part mask in LIP's classes, with 255 (ignore) where a pixel's right or lower neighbour differs."""
    table = np.array([PART_TO_LIP[name] for name in part_names], np.uint8)
    label = table[mask]
    edge = np.zeros(mask.shape, bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    label[edge] = 255
    return label


def _parsing(truth, out: Path, dirs: dict[str, tuple[str, str, str]]) -> None:
    masks = truth.read_masks()
    for split, mask in zip(("train", "val"), _split_ids(truth.identity, (0.5, 0.5))):
        image_dir, label_dir, id_file = (out / d for d in dirs[split])
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        ids = []
        for row in np.flatnonzero(mask):
            stem = f"{row + 1:06d}"
            _copy(truth, row, image_dir / f"{stem}.jpg")
            Image.fromarray(lip_label_map(masks[row], truth.part_names), mode="L").save(label_dir / f"{stem}.png")
            ids.append(stem)
        id_file.write_text("".join(i + "\n" for i in ids), encoding="utf-8")


def _lip(truth, out: Path, identities: int) -> None:
    _parsing(truth, out, {s: (f"TrainVal_images/{s}_images", f"TrainVal_parsing_annotations/{s}_segmentations",
                              f"TrainVal_images/{s}_id.txt") for s in ("train", "val")})


def _cihp(truth, out: Path, identities: int) -> None:
    base = "instance-level_human_parsing"
    _parsing(truth, out, {s: (f"{base}/{d}/Images", f"{base}/{d}/Category_ids", f"{base}/{d}/{s}_id.txt")
                          for s, d in (("train", "Training"), ("val", "Validation"))})


def _coco(truth, out: Path, identities: int) -> None:

    if truth.keypoints is None:
        raise ValueError(f"{truth.root}: the world has no keypoints")
    seed = json.loads((truth.root / "truth" / "world.json").read_text(encoding="utf-8"))["seed"]
    scenes = {int(c): _scene(make_camera(seed, int(c))) for c in np.unique(truth.camera)}
    masks = truth.read_masks()
    for split, mask in zip(("train", "val"), _split_ids(truth.identity, (0.5, 0.5))):
        images, annotations = [], []
        (out / f"{split}2017").mkdir(parents=True, exist_ok=True)
        for row in np.flatnonzero(mask):
            offset = np.random.default_rng([seed, 5, int(row)]).integers(
                0, np.subtract(COCO_CANVAS_HW, masks[row].shape) + 1)
            name = f"{row + 1:012d}.jpg"
            _paste(truth, row, scenes[int(truth.camera[row])], offset).save(out / f"{split}2017" / name, "JPEG",
                                                                              quality=JPEG_QUALITY)
            images.append({"id": int(row) + 1, "file_name": name, "height": COCO_CANVAS_HW[0],
                           "width": COCO_CANVAS_HW[1]})
            annotations.append(_person(int(row) + 1, masks[row], truth.keypoints[row], offset))
        path = coco_file(out, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(keypoints_document(images, annotations)), encoding="utf-8")


def _scene(camera) -> Image.Image:
    """The camera's background scene stretched to the canvas: the surround of every person it saw."""
    rgb = np.ascontiguousarray(camera.background).view(np.uint8).reshape(*camera.background.shape, 4)[:, :, :3]
    return Image.fromarray(rgb).resize((COCO_CANVAS_HW[1], COCO_CANVAS_HW[0]), Image.BILINEAR)


def _paste(truth, row: int, scene: Image.Image, offset: np.ndarray) -> Image.Image:
    canvas = scene.copy()
    with Image.open(truth.images_dir / truth.paths[row]) as person:
        canvas.paste(person.convert("RGB"), (int(offset[1]), int(offset[0])))
    return canvas


def _person(ann_id: int, mask: np.ndarray, keypoints: np.ndarray, offset: np.ndarray) -> dict:
    """One COCO person annotation: tight box and pixel area of the truth mask, keypoints moved by `offset` (y, x)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    dy, dx = int(offset[0]), int(offset[1])
    box = [int(cols[0]) + dx, int(rows[0]) + dy, int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    labeled = keypoints[:, 2] > 0
    moved = keypoints.copy()
    moved[labeled, 0] += dx
    moved[labeled, 1] += dy
    flat = [round(float(v), 2) if k % 3 < 2 else int(v) for k, v in enumerate(moved.reshape(-1))]
    return {"id": ann_id, "image_id": ann_id, "category_id": PERSON_CATEGORY, "iscrowd": 0, "bbox": box,
            "area": int((mask > 0).sum()), "keypoints": flat, "num_keypoints": int(labeled.sum())}


WRITERS = {"market1501": _market1501, "msmt17": _msmt17, "pa100k": _pa100k, "peta": _peta, "lip": _lip, "cihp": _cihp,
           "coco": _coco}
