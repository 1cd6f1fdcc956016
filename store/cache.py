"""The local cache of shards fetched from URL stores: one folder per URL, bounded, least recently used out.

    CACHE_DIR/                       --cache-dir (default ~/.cache/clasp/shards)
      .evict.lock                    held while room is made and reserved
      <sha256 of the URL, 16 hex>/   one store's local view: what ShardStore reads
        manifest.json                the fetched manifest
        shard-000003.h5              fetched shards, each checked before it got its name
        .fetch/                      url, and per shard: NAME.use, NAME.fetch (locks), NAME.tmp

Invariants:

- A file under a shard's name was checked against the view's manifest.json
  (byte size and sha256) before it was renamed there; a fetch writes `.tmp`
  first, so a killed fetch leaves no half shard under a shard's name. A new
  manifest first removes the shards whose entry changed, then is renamed in.
- Every reader holds a shared `flock` on NAME.use from before it looks for the
  file until it has closed it; eviction takes that lock exclusively without
  waiting and skips the shard when it cannot, so a shard in use (by any process
  on this host: DataLoader workers, other ranks, other runs) is never removed.
- One process at a time fetches a given shard (exclusive `flock` on
  NAME.fetch); the others wait and then find it there. Lock files are never
  deleted, so a lock always guards the file its holder looked at.
- Before a fetch, under `.evict.lock`, the least recently used shards of the
  whole CACHE_DIR are removed until the new one fits `--cache-size` beside the
  cached shards and the bytes reserved by fetches in flight; then its own size
  is reserved (its NAME.fetch grows to it, sparse, until the fetch ends; a
  reservation whose lock nobody holds is a killed fetch's and is cleared).
  Shards in use cannot go; when they alone exceed the bound the cache holds
  more for a while (one warning): give each host at least one shard per
  DataLoader worker and rank.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from clasp.store.cache_config import CacheConfig
from clasp.store.schema import MANIFEST_NAME, SHARD_SUFFIX

log = logging.getLogger("clasp")

WORK_DIR = ".fetch"  # in each store's view: the URL, the lock files and the temp files
EVICT_LOCK = ".evict.lock"  # in the cache root: making room and reserving it is one step


def store_folder(config: CacheConfig, url: str) -> Path:
    """The view folder of `url` in the cache (not created here: see `replace_manifest`)."""
    return config.folder / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


@contextlib.contextmanager
def flocked(path: Path, mode: int) -> Iterator[int]:
    """Hold `flock(mode)` on the lock file `path` for the block (the file is created and kept)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # releases the lock


