"""`clasp finetune pose` on the synthetic world's COCO layout, with a tiny random backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from clasp.datasets.coco_keypoints import coco_file
from clasp.evaluation.oks import coco_keypoint_ap
from clasp.datasets.synth import SynthConfig
from clasp.datasets.synth.layouts import write_layout
from clasp.finetune.config import build_config
from clasp.finetune.loop import run_finetune
from tests.conftest import losses
from tests.test_finetune_readers import assert_refused, finetune
from tests.test_finetune_run import write_random_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = dict(precision="fp32", num_workers=0, log_every=1, eval_batch_size=32, batch_size=8)
STATS = ("ap", "ap50", "ap75", "ap_m", "ap_l", "ar")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pose")
    return {"export": write_random_export(root / "export", task="part"),
            "coco": write_layout("coco", SynthConfig(out=root / "coco", identities=8, images_per_id=4, cameras=2))}


def pose_config(world, out: Path, **extra):
    settings = dict(task="pose", backbone=str(world["export"]), data=str(world["coco"]), out=str(out), lr=5e-4,
                    warmup=0.3, **FAST)
    return build_config(**{**settings, **extra})


def test_a_short_pose_run_lowers_its_loss_and_scores_its_own_results_file(world, tmp_path: Path) -> None:
    result = run_finetune(pose_config(world, tmp_path / "run", steps=20))
    logged = losses(tmp_path / "run")
    first, last = np.mean([logged[s] for s in (1, 2, 3)]), np.mean([logged[s] for s in (18, 19, 20)])
    assert last < 0.95 * first, (first, last)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(result.results))
    assert saved["task"] == "pose" and saved["layout"] == "coco" and saved["task_prompt"] == "part"
    assert saved["persons"] == saved["scored_persons"] == 16 and saved["boxes"] == "ground truth"
    for key in STATS:
        assert saved[key] is None or 0 <= saved[key] <= 1, key
    predictions = json.loads((tmp_path / "run" / "keypoints_val_results.json").read_text())
    assert len(predictions) == 16 and all(len(p["keypoints"]) == 51 and p["category_id"] == 1 for p in predictions)
    again = coco_keypoint_ap(coco_file(world["coco"], "val"), tmp_path / "run" / "keypoints_val_results.json")
    assert {k: saved[k] for k in ("ap", "ar")} == pytest.approx({k: again[k] for k in ("ap", "ar")})


def test_pose_resume_equals_an_uninterrupted_run(world, tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_finetune(pose_config(world, whole, steps=4))
    first = run_finetune(pose_config(world, parts, steps=4, stop_at=2))
    assert first.stopped_by == "stop_at" and not (parts / "keypoints_val_results.json").exists()
    run_finetune(build_config(out=str(parts), task="pose", resume=True))
    assert losses(parts) == pytest.approx(losses(whole), abs=1e-7)
    weights = load_file(str(parts / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert weights["backbone.backbone.pos_embed"].shape == (1, 1 + 16 * 12, 48)  # resized once to 256x192 crops
    resumed, straight = (json.loads((run / "keypoints_val_results.json").read_text()) for run in (parts, whole))
    assert [p["image_id"] for p in resumed] == [p["image_id"] for p in straight]
    assert np.array([p["keypoints"] + [p["score"]] for p in resumed]) == pytest.approx(
        np.array([p["keypoints"] + [p["score"]] for p in straight]), abs=1e-3)


def _copy(world, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world["coco"], tmp_path / "coco"))


def _edit(data: Path, split: str, change) -> None:
    path = coco_file(data, split)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("case, words", [
    ("no_annotations", ("person_keypoints_train2017.json", "missing key 'annotations'")),
    ("no_keypoints_key", ("person_keypoints_val2017.json", "is missing key 'keypoints'")),
    ("short_keypoints", ("person_keypoints_train2017.json", "keypoints must be 51 numbers, found 48")),
    ("box_outside", ("person_keypoints_val2017.json", "outside its image")),
    ("image_absent", ("person_keypoints_train2017.json", "is listed but", "does not exist")),
    ("unknown_image", ("person_keypoints_val2017.json", "which is not listed")),
    ("detections_of_another_image", ("detections.json", "which person_keypoints_val2017.json does not list")),
])
def test_each_bad_annotation_file_is_one_error_line_and_exit_2(world, tmp_path: Path, case: str, words) -> None:
    data, extra = _copy(world, tmp_path), ()
    if case == "no_annotations":
        _edit(data, "train", lambda d: d.pop("annotations"))
    elif case == "no_keypoints_key":
        _edit(data, "val", lambda d: d["annotations"][2].pop("keypoints"))
    elif case == "short_keypoints":
        _edit(data, "train", lambda d: d["annotations"][0].update(keypoints=d["annotations"][0]["keypoints"][:48]))
    elif case == "box_outside":
        _edit(data, "val", lambda d: d["annotations"][0].update(bbox=[200, 10, 90, 200]))
    elif case == "image_absent":
        first = json.loads(coco_file(data, "train").read_text())["images"][0]["file_name"]
        (data / "train2017" / first).unlink()
    elif case == "unknown_image":
        _edit(data, "val", lambda d: d["annotations"][0].update(image_id=99999))
    else:
        detections = tmp_path / "detections.json"
        detections.write_text(json.dumps([{"image_id": 99999, "category_id": 1, "bbox": [1, 1, 50, 100], "score": 1}]))
        extra = ("--detections", str(detections))
    assert_refused(finetune("pose", data, tmp_path / "out", world["export"], *extra), tmp_path / "out", *words)


def test_detected_boxes_are_scored_instead_of_the_truth(world, tmp_path: Path) -> None:
    document = json.loads(coco_file(world["coco"], "val").read_text())
    boxes = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
             for a in document["annotations"]]
    boxes += [{"image_id": a["image_id"], "category_id": 3, "bbox": a["bbox"], "score": 0.9}  # a car: not scored
              for a in document["annotations"][:2]]
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps(boxes))
    run_finetune(pose_config(world, tmp_path / "run", steps=1, detections=str(detections)))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["boxes"] == str(detections) and saved["persons"] == 16 and saved["not_person"] == 2


@pytest.mark.slow
def test_a_longer_pose_run_beats_its_own_step_0_ap(world, tmp_path: Path) -> None:
    big = write_layout("coco", SynthConfig(out=tmp_path / "coco", identities=30, images_per_id=4, cameras=3))
    start = run_finetune(pose_config({**world, "coco": big}, tmp_path / "start", steps=1, lr=0.0))
    trained = run_finetune(pose_config({**world, "coco": big}, tmp_path / "run", steps=400, batch_size=16, lr=1e-3,
                                       warmup=0.1, log_every=25))
    print(f"step-0 AP {start.results['ap']:.4f}, after 400 steps {trained.results['ap']:.4f}")
    assert trained.results["ap"] > start.results["ap"]
    assert trained.results["ar"] > start.results["ar"]
