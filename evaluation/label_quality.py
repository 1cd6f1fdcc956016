"""`clasp eval-labels`: how good are the pseudo-labels of a store, against synthetic ground truth?

Shard rows are matched to the truth by content: a row's `key` (the sha1 of the
source file's bytes, written by `clasp label`) against the sha1 of each image
file of the world (`images/`), computed while reading the truth. Where several
world images have the same bytes, the one at the row's `path` (relative to the
folder given to `clasp label`; a leading `images/` is dropped) is taken. A
store none of whose keys is an image of the world is refused: same file names
do not make another world's labels comparable. For the matched rows:

- parts: the truth mask (256x128 pixels) is brought down to the manifest's
  label grid by majority per cell (`clasp.datasets.label_grid`), parts are
  matched by name, and IoU per part is accumulated over all cells of all rows;
  mIoU is the mean over parts present in truth or labels (background included).
- attributes: within each group the value with the highest `attr_logits` is the
  label; accuracy per group is the share of rows where it equals the truth.
  Groups are matched by name; chance (1 / number of values) is reported beside.
- attribute mA, as pedestrian attribute recognition defines it
  (`clasp.evaluation.metrics.mean_accuracy`): each group becomes binary
  attributes (a two-value group one, a k-value group k one-vs-rest), each gets
  the mean of its positive and negative recall, mA is their mean. Rows whose
  truth lacks a group value the vocabulary knows are left out of mA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clasp.datasets.attribute_data import binary_attribute_names, binary_attributes
from clasp.evaluation.config import LabelQualityConfig  # the settings of `clasp eval-labels`
from clasp.evaluation.errors import EvalInputError
from clasp.datasets.label_grid import majority_downsample
from clasp.evaluation.metrics import (ATTRIBUTE_UNDEFINED, NO_ATTRIBUTE, NO_PART, PART_UNDEFINED,
                                      confusion_matrix, iou_per_class,
                                      label_based_accuracy, mean_iou)
from clasp.evaluation.results_json import write_results
from clasp.evaluation.undefined import PerItem, explain
from clasp.datasets.truth import SynthTruth, truth_path_of
from clasp.store import ShardStore
from clasp.common.percent import percent

READ_FIELDS = ("key", "path", "part_mask", "attr_logits")
GROUP_UNDEFINED = "no matched row has a truth value for the group"


def evaluate_labels(config: LabelQualityConfig) -> dict:
    store = ShardStore.open(config.shards)
    truth = SynthTruth.load(config.truth)
    vocab, grid = store.manifest.vocab, tuple(store.manifest.label_grid)
    truth_to_store = _truth_part_map(config.shards, truth, vocab.part_names)
    truth_groups = {g for attrs in truth.attributes[:1] for g in attrs}
    groups = [(g, sl) for g, sl in vocab.group_slices() if g in truth_groups]
    values = {g.group: [v.name for v in g.values] for g in vocab.attributes}
    scores = _Scores(truth, vocab.num_parts, grid, truth_to_store, groups, _truth_values(truth, groups, values))
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            for block in shard.iter_chunks(READ_FIELDS):
                scores.add(block)
    if scores.matched == 0:
        raise EvalInputError(f"{config.shards}: none of its {scores.rows} rows is an image of the world {truth.root} "
                             f"(no row's key, the sha1 of its source file, matches a file in {truth.images_dir}); "
                             "the store was labeled from other images")
    results = _label_results(config, truth, vocab.part_names, grid, groups, values, scores)
    if config.out is not None:
        write_results(config.out, results)
    return results


def _truth_part_map(shards: Path, truth: SynthTruth, part_names: list[str]) -> np.ndarray:
    """Truth part index -> the store's part index, matched by name; every truth part must be in the store."""
    part_index = {name: i for i, name in enumerate(part_names)}
    missing_parts = [p for p in truth.part_names if p not in part_index]
    if missing_parts:
        raise EvalInputError(f"{shards}: the store's vocabulary lacks the truth's parts {missing_parts}")
    return np.array([part_index[p] for p in truth.part_names], np.uint8)


def _truth_values(truth: SynthTruth, groups: list, values: dict[str, list[str]]) -> np.ndarray:
    """(truth images, groups) index of each image's true value in the vocabulary's group, -1 where unknown."""
    truth_values = np.full((len(truth), len(groups)), -1, np.int64)
    for k, (g, _) in enumerate(groups):
        lookup = {v: i for i, v in enumerate(values[g])}
        truth_values[:, k] = [lookup.get(a.get(g), -1) for a in truth.attributes]
    return truth_values