class Hold:
    """A shard file kept from eviction until `release()` (or the end of a `with`)."""

    def __init__(self, path: Path, fd: int | None = None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.release()


def hold(folder: Path, name: str, size: int, limit: int, fetch: Callable[[Path], None]) -> Hold:
    """`folder/name` held for use; when absent (or of another size), `fetch(tmp)` first, then renamed in.

    `fetch` writes and checks the temp file it is given (raising if the bytes are
    wrong); it runs under the shard's fetch lock, after eviction made room.
    """
    path = folder / name
    fd = os.open(folder / WORK_DIR / f"{name}.use", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not _present(path, size):
            _fetch_once(folder, name, size, limit, fetch)
        now = time.time_ns()  # last used, the eviction order (in ns: utime's own clock ticks in milliseconds)
        os.utime(path, ns=(now, now))
    except BaseException:
        os.close(fd)
        raise
    return Hold(path, fd)


def _fetch_once(folder: Path, name: str, size: int, limit: int, fetch: Callable[[Path], None]) -> None:
    """Fetch `name` unless another process did while this one waited for the shard's fetch lock.

    Room is made and `size` bytes reserved under the cache-wide lock (the fetch
    lock file is grown to `size`, sparse, while the fetch runs), so fetches
    running side by side never overrun the bound together.
    """
    path, work = folder / name, folder / WORK_DIR
    with flocked(work / f"{name}.fetch", fcntl.LOCK_EX) as reservation:
        if _present(path, size):
            return
        path.unlink(missing_ok=True)
        with flocked(folder.parent / EVICT_LOCK, fcntl.LOCK_EX):
            make_room(folder.parent, size, limit)
            os.ftruncate(reservation, size)
        tmp = work / f"{name}.tmp"
        try:
            fetch(tmp)
            _fsync(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            os.ftruncate(reservation, 0)


def _fsync(path: Path) -> None:
    """The checked bytes reach the disk before the name does: a crash never leaves a named empty shard."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _present(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _views(root: Path) -> list[Path]:
    """The store views under the cache root."""
    return [Path(e.path) for e in _scandir(root)
            if e.is_dir(follow_symlinks=False) and (Path(e.path) / WORK_DIR).is_dir()]


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []


def make_room(root: Path, incoming: int, limit: int) -> None:
    """Remove least recently used shards not in use until `incoming` more bytes fit `limit`.

    Counts the cached shards and the bytes reserved by fetches running now.
    Call it holding the cache-wide lock (`EVICT_LOCK`).
    """
    files = sorted(_sizes([e for view in _views(root) for e in _scandir(view)
                           if e.name.endswith(SHARD_SUFFIX) and e.is_file(follow_symlinks=False)]))
    used = sum(size for _, size, _ in files) + _reserved(root)
    for _, size, path in files:
        if used + incoming <= limit:
            return
        if _evict(path):
            used -= size
    if used + incoming > limit:
        _warn_once(root, f"{root}: shards in use and being fetched hold {used:,} bytes; with this one the cache "
                         f"exceeds --cache-size ({limit:,} bytes) until they are released")


def _reserved(root: Path) -> int:
    """Bytes reserved by fetches running now; a reservation left by a killed fetch is cleared."""
    total = 0
    for view in _views(root):
        for entry in _scandir(view / WORK_DIR):
            if not entry.name.endswith(".fetch") or entry.stat().st_size == 0:
                continue
            fd = os.open(entry.path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)  # nobody fetches it: its fetcher died
            except BlockingIOError:
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def _sizes(entries: list[os.DirEntry]) -> list[tuple[int, int, Path]]:
    """(last used, bytes, path) of each file still there (another process may be evicting)."""
    out = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        out.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
    return out


def _evict(path: Path) -> bool:
    """Delete a cached shard unless some process holds it; whether it was deleted."""
    fd = os.open(path.parent / WORK_DIR / f"{path.name}.use", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


_WARNED: set[Path] = set()  # cache roots this process warned about


def _warn_once(root: Path, message: str) -> None:
    if root not in _WARNED:
        _WARNED.add(root)
        log.warning(message)


def replace_manifest(folder: Path, raw: bytes, url: str) -> None:
    """Make `raw` the view's manifest.json (creating the view), first removing every cached shard whose
    entry it changes."""
    path = folder / MANIFEST_NAME
    (folder / WORK_DIR).mkdir(parents=True, exist_ok=True)
    note = folder / WORK_DIR / "url"
    if not note.exists():
        note.write_text(url + "\n", encoding="utf-8")
    with flocked(folder / WORK_DIR / "manifest.lock", fcntl.LOCK_EX):
        old = path.read_bytes() if path.exists() else b""
        if old == raw:
            return
        before, after = _entries(old), _entries(raw)
        for entry in _scandir(folder):
            name = entry.name
            if name.endswith(SHARD_SUFFIX) and (name not in after or before.get(name) != after[name]):
                Path(entry.path).unlink(missing_ok=True)
        tmp = folder / WORK_DIR / f"{MANIFEST_NAME}.tmp"
        tmp.write_bytes(raw)
        os.replace(tmp, path)


def _entries(raw: bytes) -> dict[str, tuple]:
    """{file: (sha256, bytes)} of a manifest's shard list; {} for one that does not parse."""
    try:
        return {s["file"]: (s["sha256"], s["bytes"]) for s in json.loads(raw)["shards"]}
    except (ValueError, KeyError, TypeError):
        return {}
