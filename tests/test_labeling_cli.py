"""`clasp label` end to end through the command line, with the bundled tiny CLIP.

Covers what a user meets: bad and unusual inputs, one-line errors, `--strict`,
`kill -9` and resume, damaged shards, added images, and a dask run.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.store import Manifest, ShardStore

CLIP_SIZE = "64x32"  # a 4x2 label grid: the code path of 448x224, a fraction of the compute


def save(path: Path, image: Image.Image, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kw)


def person(seed: int, hw: tuple[int, int] = (160, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))


def make_people(folder: Path, names: list[str], seed: int = 0) -> None:
    for i, name in enumerate(names):
        save(folder / name, person(seed + i), "JPEG", quality=90)


def label(*args: str | Path, expect: int | None = 0):
    result = CliRunner().invoke(main, ["label", *map(str, args)])
    if expect is not None:
        assert result.exit_code == expect, (result.output, result.stderr, result.exception)
    return result


def read_rows(root: Path) -> list[tuple]:
    store = ShardStore.open(root, verify=True)
    rows = []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            r = shard.read()
            rows += [(r.path[i], r.key[i], r.part_mask[i].tobytes(), r.attr_logits[i].tobytes(), r.image[i])
                     for i in range(len(r))]
    return rows


def shard_ids(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of each shard file: a rewritten shard gets a new inode (atomic rename)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.glob("shard-*.h5"))}


# --------------------------------------------------------------------------- bad and unusual inputs

GOOD = ["cam1/p0.jpg", "cam1/p1.png", "cam2/p2.webp", "cam2/p3.BMP", "weird/cmyk.jpg", "weird/gray16.png",
        "weird/huge.jpg", "weird/palette.png", "weird/rgba.png", "weird/rotated.jpg", "ünïcødé/Łódź 写真.jpg"]
BAD = {"bad/corrupt.png": "cannot decode", "bad/empty.jpg": "empty file (0 bytes)", "bad/notes.jpg": "not an image",
       "bad/truncated.jpg": "truncated", "weird/tiny.png": "too small: 5x3"}


def corrupt_pixel_data(png: bytes) -> bytes:
    """Garbage inside the compressed pixel data of a PNG, with its checksum fixed up."""
    data = bytearray(png)
    at = data.index(b"IDAT")
    size = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 104:at + 404] = bytes(range(256)) + bytes(44)
    data[at + 4 + size:at + 8 + size] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 4 + size])))
    return bytes(data)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    save(root / "cam1/p0.jpg", person(0), "JPEG", quality=90)
    save(root / "cam1/p1.png", person(1), "PNG")
    save(root / "cam2/p2.webp", person(2), "WEBP")
    save(root / "cam2/p3.BMP", person(3), "BMP")
    save(root / "weird/cmyk.jpg", person(4).convert("CMYK"), "JPEG")
    save(root / "weird/gray16.png", Image.fromarray(np.full((120, 60), 50000, np.uint16)), "PNG")
    save(root / "weird/huge.jpg", Image.new("L", (8000, 8000), 100), "JPEG", quality=75)
    save(root / "weird/palette.png", person(5).convert("P"), "PNG")
    rgba = np.zeros((120, 60, 4), np.uint8)
    rgba[:60] = (250, 0, 0, 255)
    save(root / "weird/rgba.png", Image.fromarray(rgba, "RGBA"), "PNG")
    landscape = np.zeros((80, 160, 3), np.uint8)
    landscape[:, :80] = 255  # the left half is white; rotated clockwise it is the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    save(root / "weird/rotated.jpg", Image.fromarray(landscape), "JPEG", quality=95, exif=exif.tobytes())
    save(root / "ünïcødé/Łódź 写真.jpg", person(6), "JPEG")
    save(root / "weird/tiny.png", Image.new("RGB", (5, 3), (9, 9, 9)), "PNG")
    (root / "bad").mkdir()
    (root / "bad/empty.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    person(7).save(jpeg, "JPEG")
    (root / "bad/truncated.jpg").write_bytes(jpeg.getvalue()[:1500])
    png = io.BytesIO()
    person(8).save(png, "PNG")
    (root / "bad/corrupt.png").write_bytes(corrupt_pixel_data(png.getvalue()))
    (root / "bad/notes.jpg").write_text("meeting notes, not a photo")
    return root


def test_mixed_inputs_are_labeled_or_skipped_with_reasons(mixed_folder: Path, tmp_path: Path,
                                                          tiny_clip_dir: Path) -> None:
    out = tmp_path / "shards"
    result = label("--images", mixed_folder, "--out", out, "--clip-model", tiny_clip_dir,
                   "--clip-size", CLIP_SIZE, "--shard-size", "4", "--batch-size", "3")
    assert "labeled 11 images (11 this run), skipped 5, shards 4 (4 written, 0 kept)" in result.output
    manifest = Manifest.load(out)
    assert sorted(manifest.skipped, key=lambda s: s.path) == manifest.skipped
    assert [s.path for s in manifest.skipped] == sorted(BAD)
    for s in manifest.skipped:
        assert BAD[s.path] in s.reason, (s.path, s.reason)
    assert manifest.to_dict()["totals"] == {"rows": 11, "skipped": 5}
    assert manifest.label_grid == (4, 2) and manifest.clip.input_hw == (64, 32)

    store = ShardStore.open(out, verify=True)
    rows = {}
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            r = shard.read()
            for i in range(len(r)):
                rows[r.path[i]] = (r.orig_hw[i].tolist(), np.asarray(Image.open(io.BytesIO(r.image[i]))),
                                   r.part_mask[i], r.attr_logits[i])
    assert sorted(rows) == sorted(GOOD)
    assert rows["weird/huge.jpg"][0] == [8000, 8000]
    assert rows["weird/rotated.jpg"][0] == [160, 80]
    rotated = rows["weird/rotated.jpg"][1]
    assert rotated.shape == (256, 128, 3) and rotated[:120].mean() > 240 and rotated[-120:].mean() < 15
    assert rows["weird/rgba.png"][1][-100:].mean() > 245  # transparent part composited on white
    assert abs(rows["weird/gray16.png"][1].mean() - 50000 / 257) < 3
    for path, (_, image, mask, logits) in rows.items():
        assert image.shape == (256, 128, 3) and mask.max() < manifest.vocab.num_parts
        assert np.isfinite(logits.astype(np.float32)).all() and np.abs(logits.astype(np.float32)).sum() > 0

    # --strict on the same folder keeps every shard and fails in one line naming the first skipped file
    # and where the others are listed.
    strict = label("--images", mixed_folder, "--out", out, "--clip-model", tiny_clip_dir, "--clip-size", CLIP_SIZE,
                   "--shard-size", "4", "--strict", expect=1)
    assert "shards 4 (0 written, 4 kept)" in strict.output
    (line,) = [l for l in strict.stderr.splitlines() if l.startswith("error: ")]
    first = Manifest.load(out).skipped[0]
    assert line == (f"error: 5 inputs skipped (--strict), the first {first.path} ({first.reason}); "
                    f"`clasp inspect {out}` lists them by reason, its manifest.json each one")
    assert sorted(s.path for s in Manifest.load(out).skipped) == sorted(BAD)
    assert "Traceback" not in strict.output + strict.stderr


def test_one_line_errors_exit_2(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = tmp_path / "images"
    make_people(images, ["a.jpg"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (["--images", tmp_path / "missing", "--out", tmp_path / "o1"], "images folder does not exist"),
        (["--images", tmp_path / "empty", "--out", tmp_path / "o2"], "no images found"),
        (["--images", tmp_path / "file", "--out", tmp_path / "o3"], "must be a folder"),
        (["--images", images, "--out", tmp_path / "file"], "--out must be a folder, this is a file"),
        (["--images", images, "--out", tmp_path / "o4", "--clip-model", tmp_path / "no-such-clip"],
         "cannot load CLIP model"),
        (["--images", images, "--out", tmp_path / "o5", "--dense-mode", "fancy"], "'fancy' is not one of"),
    ]
    for args, words in cases:
        if "--clip-model" not in args:
            args = [*args, "--clip-model", tiny_clip_dir]
        result = label(*args, "--clip-size", CLIP_SIZE, expect=2)
        lines = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
        assert len(lines) == 1 and words in lines[0], result.stderr
        assert "Traceback" not in result.stderr and result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o4" / "manifest.json").exists()


# --------------------------------------------------------------------------- interruption and repair

SLOW_CLI = """
import sys, time
import clasp.labeling.shard_worker as worker
write = worker.write_shard_for
def slow_write(*args, **kwargs):
    time.sleep(0.7)
    return write(*args, **kwargs)
