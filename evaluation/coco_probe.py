"""The frozen pose probe on a COCO person-keypoints folder: `clasp eval --data COCO_DIR`.

The chain, one named step each:

    `read_coco_pose` (train; val with ground-truth or detected boxes)
    -> `training_sample`: at most `pose_train_instances` training persons, drawn with SAMPLE_SEED
    -> `crop_batches`: each box grown to the backbone's own input aspect (the export's image size,
       e.g. 256 x 128: the export is used as it is, no position-embedding resize) x 1.25, cut out unrotated
    -> `_tokens`: the frozen backbone's patch tokens, one batch at a time
    -> train: `fit_pose_probe` on (tokens, keypoints moved into the crop) as they come
       val: `predict_pose`, the keypoints moved back from the crop to the image (`to_image`)
    -> COCO results file (`KEYPOINT_RESULTS`) -> COCOeval.

Invariants: the tokens of at most one batch are held at a time (the probe keeps
only its sums), so memory does not grow with the 150k persons of COCO train;
the training sample is a function of (number of persons, cap, seed) alone; a
person's score is its box score times the mean keypoint peak above 0.2, and
OKS-NMS keeps one of each overlapping set per image, as `clasp finetune pose`
scores. No flip test: the probe of the synthetic world has none either.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from clasp.datasets.coco_keypoints import PoseInstances
from clasp.evaluation.features import Features, batch_features, finite_features, native_hw
from clasp.evaluation.oks import (KEYPOINT_RESULTS, coco_keypoint_ap, keypoint_results, nms_per_image,
                                  write_keypoint_results)
from clasp.evaluation.pose_crops import crop_instances, expand_boxes, to_crop, to_image
from clasp.evaluation.probes import PoseProbe, fit_pose_probe, predict_pose

SAMPLE_SEED = 0


def training_sample(n: int, cap: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted rows of at most `cap` of `n` persons: all of them when they fit, else drawn without replacement."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def crop_batches(instances: PoseInstances, rows: np.ndarray, input_hw: tuple[int, int],
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, crops (B, H, W, 3) uint8, image-to-crop maps (B, 2, 3)) of the persons `rows`, a batch at a time."""
    centres, sizes = expand_boxes(instances.boxes[rows], input_hw)
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        paths = [instances.image_paths[r] for r in rows[part]]
        yield (rows[part], *crop_instances(paths, centres[part], sizes[part], input_hw))


def _tokens(extractor, crops: np.ndarray, autocast, backbone) -> np.ndarray:
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    cls, patches = batch_features(extractor, images, autocast=autocast)
    return finite_features(Features(cls, patches, None), backbone).patches


def fit_on_crops(extractor, train: PoseInstances, rows: np.ndarray, input_hw: tuple[int, int], config,
                 autocast) -> PoseProbe:
    """The pose probe fitted on the crops of the training persons `rows`, streamed batch by batch."""
    chunks = ((_tokens(extractor, crops, autocast, config.backbone), to_crop(matrices, train.keypoints[part]))
              for part, crops, matrices in crop_batches(train, rows, input_hw, config.batch_size))
    return fit_pose_probe(chunks, input_hw, config.probe)


def predict_on_crops(extractor, probe: PoseProbe, val: PoseInstances, config,
                     autocast) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (n, 17, 3) image x, y and peak; person scores (n,)) of every person of `val`."""
    keypoints, scores = [], []
    for _, crops, matrices in crop_batches(val, np.arange(len(val)), probe.image_hw, config.batch_size):
        found = predict_pose(probe, _tokens(extractor, crops, autocast, config.backbone), config.probe)
        points = found["keypoints"]
        keypoints.append(np.concatenate([to_image(matrices, points[..., :2]), points[..., 2:]], -1))
        scores.append(found["scores"])
    return np.concatenate(keypoints), val.scores * np.concatenate(scores)


@contextlib.contextmanager
def _results_file(out: Path | None):
    """KEYPOINT_RESULTS beside the results file `out`, or in a temporary folder when there is none."""
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        yield Path(out).parent / KEYPOINT_RESULTS
        return
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / KEYPOINT_RESULTS


def evaluate_coco(coco: tuple[PoseInstances, PoseInstances], extractor, config, autocast,
                  log: Callable[[str], None]) -> dict:
    """`clasp eval`'s results for a COCO folder; `config` is its EvalConfig."""
    train, val = coco
    hw = native_hw(extractor)
    rows = training_sample(len(train), config.pose_train_instances)
    start = time.perf_counter()
    log(f"pose probe: fitting on {len(rows)} of {len(train)} training persons ({hw[0]}x{hw[1]} crops)")
    probe = fit_on_crops(extractor, train, rows, hw, config, autocast)
    fitted = time.perf_counter()
    log(f"pose probe: predicting {len(val)} validation persons")
    keypoints, scores = predict_on_crops(extractor, probe, val, config, autocast)
    kept = nms_per_image(val, keypoints, scores, hw)
    with _results_file(config.out) as path:
        write_keypoint_results(path, keypoint_results(val.image_ids[kept], keypoints[kept], scores[kept]))
        scored = coco_keypoint_ap(val.annotation_file, path)
    pose = {**scored, "instances_train": len(rows), "instances_val": len(val), "scored_persons": len(kept),
            "train_sample": {"of": len(train), "cap": config.pose_train_instances, "seed": SAMPLE_SEED},
            "boxes": str(config.detections) if config.detections else "ground truth", "input_hw": list(hw),
            "dropped_train": train.dropped, "dropped_val": val.dropped,
            "rule": "pose probe on the patch tokens of each person's crop, fitted on a sample of train; "
                    "val's keypoints back in image pixels, OKS AP by COCOeval"}
    if config.out is not None:
        pose["results_file"] = KEYPOINT_RESULTS
    return {"images": len(rows) + len(val), "feature_dim": int(probe.mean.shape[1]), "pose": pose,
            "seconds": {"pose_fit": fitted - start, "pose_val": time.perf_counter() - fitted}}
