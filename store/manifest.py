"""`manifest.json`: what a shard folder holds and how it was made.

The manifest is rewritten atomically after every finished shard, so it always
describes shards that are complete on disk; a crash loses at most the shard in
flight.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from clasp import __version__
from clasp.store.durable import write_json_atomic
from clasp.store.errors import NotAStoreError, StoreError
from clasp.store.schema import FORMAT_VERSION, MANIFEST_FORMAT, MANIFEST_NAME, SHARD_SUFFIX
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
class ImageStore:
    hw: tuple[int, int] = (256, 128)
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
    image_store: ImageStore = field(default_factory=ImageStore)
    shard_size: int = 4096
    shards: list[ShardEntry] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    clasp_version: str = __version__
    labeled_with: LabeledWith | None = None

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
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise StoreError(source, f"not a CLASP manifest (format is {data.get('format') if isinstance(data, dict) else None!r}, expected {MANIFEST_FORMAT!r})")
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise StoreError(source, f"unknown format version {version!r}; this clasp reads version {FORMAT_VERSION}")
        try:
            vocab_data = data["vocab"]
            if not isinstance(vocab_data, dict):
                raise TypeError("vocab is not an object")
            vocab = Vocabulary.from_dict(vocab_data, source)
            if vocab_data.get("sha256") != vocab.sha256:
                raise StoreError(source, f"vocabulary hash {vocab_data.get('sha256')!r} does not match its content ({vocab.sha256})")
            clip = data["clip"]
            store = data.get("image_store", {})
            manifest = cls(
                clip=ClipInfo(clip["model"], clip.get("revision"), tuple(clip["input_hw"]), clip["dense_mode"],
                              clip.get("precision")),
                vocab=vocab,
                label_grid=tuple(int(x) for x in data["label_grid"]),
                image_store=ImageStore(tuple(store.get("hw", (256, 128))), store.get("codec", "jpeg"), int(store.get("quality", 95))),
                shard_size=int(data["shard_size"]),
                shards=[ShardEntry(**s) for s in data["shards"]],
                skipped=[SkippedInput(**s) for s in data.get("skipped", [])],
                clasp_version=str(data.get("clasp_version", "unknown")),
                labeled_with=LabeledWith(**data["labeled_with"]) if data.get("labeled_with") else None,
            )
        except StoreError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(source, f"malformed manifest ({type(exc).__name__}: {exc})") from None
        if len(manifest.label_grid) != 2 or min(manifest.label_grid) < 1:
            raise StoreError(source, f"label_grid must be two positive sizes, got {manifest.label_grid}")
        seen: set[str] = set()
        for entry in manifest.shards:
            check_shard_file_name(entry.file, source)
            if entry.file in seen:
                raise StoreError(source, f"shard {entry.file!r} is listed twice")
            seen.add(entry.file)
            if not isinstance(entry.rows, int) or entry.rows < 0 or not isinstance(entry.bytes, int):
                raise StoreError(source, f"shard {entry.file!r}: rows and bytes must be non-negative integers")
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise StoreError(path, f"manifest does not parse as JSON ({exc})") from None
        except OSError as exc:
            raise StoreError(path, f"cannot read manifest ({exc.strerror or exc})") from None
        return cls.from_dict(data, path)

    def save(self, root: str | Path) -> None:
        """Write atomically: a temp file in the same folder, fsync, rename.

        The manifest records the clasp version that last wrote it.
        """
        self.clasp_version = __version__
        write_json_atomic(Path(root) / MANIFEST_NAME, self.to_dict())


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

