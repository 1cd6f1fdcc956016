"""Shard stream vs a folder of JPEG files, same multi-crop augmentation, one worker each.

Generates person-sized JPEGs (default 1024, 256x128) and a shard store holding
the same images with random part/attribute labels, then measures images/s of:

- shards: `ShardStream` through `make_loader(stream, num_workers=1)`;
- folder: a plain IterableDataset that reads each JPEG file, decodes it with
  the same `decode_image` and applies the same `MultiCrop` + collate (labels
  are handed to it in memory, which favours the folder).

Both shuffle (the folder by a seeded permutation of its files) and use batch
size 64. Prints images/s for both and the ratio shards / folder (target >= 1.0),
also per CPU second of the worker process (robust to a busy machine).
Each side runs `--repeats` epochs alternately; the best epoch of each counts
(the machine is shared, the best is the least disturbed). Augmentation costs
most of the time, so the script also prints read + decode alone for both.

`--cache warm` (default) reads both from the page cache: it compares the
formats alone, as on a small dataset read a second time. `--cache cold` drops
both sides' files from the page cache before every epoch (posix_fadvise
DONTNEED, no root needed), as for a dataset larger than memory, where every
epoch reads from the disk: one file open and one random read per image against
a few large sequential reads per shard. `--cache both` runs the two in turn.

    python benchmarks/loader.py [--images 1024] [--repeats 3] [--cache warm|cold|both] [--workdir DIR]
                                [--batch-size 64]

The last line, `shards per worker: N images/s`, is what one worker of
`clasp pretrain` delivers: a GPU whose step consumes R images/s needs about
R / N workers (`benchmarks/gpu.sh` prints that count).

`--shards URL` compares instead the stream from a store at a URL with the
same store on local disk (fetched once into the workdir first), one worker
each: before every epoch of the URL side its cache is emptied, so every shard
is fetched while the epoch runs (on demand, by the worker about to read it),
and every batch counts, the first one too (the workers start in an untimed
epoch before).
`--serve` makes the store as above and serves it from another process over
HTTP on the loopback address (`python -m http.server`), then does the same.

No model runs here, so no precision applies; the header still prints the
machine and what `--precision auto` resolves to, like every benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clasp.pretraining.augment import MultiCrop, MultiCropConfig
from clasp.pretraining.epoch_plan import augment_seed
from clasp.pretraining.stream import (
    RawRow, ShardStream, StreamConfig, collate, decode_image, make_loader, validate_store,
)
from clasp.common.person_size import PERSON_HW
from clasp.store import ClipInfo, LabelRows, Manifest, ShardStore, Vocabulary, record_shard, shard_name, write_shard_for
from clasp.store.cache_config import CacheConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_header, verdict  # noqa: E402

HW = PERSON_HW
GRID = (28, 14)
BATCH = 64


def person_like(rng: np.random.Generator) -> np.ndarray:
    """A smooth background with a few coloured blobs: JPEG sizes like real photos, unlike noise."""
    low = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(low).resize((HW[1], HW[0]), Image.Resampling.BICUBIC)).copy()
    for _ in range(6):
        y, x = rng.integers(0, HW[0] - 40), rng.integers(0, HW[1] - 20)
        image[y:y + rng.integers(20, 80), x:x + rng.integers(10, 50)] = rng.integers(0, 256, 3)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def make_data(workdir: Path, count: int, shard_size: int = 512) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(0)
    vocab = Vocabulary.default()
    folder, shards = workdir / "images", workdir / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(ClipInfo("benchmark"), vocab, GRID)
    labels = {"part_mask": rng.integers(0, vocab.num_parts, (count, *GRID)).astype(np.uint8),
              "part_conf": rng.random((count, *GRID)).astype(np.float16),
              "attr_logits": rng.normal(size=(count, vocab.num_attributes)).astype(np.float16)}
    images = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(person_like(rng)).save(buf, "JPEG", quality=95)
        images.append(buf.getvalue())
        (folder / f"{i:06d}.jpg").write_bytes(images[-1])
    for index, start in enumerate(range(0, count, shard_size)):
        stop = min(start + shard_size, count)
        n = stop - start
        rows = LabelRows(image=images[start:stop], key=[f"{i:040d}" for i in range(start, stop)],
                         path=[f"{i:06d}.jpg" for i in range(start, stop)],
                         orig_hw=np.tile(np.array(HW, np.uint16), (n, 1)),
                         **{k: v[start:stop] for k, v in labels.items()})
        record_shard(manifest, shards, write_shard_for(manifest, shards, shard_name(index), rows))
    return folder, shards, labels


class JpegFolder(IterableDataset):
    """The baseline: one file per image, decoded and augmented like the stream does it."""

    def __init__(self, folder: Path, labels: dict, seed: int = 0, batch_size: int = BATCH) -> None:
        self.files = sorted(folder.glob("*.jpg"))
        self.batch_size = batch_size
        self.labels = labels
        self.seed = seed
        self.multicrop = MultiCrop(MultiCropConfig())

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = np.random.default_rng(self.seed).permutation(len(self.files))[worker::workers]
        for k, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start:start + self.batch_size]
            rows, crops = [], []
            for i, seq in zip(idx, augment_seed(self.seed, 0, 0, k).spawn(len(idx))):
                image = decode_image(self.files[i].read_bytes())
                row = RawRow(b"", self.labels["part_mask"][i], self.labels["part_conf"][i],
                             self.labels["attr_logits"][i], int(i))
                g, c = seq.spawn(2)
                crops.append(self.multicrop(image, row.part_mask, row.part_conf,
                                            np.random.default_rng(g), np.random.default_rng(c)))
                rows.append(row)
            yield collate(crops, rows, self.multicrop.config)


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop the files' cached pages, so that the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def worker_cpu_seconds(loader: DataLoader) -> float:
    """User + system CPU time of the loader's (persistent) worker processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for worker in loader._iterator._workers:
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def measure(loader: DataLoader, skip_first: bool = True) -> tuple[float, float]:
    """(images per wall second, images per worker CPU second), after the first batch when `skip_first`.

    The first batch carries the worker start-up, not the loader's steady state.
    On a shared machine wall time depends on the neighbours; the worker's own
    CPU time much less.
    """
    start, cpu, count = time.perf_counter(), worker_cpu_seconds(loader) if loader._iterator is not None else 0.0, 0
    it = iter(loader)
    if skip_first:
        next(it)
        start, cpu = time.perf_counter(), worker_cpu_seconds(loader)
    for batch in it:
        count += batch.batch_size
    return count / (time.perf_counter() - start), count / (worker_cpu_seconds(loader) - cpu)


