"""`clasp label` against hostile inputs and a hostile disk: file names that are not UTF-8 are labeled
under an escaped name; a full disk ends the run with one line and exit 1, keeping what was finished."""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.labeling.discover import discover_images, recorded_path
from clasp.store import Manifest, ShardStore, verify_store

CLIP_SIZE = "64x32"


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def label(images: Path, out: Path, clip: Path, *extra: str):
    return CliRunner().invoke(main, ["label", "--images", str(images), "--out", str(out), "--clip-model", str(clip),
                                     "--clip-size", CLIP_SIZE, *extra])


def stored_paths(root: Path) -> list[str]:
    store = ShardStore.open(root, verify=True)
    paths = []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            paths += shard.read(fields=("path",)).path
    return paths


def test_recorded_path_escapes_only_bytes_that_are_not_utf8():
    assert recorded_path("ünïcødé/Łódź 写真.jpg") == "ünïcødé/Łódź 写真.jpg"
    assert recorded_path(os.fsdecode(b"cam1/caf\xe9.png")) == "cam1/caf\\xe9.png"
    assert recorded_path(os.fsdecode(b"\xff\xfe.jpg")) == "\\xff\\xfe.jpg"


def test_names_that_are_not_utf8_are_labeled_and_recorded_escaped(tmp_path, tiny_clip_dir):
    images = tmp_path / "images"
    (images / "cam1").mkdir(parents=True)
    raw = os.fsencode(images)
    (images / "cam1" / "plain.jpg").write_bytes(jpeg(0))
    with open(raw + b"/cam1/caf\xe9.png", "wb") as f:  # Latin-1 bytes: not UTF-8
        f.write(jpeg(1))
    with open(raw + b"/broken\xff.jpg", "wb") as f:  # and one that is skipped, to reach the manifest
        f.write(b"")
    assert [f.path for f in discover_images(images)] == ["broken\\xff.jpg", "cam1/caf\\xe9.png", "cam1/plain.jpg"]
    out = tmp_path / "shards"
    result = label(images, out, tiny_clip_dir)
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(stored_paths(out)) == ["cam1/caf\\xe9.png", "cam1/plain.jpg"]
    manifest = Manifest.load(out)
    assert [(s.path, s.reason) for s in manifest.skipped] == [("broken\\xff.jpg", "empty file (0 bytes)")]
    assert verify_store(out).ok
    again = label(images, out, tiny_clip_dir)  # the escaped names are stable: a rerun keeps the shard
    assert again.exit_code == 0 and "(0 this run)" in again.stdout


class FullDisk(h5py.File):
    """An HDF5 file whose flush fails as h5py reports a full disk (errno only in the text)."""

    def flush(self):
        if Path(self.filename).name.startswith("shard-000001"):
            raise OSError("Can't write data (file write failed: time = Mon Nov 30, filename = "
                          f"'{self.filename}', file descriptor = 7, errno = 28, error message = "
                          "'No space left on device', buf = 0x1, total write size = 4096)")
        super().flush()


def test_disk_full_is_one_line_exit_1_and_finished_shards_stay(tmp_path, tiny_clip_dir, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"p{i}.jpg").write_bytes(jpeg(i))
    out = tmp_path / "shards"
    monkeypatch.setattr(h5py, "File", FullDisk)
    result = label(images, out, tiny_clip_dir, "--shard-size", "1")
    assert result.exit_code == 1, (result.output, result.exception)
    last = result.stderr.rstrip("\n").split("\n")[-1]  # after the progress bar
    assert result.stderr.count("error:") == 1
    assert last.startswith(f"error: {out / 'shard-000001.h5'}: cannot write the shard: no space left on device")
    assert "Traceback" not in result.output
    monkeypatch.undo()
    manifest = Manifest.load(out)
    assert [s.file for s in manifest.shards] == ["shard-000000.h5"]
    finished = (out / "shard-000000.h5").read_bytes()
    assert verify_store(out).ok
    assert not list(out.glob("*.tmp"))
    rerun = label(images, out, tiny_clip_dir, "--shard-size", "1")
    assert rerun.exit_code == 0 and "(2 written, 1 kept)" in rerun.stdout
    assert (out / "shard-000000.h5").read_bytes() == finished
