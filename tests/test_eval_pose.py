"""Keypoints of the synthetic world, its COCO layout, the COCO reader, OKS AP and the frozen pose probe."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clasp.datasets.coco_keypoints import coco_file, read_coco_keypoints
from clasp.datasets.errors import DatasetError
from clasp.evaluation.heatmaps import decode, encode, flip_back, to_heatmap, to_input
from clasp.datasets.keypoint_names import FLIP_INDEX, KEYPOINT_NAMES
from clasp.evaluation.oks import coco_keypoint_ap, keypoint_results, oks, single_person_ap, write_keypoint_results
from clasp.evaluation.pose_crops import affine, apply, expand_boxes, warp
from clasp.datasets.synth import SynthConfig
from clasp.datasets.synth.keypoints import part_of
from clasp.datasets.synth.layouts import COCO_CANVAS_HW, write_layout
from clasp.datasets.truth import SynthTruth

NAME = {n: k for k, n in enumerate(KEYPOINT_NAMES)}


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco") / "coco"
    return write_layout("coco", SynthConfig(out=root, identities=6, images_per_id=4, cameras=2))


def test_visible_keypoints_lie_on_their_part_of_the_truth_mask(synth_world: Path) -> None:
    truth = SynthTruth.load(synth_world)
    masks, keypoints = truth.read_masks(), truth.keypoints
    lines = (synth_world / "truth" / "annotations.jsonl").read_text().splitlines()
    views = [json.loads(line)["view"] for line in lines]
    assert keypoints.shape == (len(truth), 17, 3)
    for row, points in enumerate(keypoints):
        for k, (x, y, v) in enumerate(points):
            if v == 0:
                assert x == y == 0
                continue
            part = truth.part_names[masks[row, int(round(y)), int(round(x))]]
            if v == 2:
                assert part == part_of(KEYPOINT_NAMES[k]), (truth.paths[row], KEYPOINT_NAMES[k], part)
    visible = keypoints[:, :, 2] == 2
    assert visible.mean() > 0.8  # occluders, bags and back views hide the rest
    back = np.array([v == "back" for v in views])
    assert back.any() and (~back).any()
    assert (keypoints[back][:, [NAME["nose"], NAME["left_eye"], NAME["right_eye"]], 2] == 1).all()
    assert visible[~back][:, NAME["nose"]].mean() > 0.9
    # the person's left is the image's right in a front view, its left from behind
    left, right = keypoints[:, NAME["left_shoulder"], 0], keypoints[:, NAME["right_shoulder"], 0]
    assert (left[~back] > right[~back]).all() and (left[back] < right[back]).all()
    head, hip = keypoints[:, [NAME["nose"], NAME["left_ear"]], 1].max(1), keypoints[:, NAME["left_hip"], 1]
    assert (head < hip).all() and (hip < keypoints[:, NAME["left_ankle"], 1]).all()


def test_a_world_drawn_before_keypoints_still_loads(synth_world: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(synth_world, old)
    lines = (old / "truth" / "annotations.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row.pop("keypoints")
    (old / "truth" / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    truth = SynthTruth.load(old)
    assert truth.keypoints is None and len(truth) == len(rows)
    rows[0]["keypoints"] = [[1, 2, 2]] * 17
    (old / "truth" / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match="has no keypoints, while 1 other images have them"):
        SynthTruth.load(old)


def test_coco_layout_is_cocos_and_loads_in_pycocotools_without_warnings(coco: Path) -> None:
    from pycocotools.coco import COCO

    assert sorted(p.name for p in coco.iterdir()) == ["annotations", "train2017", "val2017"]
    for split in ("train", "val"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            api = COCO(str(coco_file(coco, split)))
        assert api.getCatIds() == [1]
        category = api.loadCats(1)[0]
        assert category["keypoints"] == list(KEYPOINT_NAMES) and len(category["skeleton"]) == 19
        annotations = api.loadAnns(api.getAnnIds())
        assert len(annotations) == len(api.getImgIds()) == 12
        for a in annotations:
            image = api.loadImgs(a["image_id"])[0]
            with Image.open(coco / f"{split}2017" / image["file_name"]) as im:
                assert (im.height, im.width) == (image["height"], image["width"]) == COCO_CANVAS_HW
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
            assert w * h < 0.5 * image["width"] * image["height"] and 0 < a["area"] < w * h
            points = np.array(a["keypoints"]).reshape(17, 3)
            labeled = points[:, 2] > 0
            assert a["num_keypoints"] == labeled.sum() and a["iscrowd"] == 0
            seen = points[:, 2] == 2  # on the visible body, so inside its box (an occluded one may not be)
            assert (points[seen, 0] >= x - 1).all() and (points[seen, 0] <= x + w).all()


def _perturbed(truth: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    out = truth.copy()
    out[:, :, :2] += rng.normal(0, shift, out[:, :, :2].shape) if shift else 0
    out[:, :, 2] = 1.0
    return out


def test_a_perfect_prediction_scores_ap_1_and_a_shifted_one_less(coco: Path, tmp_path: Path) -> None:
    val = read_coco_keypoints(coco, "val")
    rng = np.random.default_rng(0)
    scores = {}
    for shift in (0.0, 2.0, 20.0):
        path = write_keypoint_results(tmp_path / f"r{shift}.json", keypoint_results(
            val.image_ids, _perturbed(val.keypoints, shift, rng), np.linspace(1, 0.5, len(val))))
        scores[shift] = coco_keypoint_ap(coco_file(coco, "val"), path)
    assert scores[0.0]["ap"] == scores[0.0]["ap50"] == scores[0.0]["ap75"] == scores[0.0]["ar"] == 1.0
    assert 0.05 < scores[2.0]["ap"] < 1.0 and scores[20.0]["ap"] < scores[2.0]["ap"]
    assert scores[20.0]["ap50"] <= scores[2.0]["ap50"]


def test_single_person_ap_equals_cocoeval(coco: Path, tmp_path: Path) -> None:
    val = read_coco_keypoints(coco, "val")
    document = json.loads(coco_file(coco, "val").read_text())
    areas = np.array([{a["id"]: a["area"] for a in document["annotations"]}[i] for i in val.image_ids])
    rng = np.random.default_rng(1)
    for shift in (1.5, 4.0, 8.0):
        predicted = np.round(_perturbed(val.keypoints, shift, rng), 3)
        scores = np.round(rng.random(len(val)), 6)
        path = write_keypoint_results(tmp_path / "r.json", keypoint_results(val.image_ids, predicted, scores))
        expected = coco_keypoint_ap(coco_file(coco, "val"), path)
        similarity = oks(predicted, val.keypoints, areas)
        assert single_person_ap(similarity, scores) == pytest.approx((expected["ap"], expected["ar"]), abs=1e-9)
        assert single_person_ap(similarity, scores, (0.5,))[0] == pytest.approx(expected["ap50"], abs=1e-9)


def test_no_prediction_is_a_null_with_its_reason(coco: Path, tmp_path: Path) -> None:
    from clasp.evaluation.results_json import jsonable

    path = write_keypoint_results(tmp_path / "empty.json", [])
    scored = jsonable(coco_keypoint_ap(coco_file(coco, "val"), path))
    assert scored["ap"] is None and scored["ap_reason"] == "no keypoint predictions to score"


def test_boxes_grow_to_the_input_aspect_with_padding_and_crops_follow_points() -> None:
    centres, sizes = expand_boxes(np.array([[10, 20, 30, 120], [0, 0, 90, 60]]), (256, 192))
    assert centres.tolist() == [[25, 80], [45, 30]]
    assert sizes.tolist() == [[1.25 * 90, 1.25 * 120], [1.25 * 90, 1.25 * 120]]
    image = np.zeros((100, 80, 3), np.uint8)
    image[37, 21] = 255
    for rotation, mirror in ((0, False), (0, True), (30, False), (-25, True)):
        matrix = affine((25, 40), (40, 160 / 3), (64, 48), rotation, mirror)
        crop = warp(Image.fromarray(image), matrix, (64, 48))[:, :, 0].astype(float)
        yy, xx = np.mgrid[:64, :48]
        centroid = np.array([(xx * crop).sum(), (yy * crop).sum()]) / crop.sum()
        # half a pixel off would be 0.6 away
        assert centroid == pytest.approx(apply(matrix, np.array([21.0, 37.0])), abs=0.1)


def test_heatmaps_decode_to_their_keypoints_and_flip_exactly() -> None:
    import torch

    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform([8, 8], [184, 248], (3, 17, 2)), np.full((3, 17, 1), 2.0)], -1)
    maps, weights = encode(points, (256, 192))
    assert maps.shape == (3, 17, 64, 48) and (weights == 1).all()
    coords, peaks = decode(maps)
    assert np.abs(to_input(coords, (256, 192)) - points[..., :2]).max() < 0.5 * 191 / 47
    assert to_heatmap(to_input(coords, (256, 192)), (256, 192)) == pytest.approx(coords)
    assert (peaks > 0.85).all()
    mirrored = points[:, list(FLIP_INDEX)].copy()
    mirrored[..., 0] = 191 - mirrored[..., 0]
    assert flip_back(torch.from_numpy(encode(mirrored, (256, 192))[0])).numpy() == pytest.approx(maps, abs=1e-6)
    outside = points.copy()
    outside[0, 0, :2] = (-40, 10)
    outside[0, 1, 2] = 0
    assert encode(outside, (256, 192))[1][0, :2].tolist() == [0, 0]


def _part_and_position_tokens(masks: np.ndarray) -> np.ndarray:
    """(N, 128, 6 * 16 + 128) tokens that know their 16x16 cell's parts (one pixel of each 4x4 block) and place."""
    n = len(masks)
    cells = masks.reshape(n, 16, 4, 4, 8, 4, 4)[:, :, :, 2, :, :, 2].transpose(0, 1, 3, 2, 4).reshape(n, 128, 16)
    parts = np.eye(6, dtype=np.float32)[cells].reshape(n, 128, -1)
    return np.concatenate([parts, np.tile(np.eye(128, dtype=np.float32)[None], (n, 1, 1))], -1)


