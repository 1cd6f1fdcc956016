"""One writer per output folder.

Two commands writing one folder each rewrite it from their own view: two
`clasp label` drop each other's shards from the manifest, two `clasp pretrain`
interleave `metrics.jsonl` and leave one run's config beside the other's
checkpoint. The first command to start takes an advisory `flock` on
`LOCK_NAME` in the folder and writes its pid and command there; a second one
is refused at once, naming the holder, and touches nothing.

Invariants:

- The kernel releases a `flock` when its holder exits, even by `kill -9`, so a
  crash never blocks the next run; the file such a holder leaves behind is taken
  over with a line saying whose it was.
- A finished holder deletes the file while it still holds the lock, so a
  refused or completed command leaves no lock file behind (and no folder, when
  the lock created it and nothing else was written there). A command that locked
  a file which was deleted meanwhile (it opened it just before) sees that the
  path no longer names its file and tries again, so two holders never coexist.
- In a multi-process run only the main process takes the lock; the others wait
  for its verdict and raise the same error, so every process stops together.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator

from clasp.errors import InputError

LOCK_NAME = ".clasp.lock"
LEGACY_LOCK_NAMES = (".clasp-label.lock",)  # what earlier versions of `clasp label` left in a shard folder
ATTEMPTS = 5  # deleted-under-us retries before giving up; each needs another command to finish in between

log = logging.getLogger("clasp")


class FolderLockError(InputError):
    """The folder is being written by another command, or cannot hold a lock at all; one line naming it."""


@contextlib.contextmanager
def exclusive_folder(out: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold `out`'s lock for the block (creating the folder); `FolderLockError` if another command holds it."""
    out = Path(out)
    created = not out.exists()
    fd = _acquire(out, command)
    try:
        yield
    finally:
        _release(out / LOCK_NAME, fd)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: the command stopped before writing anything


@contextlib.contextmanager
def exclusive_run_folder(out: str | os.PathLike, command: str, accelerator) -> Iterator[None]:
    """`exclusive_folder` for a run of one or more processes: the main process locks, every process obeys."""
    if accelerator.num_processes == 1:
        with exclusive_folder(out, command):
            yield
        return
    from accelerate.utils import broadcast_object_list

    with contextlib.ExitStack() as stack:
        verdict = [None]
        if accelerator.is_main_process:
            try:
                stack.enter_context(exclusive_folder(out, command))
            except FolderLockError as exc:
                verdict = [str(exc)]
        broadcast_object_list(verdict, from_process=0)
        if verdict[0] is not None:
            raise FolderLockError(verdict[0])
        yield


def _acquire(out: Path, command: str) -> int:
    path = out / LOCK_NAME
    for _ in range(ATTEMPTS):
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # the folder was removed between mkdir and open by a command that just gave it up
        except OSError as exc:
            raise FolderLockError(f"{out}: cannot write to this folder ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd) or "another command"
            os.close(fd)
            raise FolderLockError(f"{out}: {holder} is writing this folder; wait for it to finish or stop it, "
                                  "or choose another folder") from None
        if _still_named(path, fd):
            _take(fd, command, out)
            return fd
        os.close(fd)  # the file was deleted by its finishing holder after we opened it: open the new one
    raise FolderLockError(f"{out}: could not take the folder's lock {LOCK_NAME} in {ATTEMPTS} tries")


def _take(fd: int, command: str, out: Path) -> None:
    left = _read(fd)
    if left:
        log.warning(f"{out}: taking over the lock left by {left}, which ended without releasing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, _describe(os.getpid(), command).encode("utf-8"), 0)


def _describe(pid: int, command: str) -> str:
    return f"`{command}` (pid {pid})"


def _read(fd: int) -> str:
    return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()


def _still_named(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _release(path: Path, fd: int) -> None:
    try:
        path.unlink(missing_ok=True)  # while still holding it: see the module's invariants
    except OSError:
        pass
    finally:
        os.close(fd)
