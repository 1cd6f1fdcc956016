"""The shard stream: label shards -> multi-crop batches, split over ranks and workers.

The chain, one named step each (webdataset style):

    shards --epoch_segments--> row sequence --plan_rank--> this rank's rows
      --plan_worker--> this worker's rows and batch order (shuffle buffer simulated)
      --read_rows--> raw rows, chunk by chunk --decode_image--> PIL image
      --MultiCrop--> crops + part labels --collate--> MultiCropBatch

The plan (`epoch_plan.py`) is integers derived from the manifest before the epoch
starts: every rank yields the same number of batches K (DDP never waits on a
rank that ran out), and every row of an epoch is read exactly once over all
ranks and workers. A batch is a pure function of (seed, epoch, rank, batch
index) for a given store, world size, worker count, batch size and buffer size.

Batch order with W DataLoader workers: the rank's batch k is made by worker
k mod W, and the DataLoader collects from its workers round-robin starting at
worker 0, so the loader yields batches 0, 1, ..., K-1 in order (a worker with
fewer batches simply finishes first). After resuming at batch s, worker p
makes the batches of plan worker (p + s) mod W, so the order is again
s, s+1, ..., K-1. W = 0 (no worker processes) gives the same batches as W = 1.

Resume: `state_dict()` holds (epoch, batches yielded this epoch by this rank);
after `load_state_dict`, iteration starts at that batch. Skipped batches are
never decoded nor augmented, and shard chunks holding only skipped rows are
never read.

h5py files are opened inside the process that iterates (each DataLoader
worker), never in the constructor: the stream holds only the manifest and
paths, pickles cleanly and survives fork, spawn and forkserver alike.

Checks, in the worker (the store is data to judge, not to trust):

- Opening a shard: the manifest on disk must still be the one the run started
  with (its sha256), and the shard a regular file in the folder with the
  recorded size; otherwise `StoreChangedError` (e.g. `clasp label --force`
  rewrote the store under the run). Its sha256 must match the manifest (the
  whole file is hashed once per open), or `BadRowError`: bytes flipped inside
  a stored JPEG often still decode, so only the hash can tell.
- Every row: its chunk decompresses, its image decodes to the manifest's store
  size, `part_mask` is within the vocabulary, `part_conf` in [0, 1],
  `attr_logits` finite (`clasp.store.rowcheck`). `on_bad_row="stop"` raises
  `BadRowError` naming the shard, row and field; `"skip"` drops the row from
  its batch (the batch gets smaller, the batch count per epoch is unchanged),
  logs it and counts it in `rows_skipped`. A batch with no good row left
  raises `BadRowError` under either setting.

Both errors are one line (`str(exc)`), also after the DataLoader re-raises
them in the training process.

A store at a URL (`store/remote.py`) is fetched on demand, shard by shard, by
the worker that is about to open it: the parent checks the manifest only, and
each worker holds the one shard it reads in the local cache (safe from
eviction) until it closes it, so a cache of one shard per worker and rank on a
host is enough. The stream reads the local copy, so everything above holds
unchanged. A fetch that still fails after its retries raises
`StoreUnreachableError` (a BadRowError naming the shard's URL).
"""

from __future__ import annotations

import atexit
import io
import logging
import multiprocessing.util  # registers its exit handler now, so that ours (below) runs before it
import re
import signal
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clasp.errors import RunError
from clasp.pretraining.augment import MultiCrop, MultiCropConfig
from clasp.pretraining.batch import MultiCropBatch
from clasp.pretraining.epoch_plan import (
    Segment, WorkerPlan, augment_seed, epoch_segments, plan_rank, plan_worker,
)
from clasp.store import ShardFile, ShardStore, StoreError
from clasp.store.cache_config import CacheConfig
from clasp.store.fetch import FetchError, is_url
from clasp.store.reader import shard_bytes_problem, shard_path_problem
from clasp.store.rowcheck import BadDataError, check_policy, label_problems
from clasp.store.schema import CHUNK_ROWS, MANIFEST_NAME

LABEL_FIELDS = ("image", "part_mask", "part_conf", "attr_logits")
SKIP_COUNTER_SLOTS = 64  # per-worker counters of skipped rows (worker id mod this)
LOGGED_SKIPS = 20  # skipped rows each worker names in the log; the rest are only counted

