"""Labeling one shard: the unit of work a dask task (or the in-process loop) runs.

Inside a shard, a background thread reads, decodes, resizes and preprocesses
images batch by batch while the calling thread runs the model, so the model is
never left waiting on Pillow (both release the GIL for their heavy parts). The
labeler is built once per process and cached, because loading CLIP and
embedding the vocabulary costs far more than one shard of small images.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from clasp.hardware import PrecisionChoice
from clasp.labeling.config import ClipLabelerConfig
from clasp.labeling.decode import DecodedImage, DecodeSkip, decode_input
from clasp.labeling.errors import LabelingRunError, write_problem
from clasp.labeling.plan import ShardPlan
from clasp.store import ClipInfo, LabelRows, Manifest, ShardEntry, SkippedInput, write_shard_for
from clasp.store.schema import ORIG_HW_DTYPE

PREFETCH_BATCHES = 2  # batches decoded ahead of the model: enough to hide decoding, little memory


class Labeler(Protocol):
    """What the run needs from a labeler (`clasp.labeling.labeler.ClipLabeler`)."""

    label_grid: tuple[int, int]
    clip_info: ClipInfo  # with the precision actually used
    precision_choice: PrecisionChoice  # why that precision (the log line)

    def preprocess(self, images: list) -> object: ...

    def label(self, pixels) -> tuple: ...


def build_clip_labeler(spec: ClipLabelerConfig) -> Labeler:
    from clasp.labeling.labeler import ClipLabeler

    return ClipLabeler(spec)


LabelerFactory = Callable[[ClipLabelerConfig], Labeler]
_CACHE: dict[tuple, Labeler] = {}
_CACHE_LOCK = threading.Lock()


def cached_labeler(factory: LabelerFactory, spec: ClipLabelerConfig) -> Labeler:
    """The process's labeler for `spec`, built on first use.

    A spec whose precision is the one the cached labeler resolved `auto` to is
    the same labeler: the run pins the resolved precision after asking once.
    """
    key = (factory, spec)
    with _CACHE_LOCK:
        for (cached_factory, cached_spec), labeler in _CACHE.items():
            if (cached_factory, replace(cached_spec, precision=labeler.clip_info.precision)) == key:
                return labeler
        if key not in _CACHE:
            _CACHE.clear()  # one model per process: a new spec replaces the old one
            _CACHE[key] = factory(spec)
        return _CACHE[key]


@dataclass(frozen=True)
class LabelerInfo:
    """What the run learns from building the labeler once: its CLIP identity, grid and precision."""

    clip_info: ClipInfo
    grid: tuple[int, int]
    precision_choice: PrecisionChoice


def labeler_info(factory: LabelerFactory, spec: ClipLabelerConfig) -> LabelerInfo:
    """Build the labeler (and so check it loads) and report what it is."""
    labeler = cached_labeler(factory, spec)
    return LabelerInfo(labeler.clip_info, tuple(labeler.label_grid), labeler.precision_choice)


@dataclass
class ShardJob:
    """One shard to label, with everything a worker process needs (picklable)."""

    images: str
    out: str
    manifest: Manifest  # settings only (no shard list): written into the shard's attributes
    plan: ShardPlan
    spec: ClipLabelerConfig
    batch_size: int = 32
    factory: LabelerFactory = build_clip_labeler


@dataclass
class ShardOutcome:
    entry: ShardEntry
    skipped: list[SkippedInput]
    labeled: int


def label_shard(job: ShardJob, on_batch: Callable[[int], None] | None = None) -> ShardOutcome:
    """Decode, label and write one shard (atomically); `on_batch(n)` reports progress in inputs."""
    labeler = cached_labeler(job.factory, job.spec)
    grid, num_attr = tuple(labeler.label_grid), job.manifest.vocab.num_attributes
    parts: list[LabelRows] = []
    skipped: list[SkippedInput] = []
    for decoded, skips, pixels in _prefetched_batches(job, labeler):
        skipped.extend(SkippedInput(s.path, s.reason) for s in skips)
        if decoded:
            mask, conf, logits = labeler.label(pixels)
            parts.append(LabelRows(
                image=[d.store_jpeg for d in decoded],
                key=[d.key for d in decoded],
                path=[d.path for d in decoded],
                orig_hw=np.array([d.orig_hw for d in decoded], dtype=ORIG_HW_DTYPE).reshape(len(decoded), 2),
                part_mask=_numpy(mask).astype(np.uint8, copy=False),
                part_conf=_numpy(conf).astype(np.float16, copy=False),
                attr_logits=_numpy(logits).astype(np.float16, copy=False),
            ))
        if on_batch is not None:
            on_batch(len(decoded) + len(skips))
    rows = LabelRows.concat(parts) if parts else LabelRows.empty(grid, num_attr)
    try:
        entry = write_shard_for(job.manifest, job.out, job.plan.file, rows, inputs_sha256=job.plan.inputs_sha256)
    except OSError as exc:
        raise LabelingRunError(f"{Path(job.out) / job.plan.file}: cannot write the shard: {write_problem(exc)}; "
                               "the shards finished before it are intact and listed in the manifest") from None
    return ShardOutcome(entry, skipped, len(rows))


_DONE = object()


@dataclass
class _Failure:
    exc: BaseException


def _prefetched_batches(job: ShardJob, labeler: Labeler):
    """Yield (decoded images, skips, preprocessed pixels) per batch, produced by a background thread."""
    out: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop = threading.Event()
    label_hw = tuple(job.spec.clip_size)
    store_hw = tuple(job.manifest.image_store.hw)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            decoded: list[DecodedImage] = []
            skips: list[DecodeSkip] = []
            for f in job.plan.inputs:
                if stop.is_set():
                    return
                result = decode_input(job.images, f.path, store_hw, label_hw, fs_path=f.fs_path)
                if isinstance(result, DecodeSkip):
                    skips.append(result)
                    continue
                decoded.append(result)
                if len(decoded) == job.batch_size:
                    if not put(_batch(labeler, decoded, skips)):
                        return
                    decoded, skips = [], []
            if decoded or skips:
                if not put(_batch(labeler, decoded, skips)):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name=f"clasp-decode-{job.plan.file}", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


def _batch(labeler: Labeler, decoded: list[DecodedImage], skips: list[DecodeSkip]):
    pixels = labeler.preprocess([d.label_image for d in decoded]) if decoded else None
    for d in decoded:
        d.label_image = None  # the pixels tensor holds what the model needs; free the PIL copy
    return decoded, skips, pixels


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; numpy has no bfloat16
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def settings_only(manifest: Manifest) -> Manifest:
    """A copy without the shard and skipped lists, small enough to send with every task."""
    return replace(manifest, shards=[], skipped=[])
