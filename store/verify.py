"""`clasp verify`: check every shard against the manifest without trusting either."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from clasp.store.cache_config import CacheConfig
from clasp.store.digest import file_sha256
from clasp.store.errors import NotAStoreError, StoreError
from clasp.store.fetch import is_url
from clasp.store.manifest import Manifest, ShardEntry
from clasp.store.reader import ShardFile, ShardStore, shard_path_problem
from clasp.store.rowcheck import BadDataError, image_problem, label_problems
from clasp.store.schema import MANIFEST_NAME, SHARD_SUFFIX, TMP_SUFFIX


@dataclass
class ShardProblem:
    path: Path | str  # a URL store's shards are named by URL
    problem: str


@dataclass
class ShardTiming:
    path: Path | str
    rows: int
    seconds: float


@dataclass
class VerifyReport:
    root: Path | str
    shards_checked: int = 0
    rows: int = 0
    problems: list[ShardProblem] = field(default_factory=list)
    manifest_ok: bool = True  # False: the manifest itself was refused and no shard was checked
    # Shard-like files the manifest does not list (e.g. a `.tmp` left by a crash).
    # Readers never open them, so they are not problems; a rerun overwrites them.
    unlisted: list[Path] = field(default_factory=list)
    timings: list["ShardTiming"] = field(default_factory=list)  # deep checks only: seconds per shard

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(root: str | Path, deep: bool = False, cache: CacheConfig | None = None) -> VerifyReport:
    """Check schema, sha256, byte size and row count of every listed shard.

    With `deep`, also decode every row of every good shard: every compressed
    chunk, every image (it must decode to the manifest's store size) and every
    label value (`rowcheck.py`); a shard with bad rows is one problem naming
    its first bad rows, and `timings` holds the seconds each shard took.

    A path that is not a shard folder at all (missing, not a folder, no
    manifest) raises `NotAStoreError`. A manifest that exists but cannot be
    accepted is reported as one problem; each bad shard gets one. Nothing is
    modified. A URL store is checked shard by shard in its local cache (a shard
    whose served bytes do not match is a problem naming its URL); a fetch that
    still fails after its retries raises `FetchError`.
    """
    report = VerifyReport(root if is_url(root) else Path(root))
    try:
        store = ShardStore.locate(root, cache)
    except NotAStoreError:
        raise
    except StoreError as exc:
        report.problems.append(ShardProblem(exc.path, exc.problem))
        report.manifest_ok = False
        return report
    if store.remote is None:
        report.unlisted = unlisted_files(store)
    for entry in store.shards:
        report.shards_checked += 1
        started = time.perf_counter()
        try:
            with store.hold(entry) as path:
                problem = shard_problem(path, entry, store.manifest)
                if problem is None and deep:
                    problem = _check_rows(path, entry, store.manifest)
        except StoreError as exc:  # a URL store's shard that was not served as listed
            problem = exc.problem
        name = store.name_of(entry)
        if deep:
            report.timings.append(ShardTiming(name, entry.rows, time.perf_counter() - started))
        if problem:
            report.problems.append(ShardProblem(name, problem))
        else:
            report.rows += entry.rows
    return report


def unlisted_files(store: ShardStore) -> list[Path]:
    """Shard-like files in a local store's folder that its manifest does not list."""
    listed = {entry.file for entry in store.shards}
    return sorted(
        p for p in store.root.iterdir()
        if p.name not in listed and p.name != MANIFEST_NAME
        and (p.name.endswith(SHARD_SUFFIX) or p.name.endswith(SHARD_SUFFIX + TMP_SUFFIX))
    )


def file_problem(path: Path, entry: ShardEntry) -> str | None:
    """What is wrong with the shard file's bytes against its manifest entry (existence, size, sha256), if anything."""
    problem = shard_path_problem(path)
    if problem:
        return "missing" if problem.endswith("is missing") else problem
    size = path.stat().st_size
    if size != entry.bytes:
        return f"size {size} bytes, manifest says {entry.bytes} (truncated or replaced)"
    digest = file_sha256(path)
    if digest != entry.sha256:
        return f"sha256 mismatch (file {digest[:12]}…, manifest {entry.sha256[:12]}…)"
    return None


DEEP_EXAMPLES = 3  # bad rows named per shard by a deep check


def _check_rows(path: Path, entry: ShardEntry, manifest: Manifest) -> str | None:
    """Decode every chunk, image and label value of a shard whose file checks passed."""
    first: list[str] = []
    bad = 0
    try:
        with ShardFile(path, manifest, expected_rows=entry.rows) as shard:
            step = shard.chunk_rows
            for start in range(0, shard.rows, step):
                stop = min(start + step, shard.rows)
                try:
                    rows = shard.read(start, stop, ("image", "part_mask", "part_conf", "attr_logits"))
                except BadDataError as exc:
                    bad += stop - start
                    first.append(f"{exc.rows}: {exc.detail}")
                    continue
                labels = label_problems(rows, manifest.vocab.num_parts)
                for i, problem in enumerate(labels):
                    problem = problem or image_problem(rows.image[i], manifest.image_store.hw)
                    if problem:
                        bad += 1
                        first.append(f"row {start + i}: {problem}")
    except StoreError as exc:
        return exc.problem
    except OSError as exc:
        return f"unreadable: {exc}"
    if not bad:
        return None
    shown = "; ".join(first[:DEEP_EXAMPLES])
    return shown + (f" ({bad} bad rows)" if bad > 1 else "")


def shard_problem(path: Path, entry: ShardEntry, manifest: Manifest) -> str | None:
    """What `verify` finds wrong with one listed shard: its bytes against the entry, and that it opens as a
    shard of `manifest` whose first and last rows decode. A rerun of `clasp label` keeps only shards without one."""
    problem = file_problem(path, entry)
    if problem:
        return problem
    try:
        with ShardFile(path, manifest, expected_rows=entry.rows) as shard:
            # The first and last rows decode: the datasets are readable end to end.
            shard.read(0, min(shard.rows, 1))
            shard.read(max(shard.rows - 1, 0), shard.rows)
    except StoreError as exc:
        return exc.problem
    except OSError as exc:
        return f"unreadable: {exc}"
    return None