def test_the_pose_probe_finds_keypoints_in_informative_tokens_and_not_in_noise(synth_world: Path) -> None:
    from clasp.evaluation.probes import identity_split, pose_probe

    truth = SynthTruth.load(synth_world)
    masks = truth.read_masks()
    train, test = identity_split(truth.identity)
    areas = (masks[test] > 0).sum((1, 2))
    scored = {}
    for name, tokens in (("parts", _part_and_position_tokens(masks)),
                         ("noise", np.random.default_rng(0).normal(size=(len(masks), 128, 224)).astype(np.float32))):
        found = pose_probe(tokens[train], truth.keypoints[train], tokens[test], (256, 128))
        assert found["keypoints"].shape == (test.sum(), 17, 3) and found["scores"].shape == (test.sum(),)
        similarity = oks(found["keypoints"], truth.keypoints[test], areas)
        scored[name] = (similarity.mean(), single_person_ap(similarity, found["scores"])[0])
    assert scored["parts"][0] > 0.3 > 0.1 > scored["noise"][0], scored
    assert scored["parts"][1] > scored["noise"][1], scored


def test_clasp_eval_reports_pose_ap_with_its_interval_and_skips_worlds_without_keypoints(
        synth_world: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clasp.cli import main
    from clasp.evaluation.probes import ProbeSettings
    from clasp.evaluation.run_eval import EvalConfig, evaluate
    from tests.conftest import one_error_line
    from tests.test_finetune_run import write_random_export

    export = write_random_export(tmp_path / "export", task="part")
    results = evaluate(EvalConfig(backbone=export, data=synth_world, tasks=("parsing", "pose"),
                                  task_prompt="per-probe", probe=ProbeSettings(steps=5)))
    pose = results["pose"]
    assert pose["persons"] == 24 and all(0 <= pose[k] <= 1 for k in ("ap", "ap50", "ap75", "ar"))
    assert pose["ap_interval"]["low"] <= pose["ap"] == pose["ap_interval"]["value"] <= pose["ap_interval"]["high"]
    old = Path(shutil.copytree(synth_world, tmp_path / "old"))
    rows = [json.loads(line) for line in (old / "truth" / "annotations.jsonl").read_text().splitlines()]
    (old / "truth" / "annotations.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "keypoints"}) + "\n" for r in rows))
    assert "pose" not in evaluate(EvalConfig(backbone=export, data=old, tasks=None, probe=ProbeSettings(steps=5)))
    got = CliRunner().invoke(main, ["eval", "--backbone", str(export), "--data", str(old), "--tasks", "pose"])
    assert "the world has no keypoints" in one_error_line(got, 2)
