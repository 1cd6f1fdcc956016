"""Reading PETA in either form the attribute-recognition baselines ship.

1. `PETA.mat` + `images/` (dangweili/pedestrian-attribute-recognition-pytorch,
   Strong Baseline): a struct `peta` with fields
   - `data`: 19000 x (4 + 105); column 0 is the image number n (the image is
     `images/{n:05d}.png`), columns 1-3 are meta data, the rest are 0/1 labels;
   - `attribute`: the 105 attribute names, in label-column order;
   - `selected_attribute`: the (1-based) attributes papers evaluate (35);
   - `partion_attribute` (sic): a cell of 5 random partitions, each a struct
     with `train`, `val`, `test` (1-based row numbers of `data`).
   The evaluated attributes and partition 0 are used unless told otherwise.
2. The original release: one folder per sub-set (`3DPeS/`, `CUHK/`, `VIPeR/`,
   ...) each with `archive/Label.txt` (a line `ID name name ...` lists the
   positive attributes of person ID) beside the images, whose file names start
   with `ID_`. Attribute names are all names that occur; there is no official
   split, so persons (sub-set, ID) are split by a seeded permutation into
   50 % train, 10 % val and 40 % test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clasp.datasets.attribute_data import AttributeData, AttributeSplit, binary_labels, load_mat, mat_strings
from clasp.datasets.errors import DatasetError

MAT_FILE = "PETA.mat"
IMAGES = "images"
LABEL_FILE = "Label.txt"
META_COLUMNS = 4
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def is_peta(root: str | Path) -> bool:
    root = Path(root)
    return (root / MAT_FILE).is_file() or any(root.glob(f"*/archive/{LABEL_FILE}"))


def read_peta(root: str | Path, partition: int = 0, seed: int = 0) -> AttributeData:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder does not exist")
    if (root / MAT_FILE).is_file():
        return read_peta_mat(root, partition)
    if any(root.glob(f"*/archive/{LABEL_FILE}")):
        return read_peta_label_folders(root, seed)
    raise DatasetError(f"{root}: not a PETA folder (neither {MAT_FILE} nor */archive/{LABEL_FILE})")


def _field(struct: np.ndarray, name: str, source: Path):
    if struct.dtype.names is None or name not in struct.dtype.names:
        raise DatasetError(f"{source}: struct `peta` has no field {name!r} (fields: {struct.dtype.names})")
    return struct[name].reshape(-1)[0]


def _indices(value, source: str, rows: int) -> np.ndarray:
    idx = np.asarray(value).reshape(-1).astype(np.int64) - 1  # MATLAB numbers from 1
    if idx.size and (idx.min() < 0 or idx.max() >= rows):
        raise DatasetError(f"{source}: index {int(idx.max()) + 1 if idx.max() >= rows else int(idx.min()) + 1} "
                             f"out of range 1..{rows}")
    return idx


def read_peta_mat(root: Path, partition: int = 0) -> AttributeData:
    mat_path = root / MAT_FILE
    mat = load_mat(mat_path)
    if "peta" not in mat:
        raise DatasetError(f"{mat_path}: no struct `peta`")
    peta = mat["peta"]
    data = np.asarray(_field(peta, "data", mat_path))
    names = mat_strings(_field(peta, "attribute", mat_path))
    if data.ndim != 2 or data.shape[1] != META_COLUMNS + len(names):
        raise DatasetError(f"{mat_path}: peta.data has shape {data.shape}, expected (images, {META_COLUMNS} + "
                             f"{len(names)} attributes)")
    labels = binary_labels(data[:, META_COLUMNS:], f"{mat_path} peta.data", len(data), len(names))
    selected = _indices(_field(peta, "selected_attribute", mat_path), f"{mat_path} selected_attribute", len(names))
    splits_cell = np.asarray(_field(peta, "partion_attribute", mat_path)).reshape(-1)
    if not 0 <= partition < len(splits_cell):
        raise DatasetError(f"{mat_path}: no partition {partition} (it has {len(splits_cell)})")
    split_struct = np.asarray(splits_cell[partition])
    paths = [root / IMAGES / f"{int(n):05d}.png" for n in data[:, 0]]
    if not (root / IMAGES).is_dir():
        raise DatasetError(f"{root}: not a complete PETA folder, missing {IMAGES}/")
    out = AttributeData(root, "peta", [names[i] for i in selected])
    for split in ("train", "val", "test"):
        rows = _indices(_field(split_struct, split, mat_path), f"{mat_path} partition {partition} {split}", len(data))
        out.splits[split] = AttributeSplit([paths[r] for r in rows], labels[rows][:, selected])
    absent = [p for s in out.splits.values() for p in s.paths if not p.is_file()]
    if absent:
        raise DatasetError(f"{mat_path}: {len(absent)} image(s) not found, e.g. {absent[0]}")
    return out


def _read_label_file(path: Path) -> dict[str, list[str]]:
    people = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(f"{path}:{number}: expected 'ID attribute attribute ...', got {line.strip()!r}")
        people[fields[0]] = fields[1:]
    return people


def read_peta_label_folders(root: Path, seed: int = 0) -> AttributeData:
    persons: list[tuple[list[Path], list[str]]] = []
    for label_file in sorted(root.glob(f"*/archive/{LABEL_FILE}")):
        by_id: dict[str, list[Path]] = {}
        for image in sorted(label_file.parent.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                by_id.setdefault(image.name.split("_")[0], []).append(image)
        for pid, positives in _read_label_file(label_file).items():
            if pid not in by_id:
                raise DatasetError(f"{label_file}: person {pid} has no image named {pid}_*")
            persons.append((by_id[pid], positives))
    names = sorted({name for _, positives in persons for name in positives})
    order = np.random.default_rng(seed).permutation(len(persons))
    cut1, cut2 = int(0.5 * len(persons)), int(0.6 * len(persons))
    out = AttributeData(root, "peta", names)
    for split, chosen in (("train", order[:cut1]), ("val", order[cut1:cut2]), ("test", order[cut2:])):
        paths, rows = [], []
        for p in sorted(chosen):
            images, positives = persons[p]
            row = np.isin(names, positives)
            paths.extend(images)
            rows.extend([row] * len(images))
        out.splits[split] = AttributeSplit(paths, np.array(rows, bool).reshape(len(paths), len(names)))
    return out
