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

    path: str  # POSIX, relative to the images folder, as recorded (see `recorded_path`)
    size: int
    mtime_ns: int
    # The relative path as the file system gave it, when it differs from `path`
    # (a name that is not valid UTF-8); what the file is opened by.
    fs_path: str | None = None


def recorded_path(rel: str) -> str:
    """A relative path as the store records it: valid UTF-8 text, whatever the file name's bytes.

    Names are bytes on POSIX; Python hands undecodable bytes over as lone
    surrogates (`os.fsdecode`'s surrogateescape), which UTF-8 files and HDF5
    strings cannot hold. Each byte that is not part of valid UTF-8 is written as
    the four characters `\\xNN` (the `backslashreplace` form), so `caf\\xe9.png`
    is recorded for the Latin-1 bytes `b"caf\\xe9.png"`. Valid UTF-8 names are
    recorded unchanged.
    """
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def discover_images(root: str | Path) -> list[InputFile]:
    """All image files under `root` (recursively, suffix case-insensitive), sorted by path.

    Paths sort by Unicode code point of the relative POSIX path (as recorded:
    names that are not UTF-8 are escaped, see `recorded_path`), so the order is
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
            shown = recorded_path(rel)
            found.append(InputFile(shown, st.st_size, st.st_mtime_ns, None if shown == rel else rel))
    if not found:
        raise LabelingError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} in all subfolders)")
    found.sort(key=lambda f: f.path)
    return found


def _raise_walk_error(exc: OSError) -> None:
    raise LabelingError(f"{exc.filename}: cannot list folder ({exc.strerror})")
