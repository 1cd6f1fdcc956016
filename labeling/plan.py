"""Which shards a run must (re)do, and which it can keep from an earlier run.

The rule, so that reruns and added images are cheap and predictable:

- The sorted input list is cut into consecutive shards of `shard_size` inputs;
  shard i holds inputs [i*shard_size, (i+1)*shard_size). Its content depends
  only on those inputs (skipped ones included: a shard has at most shard_size
  rows).
- Each shard's manifest entry carries `inputs_sha256`, the SHA-256 of its inputs'
  relative paths, byte sizes and modification times (ns), one
  `path\\tsize\\tmtime_ns\\n` line each. Size and mtime stand in for content, as
  in make and rsync: re-saving or touching a file redoes its shard, and reading
  every image twice per run to hash it is avoided.
- A rerun keeps a shard whose entry is in the manifest, whose file passes the
  checks of `clasp verify` (recorded size and sha256, and it opens as a shard of
  this manifest), and whose inputs digest is unchanged; it redoes
  every other shard and drops shards beyond the new end.
- New images therefore change the shard they sort into and every shard after
  it (each of those shifts by the number of images inserted before it). Images
  that sort after all existing ones (a new camera folder `cam9/`, a new date
  folder) touch only the last shard and add new ones. Deleting an image redoes
  its shard and the ones after it.
- A folder made with another CLIP model, revision, input size, dense mode,
  precision, vocabulary or shard size is refused (the shards would mix two
  labelings) unless `force`, which starts the folder over. A precision is
  compared after `auto` is resolved, so `auto` on another kind of machine can
  be refused too (give the recorded one explicitly to continue there); a
  manifest written before precisions were recorded counts as another precision.
  Batch size and device are recorded (`labeled_with`) but may change: each
  image's labels do not depend on the others in its batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from clasp.labeling.discover import InputFile
from clasp.labeling.errors import LabelingError
from clasp.runs import LEGACY_LOCK_NAMES, LOCK_NAME
from clasp.store import ClipInfo, Manifest, ShardEntry, StoredImageFormat, StoreError, Vocabulary, shard_name
from clasp.store.schema import MANIFEST_NAME
from clasp.store.verify import shard_problem


@dataclass(frozen=True)
class ShardPlan:
    """One shard to label: its index, file name and inputs."""

    index: int
    file: str
    inputs: tuple[InputFile, ...]
    inputs_sha256: str


@dataclass
class RunPlan:
    manifest: Manifest  # holds only the kept shards (and their skipped inputs)
    todo: list[ShardPlan]
    kept: list[ShardEntry]
    dropped: list[str]  # shard files of an earlier run that no longer exist in the plan


def inputs_digest(inputs: tuple[InputFile, ...] | list[InputFile]) -> str:
    h = hashlib.sha256()
    for f in inputs:
        h.update(f"{f.path}\t{f.size}\t{f.mtime_ns}\n".encode("utf-8"))
    return h.hexdigest()


def plan_shards(inputs: list[InputFile], shard_size: int) -> list[ShardPlan]:
    if shard_size < 1:
        raise LabelingError(f"--shard-size must be at least 1, got {shard_size}")
    plans = []
    for index, start in enumerate(range(0, len(inputs), shard_size)):
        chunk = tuple(inputs[start:start + shard_size])
        plans.append(ShardPlan(index, shard_name(index), chunk, inputs_digest(chunk)))
    return plans


def new_manifest(clip: ClipInfo, vocab: Vocabulary, label_grid: tuple[int, int], shard_size: int,
                 store_hw: tuple[int, int]) -> Manifest:
    return Manifest(clip=clip, vocab=vocab, label_grid=tuple(label_grid),
                    image_store=StoredImageFormat(hw=tuple(store_hw)), shard_size=shard_size)


def plan_run(out: Path, wanted: Manifest, shards: list[ShardPlan], force: bool = False) -> RunPlan:
    """Compare the output folder with the wanted settings and decide what to keep.

    `wanted` is a fresh manifest with this run's settings. Returns it filled with
    the shards (and their skipped inputs) that survive; nothing is written.
    """
    check_folder_usable(out, force)
    old = _load_previous(out, force)
    if old is None:
        return RunPlan(wanted, list(shards), [], [])
    if force:
        return RunPlan(wanted, list(shards), [], [e.file for e in old.shards])
    differences = settings_differences(old, wanted)
    if differences:
        raise LabelingError(
            f"{out} was labeled with different settings ({'; '.join(differences)}); "
            "use another --out, or --force to relabel it from scratch")
    by_file = {e.file: e for e in old.shards}
    kept, todo = [], []
    for plan in shards:
        entry = by_file.get(plan.file)
        if entry is not None and entry.inputs_sha256 == plan.inputs_sha256 and shard_problem(out / entry.file, entry, old) is None:
            kept.append(entry)
        else:
            todo.append(plan)
    planned = {p.file for p in shards}
    dropped = [e.file for e in old.shards if e.file not in planned]
    kept_files = {e.file for e in kept}
    kept_paths = {f.path for p in shards if p.file in kept_files for f in p.inputs}
    wanted.shards = kept
    wanted.skipped = [s for s in old.skipped if s.path in kept_paths]
    return RunPlan(wanted, todo, kept, dropped)


def check_folder_usable(out: Path, force: bool) -> None:
    """Refuse an `--out` that is a file, or a folder of other files that is not a shard folder (unless `force`)."""
    if out.exists() and not out.is_dir():
        raise LabelingError(f"{out}: --out must be a folder, this is a file")
    if not force and not (out / MANIFEST_NAME).exists() and _has_foreign_files(out):
        raise LabelingError(f"{out}: --out is a folder with other files and no {MANIFEST_NAME}; "
                            "give an empty or new folder (or --force to write into it anyway)")


def settings_differences(old: Manifest, new: Manifest) -> list[str]:
    pairs = [
        ("CLIP model", old.clip.model, new.clip.model),
        ("revision", old.clip.revision, new.clip.revision),
        ("CLIP input size", list(old.clip.input_hw), list(new.clip.input_hw)),
        ("dense mode", old.clip.dense_mode, new.clip.dense_mode),
        ("precision", old.clip.precision or "not recorded", new.clip.precision),
        ("vocabulary sha256", old.vocab.sha256[:12], new.vocab.sha256[:12]),
        ("shard size", old.shard_size, new.shard_size),
        ("label grid", list(old.label_grid), list(new.label_grid)),
        ("stored image size", list(old.image_store.hw), list(new.image_store.hw)),
    ]
    return [f"{name} was {a} and is now {b}" for name, a, b in pairs if a != b]


def _load_previous(out: Path, force: bool) -> Manifest | None:
    if not (out / MANIFEST_NAME).exists():
        return None
    try:
        return Manifest.load(out)
    except StoreError as exc:
        if force:
            return None
        raise LabelingError(f"{exc.path}: cannot reuse this folder ({exc.problem}); use --force to relabel it from scratch") from None


def _has_foreign_files(out: Path) -> bool:
    if not out.is_dir():
        return False
    return any(not _left_by_a_run(p.name) for p in out.iterdir())


def _left_by_a_run(name: str) -> bool:
    """Shards, temp files and the run lock a run killed before its first manifest save may leave behind."""
    if name == LOCK_NAME or name in LEGACY_LOCK_NAMES:
        return True
    if name.startswith("shard-"):
        return name.endswith(".h5") or name.endswith(".tmp")
    return name.startswith(MANIFEST_NAME + ".") and name.endswith(".tmp")
