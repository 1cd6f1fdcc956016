"""The synthetic person world: layout, determinism, masks aligned with the drawing, consistent truth."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.datasets.synth import SynthConfig, synthesize
from clasp.datasets.synth.identities import COLOURS
from clasp.datasets.truth import SynthTruth


def _world(root: Path, seed: int) -> Path:
    synthesize(SynthConfig(root, identities=4, images_per_id=3, cameras=2, seed=seed))
    return root


def _masks(root: Path) -> np.ndarray:
    with h5py.File(root / "truth" / "parts.h5", "r") as f:
        return f["part_mask"][:]


def test_layout_cameras_and_image_size(synth_world: Path) -> None:
    truth = SynthTruth.load(synth_world)
    assert len(truth) == 8 * 6
    for path, pid, cam in zip(truth.paths, truth.identity, truth.camera):
        n = int(path.split("_")[-1][:3])
        assert cam == (pid + n) % 3
        assert path == f"c{cam}/{pid:04d}_c{cam}_{n:03d}.jpg"
        with Image.open(synth_world / "images" / path) as im:
            assert (im.format, im.size, im.mode) == ("JPEG", (128, 256), "RGB")
    # every identity is seen by at least two cameras, so re-ID has cross-camera matches
    for pid in range(8):
        assert len(set(truth.camera[truth.identity == pid])) >= 2
    assert _masks(synth_world).shape == (48, 256, 128)


def test_same_seed_same_files_other_seed_different(tmp_path: Path) -> None:
    a, b, c = _world(tmp_path / "a", 3), _world(tmp_path / "b", 3), _world(tmp_path / "c", 4)
    files = sorted(p.relative_to(a) for p in (a / "images").rglob("*.jpg"))
    assert len(files) == 12
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "truth" / "annotations.jsonl").read_text() == (b / "truth" / "annotations.jsonl").read_text()
    assert np.array_equal(_masks(a), _masks(b))
    differing = sum((a / rel).read_bytes() != (c / rel).read_bytes() for rel in files)
    assert differing == len(files)
    assert not np.array_equal(_masks(a), _masks(c))


def test_parts_are_where_a_body_has_them(synth_world: Path, vocab) -> None:
    truth = SynthTruth.load(synth_world)
    masks = truth.read_masks()
    names = vocab.part_names
    notes = [json.loads(line) for line in (synth_world / "truth" / "annotations.jsonl").read_text().splitlines()]
    rows = np.arange(256)[:, None]
    checked = 0
    for mask, note in zip(masks, notes):
        if note["occluded"]:
            continue
        present = set(np.unique(mask).tolist())
        assert present == set(range(len(names))), f"{note['path']} lacks parts {set(range(len(names))) - present}"
        centre = {names[k]: float((rows * (mask == k)).sum() / (mask == k).sum()) for k in range(1, len(names))}
        assert centre["head"] < centre["upper body"] < centre["lower body"] < centre["feet"]
        # the person covers a plausible share of the image, the background the rest
        person = (mask > 0).mean()
        assert 0.08 < person < 0.5
        checked += 1
    assert checked >= 30


def test_mask_aligned_with_the_drawn_colours(tmp_path: Path, vocab) -> None:
    """Where the mask says 'upper body' the image has the identity's shirt colour."""
    root = tmp_path / "w"
    synthesize(SynthConfig(root, identities=40, images_per_id=1, cameras=2, seed=2))
    truth = SynthTruth.load(root)
    masks = truth.read_masks()
    upper = vocab.part_names.index("upper body")
    dominant = {"red": 0, "green": 1, "blue": 2}
    checked = 0
    for i, attrs in enumerate(truth.attributes):
        colour = attrs["upper-body colour"]
        if colour not in dominant or attrs["backpack"] == "yes" or attrs["bag"] == "yes":
            continue
        with Image.open(truth.images_dir / truth.paths[i]) as im:
            pixels = np.asarray(im, np.float32)[masks[i] == upper]
        assert len(pixels) > 200
        assert int(pixels.mean(0).argmax()) == dominant[colour], (truth.paths[i], colour, pixels.mean(0))
        checked += 1
    assert checked >= 3
    colours = {v.name for g in vocab.attributes if g.group == "upper-body colour" for v in g.values}
    assert set(COLOURS) == colours


def test_attributes_fixed_per_identity_and_in_the_vocabulary(synth_world: Path, vocab) -> None:
    truth = SynthTruth.load(synth_world)
    world = json.loads((synth_world / "truth" / "world.json").read_text())
    allowed = {g.group: {v.name for v in g.values} for g in vocab.attributes}
    for pid in range(8):
        rows = [a for a, i in zip(truth.attributes, truth.identity) if i == pid]
        assert all(r == rows[0] for r in rows)
        assert rows[0] == world["identity_attributes"][str(pid)]
        assert set(rows[0]) == set(allowed)
        assert all(rows[0][g] in allowed[g] for g in allowed)
    assert world["vocab_sha256"] == vocab.sha256
    # value indices follow the vocabulary's order
    idx = truth.attribute_indices(vocab)
    g = [x.group for x in vocab.attributes].index("lower-body type")
    names = [v.name for v in vocab.attributes[g].values]
    assert [names[k] for k in idx[:, g]] == [a["lower-body type"] for a in truth.attributes]


def test_attributes_vary_across_identities(tmp_path: Path) -> None:
    root = tmp_path / "w"
    synthesize(SynthConfig(root, identities=60, images_per_id=1, cameras=1, seed=1))
    truth = SynthTruth.load(root)
    for group in ("gender", "age", "lower-body type", "backpack", "hat"):
        values = {a[group] for a in truth.attributes}
        assert len(values) >= 2, group


def test_synth_command(tmp_path: Path) -> None:
    out = tmp_path / "world"
    result = CliRunner().invoke(main, ["synth", "--out", str(out), "--identities", "3", "--images-per-id", "2",
                                       "--cameras", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 images of 3 identities from 2 cameras" in result.output
    assert len(list((out / "images").rglob("*.jpg"))) == 6
    assert len((out / "truth" / "annotations.jsonl").read_text().splitlines()) == 6


def test_truth_reader_rejects_folder_without_truth(tmp_path: Path) -> None:
    from clasp.datasets.errors import DatasetError

    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="truth/annotations.jsonl missing"):
        SynthTruth.load(tmp_path)
