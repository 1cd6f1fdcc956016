"""One `clasp label` per shard folder at a time.

Two runs writing the same folder would each rewrite the manifest from their own
view and drop the other's shards. An advisory `flock` on a file in the folder
stops the second run with a clear message; the kernel releases it when the
holder exits, even by `kill -9`, so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from clasp.labeling.errors import LabelingError

LOCK_NAME = ".clasp-label.lock"


@contextlib.contextmanager
def exclusive_folder(out: Path) -> Iterator[None]:
    """Hold the folder's lock for the block; raise `LabelingError` if another run holds it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise LabelingError(f"{out}: another `clasp label` (pid {holder}) is writing this folder; "
                                "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield
    finally:
        os.close(fd)
