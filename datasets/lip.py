"""Reading human-parsing data sets: LIP and CIHP, as released.

Both label 20 classes (LIP's names below; CIHP uses the same) in PNG maps of
the image's size, one class index per pixel; 255 marks pixels to ignore.

```
LIP:  ROOT/TrainVal_images/{train,val}_images/ID.jpg
      ROOT/TrainVal_parsing_annotations/{train,val}_segmentations/ID.png
      ROOT/TrainVal_images/{train,val}_id.txt  (or ROOT/{train,val}_id.txt; optional: else every image)
CIHP: ROOT/[instance-level_human_parsing/]Training/Images/ID.jpg, Training/Category_ids/ID.png,
      Training/train_id.txt; Validation/Images, Validation/Category_ids, Validation/val_id.txt
```

`train` is for fitting, `val` for the reported mIoU (the test labels of both
are withheld by their authors). Sizes are checked up front from the file
headers: a label map whose size differs from its image is an input error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clasp.datasets.errors import DatasetError

LIP_CLASSES = ("background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks",
               "pants", "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg",
               "left-shoe", "right-shoe")
IGNORE = 255
CIHP_DIR = "instance-level_human_parsing"
CIHP_SPLITS = {"train": ("Training", "train_id.txt"), "val": ("Validation", "val_id.txt")}


@dataclass
class ParsingSplit:
    images: list[Path]
    labels: list[Path]

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class ParsingData:
    root: Path
    layout: str
    class_names: tuple[str, ...]
    splits: dict[str, ParsingSplit] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def is_lip(root: str | Path) -> bool:
    return (Path(root) / "TrainVal_images").is_dir()


def cihp_root(root: str | Path) -> Path | None:
    root = Path(root)
    for candidate in (root / CIHP_DIR, root):
        if (candidate / "Training" / "Category_ids").is_dir() or (candidate / "Validation" / "Category_ids").is_dir():
            return candidate
    return None


def _ids(id_files: list[Path], image_dir: Path) -> list[str]:
    for f in id_files:
        if f.is_file():
            return [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(p.stem for p in image_dir.glob("*.jpg"))


def _pairs(image_dir: Path, label_dir: Path, ids: list[str], source: str) -> ParsingSplit:
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(f"{source}: missing {folder}")
    split = ParsingSplit([image_dir / f"{i}.jpg" for i in ids], [label_dir / f"{i}.png" for i in ids])
    if not split.images:
        raise DatasetError(f"{image_dir}: no images")
    for image, label in zip(split.images, split.labels):
        for path in (image, label):
            if not path.is_file():
                raise DatasetError(f"{source}: {path} not found")
        with Image.open(image) as a, Image.open(label) as b:
            if a.size != b.size:
                raise DatasetError(f"{label}: label map is {b.size[1]}x{b.size[0]}, its image {a.size[1]}x{a.size[0]}")
    return split


def read_lip(root: str | Path) -> ParsingData:
    root = Path(root)
    if not is_lip(root):
        raise DatasetError(f"{root}: not a LIP folder, missing TrainVal_images/")
    out = ParsingData(root, "lip", LIP_CLASSES)
    for split in ("train", "val"):
        image_dir = root / "TrainVal_images" / f"{split}_images"
        label_dir = root / "TrainVal_parsing_annotations" / f"{split}_segmentations"
        ids = _ids([root / "TrainVal_images" / f"{split}_id.txt", root / f"{split}_id.txt"], image_dir)
        out.splits[split] = _pairs(image_dir, label_dir, ids, str(root))
    return out


def read_cihp(root: str | Path) -> ParsingData:
    base = cihp_root(root)
    if base is None:
        raise DatasetError(f"{root}: not a CIHP folder, missing Training/Category_ids/")
    out = ParsingData(Path(root), "cihp", LIP_CLASSES)
    for split, (folder, id_file) in CIHP_SPLITS.items():
        part = base / folder
        ids = _ids([part / id_file], part / "Images")
        out.splits[split] = _pairs(part / "Images", part / "Category_ids", ids, str(base))
    return out


def read_label_map(path: Path, num_classes: int) -> np.ndarray:
    """(H, W) uint8 class indices; values other than 0..num_classes-1 and 255 are an input error."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise DatasetError(f"{path}: a label map must be a one-channel PNG, got mode {im.mode}")
        label = np.asarray(im, dtype=np.uint8)
    bad = (label >= num_classes) & (label != IGNORE)
    if bad.any():
        raise DatasetError(f"{path}: class {int(label[bad][0])} is not in 0..{num_classes - 1} (or {IGNORE} = ignore)")
    return label
