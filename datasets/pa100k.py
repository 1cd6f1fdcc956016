"""Reading PA-100K as released: `data/` (the images) and `annotation.mat`.

`annotation.mat` holds `attributes` (26 names), `train_images_name`,
`val_images_name`, `test_images_name` (cells of file names inside `data/`) and
`train_label`, `val_label`, `test_label` (N x 26, 0/1). The official split is
80,000 / 10,000 / 10,000 images; papers report mA and the instance-based
accuracy, precision, recall and F1 on `test`.
"""

from __future__ import annotations

from pathlib import Path

from clasp.datasets.attribute_data import SPLITS, AttributeData, AttributeSplit, binary_labels, load_mat, mat_strings
from clasp.datasets.errors import DatasetError

ANNOTATION = "annotation.mat"
IMAGES = "data"


def is_pa100k(root: str | Path) -> bool:
    return (Path(root) / ANNOTATION).is_file()


def read_pa100k(root: str | Path, check_images: bool = True) -> AttributeData:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder does not exist")
    if not (root / IMAGES).is_dir():
        raise DatasetError(f"{root}: not a complete PA-100K folder, missing {IMAGES}/")
    mat_path = root / ANNOTATION
    mat = load_mat(mat_path)
    keys = ["attributes"] + [f"{s}_images_name" for s in SPLITS] + [f"{s}_label" for s in SPLITS]
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DatasetError(f"{mat_path}: missing {', '.join(missing)}")
    names = mat_strings(mat["attributes"])
    data = AttributeData(root, "pa100k", names)
    for split in SPLITS:
        files = mat_strings(mat[f"{split}_images_name"])
        labels = binary_labels(mat[f"{split}_label"], f"{mat_path} {split}_label", len(files), len(names))
        paths = [root / IMAGES / f for f in files]
        if check_images:
            absent = [p for p in paths if not p.is_file()]
            if absent:
                raise DatasetError(f"{mat_path}: {len(absent)} {split} image(s) not found, e.g. {absent[0]}")
        data.splits[split] = AttributeSplit(paths, labels)
    return data
