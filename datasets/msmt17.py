"""Reading an MSMT17 folder (V1 or V2) for re-ID.

Layout, as released:

```
ROOT/train/   (V2: mask_train_v2/)   0000/0000_000_01_0303morning_0015_0.jpg ...
ROOT/test/    (V2: mask_test_v2/)
ROOT/list_train.txt   "0000/0000_000_01_0303morning_0015_0.jpg 0"  (path relative to train/, label)
ROOT/list_val.txt     (a subset of train/, optional)
ROOT/list_query.txt   paths relative to test/
ROOT/list_gallery.txt
```

The camera is the third underscore field of the file name (`01` above, 1-based),
as torchreid and fast-reid read it; the identity is the label on the line, not
renumbered (torchreid's `MSMT17.process_dir`; `list_val.txt` is not added to
training, as torchreid does by default). MSMT17 has no junk and no distractor
ids: a negative label, or a camera outside the data set's 15 (1..15), is
refused naming the line. Labels get no upper limit (the lists number train and
test identities separately). The query/gallery protocol is Market-1501's
(same-camera matches of the query's identity are removed from its ranking), so
the splits come back as `MarketSplit`s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clasp.datasets.errors import DatasetError
from clasp.datasets.market1501 import Market1501, MarketSplit

CAMERAS = range(1, 16)
LISTS = {"train": "list_train.txt", "query": "list_query.txt", "gallery": "list_gallery.txt"}
IMAGE_DIRS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}


def is_msmt17(root: str | Path) -> bool:
    return (Path(root) / LISTS["query"]).is_file() or (Path(root) / LISTS["train"]).is_file()


def _image_dir(root: Path, kind: str) -> Path:
    for name in IMAGE_DIRS[kind]:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: not a complete MSMT17 folder, missing {IMAGE_DIRS[kind][0]}/")


def read_list(list_file: Path, image_dir: Path) -> MarketSplit:
    """One list file: `relative/path.jpg label` per line; the camera comes from the file name."""
    paths, ids, cams = [], [], []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        name = Path(fields[0]).name.split("_")
        try:
            if len(fields) != 2 or len(name) < 3:
                raise ValueError
            label, camera = int(fields[1]), int(name[2])
        except ValueError:
            raise DatasetError(f"{list_file}:{number}: expected 'PID/PID_NNN_CC_....jpg LABEL', got {line.strip()!r}") from None
        if label < 0:
            raise DatasetError(f"{list_file}:{number}: label {label} is below 0 (MSMT17 has no junk ids), "
                                 f"got {line.strip()!r}")
        if camera not in CAMERAS:
            raise DatasetError(f"{list_file}:{number}: camera {name[2]} is not one of MSMT17's 01..15, "
                                 f"got {line.strip()!r}")
        path = image_dir / fields[0]
        if not path.is_file():
            raise DatasetError(f"{list_file}:{number}: image {path} not found")
        paths.append(path)
        ids.append(label)
        cams.append(camera)
    if not paths:
        raise DatasetError(f"{list_file}: no images listed")
    return MarketSplit(paths, np.array(ids, np.int64), np.array(cams, np.int64), 0)


def read_msmt17(root: str | Path) -> Market1501:
    """Train, query and gallery of an MSMT17 folder (list_train.txt is optional for evaluation)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder does not exist")
    missing = [name for key, name in LISTS.items() if key != "train" and not (root / name).is_file()]
    if missing:
        raise DatasetError(f"{root}: not a complete MSMT17 folder, missing {', '.join(missing)}")
    test_dir = _image_dir(root, "test")
    query = read_list(root / LISTS["query"], test_dir)
    gallery = read_list(root / LISTS["gallery"], test_dir)
    train = read_list(root / LISTS["train"], _image_dir(root, "train")) if (root / LISTS["train"]).is_file() else None
    return Market1501(root, query, gallery, train)
