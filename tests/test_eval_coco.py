"""`clasp eval` on a COCO person-keypoints folder: crops, the streamed pose probe, COCOeval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clasp.cli import main
from clasp.datasets.coco_keypoints import coco_file, read_coco_pose
from clasp.evaluation.coco_probe import crop_batches, training_sample
from clasp.evaluation.oks import KEYPOINT_RESULTS, coco_keypoint_ap
from clasp.evaluation.pose_crops import affine, expand_boxes, to_crop, to_image
from clasp.evaluation.probes import _neighbourhoods, _PoseMoments, _scale, _token_targets, fit_pose_probe
from clasp.evaluation.run_eval import EvalConfig, evaluate
from clasp.datasets.synth import SynthConfig
from clasp.datasets.synth.layouts import write_layout
from tests.conftest import one_error_line
from tests.test_finetune_run import write_random_export

STATS = ("ap", "ap50", "ap75", "ap_m", "ap_l", "ar")
HW = (256, 128)  # the random export's input: crops keep its aspect


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coco_eval")
    return {"export": write_random_export(root / "export", task="part"),
            "coco": write_layout("coco", SynthConfig(out=root / "coco", identities=6, images_per_id=4, cameras=2))}


def _eval(world, *extra: str):
    return CliRunner().invoke(main, ["eval", "--backbone", str(world["export"]), "--data", str(world["coco"]), *extra])


def test_clasp_eval_scores_a_coco_folder_and_its_results_file_rescores_the_same(world, tmp_path: Path) -> None:
    out = tmp_path / "res" / "results.json"
    got = _eval(world, "--out", str(out), "--pose-train-instances", "8")
    assert got.exit_code == 0, got.output
    saved = json.loads(out.read_text())
    pose = saved["pose"]
    assert saved["kind"] == "coco" and saved["tasks"] == ["pose"]
    assert 0 <= pose["ap"] <= 1 and all(pose[k] is None or 0 <= pose[k] <= 1 for k in STATS)
    assert pose["instances_train"] == 8 and pose["train_sample"]["of"] == 12 and pose["instances_val"] == 12
    assert pose["input_hw"] == list(HW) and pose["boxes"] == "ground truth"
    predictions = json.loads((out.parent / KEYPOINT_RESULTS).read_text())
    assert len(predictions) == pose["scored_persons"] and all(len(p["keypoints"]) == 51 for p in predictions)
    again = coco_keypoint_ap(coco_file(world["coco"], "val"), out.parent / KEYPOINT_RESULTS)
    assert {k: pose[k] for k in STATS} == pytest.approx({k: again[k] for k in STATS})
    assert "pose AP (OKS, 12 persons)" in got.output


def _oracle(coco: Path):
    """An extractor whose tokens are the heat-map blocks of the crop's own keypoints, found by its pixels."""
    truth = {}
    for instances in read_coco_pose(coco):
        for rows, crops, matrices in crop_batches(instances, np.arange(len(instances)), HW, 64):
            moved = to_crop(matrices, instances.keypoints[rows])
            truth.update({crop.tobytes(): points for crop, points in zip(crops, moved)})

    def extract(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points = np.stack([truth[np.ascontiguousarray(crop).tobytes()] for crop in images.permute(0, 2, 3, 1).numpy()])
        return torch.zeros(len(points), 1), _token_targets(points, HW, (16, 8), (4, 4)).reshape(len(points), 128, -1)
    return extract


def test_tokens_that_hold_the_truth_score_ap_1_through_crops_probe_and_the_way_back(world, tmp_path: Path) -> None:
    oracle = _oracle(world["coco"])
    pose = evaluate(EvalConfig(backbone=Path("oracle"), data=world["coco"]), extractor=oracle)["pose"]
    assert pose["ap"] >= 0.99 and pose["ar"] >= 0.99, pose
    # detected boxes: the truth's, each twice (the copy scored lower); OKS-NMS keeps one of each pair
    val = json.loads(coco_file(world["coco"], "val").read_text())["annotations"]
    detections = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": score}
                  for a in val for score in (0.9, 0.5)]
    (tmp_path / "boxes.json").write_text(json.dumps(detections))
    pose = evaluate(EvalConfig(backbone=Path("oracle"), data=world["coco"], detections=tmp_path / "boxes.json"),
                    extractor=oracle)["pose"]
    assert pose["instances_val"] == 24 and pose["scored_persons"] == 12 and pose["ap"] >= 0.99, pose