log = logging.getLogger("clasp")


class BadRowError(RunError, ValueError):
    """A row, chunk or shard of the store that fails a check while streaming.

    A RunError: it is met after the store was accepted and steps were taken, the
    last checkpoint stays, and the remedy is `--resume` once the shard is
    replaced (or with `--on-bad-row skip`); `clasp pretrain` exits 1.

    Raised in a DataLoader worker; torch re-raises it in the training process
    with the worker's traceback as its message, so `str(exc)` gives back the
    original one line: `<shard path>: row N: <field>: <problem>`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.line = _original_line(message)

    def __str__(self) -> str:
        return self.line


class StoreUnreachableError(BadRowError):
    """A URL store's shard could not be fetched (after the retries): one line naming its URL.

    A BadRowError, so that the run stops the same way: exit 1, checkpoints kept.
    """


class StoreChangedError(BadRowError):
    """The store changed under the run: another manifest, or a shard of another size or gone.

    A subclass of BadRowError, so that one `except BadRowError` handles both.
    """


def _original_line(message: str) -> str:
    """The one-line message, also out of torch's "Caught X in DataLoader worker ... Original Traceback" text."""
    lines = [line for line in str(message).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    match = re.match(r"^[\w.]*(?:BadRowError|StoreChangedError): (.*)$", lines[-1])
    return match.group(1) if match else lines[-1]


@dataclass
class StreamConfig:
    """Settings of the shard stream; crop settings live in `crops`.

    Nothing is dropped: a rank with fewer rows ends its epoch with a smaller
    batch instead of fewer batches.
    """

    shards: Path | str  # shard folder (manifest.json + shard-*.h5), or its URL
    batch_size: int = 64  # per process
    shuffle_buffer: int = 2048  # rows per worker
    seed: int = 0
    # h5py chunk cache per open shard; None sizes it from the manifest (see chunk_cache_size).
    chunk_cache_bytes: int | None = None
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)
    on_bad_row: str = "stop"  # stop | skip: a row that fails a check (see the module docstring)
    cache: CacheConfig = field(default_factory=CacheConfig)  # where a URL store's shards are fetched to

    def __post_init__(self) -> None:
        self.shards = self.shards if is_url(self.shards) else Path(self.shards)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be at least 1, got {self.shuffle_buffer}")
        check_policy(self.on_bad_row)


@dataclass
class RawRow:
    """One row as stored, before decoding."""

    image: bytes
    part_mask: np.ndarray  # (h, w) uint8
    part_conf: np.ndarray  # (h, w) float16
    attr_logits: np.ndarray  # (A,) float16
    row_id: int
    shard: int = -1  # index of its shard in the manifest
    shard_row: int = -1  # row number within that shard
    problem: str | None = None  # "<field>: <problem>" when a check failed


def validate_store(root: str | Path, on_bad_row: str = "stop", cache: CacheConfig | None = None) -> ShardStore:
    """Open every shard once in the parent and check it against the manifest.

    Catches, before the first training step, a missing or empty folder, a
    manifest that does not parse, a missing or truncated shard, another
    vocabulary, an unknown version, a label grid or row count that differs from
    the manifest, and (with `on_bad_row="stop"`) a first image that does not
    decode. Raises StoreError naming the file; closes every file it opened.

    A URL store is checked here as far as its manifest goes (and the cache must
    hold its largest shard): its shards are fetched on demand by the workers,
    which check each one when they open it, as they do for a local store.
    """
    store = ShardStore.open(root, cache=cache)
    if not store.shards or store.manifest.total_rows == 0:
        raise store.manifest_error("the store lists no rows (no finished shard)")
    if store.remote is not None:
        return store
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            if shard.rows == 0 or on_bad_row == "skip":
                continue
            first = shard.read(0, 1, fields=("image",))
        try:
            decode_image(first.image[0])
        except Exception as exc:  # PIL raises several types for bad data
            raise StoreError(store.path_of(entry), f"row 0 does not decode as an image ({exc})") from None
    return store