class _Scores:
    """Sums over the store's rows that match a world image: part confusion on the label grid, attribute hits."""

    def __init__(self, truth: SynthTruth, num_parts: int, grid: tuple[int, int], truth_to_store: np.ndarray,
                 groups: list, truth_values: np.ndarray) -> None:
        self.truth, self.num_parts, self.grid, self.truth_to_store = truth, num_parts, grid, truth_to_store
        self.groups, self.truth_values = groups, truth_values
        self.match = _content_matcher(truth)
        self.names, self.same_name = set(truth.paths), 0  # rows named like a world image whose bytes differ
        self.confusion = np.zeros((num_parts, num_parts), np.int64)
        self.correct = np.zeros(len(groups), np.int64)
        self.scored = np.zeros(len(groups), np.int64)
        self.rows = self.matched = 0
        self.seen = np.zeros(len(truth), bool)
        self.predicted_values: list[np.ndarray] = []
        self.wanted_values: list[np.ndarray] = []

    def add(self, block) -> None:
        """Match a block's rows to world images by content and score those that match."""
        self.rows += len(block.path)
        hits = [(r, self.match(k, p)) for r, (k, p) in enumerate(zip(block.key, block.path))]
        self.same_name += sum(1 for (_, t), p in zip(hits, block.path) if t < 0 and truth_path_of(p) in self.names)
        hits = [(r, t) for r, t in hits if t >= 0]
        if not hits:
            return
        local = np.array([r for r, _ in hits])
        ti = np.array([t for _, t in hits])
        self.matched += len(hits)
        self.seen[ti] = True
        self._score_parts(block.part_mask[local], ti)
        self._score_attributes(block.attr_logits[local].astype(np.float32), ti)

    def _score_parts(self, part_mask: np.ndarray, ti: np.ndarray) -> None:
        truth_masks = majority_downsample(self.truth.read_masks(ti), self.grid, len(self.truth.part_names))
        self.confusion += confusion_matrix(part_mask, self.truth_to_store[truth_masks], self.num_parts)

    def _score_attributes(self, logits: np.ndarray, ti: np.ndarray) -> None:
        self.predicted_values.append(np.stack([logits[:, sl].argmax(1) for _, sl in self.groups], axis=1)
                                     if self.groups else np.zeros((len(ti), 0), np.int64))
        self.wanted_values.append(self.truth_values[ti])
        for k, (_, sl) in enumerate(self.groups):
            want = self.truth_values[ti, k]
            ok = want >= 0
            self.correct[k] += int((logits[ok, sl].argmax(1) == want[ok]).sum())
            self.scored[k] += int(ok.sum())


def _label_results(config: LabelQualityConfig, truth: SynthTruth, part_names: list[str], grid: tuple[int, int],
                   groups: list, values: dict[str, list[str]], scores: _Scores) -> dict:
    """The results document: counts of rows, IoU per part and mIoU, accuracy per group, chance and mA."""
    iou = iou_per_class(scores.confusion)
    accuracy = PerItem([g for g, _ in groups], [scores.correct[k] / scores.scored[k] if scores.scored[k] else float("nan")
                                                for k in range(len(groups))], GROUP_UNDEFINED)
    return {
        "shards": str(config.shards), "truth": str(truth.root), "label_grid": list(grid),
        "rows": scores.rows, "matched_rows": scores.matched, "unmatched_rows": scores.rows - scores.matched,
        "matching": "row key (sha1 of the source file) equal to the sha1 of a world image file",
        "unmatched_rows_named_like_world_images": scores.same_name,
        "truth_images_not_in_store": int((~scores.seen).sum()),
        "grid_rule": "truth mask downsampled to the label grid by majority per cell, ties to the lower part index",
        "parts": {"iou": PerItem(part_names, iou, PART_UNDEFINED),
                  "mIoU": explain(mean_iou(scores.confusion), NO_PART)},
        "attributes": {"accuracy": accuracy,
                       "chance": {g: 1.0 / len(values[g]) for g, _ in groups},
                       "mean_accuracy": explain(np.mean(list(accuracy.values())) if accuracy else float("nan"),
                                                GROUP_UNDEFINED),
                       **_attribute_ma(groups, values, np.concatenate(scores.predicted_values),
                                       np.concatenate(scores.wanted_values))},
    }


def _content_matcher(truth: SynthTruth):
    """(key, path) of a shard row -> index of the world image with those bytes, or -1."""
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(truth.file_sha1()):
        if key is not None:
            by_key.setdefault(key, []).append(i)
    if not by_key:
        raise EvalInputError(f"{truth.images_dir}: no image files of the world to match the store's rows against "
                             "(eval-labels matches rows by the sha1 of the source images)")

    def match(key, path: str) -> int:
        found = by_key.get(key.decode("ascii", "replace") if isinstance(key, bytes) else str(key))
        if not found:
            return -1
        if len(found) > 1:
            wanted = truth_path_of(path)
            return next((i for i in found if truth.paths[i] == wanted), found[0])
        return found[0]

    return match


def _attribute_ma(groups: list, values: dict[str, list[str]], predicted: np.ndarray, wanted: np.ndarray) -> dict:
    """{"mA": ..., "mA_per_attribute": {"group=value": ...}} over rows whose truth knows every group."""
    complete = (wanted >= 0).all(axis=1)
    sizes = [len(values[g]) for g, _ in groups]
    accuracy = label_based_accuracy(binary_attributes(predicted[complete], sizes), binary_attributes(wanted[complete], sizes))
    names = binary_attribute_names([(g, values[g]) for g, _ in groups])
    defined = accuracy[np.isfinite(accuracy)]
    return {"mA": explain(defined.mean() if len(defined) else float("nan"), NO_ATTRIBUTE),
            "mA_per_attribute": PerItem(names, accuracy, ATTRIBUTE_UNDEFINED)}


def format_label_quality(results: dict) -> str:
    lines = [f"{results['matched_rows']} of {results['rows']} rows matched the ground truth by content "
             f"(label grid {results['label_grid'][0]}x{results['label_grid'][1]})", "", "part          IoU"]
    for name, value in results["parts"]["iou"].items():
        lines.append(f"{name:<12} {percent(value, 6, 2)}")
    lines.append(f"{'mIoU':<12} {percent(results['parts']['mIoU'], 6, 2)}")
    lines += ["", f"{'attribute group':<18} accuracy  chance"]
    for name, value in results["attributes"]["accuracy"].items():
        lines.append(f"{name:<18} {percent(value, 6, 2)}  {percent(results['attributes']['chance'][name], 6, 2)}")
    lines.append(f"{'mean':<18} {percent(results['attributes']['mean_accuracy'], 6, 2)}")
    lines.append(f"{'mA':<18} {percent(results['attributes'].get('mA', float('nan')), 6, 2)}")
    return "\n".join(lines)
