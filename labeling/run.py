"""`clasp label`: a folder of person images -> a verified shard folder.

The parent process discovers the inputs, plans the shards, hands them to an
executor and records each finished shard in the manifest as soon as it arrives
(atomically), so `kill -9` loses at most the shards in flight and a rerun of the
same command does only what is missing (see `plan.py` for the rule).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from clasp.labeling.config import ClipLabelerConfig, LabelConfig
from clasp.labeling.discover import discover_images
from clasp.labeling.errors import LabelingError, LabelingRunError, write_problem
from clasp.labeling.executors import open_executor
from clasp.labeling.plan import check_folder_usable, new_manifest, plan_run, plan_shards
from clasp.labeling.shard_worker import (
    LabelerFactory, LabelerInfo, ShardJob, build_clip_labeler, settings_only,
)
from clasp.runs import FolderLockError, exclusive_folder
from clasp.store import LabeledWith, Manifest, SkippedInput, StoreError, Vocabulary, record_shard
from clasp.common.person_size import PERSON_HW
from clasp.store.schema import MANIFEST_NAME

log = logging.getLogger("clasp")


@dataclass
class LabelSummary:
    images: int  # image files found
    labeled: int  # rows in the shard folder now
    skipped: int  # inputs skipped (with reasons in the manifest)
    labeled_now: int  # rows labeled by this run (the rest were kept)
    shards_written: int
    shards_kept: int
    shards_dropped: int
    seconds: float
    skipped_inputs: list[SkippedInput] = field(default_factory=list)

    @property
    def shards(self) -> int:
        return self.shards_written + self.shards_kept

    @property
    def images_per_second(self) -> float:
        return self.labeled_now / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"labeled {self.labeled} images ({self.labeled_now} this run), skipped {self.skipped}, "
                f"shards {self.shards} ({self.shards_written} written, {self.shards_kept} kept), "
                f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s")


def run_labeling(config: LabelConfig, factory: LabelerFactory = build_clip_labeler) -> LabelSummary:
    """Label every image under `config.images` into shards in `config.out`.

    `factory` builds the labeler from a `ClipLabelerConfig` (the CLIP labeler by
    default; tests pass a stand-in). Raises `LabelingError` for problems the
    user can fix, `LabelingRunError` when a shard or the manifest cannot be
    written (e.g. the disk is full; what was finished stays intact).
    """
    started = time.perf_counter()
    check_config(config)
    images, out = Path(config.images).absolute(), Path(config.out).absolute()
    vocab = load_vocab(config.vocab)
    inputs = discover_images(images)
    shards = plan_shards(inputs, config.shard_size)
    spec = config.labeler(vocab)
    check_folder_usable(out, config.force)  # before the CLIP is loaded: a refusal costs nothing
    with _exclusive(out), open_executor(config.workers, config.scheduler, factory) as executor:
        _explicit_threads(config)
        info = executor.labeler_info(spec)
        spec = _pin_precision(spec, info)
        wanted = new_manifest(info.clip_info, vocab, info.grid, config.shard_size, PERSON_HW)
        plan = plan_run(out, wanted, shards, force=config.force)
        manifest = plan.manifest
        manifest.labeled_with = _labeled_with(config, info)
        _prepare_folder(out, manifest, plan.dropped)
        by_file = {p.file: p for p in plan.todo}
        settings = settings_only(manifest)
        jobs = [ShardJob(str(images), str(out), settings, p, spec, config.batch_size, factory=factory) for p in plan.todo]
        labeled_now = 0
        with _progress_bar(len(inputs), len(inputs) - sum(len(p.inputs) for p in plan.todo), config.progress) as bar:
            for outcome in executor.run(jobs, bar.update):
                shard_paths = {f.path for f in by_file[outcome.entry.file].inputs}
                manifest.skipped = sorted([s for s in manifest.skipped if s.path not in shard_paths] + outcome.skipped,
                                          key=lambda s: s.path)
                try:
                    record_shard(manifest, out, outcome.entry)
                except OSError as exc:
                    raise LabelingRunError(f"{out / MANIFEST_NAME}: cannot write the manifest: {write_problem(exc)}; "
                                           "it still lists the shards finished before") from None
                labeled_now += outcome.labeled
    return LabelSummary(
        images=len(inputs), labeled=manifest.total_rows, skipped=len(manifest.skipped), labeled_now=labeled_now,
        shards_written=len(plan.todo), shards_kept=len(plan.kept), shards_dropped=len(plan.dropped),
        seconds=time.perf_counter() - started, skipped_inputs=list(manifest.skipped))


def _explicit_threads(config: LabelConfig) -> None:
    """`--threads` for labeling in this process, over the default rule the executor applied (and restores on
    closing); dask workers keep their share of their host's cores."""
    if config.threads is not None and not config.workers and not config.scheduler:
        from clasp.hardware import use_available_cores

        use_available_cores(threads=config.threads)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """The folder's one-writer lock (`clasp.runs`), its refusal as a `LabelingError`."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive_folder(out, "clasp label"))
    except FolderLockError as exc:
        raise LabelingError(str(exc)) from None
    with stack:
        yield


def check_config(config: LabelConfig) -> None:
    """Refuse settings the run cannot use (`LabelConfig.check`)."""
    config.check()


def _pin_precision(spec: ClipLabelerConfig, info: LabelerInfo) -> ClipLabelerConfig:
    """Log how `auto` was resolved and give every shard job that precision, so all workers use what is recorded."""
    choice = info.precision_choice
    log.info(choice.line())
    if choice.warning:
        log.warning(choice.warning)
    return replace(spec, precision=choice.precision)


def _labeled_with(config: LabelConfig, info: LabelerInfo) -> LabeledWith:
    capability = info.precision_choice.capability
    return LabeledWith(batch_size=config.batch_size, device=capability.tag(), capability=capability.describe(),
                       precision_requested=config.precision)


def load_vocab(path: Path | None) -> Vocabulary:
    if path is None:
        return Vocabulary.default()
    try:
        return Vocabulary.load(path)
    except StoreError as exc:
        raise LabelingError(str(exc)) from None


def _prepare_folder(out: Path, manifest: Manifest, dropped: list[str]) -> None:
    """Create the folder, clear leftovers of an interrupted run, and save the surviving manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for tmp in [*out.glob("shard-*.tmp"), *out.glob("manifest.json.*.tmp")]:
        tmp.unlink(missing_ok=True)
    for name in dropped:
        (out / name).unlink(missing_ok=True)
    manifest.save(out)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="labeling", dynamic_ncols=True, smoothing=0.1)
