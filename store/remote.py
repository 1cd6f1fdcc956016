"""A store at a URL, read through a local folder view: the manifest first, shards on demand.

`RemoteShards.open(url, cache)` fetches `URL/manifest.json`, checks it field by
field like a local one (errors name the URL) and makes it the manifest of the
URL's folder in the cache (`store/cache.py`); `ShardStore` then reads that
folder as it reads any local store. `hold(entry)` returns a shard's local file,
fetching it first when the cache lacks it, and keeps it from eviction until
released.

Invariant: a shard file is used only after its fetched bytes matched the
manifest's byte size and sha256. Bytes that do not match are deleted and
fetched once more; a second mismatch is a `RemoteStoreError` naming the shard's
URL. Every check of a local store then holds unchanged on the local copy
(readers still hash each shard they open), and so do exact resume and the split
over ranks and workers, which depend only on the manifest.

The object holds strings and paths only: it pickles into DataLoader workers,
each of which opens its own fsspec filesystem on first use.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clasp.store.cache import EVICT_LOCK, Hold, flocked, hold, make_room, replace_manifest, store_folder
from clasp.store.cache_config import CacheConfig
from clasp.store.errors import StoreError
from clasp.store.fetch import RemoteStoreError, UnusableUrlError, fetch, filesystem, join_url
from clasp.store.manifest import Manifest, ShardEntry
from clasp.store.schema import MANIFEST_NAME
from clasp.store.verify import file_problem

FETCHES_PER_SHARD = 2  # a shard whose bytes do not match is fetched once more before it is refused


@dataclass
class RemoteShards:
    url: str
    folder: Path  # the local view: manifest.json and the shards fetched so far
    limit: int  # bytes of the whole cache
    _fs: tuple[int, Any] | None = field(default=None, repr=False, compare=False)  # (pid, filesystem)

    @classmethod
    def open(cls, url: str, cache: CacheConfig) -> tuple["RemoteShards", Manifest]:
        """Fetch and check the manifest, make it the view's; refuse a cache that cannot hold the largest shard.

        Nothing is written to the cache before the manifest was fetched and accepted.
        """
        url = url.rstrip("/")
        limit = cache.limit
        remote = cls(url, store_folder(cache, url), limit)
        raw = remote._fetch_manifest(cache.folder)
        manifest = parse_manifest(raw, join_url(url, MANIFEST_NAME))
        largest = max((e.bytes for e in manifest.shards), default=0)
        if largest > limit:
            raise UnusableUrlError(url, f"--cache-size {cache.cache_size} ({limit:,} bytes) cannot hold its largest "
                                        f"shard ({largest:,} bytes)")
        replace_manifest(remote.folder, raw, url)
        with flocked(cache.folder / EVICT_LOCK, fcntl.LOCK_EX):  # a cache filled under a larger bound shrinks
            make_room(cache.folder, 0, limit)
        return remote, manifest

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None}  # a filesystem is per process

    def filesystem(self) -> tuple[Any, str]:
        if self._fs is None or self._fs[0] != os.getpid():
            self._fs = (os.getpid(), filesystem(self.url))
        return self._fs[1]

    def name_of(self, entry: ShardEntry) -> str:
        return join_url(self.url, entry.file)

    def hold(self, entry: ShardEntry) -> Hold:
        """The shard's checked local file, fetched if needed, held until released."""
        return hold(self.folder, entry.file, entry.bytes, self.limit, lambda tmp: self._fetch_shard(entry, tmp))

    def _fetch_manifest(self, cache_root: Path) -> bytes:
        fs, base = self.filesystem()
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_root / f".{self.folder.name}.{os.getpid()}.{MANIFEST_NAME}"
        try:
            fetch(fs, f"{base.rstrip('/')}/{MANIFEST_NAME}", join_url(self.url, MANIFEST_NAME), tmp)
            return tmp.read_bytes()
        except UnusableUrlError as exc:
            if exc.problem == "not found":
                raise UnusableUrlError(exc.path, "manifest not found (is this a store written by `clasp label`, "
                                                 "its manifest uploaded last?)") from None
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def _fetch_shard(self, entry: ShardEntry, tmp: Path) -> None:
        fs, base = self.filesystem()
        url = self.name_of(entry)
        for _ in range(FETCHES_PER_SHARD):
            fetch(fs, f"{base.rstrip('/')}/{entry.file}", url, tmp)
            problem = file_problem(tmp, entry)
            if problem is None:
                return
            tmp.unlink(missing_ok=True)
        raise RemoteStoreError(url, f"served bytes: {problem}; fetched {FETCHES_PER_SHARD} times, the file on the "
                                    "server is not the one its manifest lists")


def parse_manifest(raw: bytes, url: str) -> Manifest:
    """The manifest in `raw`, checked as `Manifest.load` checks a local one; errors name `url`."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteStoreError(url, f"manifest does not parse as JSON ({exc})") from None
    try:
        manifest = Manifest.from_dict(data, url)
    except StoreError as exc:
        raise RemoteStoreError(url, exc.problem) from None
    manifest.source_sha256 = hashlib.sha256(raw).hexdigest()
    return manifest
