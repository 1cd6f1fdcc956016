"""The four recipes: what a training batch holds, its loss, and the final evaluation.

A recipe is built from the config and the data the readers returned. Its
`load(rows, generator)` decodes and augments the images of one batch (in a
DataLoader worker when there are workers), `loss(outputs, batch)` returns the
loss and the statistics logged to metrics.jsonl, and `evaluate(model, ...)`
scores the fine-tuned model on the test split: re-ID on query/gallery with
the Market-1501 protocol (cosine similarity of the BNNeck features; with
`rerank` also k-reciprocal re-ranking of the distance 2 - 2 cos), attributes
on `test` (sigmoid > 0.5), parsing on `val` (logits upsampled to each label
map's own size; 255 ignored), pose on `val2017` (flip test, keypoints in
COCO's results format kept as `keypoints_val_results.json` in the run folder,
OKS AP by pycocotools' COCOeval; `clasp.finetune.pose`). Re-ranking runs over exactly the gallery that is
scored (junk was dropped when the folder was read). A metric without a value
is NaN carrying its reason (`clasp.evaluation.undefined`); `main_metric` names
the one whose absence fails the run.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clasp.evaluation.features import load_images
from clasp.datasets.keypoint_names import NUM_KEYPOINTS
from clasp.evaluation.metrics import ATTRIBUTE_UNDEFINED, NO_ATTRIBUTE, NO_PART, PART_UNDEFINED
from clasp.evaluation.undefined import PerItem, explain, failure_line
from clasp.finetune.augment import flip_pad_crop, flip_parsing, random_erasing
from clasp.finetune.batches import pk_batches, shuffled_batches
from clasp.finetune.config import FinetuneConfig
from clasp.finetune.losses import attribute_weights, batch_hard_triplet, weighted_bce
from clasp.finetune.model import AttributeHead, BNNeckHead, HeatmapHead, ParsingHead
from clasp.finetune.pose import POSE_HW, heatmap_loss, predict, training_batch
from clasp.common.person_size import PERSON_HW


def _batched_outputs(model, paths, batch_size: int, device, autocast, key: str) -> np.ndarray:
    out = []
    with torch.inference_mode(), autocast():
        for start in range(0, len(paths), batch_size):
            out.append(model(load_images(paths[start:start + batch_size]).to(device))[key].float().cpu().numpy())
    return np.concatenate(out)


class ReidRecipe:
    main_metric = "map"

    def __init__(self, config: FinetuneConfig, data) -> None:
        self.config, self.data = config, data
        self.batch_images = config.ids_per_batch * config.images_per_id

    def head(self, dim: int, grid) -> torch.nn.Module:
        return BNNeckHead(dim, self.data.num_classes)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        c = self.config
        return pk_batches(self.data.train_labels, c.ids_per_batch, c.images_per_id, c.seed, epoch)

    def load(self, rows: np.ndarray, gen: torch.Generator) -> dict[str, torch.Tensor]:
        images = random_erasing(flip_pad_crop(load_images([self.data.train_paths[r] for r in rows]), gen), gen)
        return {"images": images, "labels": torch.from_numpy(self.data.train_labels[rows])}

    def loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        identity = F.cross_entropy(out["logits"].float(), labels, label_smoothing=self.config.label_smoothing)
        triplet = batch_hard_triplet(out["feature"], labels, self.config.margin)
        accuracy = (out["logits"].argmax(1) == labels).float().mean()
        return identity + self.config.w_triplet * triplet, {"identity": identity, "triplet": triplet,
                                                            "accuracy": accuracy}

    def evaluate(self, model, device, autocast, log: Callable[[str], None]) -> dict:
        c, q, g = self.config, self.data.query, self.data.gallery
        log(f"evaluating on {len(q)} queries and {len(g)} gallery images")
        qf = _normalised(_batched_outputs(model, q.paths, c.eval_batch_size, device, autocast, "neck"))
        gf = _normalised(_batched_outputs(model, g.paths, c.eval_batch_size, device, autocast, "neck"))
        return {**reid_metrics(qf, gf, q, g, c, log), **self.data.dropped}


def reid_metrics(qf: np.ndarray, gf: np.ndarray, query, gallery, config: FinetuneConfig,
                 log: Callable[[str], None] = lambda _: None) -> dict:
    """Scores of L2-normalised query and gallery features; with `config.rerank` the re-ranked ones too,
    re-ranking over the very gallery that is scored."""
    from clasp.evaluation.metrics import reid_scores

    q, g = query, gallery
    score = reid_scores(qf @ gf.T, q.identity, q.camera, g.identity, g.camera)
    out = {"map": score.mAP, "rank1": score.rank1, "rank5": score.rank5, "rank10": score.rank10,
           "queries": score.queries, "gallery": len(g), "skipped_queries": score.skipped_queries}
    if config.rerank:
        from clasp.evaluation.rerank import re_rank

        log("k-reciprocal re-ranking")
        dist = re_rank(2 - 2 * qf @ gf.T, 2 - 2 * qf @ qf.T, 2 - 2 * gf @ gf.T, config.k1, config.k2,
                       config.rerank_lambda)
        ranked = reid_scores(-dist, q.identity, q.camera, g.identity, g.camera)
        out.update(map_rerank=ranked.mAP, rank1_rerank=ranked.rank1)
    return out


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class AttributeRecipe:
    main_metric = "ma"

    def __init__(self, config: FinetuneConfig, data) -> None:
        self.config, self.data = config, data
        self.batch_images = config.batch_size
        self.train = data.splits["train"]
        self.positive_ratio = torch.tensor(self.train.labels.mean(0), dtype=torch.float32)
        self.weights = attribute_weights(self.train.labels)

    def head(self, dim: int, grid) -> torch.nn.Module:
        return AttributeHead(dim, len(self.data.names))

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return shuffled_batches(len(self.train), self.config.batch_size, self.config.seed, epoch)

    def load(self, rows: np.ndarray, gen: torch.Generator) -> dict[str, torch.Tensor]:
        images = flip_pad_crop(load_images([self.train.paths[r] for r in rows]), gen)
        return {"images": images, "labels": torch.from_numpy(self.train.labels[rows].astype(np.float32))}

    def loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = weighted_bce(out["logits"], batch["labels"], self.positive_ratio.to(out["logits"].device))
        accuracy = ((out["logits"] > 0).float() == batch["labels"]).float().mean()
        return loss, {"bce": loss, "label_accuracy": accuracy}

    def evaluate(self, model, device, autocast, log: Callable[[str], None]) -> dict:
        from clasp.evaluation.metrics import instance_metrics, label_based_accuracy

        test = self.data.splits["test"]
        log(f"evaluating on {len(test)} test images")
        pred = _batched_outputs(model, test.paths, self.config.eval_batch_size, device, autocast, "logits") > 0
        per_attribute = label_based_accuracy(pred, test.labels)
        defined = np.isfinite(per_attribute)
        return {"ma": explain(np.nanmean(per_attribute) if defined.any() else float("nan"), NO_ATTRIBUTE),
                **instance_metrics(pred, test.labels), "images": len(test),
                "per_attribute": PerItem(self.data.names, per_attribute, ATTRIBUTE_UNDEFINED)}


class ParsingRecipe:
    main_metric = "miou"

    def __init__(self, config: FinetuneConfig, data) -> None:
        self.config, self.data = config, data
        self.batch_images = config.batch_size
        self.train = data.splits["train"]

    def head(self, dim: int, grid) -> torch.nn.Module:
        return ParsingHead(dim, self.data.num_classes, grid, self.config.head_dim)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return shuffled_batches(len(self.train), self.config.batch_size, self.config.seed, epoch)

    def load(self, rows: np.ndarray, gen: torch.Generator) -> dict[str, torch.Tensor]:
        from clasp.datasets.lip import read_label_map

        images = load_images([self.train.images[r] for r in rows])
        labels = [read_label_map(self.train.labels[r], self.data.num_classes) for r in rows]
        labels = torch.stack([_resize_label(label, PERSON_HW) for label in labels])
        images, labels = flip_parsing(images, labels, gen)
        return {"images": images, "labels": labels}

    def loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        logits = F.interpolate(out["logits"].float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        valid = labels != 255
        accuracy = ((logits.argmax(1) == labels) & valid).sum() / valid.sum().clamp_min(1)
        return loss, {"pixel_ce": loss, "pixel_accuracy": accuracy}

    def evaluate(self, model, device, autocast, log: Callable[[str], None]) -> dict:
        from clasp.datasets.lip import read_label_map
        from clasp.evaluation.metrics import confusion_matrix, iou_per_class

        val, k = self.data.splits["val"], self.data.num_classes
        log(f"evaluating on {len(val)} images")
        confusion = np.zeros((k, k), np.int64)
        size = self.config.eval_batch_size
        with torch.inference_mode(), autocast():
            for start in range(0, len(val), size):
                logits = model(load_images(val.images[start:start + size]).to(device))["logits"].float()
                for i, label_path in enumerate(val.labels[start:start + size]):
                    label = read_label_map(label_path, k)
                    up = F.interpolate(logits[i:i + 1], size=label.shape, mode="bilinear", align_corners=False)
                    pred = up.argmax(1)[0].cpu().numpy()
                    valid = label != 255
                    confusion += confusion_matrix(pred[valid], label[valid], k)
        iou = iou_per_class(confusion)
        return {"miou": explain(np.nanmean(iou) if np.isfinite(iou).any() else float("nan"), NO_PART),
                "images": len(val), "iou": PerItem(self.data.class_names, iou, PART_UNDEFINED)}


def _resize_label(label: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    if label.shape != hw:
        label = np.asarray(Image.fromarray(label).resize((hw[1], hw[0]), Image.NEAREST))
    return torch.from_numpy(label.astype(np.int64))


class PoseRecipe:
    main_metric = "ap"
    input_hw = POSE_HW  # the backbone's position embedding is resized to it once, when loaded

    def __init__(self, config: FinetuneConfig, data) -> None:
        self.config, self.data = config, data
        self.batch_images = config.batch_size
        self.train = data.train

    def head(self, dim: int, grid) -> torch.nn.Module:
        return HeatmapHead(dim, NUM_KEYPOINTS, self.input_hw)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return shuffled_batches(len(self.train), self.config.batch_size, self.config.seed, epoch)

    def load(self, rows: np.ndarray, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return training_batch(self.train, rows, gen, self.input_hw)

    def loss(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = heatmap_loss(out["heatmaps"], batch["heatmaps"], batch["weights"])
        return loss, {"heatmap_mse": loss}

    def evaluate(self, model, device, autocast, log: Callable[[str], None]) -> dict:
        from pathlib import Path

        from clasp.evaluation.oks import (KEYPOINT_RESULTS, coco_keypoint_ap, keypoint_results, nms_per_image,
                                          write_keypoint_results)

        val = self.data.val
        log(f"evaluating on {len(val)} persons of {len(np.unique(val.image_ids))} images")
        keypoints, scores = predict(model, val, self.config.eval_batch_size, device, autocast, self.input_hw)
        kept = nms_per_image(val, keypoints, scores, self.input_hw)
        path = Path(self.config.out) / KEYPOINT_RESULTS
        write_keypoint_results(path, keypoint_results(val.image_ids[kept], keypoints[kept], scores[kept]))
        return {**coco_keypoint_ap(val.annotation_file, path), "persons": len(val), "scored_persons": len(kept),
                "boxes": self.config.detections or "ground truth", "results_file": KEYPOINT_RESULTS, **val.dropped}


RECIPES = {"reid": ReidRecipe, "attributes": AttributeRecipe, "parsing": ParsingRecipe, "pose": PoseRecipe}


def unscored_main_metric(task: str, results: dict) -> str | None:
    """The error line's text when the run's main metric has no value (its results file is written first)."""
    detail = f" ({results.get('skipped_queries')} queries, all skipped)" if task == "reid" else ""
    return failure_line(results, RECIPES[task].main_metric, results.get("data"), detail)
