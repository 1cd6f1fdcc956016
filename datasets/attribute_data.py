"""Pedestrian-attribute data sets as one shape: named binary attributes and image splits.

Readers (`pa100k.py`, `peta.py`) return an `AttributeData`: attribute names in
the data set's own order and spelling, and for each split (`train`, `val`,
`test`) the image paths with an (N, A) bool label matrix. `select` keeps a
subset of attributes by name; an unknown name is an input error naming the
data set and the known names. MATLAB files are read with scipy.io, where a
cell array of strings arrives as an object array of 1-element string arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clasp.datasets.errors import DatasetError

SPLITS = ("train", "val", "test")


def binary_attributes(labels: np.ndarray, group_sizes: list[int]) -> np.ndarray:
    """(N, G) value index per group -> (N, C) bool binary attributes (see the module docstring)."""
    labels = np.asarray(labels)
    columns = []
    for g, size in enumerate(group_sizes):
        if size == 2:
            columns.append(labels[:, g] == 0)
        else:
            columns.extend(labels[:, g] == v for v in range(size))
    return np.stack(columns, axis=1) if columns else np.zeros((len(labels), 0), bool)


def binary_attribute_names(groups: list[tuple[str, list[str]]]) -> list[str]:
    """Names of the columns `binary_attributes` makes, as 'group=value'."""
    names = []
    for group, values in groups:
        chosen = values[:1] if len(values) == 2 else values
        names.extend(f"{group}={v}" for v in chosen)
    return names


@dataclass
class AttributeSplit:
    paths: list[Path]
    labels: np.ndarray  # (N, A) bool

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class AttributeData:
    root: Path
    layout: str
    names: list[str]
    splits: dict[str, AttributeSplit] = field(default_factory=dict)

    def select(self, chosen: list[str] | None) -> "AttributeData":
        """The same data with only the attributes `chosen` (in that order); None keeps all."""
        if not chosen:
            return self
        unknown = [name for name in chosen if name not in self.names]
        if unknown:
            raise DatasetError(f"{self.root}: unknown attribute {unknown[0]!r} for {self.layout} "
                                 f"(its attributes: {', '.join(self.names)})")
        columns = [self.names.index(name) for name in chosen]
        splits = {k: AttributeSplit(s.paths, s.labels[:, columns]) for k, s in self.splits.items()}
        return AttributeData(self.root, self.layout, list(chosen), splits)


def mat_strings(value: np.ndarray) -> list[str]:
    """A MATLAB cell array (or char matrix) of strings as a list of str."""
    value = np.asarray(value)
    if value.dtype.kind == "U":  # a char matrix, one name per row
        return [str(v).strip() for v in value.reshape(-1)]
    out = []
    for item in value.reshape(-1):
        item = np.asarray(item)
        out.append(str(item.reshape(-1)[0]).strip() if item.size else "")
    return out


def binary_labels(labels: np.ndarray, source: str, rows: int, columns: int) -> np.ndarray:
    """Check an (rows, columns) 0/1 label matrix and return it as bool."""
    labels = np.asarray(labels)
    if labels.shape != (rows, columns):
        raise DatasetError(f"{source}: labels have shape {labels.shape}, expected ({rows}, {columns}) "
                             f"(images x attributes)")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise DatasetError(f"{source}: labels must be 0 or 1, found {sorted(set(np.unique(labels).tolist()) - {0, 1})[:3]}")
    return labels.astype(bool)


def load_mat(path: Path) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise DatasetError(f"{path}: not found")
    try:
        return loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a bad file
        raise DatasetError(f"{path}: cannot be read as a MATLAB file ({type(exc).__name__}: {exc})") from None