def decode_only(store, folder: Path, repeats: int) -> tuple[float, float]:
    """Images per CPU second of reading and decoding alone (no augmentation), in this process.

    Storage against storage; alternating passes, the best of each.
    """
    def shards() -> int:
        count = 0
        for entry in store.shards:
            with store.open_shard(entry) as shard:
                for chunk in shard.iter_chunks(fields=("image", "part_mask", "part_conf", "attr_logits")):
                    for data in chunk.image:
                        decode_image(data)
                        count += 1
        return count

    def files() -> int:
        paths = sorted(folder.glob("*.jpg"))
        for path in paths:
            decode_image(path.read_bytes())
        return len(paths)

    best = [0.0, 0.0]
    for _ in range(repeats):
        for i, run in enumerate((shards, files)):
            start = time.process_time()
            count = run()
            best[i] = max(best[i], count / (time.process_time() - start))
    return best[0], best[1]


def compare(loaders: dict[str, DataLoader], streams: list[ShardStream], before: Callable[[str], None],
            repeats: int, skip_first: bool = True, first_epoch: int = 0) -> dict[str, list[float]]:
    """Best images/s and images per worker CPU second of each loader over `repeats` alternating epochs.

    `before(name)` runs before each loader's epoch (to drop a cache, say).
    """
    best = {name: [0.0, 0.0] for name in loaders}
    for epoch in range(first_epoch, first_epoch + repeats):
        for stream in streams:
            stream.set_epoch(epoch)
        order = list(loaders.items()) if epoch % 2 == 0 else list(reversed(loaders.items()))
        for name, loader in order:
            before(name)
            wall, cpu = measure(loader, skip_first)
            best[name] = [max(best[name][0], wall), max(best[name][1], cpu)]
            print(f"  epoch {epoch} {name}: {wall:.1f} images/s, {cpu:.1f} images per worker CPU second")
    return best


