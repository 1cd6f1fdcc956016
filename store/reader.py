"""Reading a shard folder: the manifest in the parent, shards lazily per process.

h5py handles neither survive a fork nor pickle, so `ShardStore` holds only paths
and the manifest; each DataLoader worker opens the files it reads itself, with
`locking=False` (NFS and Lustre refuse HDF5 file locks) and a chunk cache sized
to the chunks it reads. A store at a URL is read through its folder in the local
cache (`store/remote.py`): the same checks, on local files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from clasp.store.cache import Hold
from clasp.store.cache_config import CacheConfig
from clasp.store.digest import file_sha256
from clasp.store.errors import StoreError
from clasp.store.fetch import RemoteStoreError, is_url, join_url
from clasp.store.manifest import Manifest, ShardEntry
from clasp.store.rowcheck import BadDataError, rows_label
from clasp.store.schema import (
    CHUNK_ROWS, FIELD_NAMES, FIELDS, FORMAT_VERSION, MANIFEST_NAME, SHARD_FORMAT, LabelRows, row_shape,
)

if TYPE_CHECKING:
    from clasp.store.remote import RemoteShards

# Enough for one chunk of every dataset of a default shard, several times over.
DEFAULT_CHUNK_CACHE_BYTES = 64 << 20


@dataclass
class ShardStore:
    """A shard folder whose manifest parsed and whose listed shards exist.

    `root` may also be a URL (`store/remote.py`): `root` is then the URL's
    folder in the local cache, its shards fetched when first held, and messages
    name the URL (`location`, `name_of`).
    """

    root: Path
    manifest: Manifest
    remote: RemoteShards | None = None

    @classmethod
    def locate(cls, root: str | Path, cache: CacheConfig | None = None) -> "ShardStore":
        """The store at `root` (a folder or a URL) with its manifest checked; its shards not looked at yet."""
        if is_url(root):
            from clasp.store.remote import RemoteShards  # it builds on this module

            remote, manifest = RemoteShards.open(str(root), cache or CacheConfig())
            return cls(remote.folder, manifest, remote)
        return cls(Path(root), Manifest.load(root))

    @classmethod
    def open(cls, root: str | Path, verify: bool = False, cache: CacheConfig | None = None) -> "ShardStore":
        """Load the manifest and check the shards it lists exist (and hash, if `verify`).

        A URL store's shards are fetched (and so checked) only with `verify`;
        otherwise when each is first held.
        """
        store = cls.locate(root, cache)
        if store.remote is not None and not verify:
            return store
        for entry in store.shards:
            with store.hold(entry) as path:
                problem = shard_path_problem(path)
                if problem is None:
                    size = path.stat().st_size
                    if size != entry.bytes:
                        problem = f"shard has {size} bytes, the manifest says {entry.bytes} (truncated or replaced?)"
                if problem is None and verify:
                    digest = file_sha256(path)
                    if digest != entry.sha256:
                        problem = f"sha256 mismatch: file {digest[:12]}…, manifest {entry.sha256[:12]}…"
                if problem:
                    raise store.error(entry, problem)
        return store

    def path_of(self, entry: ShardEntry) -> Path:
        return self.root / entry.file

    @property
    def location(self) -> str:
        """The store as the user named it: its URL, or its folder."""
        return self.remote.url if self.remote is not None else str(self.root)

    def name_of(self, entry: ShardEntry) -> Path | str:
        """A shard as messages name it: its URL, or its path."""
        return self.remote.name_of(entry) if self.remote is not None else self.path_of(entry)

    def error(self, entry: ShardEntry, problem: str) -> StoreError:
        """A StoreError about one shard, naming it as `name_of` does."""
        if self.remote is not None:
            return RemoteStoreError(self.name_of(entry), problem)
        return StoreError(self.path_of(entry), problem)

    def manifest_error(self, problem: str) -> StoreError:
        """A StoreError about the manifest, naming it by URL or path."""
        if self.remote is not None:
            return RemoteStoreError(join_url(self.remote.url, MANIFEST_NAME), problem)
        return StoreError(self.root / MANIFEST_NAME, problem)

    def hold(self, entry: ShardEntry) -> Hold:
        """The shard's local file, kept until released; a URL store's is fetched first when not cached."""
        return self.remote.hold(entry) if self.remote is not None else Hold(self.path_of(entry))

    @property
    def shards(self) -> list[ShardEntry]:
        return self.manifest.shards

    def open_shard(self, entry: ShardEntry, chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES,
                   check_bytes: bool = False, hold: Hold | None = None) -> "ShardFile":
        """Open a listed shard; refuse a link out of the folder, and with `check_bytes` a size or sha256 mismatch.

        `check_bytes` reads the whole file once to hash it: readers that use the
        images (which HDF5 stores uncompressed and unchecked) ask for it, so
        that bytes flipped inside a stored JPEG are caught before training on it.
        The shard stays held (`hold`, or one taken here) until the file is closed.
        """
        hold = hold or self.hold(entry)
        try:
            problem = shard_path_problem(hold.path)
            if problem is None and check_bytes:
                problem = shard_bytes_problem(hold.path, entry)
            if problem:
                raise self.error(entry, problem)
            try:
                return ShardFile(hold.path, self.manifest, expected_rows=entry.rows,
                                 chunk_cache_bytes=chunk_cache_bytes, hold=hold)
            except StoreError as exc:
                raise self.error(entry, exc.problem) from None
        except BaseException:
            hold.release()
            raise

    def manifest_changed(self) -> str | None:
        """Why the manifest on disk is no longer the one this store was opened with, or None."""
        path = self.root / MANIFEST_NAME
        if self.manifest.source_sha256 is None:
            return None
        try:
            digest = file_sha256(path)
        except OSError as exc:
            return f"manifest can no longer be read ({exc.strerror or exc})"
        if digest != self.manifest.source_sha256:
            return "manifest changed since this command started (the store was relabeled or rewritten)"
        return None


def shard_bytes_problem(path: Path, entry: ShardEntry) -> str | None:
    """Size, then sha256, of the shard file against its manifest entry."""
    try:
        size = path.stat().st_size
        if size != entry.bytes:
            return f"shard has {size} bytes, the manifest says {entry.bytes} (truncated or replaced?)"
        digest = file_sha256(path)
    except OSError as exc:
        return f"cannot read shard ({exc.strerror or exc})"
    if digest != entry.sha256:
        return (f"sha256 mismatch: file {digest[:12]}…, manifest {entry.sha256[:12]}… (the bytes changed after "
                "it was written; `clasp verify` lists such shards, a rerun of `clasp label` rebuilds them)")
    return None


def shard_path_problem(path: Path) -> str | None:
    """Why `path` may not be opened as a shard: missing, not a regular file, or a link out of its folder.

    A symbolic link is followed only when its target, fully resolved, is a
    regular file inside the shard folder itself; a link elsewhere (`/etc/...`,
    another store) is refused before anything opens or hashes it. A FIFO or
    device would block or never end, so only regular files are opened.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "shard listed in the manifest is missing"
    except OSError as exc:
        return f"cannot stat shard ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(path)
        folder = os.path.realpath(path.parent)
        if os.path.dirname(target) != folder:
            return f"shard is a symbolic link to {target}, outside the shard folder {folder}"
        try:
            st = os.stat(target)
        except OSError:
            return "shard is a dangling symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "shard is not a regular file"
    return None


