"""`clasp label` refuses model folders it did not fully load, skips images whose size the store cannot
record (and labels the rest), rebuilds shards that `verify` rejects, and refuses a folder it cannot use
before loading the CLIP, leaving nothing behind."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.store import Manifest, verify_store
from clasp.store.digest import file_sha256
from tests.conftest import one_error_line, snapshot

CLIP_SIZE = "64x32"


def png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def label(images: Path, out: Path, clip: Path | str, *extra: str):
    return CliRunner().invoke(main, ["label", "--images", str(images), "--out", str(out), "--clip-model", str(clip),
                                     "--clip-size", CLIP_SIZE, *extra])


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        (folder / f"p{i}.png").write_bytes(png(32, 64, i))
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert") / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         vocab_size=100)).save_pretrained(folder)
    return folder


def test_a_folder_that_is_not_a_clip_is_refused_by_its_config(images, tmp_path, bert_dir):
    out = tmp_path / "shards"
    line = one_error_line(label(images, out, bert_dir, "--clip-size", "448x224"), 2)
    assert f"cannot load CLIP model '{bert_dir}'" in line and "model_type 'bert'" in line
    assert not out.exists()  # nothing written, not even the lock's folder


def test_a_clip_folder_missing_its_vision_weights_is_refused(images, tmp_path, tiny_clip_dir):
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, damaged)
    weights = load_file(damaged / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.")}, damaged / "model.safetensors",
              metadata={"format": "pt"})
    vision = sum(k.startswith("vision_model.") for k in weights)
    out = tmp_path / "shards"
    line = one_error_line(label(images, out, damaged), 2)
    assert f"{vision} weights missing in the folder's checkpoint: vision_model." in line
    assert not out.exists()


def test_a_side_longer_than_the_store_records_is_skipped_and_the_rest_is_labeled(images, tmp_path, tiny_clip_dir):
    (images / "strip.png").write_bytes(png(70_000, 20, 9))  # 1.4 megapixels: under the pixel limit
    out = tmp_path / "shards"
    for _ in range(2):  # and the rerun finishes too, keeping the shard
        result = label(images, out, tiny_clip_dir, "--shard-size", "8")
        assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.total_rows == 4
    (skip,) = manifest.skipped
    assert skip.path == "strip.png" and "70000x20" in skip.reason and "up to 65535" in skip.reason
    assert verify_store(out).ok


def test_a_rerun_rebuilds_a_shard_that_verify_rejects_even_when_its_checksum_was_rewritten(
        images, tmp_path, tiny_clip_dir):
    out = tmp_path / "shards"
    assert label(images, out, tiny_clip_dir, "--shard-size", "2").exit_code == 0
    good = (out / "shard-000001.h5").read_bytes()
    impostor = tmp_path / "impostor.h5"  # an HDF5 file, but not a shard of this store
    import h5py
    with h5py.File(impostor, "w") as f:
        f["x"] = np.arange(10)
    shutil.copy(impostor, out / "shard-000000.h5")
    data = json.loads((out / "manifest.json").read_text())
    entry = data["shards"][0]
    entry["bytes"], entry["sha256"] = impostor.stat().st_size, file_sha256(impostor)
    (out / "manifest.json").write_text(json.dumps(data))
    assert [p.path.name for p in verify_store(out).problems] == ["shard-000000.h5"]
    result = label(images, out, tiny_clip_dir, "--shard-size", "2")
    assert result.exit_code == 0, result.output
    assert "(1 written, 1 kept)" in result.output
    assert verify_store(out).ok and (out / "shard-000001.h5").read_bytes() == good


def test_a_folder_of_other_files_is_refused_before_the_clip_is_loaded_and_keeps_no_lock(images, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    line = one_error_line(label(images, out, tmp_path / "no-such-clip"), 2)  # the CLIP would fail to load too
    assert "--out is a folder with other files" in line
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_out_that_cannot_be_a_folder_is_one_line_exit_2(images, tmp_path, tiny_clip_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(label(images, blocker / "shards", tiny_clip_dir), 2)
    assert f"{blocker / 'shards'}: cannot write to this folder" in line


def _damaged_vocab(damage: str) -> dict:
    from clasp.store import Vocabulary

    data = Vocabulary.default().to_dict()
    group = data["attributes"][0]
    if damage == "duplicate value":
        group["values"].append(dict(group["values"][0]))
    elif damage == "prompts as a string":
        data["parts"][1]["prompts"] = "a photo of a head"
    elif damage == "empty prompt":
        group["values"][1]["prompts"] = ["a person", "  "]
    return data


@pytest.mark.parametrize("damage, needle", [
    ("duplicate value", "lists the value {value!r} more than once"),
    ("prompts as a string", "part {part!r}: prompts must be a list of strings, got str 'a photo of a head'"),
    ("empty prompt", "attribute {group}={second}: prompt 1 is empty"),
])
def test_a_vocabulary_with_a_repeated_value_or_bad_prompts_is_refused(images, tmp_path, damage, needle):
    data = _damaged_vocab(damage)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(data))
    group = data["attributes"][0]
    needle = needle.format(value=group["values"][0]["name"], part=data["parts"][1]["name"], group=group["group"],
                           second=group["values"][1]["name"])
    out = tmp_path / "shards"
    line = one_error_line(label(images, out, tmp_path / "no-clip-needed", "--vocab", str(vocab)), 2)
    assert line.startswith(f"error: {vocab}: ") and needle in line, line
    assert not out.exists()


@pytest.mark.parametrize("option", ["--images", "--out"])
def test_a_url_for_images_or_out_is_refused_naming_it(images, tmp_path, option):
    url = "s3://bucket/shards"
    args = {"--images": images, "--out": tmp_path / "shards", option: url}
    result = CliRunner().invoke(main, ["label", "--images", str(args["--images"]), "--out", str(args["--out"]),
                                       "--clip-model", str(tmp_path / "no-clip-needed")])
    line = one_error_line(result, 2)
    assert line.startswith(f"error: {option} {url}: clasp label reads and writes local folders")
    assert not (tmp_path / "shards").exists() and not Path("s3:").exists()