def chunk_cache_size(manifest) -> int:
    """Two chunks of every fixed-size dataset (images are vlen: their bytes sit outside the chunks).

    The stream reads whole chunks, each once, so one chunk per dataset would do;
    the second covers a read that ends inside a chunk the next read continues.
    """
    h, w = manifest.label_grid
    per_row = h * w * (1 + 2) + 2 * manifest.vocab.num_attributes + 2 * 2 + 16 + 40  # mask, conf, attr, orig_hw, refs, key
    return max(1 << 20, 2 * CHUNK_ROWS * per_row)


def decode_image(data: bytes) -> Image.Image:
    """JPEG (or any PIL format) bytes -> RGB image, fully loaded."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def open_checked(store: ShardStore, index: int, chunk_cache_bytes: int) -> ShardFile:
    """Open shard `index` after checking that the store did not change and the file is intact.

    A URL store's shard is fetched first when the cache lacks it, and held until the file closes.
    """
    entry = store.shards[index]
    changed = store.manifest_changed()
    if changed:
        raise StoreChangedError(f"{store.root / MANIFEST_NAME}: {changed}; start the run again on the new store")
    try:
        hold = store.hold(entry)
    except FetchError as exc:
        raise StoreUnreachableError(str(exc)) from None
    except StoreError as exc:
        raise BadRowError(str(exc)) from None
    try:
        problem = shard_path_problem(hold.path)
        if problem is None:
            size = hold.path.stat().st_size
            if size != entry.bytes:
                problem = f"shard has {size} bytes, the run started with {entry.bytes}"
        if problem:
            raise StoreChangedError(f"{hold.path}: {problem} (the store changed under this run)")
        problem = shard_bytes_problem(hold.path, entry)
        if problem:
            raise BadRowError(f"{hold.path}: {problem}")
        return store.open_shard(entry, chunk_cache_bytes=chunk_cache_bytes, hold=hold)
    except StoreError as exc:
        hold.release()
        raise BadRowError(str(exc)) from None
    except BaseException:
        hold.release()
        raise


def read_rows(store: ShardStore, segments: list[Segment], needed: np.ndarray, row_offsets: list[int],
              chunk_cache_bytes: int, on_bad_row: str = "stop") -> Iterator[tuple[int, RawRow | None]]:
    """Yield (local row number, row) in reading order; rows not `needed` come as None.

    Reads one segment (at most one chunk) per h5py call and skips segments with
    no needed row entirely. Keeps one shard open at a time: a shard's chunks
    are consecutive in the sequence. Each shard is checked on open
    (`open_checked`); label values are checked per row and a chunk that does
    not decompress makes all its rows bad: under "stop" the first bad needed
    row raises BadRowError, under "skip" it comes with `problem` set.
    """
    num_parts = store.manifest.vocab.num_parts
    shard: ShardFile | None = None
    shard_index = -1
    local = 0
    try:
        for seg in segments:
            wanted = needed[local:local + len(seg)]
            if not wanted.any():
                for i in range(len(seg)):
                    yield local + i, None
                local += len(seg)
                continue
            if seg.shard != shard_index:
                if shard is not None:
                    shard.close()
                shard = None
                shard = open_checked(store, seg.shard, chunk_cache_bytes)
                shard_index = seg.shard
            try:
                block = shard.read(seg.start, seg.stop, fields=LABEL_FIELDS)
                problems = label_problems(block, num_parts)
            except BadDataError as exc:
                if on_bad_row == "stop":
                    raise BadRowError(str(exc)) from None
                block, problems = None, [exc.detail] * len(seg)
            base = row_offsets[seg.shard] + seg.start
            for i in range(len(seg)):
                row = None
                if wanted[i]:
                    if problems[i] and on_bad_row == "stop":
                        raise BadRowError(f"{shard.path}: row {seg.start + i}: {problems[i]}")
                    if block is None:
                        row = RawRow(b"", None, None, None, base + i, seg.shard, seg.start + i, problems[i])
                    else:
                        row = RawRow(block.image[i], block.part_mask[i], block.part_conf[i], block.attr_logits[i],
                                     base + i, seg.shard, seg.start + i, problems[i])
                yield local + i, row
            local += len(seg)
    finally:
        if shard is not None:
            shard.close()


def collate(crop_sets: list, rows: list[RawRow], crops: MultiCropConfig) -> MultiCropBatch:
    """Stack per-image crops into the (G, B, ...) / (L, B, ...) uint8 batch."""
    n = len(rows)
    gh, gw = crops.global_size
    lh, lw = crops.local_size
    th, tw = crops.token_grid
    global_crops = np.empty((crops.global_crops, n, 3, gh, gw), np.uint8)
    local_crops = np.empty((crops.local_crops, n, 3, lh, lw), np.uint8)
    part_mask = np.empty((crops.global_crops, n, th, tw), np.int64)
    part_conf = np.empty((crops.global_crops, n, th, tw), np.float32)
    for b, cs in enumerate(crop_sets):
        for g, crop in enumerate(cs.global_crops):
            global_crops[g, b] = crop.transpose(2, 0, 1)
        for l, crop in enumerate(cs.local_crops):
            local_crops[l, b] = crop.transpose(2, 0, 1)
        part_mask[:, b] = cs.part_mask
        part_conf[:, b] = cs.part_conf
    attr = np.stack([r.attr_logits for r in rows]).astype(np.float32)
    return MultiCropBatch(
        global_crops=torch.from_numpy(global_crops),
        local_crops=torch.from_numpy(local_crops),
        part_mask=torch.from_numpy(part_mask),
        part_conf=torch.from_numpy(part_conf),
        attr_logits=torch.from_numpy(attr),
        row_id=torch.tensor([r.row_id for r in rows], dtype=torch.int64),
    )


class ShardStream(IterableDataset):
    """Multi-crop batches of this rank, `batches_per_epoch` of them every epoch.

    `rank`/`world_size` come from the training loop (accelerator.process_index /
    num_processes); the worker split comes from `get_worker_info()`. Build the
    DataLoader with `make_loader`, which also keeps the resume position.
    """

    # Keys of state_dict() that must match on load: they decide the batch order.
    FINGERPRINT_KEYS = ("seed", "world_size", "batch_size", "num_workers", "shuffle_buffer", "total_rows", "num_shards")

    def __init__(self, config: StreamConfig, rank: int = 0, world_size: int = 1,
                 store: ShardStore | None = None) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.store = store if store is not None else ShardStore.open(config.shards, cache=config.cache)
        self.shard_rows = [e.rows for e in self.store.shards]
        self.row_offsets = [0, *np.cumsum(self.shard_rows).tolist()][:-1] if self.shard_rows else []
        self.total_rows = int(sum(self.shard_rows))
        self.multicrop = MultiCrop(config.crops)
        _, sizes = plan_rank(self.total_rows, world_size, config.batch_size, rank)  # raises if no plan exists
        self.batches_per_epoch = len(sizes)
        self.num_workers = 1  # set by make_loader; 0 and 1 give the same batches
        # [epoch, batches yielded this epoch]; in shared memory so that persistent
        # DataLoader workers see set_epoch/load_state_dict made in the parent.
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._skipped = torch.zeros(SKIP_COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------- position

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @property
    def batches_yielded(self) -> int:
        return int(self._position[1])

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; the current epoch keeps its position (after a resume)."""
        if epoch != self.epoch:
            self._position[0] = epoch
            self._position[1] = 0

    def note_consumed(self) -> None:
        """One more batch of this epoch reached the loop (called in the parent)."""
        self._position[1] += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_yielded": self.batches_yielded, **self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._fingerprint()
        differ = [k for k in self.FINGERPRINT_KEYS if k in state and int(state[k]) != mine[k]]
        if differ:
            raise ValueError("cannot resume the data stream: " + ", ".join(
                f"{k} was {state[k]}, is now {mine[k]}" for k in differ))
        batches = int(state["batches_yielded"])
        if not 0 <= batches <= self.batches_per_epoch:
            raise ValueError(f"cannot resume the data stream at batch {batches} of {self.batches_per_epoch}")
        self._position[0] = int(state["epoch"])
        self._position[1] = batches

    def _fingerprint(self) -> dict[str, int]:
        return {"seed": self.config.seed, "world_size": self.world_size, "batch_size": self.config.batch_size,
                "num_workers": max(1, self.num_workers), "shuffle_buffer": self.config.shuffle_buffer,
                "total_rows": self.total_rows, "num_shards": len(self.shard_rows)}

    def __len__(self) -> int:
        return self.batches_per_epoch

    # ------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[MultiCropBatch]:
        info = get_worker_info()
        if info is None:
            # Iterated in this process: count what is handed out, so state_dict is current.
            for batch in self.iter_worker(0, 1):
                self.note_consumed()
                yield batch
            return
        if info.num_workers != max(1, self.num_workers):
            raise RuntimeError(f"the stream was planned for {self.num_workers} workers but runs in "
                               f"{info.num_workers}; build the DataLoader with make_loader")
        yield from self.iter_worker(info.id, info.num_workers)

    def plan(self, worker: int, num_workers: int, epoch: int | None = None) -> WorkerPlan:
        """The worker's rows, order and batches for `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        cfg = self.config
        segments = epoch_segments(self.shard_rows, cfg.seed, epoch, CHUNK_ROWS)
        return plan_worker(segments, self.total_rows, self.world_size, self.rank, num_workers, worker,
                           cfg.batch_size, cfg.shuffle_buffer, cfg.seed, epoch)

    def iter_worker(self, worker: int, num_workers: int) -> Iterator[MultiCropBatch]:
        """The batches DataLoader worker `worker` of `num_workers` yields, from the current position on.

        The DataLoader always asks worker 0 first, so after resuming at batch
        `start` worker p plays the part of plan worker (p + start) mod W: it
        makes batches start+p, start+p+W, ... and the loader still yields
        start, start+1, ... in order.
        """
        epoch, start = self.epoch, self.batches_yielded
        plan = self.plan((worker + start) % num_workers, num_workers, epoch)
        todo = [j for j, k in enumerate(plan.batch_ids) if k >= start]
        if not todo:
            return
        local_rows = sum(len(s) for s in plan.segments)
        needed = np.zeros(local_rows, dtype=bool)
        for j in todo:
            needed[plan.batches[j]] = True
        cache = self.config.chunk_cache_bytes or chunk_cache_size(self.store.manifest)
        rows = read_rows(self.store, plan.segments, needed, self.row_offsets, cache, self.config.on_bad_row)
        # Rows read and waiting for their batch: the shuffle buffer itself. A row
        # leaves the simulated buffer at most `shuffle_buffer` rows after it
        # entered, so this holds about shuffle_buffer + batch_size + one chunk rows.
        waiting: dict[int, RawRow] = {}
        read_upto = 0
        try:
            for j in todo:
                members = plan.batches[j]
                last = int(members.max())
                while read_upto <= last:
                    local, row = next(rows)
                    if row is not None:
                        waiting[local] = row
                    read_upto = local + 1
                batch_rows = [waiting.pop(int(i)) for i in members]
                yield self.make_batch(batch_rows, epoch, plan.batch_ids[j])
        finally:
            rows.close()

    def make_batch(self, rows: list[RawRow], epoch: int, batch_index: int) -> MultiCropBatch:
        """Decode, augment and collate one batch; randomness from (seed, epoch, rank, batch_index).

        Each row keeps its own seed whatever happens to the others, so skipping
        a bad row changes nothing about the rest of the batch.
        """
        seeds = augment_seed(self.config.seed, epoch, self.rank, batch_index).spawn(len(rows))
        crop_sets, good = [], []
        for row, seq in zip(rows, seeds):
            image = self._decode_checked(row)
            if image is None:
                continue
            geometry_seq, colour_seq = seq.spawn(2)
            crop_sets.append(self.multicrop(image, row.part_mask, row.part_conf,
                                            np.random.default_rng(geometry_seq), np.random.default_rng(colour_seq)))
            good.append(row)
        if not good:
            raise BadRowError(f"{self.store.root}: every row of batch {batch_index} of epoch {epoch} is bad "
                              f"(last: {self._where(rows[-1])}: {rows[-1].problem}); too much of the store is "
                              "damaged to train on (`clasp verify --deep` lists the bad rows)")
        return collate(crop_sets, good, self.config.crops)

    def _decode_checked(self, row: RawRow) -> Image.Image | None:
        """The row's image, or None for a bad row under on_bad_row="skip" (logged and counted)."""
        if row.problem is None:
            try:
                image = decode_image(row.image)
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                row.problem = f"image: does not decode ({' '.join(str(exc).split()) or type(exc).__name__})"
            else:
                hw = tuple(self.store.manifest.image_store.hw)
                if (image.height, image.width) == hw:
                    return image
                row.problem = f"image: decodes to {image.height}x{image.width}, the manifest says {hw[0]}x{hw[1]}"
        message = f"{self._where(row)}: {row.problem}"
        if self.config.on_bad_row == "stop":
            raise BadRowError(message)
        info = get_worker_info()
        slot = (info.id if info is not None else 0) % SKIP_COUNTER_SLOTS
        self._skipped[slot] += 1
        if self._skipped[slot] <= LOGGED_SKIPS:
            log.warning("skipped bad row (on_bad_row=skip): %s%s", message,
                        "; further bad rows of this worker are counted, not logged"
                        if self._skipped[slot] == LOGGED_SKIPS else "")
        return None

    def _where(self, row: RawRow) -> str:
        if row.shard < 0:
            return f"row id {row.row_id}"
        return f"{self.store.path_of(self.store.shards[row.shard])}: row {row.shard_row}"

    @property
    def rows_skipped(self) -> int:
        """Bad rows left out so far under on_bad_row="skip", over all workers of this process."""
        return int(self._skipped.sum())