def test_keypoints_go_into_the_crop_and_back_to_the_image_exactly() -> None:
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(0, 300, (20, 2)), rng.uniform(5, 200, (20, 2))], 1)
    centres, sizes = expand_boxes(boxes, HW)
    assert (sizes[:, 0] / sizes[:, 1]) == pytest.approx(HW[1] / HW[0])
    assert ((sizes >= 1.25 * boxes[:, 2:] - 1e-9).all(1)).all()
    matrices = np.stack([affine(c, s, HW) for c, s in zip(centres, sizes)])
    points = np.concatenate([rng.uniform(0, 500, (20, 17, 2)), rng.choice([0, 1, 2], (20, 17, 1))], -1)
    inside = to_crop(matrices, points)
    assert inside[..., 2].tolist() == points[..., 2].tolist()
    box_centres = np.concatenate([centres[:, None], np.full((20, 1, 1), 2.0)], -1)
    crop_centre = np.tile([(HW[1] - 1) / 2, (HW[0] - 1) / 2], (20, 1))
    assert to_crop(matrices, box_centres)[:, 0, :2] == pytest.approx(crop_centre)
    assert np.abs(to_image(matrices, inside[..., :2]) - points[..., :2]).max() < 1e-6


def test_the_training_sample_is_seeded_and_never_above_the_cap() -> None:
    drawn = training_sample(1000, 50)
    assert len(drawn) == len(np.unique(drawn)) == 50 and (np.diff(drawn) > 0).all() and drawn.max() < 1000
    assert drawn.tolist() == training_sample(1000, 50).tolist() != training_sample(1000, 50, seed=1).tolist()
    assert training_sample(30, 50).tolist() == list(range(30))


def test_a_streamed_fit_equals_one_fit_of_all_tokens() -> None:
    rng = np.random.default_rng(0)
    n, d = 40, 6
    tokens = (rng.normal(size=(n, 128, d)) * rng.uniform(0.1, 5, d) + rng.uniform(-20, 20, d)).astype(np.float32)
    tokens[:, :, 0] = 3.0  # a dimension constant in training keeps spread 1
    keypoints = np.concatenate([rng.uniform(0, [127, 255], (n, 17, 2)), rng.choice([0, 1, 2], (n, 17, 1))], -1)
    mean, std = _scale(tokens.reshape(-1, d))  # the fit of all tokens at once, standardised by all of them
    moments = _PoseMoments()
    moments.add(_neighbourhoods(tokens, mean, std, (16, 8)), _token_targets(keypoints, HW, (16, 8), (4, 4)))
    weight, bias = moments.ridge(1e-2)
    expected = (_neighbourhoods(tokens, mean, std, (16, 8)) @ weight + bias).numpy()
    for chunks in ([(tokens, keypoints)], [(tokens[s:s + 7], keypoints[s:s + 7]) for s in range(0, n, 7)]):
        probe = fit_pose_probe(iter(chunks), HW)
        assert probe.mean == pytest.approx(mean, rel=1e-5) and probe.std == pytest.approx(std, rel=1e-5)
        found = (_neighbourhoods(tokens, probe.mean, probe.std, probe.grid) @ probe.weight + probe.bias).numpy()
        assert np.abs(found - expected).max() < 1e-5


def test_other_tasks_and_bad_coco_files_are_one_error_line(world, synth_world: Path, tmp_path: Path) -> None:
    assert "has no ground truth for reid (pose only)" in one_error_line(_eval(world, "--tasks", "reid"), 2)
    got = CliRunner().invoke(main, ["eval", "--backbone", str(world["export"]), "--data", str(synth_world),
                                    "--detections", str(tmp_path / "boxes.json")])
    assert "person boxes are for a COCO folder" in one_error_line(got, 2)
    broken = Path(shutil.copytree(world["coco"], tmp_path / "coco"))
    coco_file(broken, "val").write_text("{")
    got = CliRunner().invoke(main, ["eval", "--backbone", str(world["export"]), "--data", str(broken)])
    assert "person_keypoints_val2017.json: cannot be read as JSON" in one_error_line(got, 2)
