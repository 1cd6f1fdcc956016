"""Hostile stores: damage that keeps the format, values that pass the format, manifests of the wrong kind,
links out of the folder, file modes. Each is refused by every reader with one line naming file and field,
or skipped and counted under `--on-bad-row skip`; nothing already written is changed.

We run as root here, so tests about *reading* a file without permission would prove nothing; none are made.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from clasp.cli import main
from clasp.store import Manifest, ShardStore, StoreError, verify_store
from clasp.store.inspect import InspectConfig, inspect_store
from clasp.store.label_choices import DENSE_MODES, LABEL_PRECISIONS


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def rehash(root: Path) -> None:
    """Make the manifest agree with the shards' bytes again, so only the damage inside a shard is wrong."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["shards"]:
        shard = root / entry["file"]
        entry["bytes"] = shard.stat().st_size
        entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    path.write_text(json.dumps(data))


def set_values(shard: Path, name: str, row: int, value) -> None:
    with h5py.File(shard, "r+") as f:
        data = f[name][row]
        data[...] = value
        f[name][row] = data
    rehash(shard.parent)


def flip_jpeg_bytes(shard: Path, row: int = 1) -> None:
    """Flip bytes in the middle of one stored JPEG (HDF5 keeps vlen data uncompressed): the size stays."""
    with h5py.File(shard, "r") as f:
        jpeg = f["image"][row].tobytes()
    raw = bytearray(shard.read_bytes())
    at = raw.find(jpeg[len(jpeg) // 2:len(jpeg) // 2 + 64])
    assert at > 0 and raw.count(jpeg[len(jpeg) // 2:len(jpeg) // 2 + 64]) == 1
    for i in range(at, at + 8):
        raw[i] ^= 0x5A
    shard.write_bytes(bytes(raw))


def break_chunk(shard: Path, name: str) -> None:
    """Garbage in the middle of the first compressed chunk of dataset `name`; the manifest is rehashed."""
    with h5py.File(shard, "r") as f:
        info = f[name].id.get_chunk_info(0)
    raw = bytearray(shard.read_bytes())
    middle = info.byte_offset + info.size // 2
    raw[middle:middle + 16] = bytes(range(16))
    shard.write_bytes(bytes(raw))
    rehash(shard.parent)


# --------------------------------------------------------------------------- damage inside a shard


def test_flipped_jpeg_bytes_are_refused_by_inspect_show_and_named_by_verify(make_store, tmp_path):
    root = make_store([3, 3], hw=(32, 16))
    flip_jpeg_bytes(root / "shard-000001.h5")
    before = snapshot(root)
    for args in (["inspect", root], ["show", root, "--out", tmp_path / "sheet", "-n", "6"]):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1
        assert "error: " in result.stderr and "shard-000001.h5: sha256 mismatch" in result.stderr
    verify = run("verify", root)
    assert verify.exit_code == 1 and "BAD " in verify.stdout and "shard-000001.h5: sha256 mismatch" in verify.stdout
    assert snapshot(root) == before


@pytest.mark.parametrize("name", ["part_mask", "attr_logits"])
def test_a_chunk_that_does_not_decompress_is_one_line_not_a_traceback(make_store, tmp_path, name):
    root = make_store([4, 3], hw=(32, 16))
    break_chunk(root / "shard-000001.h5", name)
    before = snapshot(root)
    shallow = run("verify", root)  # the bytes match the manifest; reading its first row finds it
    assert shallow.exit_code == 1 and "stored chunk does not decode" in shallow.stdout
    result = run("inspect", root)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"shard-000001.h5: rows 0-2: {name}: stored chunk does not decode" in result.stderr
    skipped = inspect_store(InspectConfig(root, on_bad_row="skip"))
    assert skipped.images == 4 and skipped.bad_rows == 3 and "rows 0-2" in skipped.notes[0]
    deep = run("verify", "--deep", root)
    assert deep.exit_code == 1
    assert f"BAD {root / 'shard-000001.h5'}: row 0: {name}: stored chunk does not decode" in deep.stdout
    assert snapshot(root) == before


CASES = {
    "part_conf NaN": ("part_conf", np.nan, "part_conf: value nan outside [0, 1]"),
    "part_conf above 1": ("part_conf", 7.0, "part_conf: value 7 outside [0, 1]"),
    "part_mask outside the vocabulary": ("part_mask", 250, "part_mask: value 250 outside the vocabulary [0, 6)"),
    "attr_logits NaN": ("attr_logits", np.nan, "attr_logits: value nan is not finite"),
    "attr_logits inf": ("attr_logits", np.inf, "attr_logits: value inf is not finite"),
}


@pytest.mark.parametrize("case", CASES)
def test_values_that_pass_the_format_are_caught_by_inspect_show_and_verify_deep(make_store, tmp_path, case):
    name, value, problem = CASES[case]
    root = make_store([3, 3], hw=(32, 16))
    set_values(root / "shard-000000.h5", name, 2, value)
    before = snapshot(root)
    assert run("verify", root).exit_code == 0
    for args in (["inspect", root], ["show", root, "--out", tmp_path / "sheet", "-n", "6"]):
        result = run(*args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert f"shard-000000.h5: row 2: {problem}" in result.stderr
    deep = run("verify", "--deep", root)
    assert deep.exit_code == 1
    assert f"BAD {root / 'shard-000000.h5'}: row 2: {problem}" in deep.stdout
    assert f"checked {root / 'shard-000001.h5'}: 3 rows in " in deep.stdout
    # skip: the row is left out of the numbers and named
    summary = inspect_store(InspectConfig(root, on_bad_row="skip"))
    assert summary.images == 5 and summary.bad_rows == 1
    assert all(v.share <= 1 for g in summary.attributes for v in g.values)
    assert sum(v.images for v in summary.attributes[0].values) == 5
    text = run("inspect", "--on-bad-row", "skip", root)
    assert text.exit_code == 0 and "skipped 1 bad row" in text.stdout and "row 2" in text.stdout
    sheet = run("show", root, "--out", tmp_path / "sheet2", "-n", "6", "--on-bad-row", "skip")
    assert sheet.exit_code == 0 and "note: skipped 1 bad row" in sheet.stderr
    assert snapshot(root) == before


def test_verify_deep_passes_a_good_store_and_times_each_shard(make_store):
    root = make_store([3, 2], hw=(32, 16))
    result = run("verify", "--deep", root)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("checked ") == 2 and "ok: 2 shards, 5 rows" in result.stdout


def test_verify_deep_names_an_image_that_does_not_decode(make_store):
    root = make_store([3], hw=(32, 16))
    with h5py.File(root / "shard-000000.h5", "r+") as f:
        f["image"].id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(
            [np.frombuffer(f["image"][i].tobytes() if i != 1 else b"not a jpeg", np.uint8) for i in range(3)],
            dtype=f["image"].dtype))
    rehash(root)
    result = run("verify", "--deep", root)
    assert result.exit_code == 1
    assert "shard-000000.h5: row 1: image: does not decode" in result.stdout


# --------------------------------------------------------------------------- links out of the folder


def test_a_shard_that_links_out_of_the_folder_is_never_followed(make_store, tmp_path):
    root = make_store([3, 2], hw=(32, 16))
    outside = tmp_path / "secret.h5"
    (root / "shard-000001.h5").rename(outside)
    (root / "shard-000001.h5").symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link to .*secret.h5, outside the shard folder"):
        ShardStore.open(root)
    verify = run("verify", root)
    assert verify.exit_code == 1 and "outside the shard folder" in verify.stdout and "sha256" not in verify.stdout
    for args in (["inspect", root], ["show", root, "--out", tmp_path / "s"]):
        result = run(*args)
        assert result.exit_code == 2 and "shard-000001.h5: shard is a symbolic link" in result.stderr


def test_a_link_inside_the_folder_is_accepted_and_a_fifo_is_refused(make_store, tmp_path):
    root = make_store([3], hw=(32, 16))
    (root / "shard-000000.h5").rename(root / "real.h5")
    (root / "shard-000000.h5").symlink_to("real.h5")
    assert run("verify", root).exit_code == 0
    (root / "shard-000000.h5").unlink()
    os.mkfifo(root / "shard-000000.h5")
    result = run("verify", root)  # must not block reading the FIFO
    assert result.exit_code == 1 and "not a regular file" in result.stdout


# --------------------------------------------------------------------------- manifest fields


def change(root: Path, edit) -> Path:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


MANIFEST_CASES = {
    "rows 1e999": (lambda d: d["shards"][0].update(rows=1e999), "shards[0].rows: must be a whole number"),
    "rows 10**30": (lambda d: d["shards"][0].update(rows=10**30), "shards[0].rows: must be in [0, 2147483647]"),
    "bytes string": (lambda d: d["shards"][0].update(bytes="12"), "shards[0].bytes: must be a whole number"),
    "sha256 null": (lambda d: d["shards"][0].update(sha256=None), "shards[0].sha256: must be 64 lowercase hex"),
    "sha256 short": (lambda d: d["shards"][0].update(sha256="abc"), "shards[0].sha256: must be 64 lowercase hex"),
    "shard a string": (lambda d: d.update(shards=["shard-000000.h5"]), "shards[0]: must be an object"),
    "clip a string": (lambda d: d.update(clip="openai"), "clip: must be an object"),
    "image_store a list": (lambda d: d.update(image_store=[1]), "image_store: must be an object"),
    "hw 0 -5": (lambda d: d["image_store"].update(hw=[0, -5]), "image_store.hw[0]: must be in [1, 65535], got 0"),
    "grid fractional": (lambda d: d.update(label_grid=[16.5, 8]), "label_grid[0]: must be a whole number, got 16.5"),
    "grid three sizes": (lambda d: d.update(label_grid=[16, 8, 1]), "label_grid: must be [height, width]"),
    "grid finer than input": (lambda d: d.update(label_grid=[64, 8]), "label_grid: [64, 8] is finer than the CLIP input"),
    "shard_size inf": (lambda d: d.update(shard_size=float("inf")), "shard_size: must be a whole number"),
    "dense mode": (lambda d: d["clip"].update(dense_mode="magic"), "clip.dense_mode: unknown value 'magic'"),
    "precision": (lambda d: d["clip"].update(precision="fp8"), "clip.precision: unknown value 'fp8'"),
    "quality 1000": (lambda d: d["image_store"].update(quality=1000), "image_store.quality: must be in [1, 100]"),
    "input_hw bool": (lambda d: d["clip"].update(input_hw=[True, 16]), "clip.input_hw[0]: must be a whole number"),
    "skipped path": (lambda d: d.update(skipped=[{"path": 3, "reason": "x"}]), "skipped[0].path: must be a string"),
    "labeled_with": (lambda d: d.update(labeled_with={"batch_size": -1, "device": "cpu", "capability": "x",
                                                      "precision_requested": "auto"}),
                     "labeled_with.batch_size: must be in [1, 2147483647], got -1"),
    "vocab a list": (lambda d: d.update(vocab=[1]), "vocab: must be an object"),
}


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_manifest_fields_of_the_wrong_kind_or_size_are_one_line(make_store, tmp_path, case):
    edit, problem = MANIFEST_CASES[case]
    root = make_store([3], hw=(32, 16))
    path = change(root, edit)
    with pytest.raises(StoreError) as info:
        Manifest.load(root)
    assert str(info.value) == f"{path}: {problem}" or str(info.value).startswith(f"{path}: {problem}")
    for args, code, stream in ((["verify", root], 1, "stdout"), (["inspect", root], 2, "stderr"),
                               (["show", root, "--out", tmp_path / "s"], 2, "stderr")):
        result = run(*args)
        assert result.exit_code == code, (args, result.output, result.exception)
        assert problem in getattr(result, stream), (args, result.output)
        assert "Traceback" not in result.output


def test_the_store_knows_the_labelers_dense_modes_and_precisions():
    from clasp.labeling.dense_features import DENSE_MODES as LABELER_MODES

    assert LABELER_MODES is DENSE_MODES
    assert set(LABEL_PRECISIONS) == {"fp32", "bf16", "fp16"}


def test_a_written_manifest_still_loads(make_store):
    root = make_store([3, 0], hw=(32, 16))
    manifest = Manifest.load(root)
    assert [s.rows for s in manifest.shards] == [3, 0]
    assert Manifest.from_dict(manifest.to_dict(), "x").to_dict() == manifest.to_dict()
    older = {**manifest.to_dict(), "labeled_with": {}}
    older["image_store"].pop("quality")
    again = Manifest.from_dict(older, "x")
    assert again.labeled_with is None and again.image_store.quality == 95


# --------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_file_the_store_writes_gets_the_umask_mode(make_store, umask):
    old = os.umask(umask)
    try:
        root = make_store([2, 1], hw=(32, 16))
    finally:
        os.umask(old)
    for name in ("manifest.json", "shard-000000.h5", "shard-000001.h5"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o666 & ~umask, name