class ShardFile:
    """One open shard, checked against the manifest on open. Use as a context manager."""

    def __init__(self, path: str | Path, manifest: Manifest, expected_rows: int | None = None,
                 chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES, hold: Hold | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._hold = hold  # released with the file
        try:
            self._file = h5py.File(self.path, "r", locking=False, rdcc_nbytes=chunk_cache_bytes)
        except FileNotFoundError:
            raise StoreError(self.path, "shard file not found") from None
        except OSError as exc:
            raise StoreError(self.path, f"cannot open as HDF5 (truncated or corrupt?): {exc}") from None
        try:
            self._check(expected_rows)
        except BaseException:
            self._file.close()
            raise

    def _check(self, expected_rows: int | None) -> None:
        attrs = self._file.attrs
        fmt = _text(attrs.get("format"))
        if fmt != SHARD_FORMAT:
            raise StoreError(self.path, f"not a CLASP shard (format attribute {fmt!r})")
        version = attrs.get("version")
        if _int_or_none(version) != FORMAT_VERSION:
            raise StoreError(self.path, f"unknown shard format version {_plain(version)!r}; this clasp reads version {FORMAT_VERSION}")
        vocab = _text(attrs.get("vocab_sha256"))
        if vocab != self.manifest.vocab.sha256:
            raise StoreError(self.path, f"shard is from another vocabulary (vocab_sha256 {vocab!r}, manifest {self.manifest.vocab.sha256!r})")
        model = _text(attrs.get("clip_model"))
        if model != self.manifest.clip.model:
            raise StoreError(self.path, f"shard was labeled by CLIP model {model!r}, the manifest says {self.manifest.clip.model!r}")
        missing = [n for n in FIELD_NAMES if n not in self._file]
        if missing:
            raise StoreError(self.path, f"shard lacks datasets {missing}")
        n = _int_or_none(attrs.get("rows"))
        if n is None or n < 0:
            raise StoreError(self.path, f"shard has no valid rows attribute ({_plain(attrs.get('rows'))!r})")
        grid, num_attr = self.manifest.label_grid, self.manifest.vocab.num_attributes
        for field in FIELDS:
            ds = self._file[field.name]
            want = (n, *row_shape(field, grid, num_attr))
            if ds.shape != want:
                raise StoreError(self.path, f"dataset {field.name} has shape {ds.shape}, expected {want} (rows={n}, label grid {list(grid)}, {num_attr} attributes)")
            if not _dtype_matches(field.name, ds.dtype, field.dtype):
                raise StoreError(self.path, f"dataset {field.name} has dtype {ds.dtype}, expected {_describe(field.name, field.dtype)}")
        if expected_rows is not None and n != expected_rows:
            raise StoreError(self.path, f"shard has {n} rows, the manifest says {expected_rows}")
        self.rows = n

    @property
    def chunk_rows(self) -> int:
        chunks = self._file["key"].chunks
        return chunks[0] if chunks else CHUNK_ROWS

    def read(self, start: int = 0, stop: int | None = None, fields: tuple[str, ...] = FIELD_NAMES) -> LabelRows:
        """Rows [start, stop) of the requested fields; fields not requested are left empty."""
        unknown = [name for name in fields if name not in FIELD_NAMES]
        if unknown:
            raise ValueError(f"unknown fields {unknown}; a shard has {list(FIELD_NAMES)}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        stop = self.rows if stop is None else min(stop, self.rows)
        n = max(0, stop - start)
        out = LabelRows.empty(self.manifest.label_grid, self.manifest.vocab.num_attributes)
        if n == 0:
            return out
        f = self._file
        for name in fields:
            try:
                data = f[name][start:stop]
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                # A damaged compressed chunk: h5py says "Can't read data (filter returned failure)".
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise BadDataError(self.path, rows_label(start, stop),
                                   f"{name}: stored chunk does not decode ({reason})") from None
            if name == "image":
                out.image = [row.tobytes() for row in data]
            elif name == "key":
                out.key = [k.decode("ascii", "replace") for k in data]
            elif name == "path":
                out.path = [p.decode("utf-8", "backslashreplace") if isinstance(p, bytes) else str(p) for p in data]
            else:
                setattr(out, name, np.asarray(data))
        if "key" not in fields:  # keep len() meaningful for partial reads
            out.key = [""] * n
        return out

    def iter_chunks(self, fields: tuple[str, ...] = FIELD_NAMES) -> Iterator[LabelRows]:
        """The whole shard, one storage chunk of rows at a time (each chunk decompressed once)."""
        step = self.chunk_rows
        for start in range(0, self.rows, step):
            yield self.read(start, start + step, fields)

    def read_rows(self, indices: Sequence[int], fields: tuple[str, ...] = FIELD_NAMES) -> LabelRows:
        """Rows at `indices` (any order, repeats allowed), in that order.

        For a few scattered rows (a contact sheet, a spot check); the chunk cache
        keeps rows that share a chunk from decompressing it twice.
        """
        bad = [i for i in indices if not 0 <= i < self.rows]
        if bad:
            raise IndexError(f"{self.path}: rows {bad[:5]} outside [0, {self.rows})")
        if not indices:
            return self.read(0, 0, fields)
        return LabelRows.concat([self.read(i, i + 1, fields) for i in indices])

    def close(self) -> None:
        self._file.close()
        if self._hold is not None:
            self._hold.release()

    def __enter__(self) -> "ShardFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _int_or_none(value) -> int | None:
    try:
        arr = np.asarray(value)
        if arr.shape != () or arr.dtype.kind not in "iu":
            return None
        return int(arr)
    except (TypeError, ValueError):
        return None


def _plain(value):
    """An attribute value as a plain Python object, for error messages."""
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def _dtype_matches(name: str, found: np.dtype, expected: np.dtype) -> bool:
    if name == "image":
        return h5py.check_vlen_dtype(found) == np.dtype(np.uint8)
    if name == "path":
        info = h5py.check_string_dtype(found)
        return info is not None and info.length is None
    return found == expected


def _describe(name: str, dtype: np.dtype) -> str:
    return {"image": "vlen uint8", "path": "vlen utf-8 string"}.get(name, str(dtype))


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)
