"""Finding the images under `--images`.

The sorted list of relative POSIX paths is what cuts the work into shards, so it
must not depend on the platform or on the order the file system lists entries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clasp.labeling.errors import LabelingError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@dataclass(frozen=True)
class InputFile:
    """One image file: its path relative to the images folder, and what a rerun compares."""

    path: str  # POSIX, relative to the images folder
    size: int
    mtime_ns: int


def discover_images(root: str | Path) -> list[InputFile]:
    """All image files under `root` (recursively, suffix case-insensitive), sorted by path.

    Paths sort by Unicode code point of the relative POSIX path, so the order is
    the same on every machine. Symbolic links to files are followed; links to
    folders are not (they can form loops).
    """
    root = Path(root)
    if not root.exists():
        raise LabelingError(f"{root}: images folder does not exist")
    if not root.is_dir():
        raise LabelingError(f"{root}: --images must be a folder, this is a file")
    found: list[InputFile] = []
    for folder, dirs, files in os.walk(root, onerror=_raise_walk_error):
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError:
                continue  # a dangling link or a file removed while scanning
            if not os.path.isfile(full):
                continue
            rel = Path(full).relative_to(root).as_posix()
            found.append(InputFile(rel, st.st_size, st.st_mtime_ns))
    if not found:
        raise LabelingError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} in all subfolders)")
    found.sort(key=lambda f: f.path)
    return found


def _raise_walk_error(exc: OSError) -> None:
    raise LabelingError(f"{exc.filename}: cannot list folder ({exc.strerror})")