worker.write_shard_for = slow_write
from clasp.cli import main
main(prog_name="clasp")
"""


def run_until_first_shard_then_kill(args: list[str], out: Path) -> int:
    """Start `clasp label` (each shard write slowed down), kill -9 it once a shard is in the manifest."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "label", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((out / "manifest.json").read_text())["shards"]:
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    return len(json.loads((out / "manifest.json").read_text())["shards"])


def test_kill_9_then_rerun_finishes_only_missing_shards(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = tmp_path / "images"
    make_people(images, [f"cam{i % 2}/{i:03d}.jpg" for i in range(10)])
    (images / "cam0/zero.jpg").write_bytes(b"")
    common = ["--images", str(images), "--clip-model", str(tiny_clip_dir), "--clip-size", CLIP_SIZE,
              "--shard-size", "3", "--batch-size", "2"]
    reference = tmp_path / "reference"
    label(*common, "--out", reference)

    out = tmp_path / "interrupted"
    recorded = run_until_first_shard_then_kill([*common, "--out", str(out)], out)
    assert 1 <= recorded < 4
    kept = shard_ids(out)
    listed = [s.file for s in Manifest.load(out).shards]
    result = label(*common, "--out", out)
    assert f"shards 4 ({4 - recorded} written, {recorded} kept)" in result.output
    after = shard_ids(out)
    for name in listed:
        assert after[name] == kept[name]  # finished shards were not touched
    assert set(after) == {f"shard-00000{i}.h5" for i in range(4)}
    assert not list(out.glob("*.tmp"))
    assert read_rows(out) == read_rows(reference)
    assert Manifest.load(out).skipped == Manifest.load(reference).skipped  # recorded once, not twice


def test_damaged_shards_are_reported_and_rebuilt_and_new_images_redo_only_affected_shards(
        tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = tmp_path / "images"
    make_people(images, [f"cam1/{i:03d}.jpg" for i in range(8)])
    out = tmp_path / "shards"
    common = ["--images", images, "--out", out, "--clip-model", tiny_clip_dir, "--clip-size", CLIP_SIZE,
              "--shard-size", "3"]
    label(*common)
    original = read_rows(out)

    (out / "shard-000000.h5").unlink()
    damaged = out / "shard-000002.h5"
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    verify = CliRunner().invoke(main, ["verify", str(out)])
    assert verify.exit_code == 1
    bad = [line for line in verify.output.splitlines() if line.startswith("BAD")]
    assert len(bad) == 2 and "shard-000000.h5" in bad[0] and "shard-000002.h5" in bad[1]

    before = shard_ids(out)
    result = label(*common)
    assert "shards 3 (2 written, 1 kept)" in result.output
    assert shard_ids(out)["shard-000001.h5"] == before["shard-000001.h5"]
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
    assert read_rows(out) == original

    # A new camera sorts after cam1: the last shard (2 images, room for 1) and one new shard change.
    before = shard_ids(out)
    make_people(images, ["cam2/a.jpg", "cam2/b.jpg"], seed=100)
    result = label(*common)
    assert "labeled 10 images (4 this run)" in result.output and "shards 4 (2 written, 2 kept)" in result.output
    after = shard_ids(out)
    assert after["shard-000000.h5"] == before["shard-000000.h5"]
    assert after["shard-000001.h5"] == before["shard-000001.h5"]
    assert after["shard-000002.h5"] != before["shard-000002.h5"]
    rows = read_rows(out)
    assert rows[:8] == original and [r[0] for r in rows[8:]] == ["cam2/a.jpg", "cam2/b.jpg"]

    # An image that sorts first shifts every shard: all are redone.
    make_people(images, ["cam0/first.jpg"], seed=200)
    assert "shards 4 (4 written, 0 kept)" in label(*common).output


def test_dask_workers_give_the_same_shards_as_in_process(tmp_path: Path, tiny_clip_dir: Path) -> None:
    images = tmp_path / "images"
    make_people(images, [f"cam{i % 3}/{i:03d}.jpg" for i in range(7)])
    (images / "cam0/broken.jpg").write_text("no")
    common = ["--images", images, "--clip-model", tiny_clip_dir, "--clip-size", CLIP_SIZE, "--shard-size", "3"]
    # Each dask worker here runs torch on one core; so does the in-process run, because
    # summation order (and so the last bits of a float) may depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        label(*common, "--out", tmp_path / "local", "--workers", "0")
    finally:
        torch.set_num_threads(threads)
    result = label(*common, "--out", tmp_path / "dask", "--workers", "2")
    assert "labeled 7 images (7 this run), skipped 1, shards 3 (3 written, 0 kept)" in result.output
    assert read_rows(tmp_path / "dask") == read_rows(tmp_path / "local")
    # Softmax probabilities may still differ in their last float16 bit between
    # processes (library state left by other work in this one), so compare them
    # to a tolerance rather than comparing whole-file hashes.
    dask_conf, local_conf = part_confidences(tmp_path / "dask"), part_confidences(tmp_path / "local")
    assert dask_conf.shape == local_conf.shape == (7, 4, 2)
    assert np.abs(dask_conf - local_conf).max() <= 1e-3
    local, dask = Manifest.load(tmp_path / "local"), Manifest.load(tmp_path / "dask")
    assert [s.rows for s in dask.shards] == [s.rows for s in local.shards] == [3, 2, 2]
    assert dask.skipped == local.skipped and len(dask.skipped) == 1


def part_confidences(root: Path) -> np.ndarray:
    store = ShardStore.open(root)
    parts = []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            parts.append(shard.read(fields=("part_conf",)).part_conf.astype(np.float32))
    return np.concatenate(parts)


@pytest.mark.slow
def test_existing_scheduler_and_kill_9_of_a_dask_run(tmp_path: Path, tiny_clip_dir: Path) -> None:
    """The bigger variants: `--scheduler` on a running cluster, and kill -9 of a `--workers 2` run."""
    from distributed import LocalCluster

    images = tmp_path / "images"
    make_people(images, [f"cam{i % 4}/{i:04d}.jpg" for i in range(40)])
    common = ["--images", str(images), "--clip-model", str(tiny_clip_dir), "--clip-size", "448x224",
              "--shard-size", "6", "--batch-size", "4"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        label(*common, "--out", tmp_path / "reference")
    finally:
        torch.set_num_threads(threads)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        label(*common, "--out", tmp_path / "external", "--scheduler", cluster.scheduler_address)
    assert read_rows(tmp_path / "external") == read_rows(tmp_path / "reference")

    out = tmp_path / "interrupted"
    recorded = run_until_first_shard_then_kill([*common, "--workers", "2", "--out", str(out)], out)
    assert 1 <= recorded < 7
    result = label(*common, "--workers", "2", "--out", out)
    assert f"({7 - recorded} written, {recorded} kept)" in result.output
    assert read_rows(out) == read_rows(tmp_path / "reference")
