"""The labeling run's bookkeeping (plan, rerun, skips, refusal), with a stand-in labeler.

The stand-in computes labels from the pixels it is given, so a test can tell
which images were labeled and that rows match their files. End-to-end runs with
the real CLIP labeler live in test_labeling_cli.py.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clasp.labeling.errors import LabelingError
from clasp.hardware import probe_capability, resolve_precision
from clasp.labeling.plan import inputs_digest, plan_shards
from clasp.labeling.discover import discover_images
from clasp.labeling.run import LabelConfig, run_labeling
from clasp.labeling.config import ClipLabelerConfig
from clasp.store import ClipInfo, LabeledWith, Manifest, ShardStore, verify_store

GRID = (4, 2)


class MeanColourLabeler:
    """Part index = brightness bucket of each grid cell; attribute logits = per-channel means."""

    def __init__(self, spec: ClipLabelerConfig) -> None:
        self.spec = spec
        self.label_grid = GRID
        self.precision_choice = resolve_precision(spec.precision, probe_capability("cpu"))
        self.clip_info = ClipInfo(spec.clip_model, spec.revision, tuple(spec.clip_size), spec.dense_mode,
                                  self.precision_choice.precision)
        self.calls = 0

    def preprocess(self, images: list[Image.Image]) -> np.ndarray:
        return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])

    def label(self, pixels: np.ndarray):
        self.calls += 1
        n, h, w, _ = pixels.shape
        cells = pixels.reshape(n, GRID[0], h // GRID[0], GRID[1], w // GRID[1], 3).mean(axis=(2, 4, 5))
        parts = self.spec.vocab.num_parts
        mask = np.minimum((cells * parts).astype(np.uint8), parts - 1)
        logits = np.zeros((n, self.spec.vocab.num_attributes), np.float16)
        logits[:, :3] = pixels.mean(axis=(1, 2))
        return mask, cells.astype(np.float16), logits


def write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 64), (value, value // 2, 255 - value)).save(path, "PNG")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    for i in range(7):
        write_image(images / f"cam{i % 2}" / f"{i:03d}.png", 30 * i)
    (images / "cam0" / "broken.jpg").write_bytes(b"not a jpeg")
    return images


@pytest.fixture
def config(folder: Path, tmp_path: Path) -> LabelConfig:
    return LabelConfig(images=folder, out=tmp_path / "shards", clip_model="stand-in", clip_size=(64, 32),
                       shard_size=3, batch_size=2, progress=False)


def read_all(root: Path):
    store = ShardStore.open(root, verify=True)
    rows = []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            r = shard.read()
            rows += list(zip(r.path, r.key, r.part_mask.tolist(), r.attr_logits.tolist()))
    return store.manifest, rows


def test_first_run_labels_every_good_image_in_sorted_order(config: LabelConfig) -> None:
    summary = run_labeling(config, MeanColourLabeler)
    manifest, rows = read_all(config.out)
    # 8 inputs in shards of 3: cam0/000 002 004 | cam0/006 cam0/broken cam1/001 | cam1/003 005
    assert [r[0] for r in rows] == ["cam0/000.png", "cam0/002.png", "cam0/004.png", "cam0/006.png",
                                    "cam1/001.png", "cam1/003.png", "cam1/005.png"]
    assert [s.rows for s in manifest.shards] == [3, 2, 2]
    assert [(s.path, s.reason) for s in manifest.skipped] == [("cam0/broken.jpg", "not an image (format not recognised)")]
    assert (summary.images, summary.labeled, summary.skipped, summary.labeled_now) == (8, 7, 1, 7)
    assert (summary.shards_written, summary.shards_kept) == (3, 0)
    assert manifest.label_grid == GRID and manifest.clip.model == "stand-in"
    # Row i of cam0/004.png: brightness of (120, 60, 135) -> attribute means.
    row = dict((r[0], r[3]) for r in rows)["cam0/004.png"]
    assert np.allclose(row[:3], [120 / 255, 60 / 255, 135 / 255], atol=2e-3)
    plans = plan_shards(discover_images(config.images), 3)
    assert [s.inputs_sha256 for s in manifest.shards] == [p.inputs_sha256 for p in plans]


def test_rerun_keeps_everything_and_changes_redo_only_affected_shards(config: LabelConfig) -> None:
    run_labeling(config, MeanColourLabeler)
    before = {p.name: p.stat().st_ino for p in config.out.glob("shard-*.h5")}
    again = run_labeling(config, MeanColourLabeler)
    assert (again.shards_written, again.shards_kept, again.labeled_now, again.skipped) == (0, 3, 0, 1)
    assert {p.name: p.stat().st_ino for p in config.out.glob("shard-*.h5")} == before

    # A new camera folder sorts after everything: only the last shard changes, one shard is added.
    for i in range(3):
        write_image(config.images / "cam9" / f"{i}.png", 200 + i)
    summary = run_labeling(config, MeanColourLabeler)
    after = {p.name: p.stat().st_ino for p in config.out.glob("shard-*.h5")}
    assert (summary.shards_written, summary.shards_kept) == (2, 2)
    assert after["shard-000000.h5"] == before["shard-000000.h5"]
    assert after["shard-000001.h5"] == before["shard-000001.h5"]
    assert after["shard-000002.h5"] != before["shard-000002.h5"]
    manifest, rows = read_all(config.out)
    assert [s.rows for s in manifest.shards] == [3, 2, 3, 2] and len(rows) == 10
    assert [s.path for s in manifest.skipped] == ["cam0/broken.jpg"]  # not duplicated

    # Removing the broken file and two images shrinks the plan: shards past the end are dropped.
    (config.images / "cam0" / "broken.jpg").unlink()
    for i in range(3):
        (config.images / "cam9" / f"{i}.png").unlink()
    summary = run_labeling(config, MeanColourLabeler)
    manifest, rows = read_all(config.out)
    assert (summary.shards_dropped, summary.shards_kept, summary.shards_written) == (1, 1, 2)
    assert [s.file for s in manifest.shards] == ["shard-000000.h5", "shard-000001.h5", "shard-000002.h5"]
    assert sorted(p.name for p in config.out.glob("shard-*")) == [s.file for s in manifest.shards]
    assert manifest.skipped == [] and len(rows) == 7


def test_touched_input_redoes_its_shard_only(config: LabelConfig) -> None:
    run_labeling(config, MeanColourLabeler)
    target = config.images / "cam0" / "006.png"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    summary = run_labeling(config, MeanColourLabeler)  # its shard: cam0/006, cam0/broken, cam1/001
    assert (summary.shards_written, summary.shards_kept, summary.labeled_now, summary.skipped) == (1, 2, 2, 1)


def test_damaged_shard_is_rebuilt(config: LabelConfig) -> None:
    run_labeling(config, MeanColourLabeler)
    _, reference = read_all(config.out)
    (config.out / "shard-000001.h5").unlink()
    damaged = config.out / "shard-000002.h5"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert not verify_store(config.out).ok
    summary = run_labeling(config, MeanColourLabeler)
    assert (summary.shards_written, summary.shards_kept) == (2, 1)
    assert verify_store(config.out).ok
    assert read_all(config.out)[1] == reference


def test_other_settings_are_refused_unless_forced(config: LabelConfig, tmp_path: Path) -> None:
    run_labeling(config, MeanColourLabeler)
    for change, words in [({"shard_size": 4}, "shard size was 3 and is now 4"),
                          ({"dense_mode": "naive"}, "dense mode was maskclip and is now naive"),
                          ({"clip_model": "other"}, "CLIP model was stand-in and is now other"),
                          ({"clip_size": (32, 32)}, "CLIP input size")]:
        with pytest.raises(LabelingError, match=words):
            run_labeling(replace(config, **change), MeanColourLabeler)
    vocab = Manifest.load(config.out).vocab.to_dict()
    vocab["parts"][1]["prompts"].append("a photo of a person's head, close up")
    (tmp_path / "vocab.json").write_text(__import__("json").dumps(vocab))
    with pytest.raises(LabelingError, match="vocabulary"):
        run_labeling(replace(config, vocab=tmp_path / "vocab.json"), MeanColourLabeler)
    summary = run_labeling(replace(config, shard_size=4, force=True), MeanColourLabeler)
    manifest = Manifest.load(config.out)
    assert summary.shards_written == 2 and manifest.shard_size == 4
    assert sorted(p.name for p in config.out.glob("shard-*")) == ["shard-000000.h5", "shard-000001.h5"]


def test_the_manifest_records_how_labels_were_computed(config: LabelConfig) -> None:
    used = resolve_precision("auto", probe_capability("cpu"))
    run_labeling(config, MeanColourLabeler)
    manifest = Manifest.load(config.out)
    assert manifest.clip.precision == used.precision
    assert manifest.labeled_with == LabeledWith(batch_size=2, device=used.capability.tag(),
                                                capability=used.capability.describe(), precision_requested="auto")
    # the resolved precision asked for by name is the same labeling; a batch size changes speed, not labels
    summary = run_labeling(replace(config, precision=used.precision, batch_size=3), MeanColourLabeler)
    assert (summary.shards_written, summary.shards_kept) == (0, 3)
    assert Manifest.load(config.out).labeled_with.batch_size == 3
    other = "bf16" if used.precision == "fp32" else "fp32"
    with pytest.raises(LabelingError, match=f"precision was {used.precision} and is now {other}"):
        run_labeling(replace(config, precision=other), MeanColourLabeler)
    data = json.loads((config.out / "manifest.json").read_text())
    del data["clip"]["precision"]  # as written before precisions were recorded
    (config.out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(LabelingError, match=f"precision was not recorded and is now {used.precision}"):
        run_labeling(config, MeanColourLabeler)
    summary = run_labeling(replace(config, precision=other, force=True), MeanColourLabeler)
    assert summary.shards_written == 3 and Manifest.load(config.out).clip.precision == other


def test_user_errors_name_the_problem(config: LabelConfig, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    cases = [(replace(config, out=tmp_path / "a-file"), "--out must be a folder"),
             (replace(config, images=tmp_path / "nope"), "does not exist"),
             (replace(config, dense_mode="fancy"), "unknown dense mode 'fancy'"),
             (replace(config, workers=2, scheduler="tcp://x:1"), "not both"),
             (replace(config, vocab=tmp_path / "a-file"), "a-file")]
    for bad, words in cases:
        with pytest.raises(LabelingError, match=words):
            run_labeling(bad, MeanColourLabeler)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(LabelingError, match="other files and no manifest.json"):
        run_labeling(replace(config, out=foreign), MeanColourLabeler)
    assert not (foreign / "manifest.json").exists()


def test_all_inputs_of_a_shard_skipped_gives_an_empty_shard(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(b"")
    write_image(images / "c.png", 10)
    config = LabelConfig(images=images, out=tmp_path / "out", clip_model="stand-in", clip_size=(64, 32),
                         shard_size=2, progress=False)
    summary = run_labeling(config, MeanColourLabeler)
    manifest, rows = read_all(config.out)
    assert [s.rows for s in manifest.shards] == [0, 1] and [r[0] for r in rows] == ["c.png"]
    assert summary.skipped == 2 and [s.reason for s in manifest.skipped] == ["empty file (0 bytes)"] * 2


def test_inputs_digest_covers_path_size_and_mtime(folder: Path) -> None:
    inputs = discover_images(folder)
    base = inputs_digest(inputs)
    assert inputs_digest([replace(inputs[0], size=inputs[0].size + 1), *inputs[1:]]) != base
    assert inputs_digest([replace(inputs[0], mtime_ns=1), *inputs[1:]]) != base
    assert inputs_digest([replace(inputs[0], path="x.png"), *inputs[1:]]) != base
    assert inputs_digest(inputs) == base


def test_user_errors_from_a_dask_worker_survive_pickling(config: LabelConfig) -> None:
    import pickle

    from clasp.labeling.clip_loading import ClipLoadError
    from clasp.labeling.executors import labeler_info_on_worker

    def unloadable(spec: ClipLabelerConfig):
        raise ClipLoadError(spec.clip_model, "no such folder")

    spec = ClipLabelerConfig("/nowhere/clip", None, (64, 32), "maskclip", "fp32", "cpu", None)
    with pytest.raises(LabelingError) as caught:
        labeler_info_on_worker(unloadable, spec)
    again = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(again, LabelingError) and "cannot load CLIP model '/nowhere/clip' (no such folder)" in str(again)


def test_a_run_killed_before_its_first_manifest_can_be_rerun(config: LabelConfig) -> None:
    config.out.mkdir()
    (config.out / "manifest.json.k2j3h4.tmp").write_text("{")
    (config.out / "shard-000000.h5.tmp").write_bytes(b"partial")
    summary = run_labeling(config, MeanColourLabeler)
    assert summary.shards_written == 3
    assert sorted(p.name for p in config.out.iterdir()) == [
        "manifest.json", "shard-000000.h5", "shard-000001.h5", "shard-000002.h5"]


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(config: LabelConfig):
    from clasp.runs import exclusive_folder

    with exclusive_folder(Path(config.out), "clasp label"):
        with pytest.raises(LabelingError, match=f"`clasp label` \\(pid {os.getpid()}\\) is writing this folder"):
            run_labeling(config, factory=MeanColourLabeler)
    summary = run_labeling(config, factory=MeanColourLabeler)  # released: the run goes ahead
    assert summary.labeled == 7 and summary.skipped == 1


def test_workers_are_numbered_per_host_for_gpu_placement():
    from clasp.labeling.executors import local_ranks

    hosts = {"tcp://10.0.0.2:4001": "10.0.0.2", "tcp://10.0.0.1:4002": "10.0.0.1",
             "tcp://10.0.0.1:4001": "10.0.0.1", "tcp://10.0.0.2:3999": "10.0.0.2", "tcp://10.0.0.1:4003": "10.0.0.1"}
    assert local_ranks(hosts) == {"tcp://10.0.0.1:4001": 0, "tcp://10.0.0.1:4002": 1, "tcp://10.0.0.1:4003": 2,
                                  "tcp://10.0.0.2:3999": 0, "tcp://10.0.0.2:4001": 1}
