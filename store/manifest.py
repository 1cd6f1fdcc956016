"""`manifest.json`: what a shard folder holds and how it was made.

The manifest is rewritten atomically after every finished shard, so it always
describes shards that are complete on disk; a crash loses at most the shard in
flight.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from clasp import __version__
from clasp.common.durable import write_json_atomic
from clasp.store.errors import NotAStoreError, StoreError
from clasp.common.person_size import PERSON_HW
from clasp.store.label_choices import DENSE_MODES, LABEL_PRECISIONS
from clasp.store.schema import FORMAT_VERSION, MANIFEST_FORMAT, MANIFEST_NAME, MAX_ORIG_SIDE, SHARD_SUFFIX
from clasp.store.vocabulary import Vocabulary


@dataclass
class ClipInfo:
    model: str
    revision: str | None = None
    input_hw: tuple[int, int] = (448, 224)
    dense_mode: str = "maskclip"
    # fp32 | bf16 | fp16: the arithmetic the labels were computed in (`auto` resolved).
    # None in manifests written before it was recorded.
    precision: str | None = None


@dataclass
class LabeledWith:
    """How the latest `clasp label` run computed: settings that change speed, not labels.

    Each image is labeled independently of the others in its batch, so a rerun
    may change these (e.g. a smaller batch after running out of memory) and keep
    the finished shards; the precision, which does change labels, is in `ClipInfo`.
    """

    batch_size: int
    device: str  # e.g. "cpu:AVX2", "cuda:sm_90+bf16"
    capability: str  # e.g. "CPU capability AVX2, no native bf16"
    precision_requested: str  # what was asked for ("auto" or an explicit precision)


@dataclass
class StoredImageFormat:
    """How the store keeps each image (manifest key `image_store`): size, codec and quality."""

    hw: tuple[int, int] = PERSON_HW
    codec: str = "jpeg"
    quality: int = 95


@dataclass
class ShardEntry:
    file: str
    rows: int
    sha256: str
    bytes: int
    # Digest of the shard's input list (paths with size and mtime): a rerun keeps
    # the shard only while its inputs are unchanged. Readers ignore it.
    inputs_sha256: str | None = None


@dataclass
class SkippedInput:
    path: str
    reason: str


@dataclass
class Manifest:
    clip: ClipInfo
    vocab: Vocabulary
    label_grid: tuple[int, int]
    image_store: StoredImageFormat = field(default_factory=StoredImageFormat)
    shard_size: int = 4096
    shards: list[ShardEntry] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    clasp_version: str = __version__
    labeled_with: LabeledWith | None = None
    # sha256 of the manifest.json bytes this was loaded from (None when built in memory):
    # a reader compares it later to notice a store rewritten under it.
    source_sha256: str | None = field(default=None, compare=False, repr=False)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_dict(self) -> dict:
        vocab = self.vocab.to_dict()
        return {
            "format": MANIFEST_FORMAT,
            "version": FORMAT_VERSION,
            "clasp_version": self.clasp_version,
            "clip": {**asdict(self.clip), "input_hw": list(self.clip.input_hw)},
            "vocab": {"sha256": self.vocab.sha256, **vocab},
            "label_grid": list(self.label_grid),
            "image_store": {**asdict(self.image_store), "hw": list(self.image_store.hw)},
            "shard_size": self.shard_size,
            "shards": [asdict(s) for s in self.shards],
            "skipped": [asdict(s) for s in self.skipped],
            "totals": {"rows": self.total_rows, "skipped": len(self.skipped)},
            "labeled_with": asdict(self.labeled_with) if self.labeled_with is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str | Path) -> "Manifest":
        """Check the manifest field by field (types and ranges) and build it.

        Every problem raises `StoreError(source, "<field>: <problem>")`, one line
        naming the field: numbers must be finite integers within bounds (no
        `1e999`, no `10**30` rows, no fractional grid), sizes positive, hashes
        64 hex digits, the dense mode and precision known values.
        """
        _check_format(data, source)
        f = _Fields(source)
        vocab = _vocabulary(f, data, source)
        clip = f.obj(data, "clip")
        store = f.obj(data, "image_store", optional=True) or {}
        labeled = f.obj(data, "labeled_with", optional=True) or None  # {} too: nothing recorded
        manifest = cls(
            clip=f.clip(clip),
            vocab=vocab,
            label_grid=f.pair(data, "label_grid", "label_grid", MAX_SIDE),
            image_store=f.image_store(store),
            shard_size=f.integer(data, "shard_size", "shard_size", 1, MAX_ROWS),
            shards=[f.shard(entry, i) for i, entry in enumerate(f.items(data, "shards"))],
            skipped=f.skipped(data),
            clasp_version=str(data.get("clasp_version", "unknown")),
            labeled_with=None if labeled is None else f.labeled_with(labeled),
        )
        _check_grid_and_shard_names(manifest, source)
        return manifest

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        root = Path(root)
        if not root.exists():
            raise NotAStoreError(root, "shard folder does not exist")
        if not root.is_dir():
            raise NotAStoreError(root, "not a folder")
        path = root / MANIFEST_NAME
        if not path.exists():
            raise NotAStoreError(path, "manifest not found (is this a folder written by `clasp label`?)")
        try:
            raw = path.read_bytes()
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise StoreError(path, f"manifest does not parse as JSON ({exc})") from None
        except OSError as exc:
            raise StoreError(path, f"cannot read manifest ({exc.strerror or exc})") from None
        manifest = cls.from_dict(data, path)
        manifest.source_sha256 = hashlib.sha256(raw).hexdigest()
        return manifest

    def save(self, root: str | Path) -> None:
        """Write atomically: a temp file in the same folder, fsync, rename.

        The manifest records the clasp version that last wrote it.
        """
        self.clasp_version = __version__
        write_json_atomic(Path(root) / MANIFEST_NAME, self.to_dict())


# Bounds of manifest numbers: far beyond any real store, small enough that no
# arithmetic on them overflows or allocates absurd memory.
MAX_ROWS = 2**31 - 1  # rows of a shard, shard size, batch size
MAX_BYTES = 2**50  # bytes of one shard file (1 PiB)
MAX_SIDE = MAX_ORIG_SIDE  # image sides and label grids, as long as the longest source side a row records
_HEX = frozenset("0123456789abcdef")


def _check_format(data, source: str | Path) -> None:
    """The document is a CLASP manifest of the version this clasp reads."""
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise StoreError(source, f"not a CLASP manifest (format is {data.get('format') if isinstance(data, dict) else None!r}, expected {MANIFEST_FORMAT!r})")
    version = data.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise StoreError(source, f"unknown format version {_show(version)}; this clasp reads version {FORMAT_VERSION}")


def _vocabulary(f: "_Fields", data: dict, source: str | Path) -> Vocabulary:
    """The manifest's vocabulary, whose recorded hash must match its content."""
    vocab_data = f.obj(data, "vocab")
    try:
        vocab = Vocabulary.from_dict(vocab_data, source)
    except (AttributeError, TypeError, ValueError) as exc:
        raise StoreError(source, f"vocab: malformed ({type(exc).__name__}: {exc})") from None
    if vocab_data.get("sha256") != vocab.sha256:
        raise StoreError(source, f"vocabulary hash {_show(vocab_data.get('sha256'))} does not match its content ({vocab.sha256})")
    return vocab