class StreamLoader(DataLoader):
    """A DataLoader that tells its ShardStream how many batches reached the loop.

    With worker processes the stream's own copy lives in the workers, so the
    parent counts here; without workers the stream counts itself.
    """

    def __iter__(self):
        # Starting workers draws a base seed from the global RNG; keep that out of
        # the model's random stream so that a resumed run replays it exactly.
        with torch.random.fork_rng(devices=[]):
            iterator = super().__iter__()
        if self.num_workers == 0:
            yield from iterator
            return
        _ITERATORS_WITH_WORKERS.add(iterator)
        for batch in iterator:
            self.dataset.note_consumed()
            yield batch


# The worker-owning iterators of every StreamLoader, as long as they live.
_ITERATORS_WITH_WORKERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _kill_workers_at_exit() -> None:
    """Shut down the workers of every loader iterator still alive when this process exits.

    Workers ignore SIGTERM (`_init_worker`), and SIGTERM is what multiprocessing
    sends its children at exit before joining them: a process that still holds an
    iterator (one kept alive by a traceback, say) would wait for them forever.
    Registered after multiprocessing's and torch's own exit handlers, so it runs
    first, while the iterator's orderly shutdown still works; a worker that does
    not end then is killed.
    """
    from torch.utils.data._utils.worker import _worker_loop

    for iterator in list(_ITERATORS_WITH_WORKERS):
        iterator._shutdown_workers()
    for child in multiprocessing.active_children():  # any DataLoader worker left, e.g. of a dropped iterator
        if getattr(child, "_target", None) is _worker_loop and child.is_alive():
            child.kill()