def compare_url(url: str, workdir: Path, repeats: int) -> None:
    """The stream from `url` (every shard fetched during each epoch) against the same store on local disk."""
    remote_cache = CacheConfig(str(workdir / "url-cache"))
    started = time.perf_counter()
    local = ShardStore.open(url, verify=True, cache=CacheConfig(str(workdir / "local-copy"))).root
    fetched = time.perf_counter() - started
    stores = {"url": validate_store(url, cache=remote_cache), "local": validate_store(local)}
    streams = [ShardStream(StreamConfig(store.location, batch_size=BATCH), store=store) for store in stores.values()]
    loaders = {name: make_loader(stream, num_workers=1) for name, stream in zip(stores, streams)}
    size = sum(e.bytes for e in stores["local"].shards)
    print(f"{url}: {stores['local'].manifest.total_rows} images in {len(stores['local'].shards)} shards, "
          f"{size / 2**20:.1f} MiB, fetched and checked in {fetched:.2f} s ({size / 2**20 / fetched:.0f} MiB/s); "
          f"local copy {local}; batch {BATCH}, 2 global + 6 local crops")

    def empty_url_cache(name: str) -> None:
        if name == "url":
            for path in stores["url"].root.glob("*.h5"):
                path.unlink()

    for loader in loaders.values():  # start the workers: from now on every batch counts, the first one too
        measure(loader)
    best = compare(loaders, streams, empty_url_cache, repeats, skip_first=False, first_epoch=1)
    for name in best:
        print(f"{name}: {best[name][0]:.1f} images/s ({best[name][1]:.1f} per worker CPU second)")
    print(f"ratio url/local: {best['url'][0] / best['local'][0]:.2f} in images/s, "
          f"{best['url'][1] / best['local'][1]:.2f} in images per worker CPU second")


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """`folder` served by `python -m http.server` in another process on the loopback address; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", choices=("warm", "cold", "both"), default="warm")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--shards", default=None, metavar="URL", help="compare a URL store with its local copy")
    parser.add_argument("--serve", action="store_true", help="--shards of the generated store, served over HTTP")
    parser.add_argument("--batch-size", type=int, default=BATCH, help="images per batch, as clasp pretrain's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print_header(note="no model here: the loader's work is the same in every precision")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        if args.shards:
            compare_url(args.shards, workdir, args.repeats)
            return
        if args.serve:
            make_data(workdir / "served", args.images)
            with http_server(workdir / "served") as url:
                compare_url(f"{url}/shards", workdir, args.repeats)
            return
        folder, shards, labels = make_data(workdir, args.images)
        os.sync()  # written pages must be clean before they can be dropped from the cache
        store = validate_store(shards)
        stream = ShardStream(StreamConfig(shards, batch_size=args.batch_size), store=store)
        loaders = {"shards": make_loader(stream, num_workers=1),
                   "folder": DataLoader(JpegFolder(folder, labels, batch_size=args.batch_size), batch_size=None, num_workers=1,
                                        persistent_workers=True)}
        files = {"shards": sorted(shards.glob("*.h5")), "folder": sorted(folder.glob("*.jpg"))}
        jpeg_bytes = sum(p.stat().st_size for p in files["folder"])
        shard_bytes = sum(p.stat().st_size for p in files["shards"])
        print(f"{args.images} images {HW[0]}x{HW[1]}: {jpeg_bytes / 2**20:.1f} MiB as JPEG files, "
              f"{shard_bytes / 2**20:.1f} MiB as shards (with labels); batch {args.batch_size}, 2 global + 6 local "
              f"crops")
        for cache in (("warm", "cold") if args.cache == "both" else (args.cache,)):
            print(f"{cache} page cache:")
            drop = (lambda name: evict_from_page_cache(files[name])) if cache == "cold" else (lambda name: None)
            best = compare(loaders, [stream], drop, args.repeats)
            for name in best:
                print(f"{name}: {best[name][0]:.1f} images/s ({best[name][1]:.1f} per worker CPU second)")
            wall, cpu = best["shards"][0] / best["folder"][0], best["shards"][1] / best["folder"][1]
            wall_verdict, cpu_verdict = (verdict(r, 1.0, at_least=True, shown="1.0") for r in (wall, cpu))
            print(f"ratio shards/folder ({cache} cache): {wall:.2f} in images/s {wall_verdict}, "
                  f"{cpu:.2f} in images per CPU second {cpu_verdict}")
        raw_shards, raw_folder = decode_only(store, folder, args.repeats)
        print(f"read + decode only (no augmentation, one process, warm cache): shards {raw_shards:.0f}, "
              f"folder {raw_folder:.0f} images per CPU second, ratio {raw_shards / raw_folder:.2f}")
        print(f"shards per worker: {best['shards'][0]:.1f} images/s (one worker, {cache} cache, batch "
              f"{args.batch_size})")


if __name__ == "__main__":
    main()