def _check_grid_and_shard_names(manifest: Manifest, source: str | Path) -> None:
    """A label cell is at least one input pixel; every shard is a plain file name, listed once."""
    if manifest.label_grid[0] > manifest.clip.input_hw[0] or manifest.label_grid[1] > manifest.clip.input_hw[1]:
        raise StoreError(source, f"label_grid: {list(manifest.label_grid)} is finer than the CLIP input "
                                 f"{list(manifest.clip.input_hw)} (a cell is at least one pixel)")
    seen: set[str] = set()
    for entry in manifest.shards:
        check_shard_file_name(entry.file, source)
        if entry.file in seen:
            raise StoreError(source, f"shard {entry.file!r} is listed twice")
        seen.add(entry.file)


def _show(value) -> str:
    """A value for an error message: its repr, cut to stay on one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Typed field readers that raise `StoreError(source, "<field>: <problem>")`."""

    def __init__(self, source: str | Path) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> StoreError:
        return StoreError(self.source, f"{where}: {problem}")

    def obj(self, data: dict, key: str, where: str | None = None, optional: bool = False) -> dict | None:
        where = where or key
        value = data.get(key)
        if value is None and optional:
            return None
        if key not in data:
            raise self.fail(where, "missing")
        if not isinstance(value, dict):
            raise self.fail(where, f"must be an object, got {_show(value)}")
        return value

    def items(self, data: dict, key: str, optional: bool = False) -> list:
        value = data.get(key)
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self.fail(key, "missing" if key not in data else f"must be a list, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", f"must be an object, got {_show(item)}")
        return value

    def only(self, data: dict, keys: tuple[str, ...], where: str) -> bool:
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise self.fail(where, f"unknown field {unknown[0]!r}")
        return True

    def integer(self, data: dict, key: str, where: str, low: int, high: int, default=None) -> int:
        if key not in data or data[key] is None:
            if default is not None:
                return default
            raise self.fail(where, "missing")
        value = data[key]
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if type(value) is not int:
            raise self.fail(where, f"must be a whole number, got {_show(value)}")
        if not low <= value <= high:
            raise self.fail(where, f"must be in [{low}, {high}], got {_show(value)}")
        return value

    def pair(self, data: dict, key: str, where: str, high: int, default=None) -> tuple[int, int]:
        if key not in data and default is not None:
            return tuple(default)
        value = data.get(key)
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise self.fail(where, "missing" if key not in data else f"must be [height, width], got {_show(value)}")
        return tuple(self.integer({"v": v}, "v", f"{where}[{i}]", 1, high) for i, v in enumerate(value))

    def text(self, data: dict, key: str, where: str, optional: bool = False) -> str | None:
        value = data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(where, "missing" if key not in data else f"must be a string, got {_show(value)}")
        return value

    def choice(self, data: dict, key: str, where: str, known: tuple[str, ...], optional: bool = False,
               default: str | None = None) -> str | None:
        if data.get(key) is None and (optional or default is not None):
            return default
        value = self.text(data, key, where)
        if value not in known:
            raise self.fail(where, f"unknown value {_show(value)}; known: {', '.join(known)}")
        return value

    def sha256(self, data: dict, key: str, where: str, optional: bool = False) -> str | None:
        value = data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
            raise self.fail(where, f"must be 64 lowercase hex digits, got {_show(value)}")
        return value

    def clip(self, clip: dict) -> ClipInfo:
        return ClipInfo(
            model=self.text(clip, "model", "clip.model"),
            revision=self.text(clip, "revision", "clip.revision", optional=True),
            input_hw=self.pair(clip, "input_hw", "clip.input_hw", MAX_SIDE),
            dense_mode=self.choice(clip, "dense_mode", "clip.dense_mode", DENSE_MODES),
            precision=self.choice(clip, "precision", "clip.precision", LABEL_PRECISIONS, optional=True),
        )

    def image_store(self, store: dict) -> StoredImageFormat:
        return StoredImageFormat(
            hw=self.pair(store, "hw", "image_store.hw", MAX_SIDE, default=PERSON_HW),
            codec=self.choice(store, "codec", "image_store.codec", ("jpeg",), default="jpeg"),
            quality=self.integer(store, "quality", "image_store.quality", 1, 100, default=95),
        )

    def skipped(self, data: dict) -> list[SkippedInput]:
        return [SkippedInput(self.text(s, "path", f"skipped[{i}].path"), self.text(s, "reason", f"skipped[{i}].reason"))
                for i, s in enumerate(self.items(data, "skipped", optional=True))
                if self.only(s, ("path", "reason"), f"skipped[{i}]")]

    def labeled_with(self, labeled: dict) -> LabeledWith:
        """Read the fields first, then reject unknown ones (the order of the checks decides which error shows)."""
        result = LabeledWith(
            batch_size=self.integer(labeled, "batch_size", "labeled_with.batch_size", 1, MAX_ROWS),
            device=self.text(labeled, "device", "labeled_with.device"),
            capability=self.text(labeled, "capability", "labeled_with.capability"),
            precision_requested=self.text(labeled, "precision_requested", "labeled_with.precision_requested"),
        )
        self.only(labeled, ("batch_size", "device", "capability", "precision_requested"), "labeled_with")
        return result

    def shard(self, entry: dict, i: int) -> ShardEntry:
        where = f"shards[{i}]"
        self.only(entry, ("file", "rows", "sha256", "bytes", "inputs_sha256"), where)
        return ShardEntry(
            file=self.text(entry, "file", f"{where}.file"),
            rows=self.integer(entry, "rows", f"{where}.rows", 0, MAX_ROWS),
            sha256=self.sha256(entry, "sha256", f"{where}.sha256"),
            bytes=self.integer(entry, "bytes", f"{where}.bytes", 0, MAX_BYTES),
            inputs_sha256=self.sha256(entry, "inputs_sha256", f"{where}.inputs_sha256", optional=True),
        )


def check_shard_file_name(name: str, source: str | Path) -> None:
    """Reject shard entries that would make a reader open a file outside the folder.

    Only a plain file name ending in `.h5` is accepted: no folders, no `..`, no
    absolute paths, and never a writer's `.tmp` file.
    """
    if not isinstance(name, str) or not name:
        raise StoreError(source, f"shard path {name!r} is not a file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or len(pure.parts) != 1 or name in (".", "..") or "\\" in name or "\0" in name:
        raise StoreError(source, f"shard path {name!r} leaves the shard folder")
    if not name.endswith(SHARD_SUFFIX):
        raise StoreError(source, f"shard path {name!r} does not end in {SHARD_SUFFIX}")

