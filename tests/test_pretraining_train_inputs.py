"""`clasp pretrain` on bad input: one line naming the file, exit 2, nothing in --out but the error log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import h5py
import pytest
from click.testing import CliRunner

from clasp.cli import main
from clasp.store import Manifest
from clasp.store.digest import file_sha256

FAST = ["--preset", "tiny", "--steps", "2", "--batch-size", "2", "--precision", "fp32", "--num-workers", "0"]


def refit_manifest(root: Path, shard: str) -> None:
    """After editing a shard in place, make the manifest agree with its bytes (so the shard's content is judged)."""
    manifest = Manifest.load(root)
    for entry in manifest.shards:
        if entry.file == shard:
            entry.bytes = (root / shard).stat().st_size
            entry.sha256 = file_sha256(root / shard)
    manifest.save(root)


def set_shard_attr(root: Path, name: str, value) -> None:
    with h5py.File(root / "shard-000001.h5", "r+") as f:
        f.attrs[name] = value
    refit_manifest(root, "shard-000001.h5")


def break_store(kind: str, root: Path) -> Path:
    """Damage a good store in one way; return the file the error must name."""
    shard = root / "shard-000001.h5"
    if kind == "missing folder":
        return root.parent / "no-such-folder"
    if kind == "empty folder":
        empty = root.parent / "empty"
        empty.mkdir()
        return empty / "manifest.json"
    if kind == "manifest does not parse":
        (root / "manifest.json").write_text('{"format": "clasp-shards", ')
        return root / "manifest.json"
    if kind == "missing shard":
        shard.unlink()
        return shard
    if kind == "truncated shard":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
        return shard
    if kind == "truncated shard, manifest refitted":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
        refit_manifest(root, shard.name)
        return shard
    if kind == "foreign vocabulary":
        set_shard_attr(root, "vocab_sha256", "0" * 64)
        return shard
    if kind == "unknown format version":
        set_shard_attr(root, "version", 7)
        return shard
    if kind == "label grid differs":
        data = json.loads((root / "manifest.json").read_text())
        data["label_grid"] = [4, 4]
        (root / "manifest.json").write_text(json.dumps(data))
        return root / "shard-000000.h5"
    if kind == "no rows":
        data = json.loads((root / "manifest.json").read_text())
        data["shards"] = []
        (root / "manifest.json").write_text(json.dumps(data))
        return root / "manifest.json"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "missing folder", "empty folder", "manifest does not parse", "missing shard", "truncated shard",
    "truncated shard, manifest refitted", "foreign vocabulary", "unknown format version", "label grid differs",
    "no rows",
])
def test_bad_store_exits_2_naming_the_file(kind: str, make_store: Callable[..., Path], tmp_path: Path) -> None:
    root = make_store([3, 3], grid=(8, 4), hw=(64, 32))
    named = break_store(kind, root)
    shards = named.parent if named.name == "manifest.json" and kind == "empty folder" else (
        named if kind == "missing folder" else root)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["pretrain", "--shards", str(shards), "--out", str(out), *FAST])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0], result.output
    assert sorted(p.name for p in out.iterdir()) == ["error.log"]
    assert str(named) in (out / "error.log").read_text()


def test_bad_settings_exit_2(make_store: Callable[..., Path], tmp_path: Path) -> None:
    root = make_store([3], grid=(8, 4), hw=(64, 32))
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\nmoe_experts: 3\n")
    result = CliRunner().invoke(main, ["pretrain", "--shards", str(root), "--out", str(tmp_path / "run"),
                                       "--config", str(config)])
    assert result.exit_code == 2 and "'moe_experts'" in result.output and str(config) in result.output
    fp16 = CliRunner().invoke(main, ["pretrain", "--shards", str(root), "--out", str(tmp_path / "run2"), *FAST,
                                     "--precision", "fp16"])
    assert fp16.exit_code == 2 and "fp16" in fp16.output and "Traceback" not in fp16.output
    assert sorted(p.name for p in (tmp_path / "run2").iterdir()) == ["error.log"]


def test_run_folder_of_another_run_is_refused(make_store: Callable[..., Path], tmp_path: Path) -> None:
    root = make_store([3], grid=(8, 4), hw=(64, 32))
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["pretrain", "--shards", str(root), "--out", str(out), *FAST])
    assert result.exit_code == 2 and "holds another run" in result.output and str(out) in result.output
    assert (out / "config.json").read_text() == "{}"
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["pretrain", "--shards", str(root), "--out", str(stranger), *FAST])
    assert result.exit_code == 2 and "not empty and not a clasp run" in result.output
