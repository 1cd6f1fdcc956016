"""`clasp eval-labels`: pseudo-label quality against ground truth, exact and with a known corruption."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from clasp.cli import main
from clasp.datasets.label_grid import majority_downsample
from clasp.evaluation.label_quality import LabelQualityConfig, evaluate_labels
from clasp.datasets.synth.writer import TRUTH_FORMAT, TRUTH_VERSION
from clasp.datasets.truth import SynthTruth
from clasp.store import ClipInfo, LabelRows, Manifest, record_shard, shard_name, write_shard_for


def _store(root: Path, vocab, grid, paths, masks, attr_logits, shard_rows=None, keys=None) -> Path:
    manifest = Manifest(ClipInfo("test-clip"), vocab, grid)
    n = len(paths)
    shard_rows = shard_rows or [n]
    start = 0
    for index, count in enumerate(shard_rows):
        sl = slice(start, start + count)
        images = [f"img{i}".encode() for i in range(start, start + count)]
        rows = LabelRows(
            image=images, key=list(keys[sl]) if keys is not None else [hashlib.sha1(b).hexdigest() for b in images],
            path=list(paths[sl]),
            orig_hw=np.tile(np.array([256, 128], np.uint16), (count, 1)),
            part_mask=np.asarray(masks[sl], np.uint8), part_conf=np.ones((count, *grid), np.float16),
            attr_logits=np.asarray(attr_logits[sl], np.float16))
        record_shard(manifest, root, write_shard_for(manifest, root, shard_name(index), rows))
        start += count
    return root


def _one_hot_logits(truth: SynthTruth, vocab) -> np.ndarray:
    idx = truth.attribute_indices(vocab)
    return np.concatenate([np.eye(len(g.values))[idx[:, k]] * 8 - 4 for k, g in enumerate(vocab.attributes)], axis=1)


def test_labels_equal_to_the_truth_score_perfectly(synth_world: Path, vocab, tmp_path: Path) -> None:
    truth = SynthTruth.load(synth_world)
    grid = (28, 14)  # the labeler's default grid: cells of 9 or 10 pixels
    masks = majority_downsample(truth.read_masks(), grid, vocab.num_parts)
    paths = np.array(truth.paths, dtype=object)
    store = _store(tmp_path / "shards", vocab, grid, paths, masks, _one_hot_logits(truth, vocab), [20, 28],
                   keys=truth.file_sha1())
    out = tmp_path / "quality.json"
    res = evaluate_labels(LabelQualityConfig(store, synth_world, out))
    assert (res["rows"], res["matched_rows"], res["unmatched_rows"], res["truth_images_not_in_store"]) == (48, 48, 0, 0)
    assert res["parts"]["mIoU"] == 1.0
    assert all(v == 1.0 for v in res["parts"]["iou"].values())
    assert res["attributes"]["accuracy"] == {g.group: 1.0 for g in vocab.attributes}
    assert json.loads(out.read_text())["parts"]["mIoU"] == 1.0
    result = CliRunner().invoke(main, ["eval-labels", "--shards", str(store), "--truth", str(synth_world)])
    assert result.exit_code == 0, result.output
    assert "48 of 48 rows matched" in result.output and "mIoU         100.00" in result.output


def _hand_truth(root: Path, masks: np.ndarray, paths: list[str], attributes: list[dict], part_names) -> Path:
    (root / "truth").mkdir(parents=True)
    for p in paths:  # rows are matched by the sha1 of these files: _file_key(p)
        (root / "images" / p).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / p).write_bytes(p.encode())
    with open(root / "truth" / "annotations.jsonl", "w") as fh:
        for i, (p, a) in enumerate(zip(paths, attributes)):
            fh.write(json.dumps({"path": p, "identity": i, "camera": 0, "attributes": a}) + "\n")
    with h5py.File(root / "truth" / "parts.h5", "w") as f:
        f.attrs["format"] = TRUTH_FORMAT
        f.attrs["version"] = TRUTH_VERSION
        f.attrs["part_names"] = json.dumps(part_names)
        f["part_mask"] = masks.astype(np.uint8)
        f["path"] = np.array(paths, dtype=h5py.string_dtype("utf-8"))
    return root


def _file_key(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()


def test_known_corruption_gives_the_hand_computed_numbers(vocab, tmp_path: Path) -> None:
    base = {g.group: g.values[0].name for g in vocab.attributes}  # gender male, age child, ...
    # truth (4x4 pixels, 2x2 cells of 2x2): A = head over feet; B = [[bg, upper], [bg, lower]]
    a = np.array([[1, 1], [5, 5]]).repeat(2, 0).repeat(2, 1)
    b = np.array([[0, 2], [0, 4]]).repeat(2, 0).repeat(2, 1)
    truth_root = _hand_truth(tmp_path / "world", np.stack([a, b]), ["c0/a.jpg", "c0/b.jpg"], [base, base],
                             vocab.part_names)
    labels = np.array([[[1, 1], [5, 0]],  # A: one feet cell labelled background
                       [[0, 2], [3, 4]],  # B: one background cell labelled arms
                       [[0, 0], [0, 0]]])  # a row with no ground truth
    logits = np.zeros((3, vocab.num_attributes))
    logits[:, [sl.start for _, sl in vocab.group_slices()]] = 1.0  # first value of every group: all right
    logits[0, 1] = 5.0  # ... except A's gender: female
    store = _store(tmp_path / "shards", vocab, (2, 2), np.array(["images/c0/a.jpg", "c0/b.jpg", "c9/other.jpg"]),
                   labels, logits, keys=[_file_key("c0/a.jpg"), _file_key("c0/b.jpg"), _file_key("c9/other.jpg")])
    res = evaluate_labels(LabelQualityConfig(store, truth_root))
    assert (res["rows"], res["matched_rows"], res["unmatched_rows"]) == (3, 2, 1)
    iou = res["parts"]["iou"]
    # background: TP 1, FP 1 (A's feet cell), FN 1 (B's arms cell) -> 1/3; head 2/2; upper 1; arms 0/1;
    # lower 1; feet TP 1, FN 1 -> 1/2
    assert [iou[p] for p in vocab.part_names] == pytest.approx([1 / 3, 1, 1, 0, 1, 1 / 2])
    assert res["parts"]["mIoU"] == pytest.approx((1 / 3 + 1 + 1 + 0 + 1 + 1 / 2) / 6)
    acc = res["attributes"]["accuracy"]
    assert acc["gender"] == 0.5 and all(v == 1.0 for g, v in acc.items() if g != "gender")
    assert res["attributes"]["mean_accuracy"] == pytest.approx((0.5 + 10) / 11)
    assert res["attributes"]["chance"]["age"] == 0.25


def test_cli_eval_labels_and_bad_inputs(synth_world: Path, make_store, tmp_path: Path) -> None:
    runner = CliRunner()
    unrelated = make_store([4])  # rows whose paths are not in the world
    result = runner.invoke(main, ["eval-labels", "--shards", str(unrelated), "--truth", str(synth_world)])
    assert result.exit_code == 2 and "none of its 4 rows" in result.output
    result = runner.invoke(main, ["eval-labels", "--shards", str(unrelated), "--truth", str(tmp_path)])
    assert result.exit_code == 2 and "truth/annotations.jsonl missing" in result.output
    result = runner.invoke(main, ["eval-labels", "--shards", str(tmp_path / "nothing"), "--truth", str(synth_world)])
    assert result.exit_code == 2 and "does not exist" in result.output
    for r in (result,):
        assert len(r.output.strip().splitlines()) == 1


def test_rows_are_matched_by_content_not_by_name(vocab, tmp_path: Path) -> None:
    """A store labeled from another world with the same file names is refused; rows of other images don't count."""
    base = {g.group: g.values[0].name for g in vocab.attributes}
    mask = np.zeros((4, 4), np.uint8)
    world = _hand_truth(tmp_path / "world", np.stack([mask, mask]), ["c0/a.jpg", "c0/b.jpg"], [base, base],
                        vocab.part_names)
    labels, logits = np.zeros((2, 2, 2)), np.zeros((2, vocab.num_attributes))
    paths = np.array(["c0/a.jpg", "c0/b.jpg"])
    other = _store(tmp_path / "other", vocab, (2, 2), paths, labels, logits,
                   keys=[hashlib.sha1(b"another world " + p.encode()).hexdigest() for p in paths])
    before = sorted((p.name, p.stat().st_size) for p in other.iterdir())
    result = CliRunner().invoke(main, ["eval-labels", "--shards", str(other), "--truth", str(world)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: ")
    assert str(other) in line and str(world) in line and "none of its 2 rows is an image of the world" in line
    assert sorted((p.name, p.stat().st_size) for p in other.iterdir()) == before

    # one row of this world, one of another with the same name: only the first is scored, and it is said
    mixed = _store(tmp_path / "mixed", vocab, (2, 2), paths, labels, logits,
                   keys=[_file_key("c0/a.jpg"), hashlib.sha1(b"elsewhere").hexdigest()])
    res = evaluate_labels(LabelQualityConfig(mixed, world))
    assert (res["rows"], res["matched_rows"], res["unmatched_rows_named_like_world_images"]) == (2, 1, 1)
    assert res["truth_images_not_in_store"] == 1
    result = CliRunner().invoke(main, ["eval-labels", "--shards", str(mixed), "--truth", str(world)])
    assert result.exit_code == 0 and "1 of 2 rows matched the ground truth by content" in result.output