def _init_worker(worker_id: int, parent: int | None = None) -> None:
    """One intra-op thread per worker, no stop signals, and death with the parent.

    Several workers with several threads each only fight over the cores.
    `accelerate launch` (torch elastic) stops a job with killpg, and Ctrl-C
    reaches the whole foreground group: workers would die mid-batch and take the
    training process down before it can save. The process that owns the loader
    decides when to stop and shuts its workers down itself; should it die
    (even by `kill -9`), the kernel kills its workers (`die_with_parent`).
    """
    from clasp.hardware.processes import die_with_parent

    die_with_parent(parent)
    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(stream: ShardStream, num_workers: int = 1, prefetch_factor: int = 2) -> StreamLoader:
    """The DataLoader for `stream`: batches come ready-made (batch_size=None).

    Do not pass it through accelerator.prepare: the stream already splits by
    rank (prepare would re-create the loader, dispatch batches from rank 0 and
    lose the resume position). Move batches with `batch.to(device)`.
    """
    stream.num_workers = max(1, num_workers)
    kwargs = {}
    if num_workers > 0:
        import functools
        import os

        kwargs = {"persistent_workers": True, "worker_init_fn": functools.partial(_init_worker, parent=os.getpid()),
                  "prefetch_factor": prefetch_factor}
    return StreamLoader(stream, batch_size=None, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), **kwargs)
