"""What the part and attribute losses would end at if the backbone ignored the image.

A training loss only says the backbone learned something when it ends below the
value a model reaches *without looking*: one that predicts the same thing for
every image (it can still learn the label frequencies through its biases).

- Part loss (cross-entropy on the cells kept by the confidence threshold): the
  best constant prediction is the label frequency p̄, and its loss is the entropy
  H(p̄) of the store's part labels.
- Attribute loss (KL from each row's target softmax t to the prediction, mean over
  groups): the best constant prediction is the mean target t̄, and its loss is
  mean_rows KL(t ‖ t̄). For near one-hot targets (ground truth) this is the
  entropy of the value frequencies; for a CLIP whose targets are almost uniform it
  is close to 0 — which is why `ln k`, the loss of a uniform guess, is reported
  beside it but is not the bar: a near-uniform CLIP's loss of 0.1 is below ln k
  and still says nothing.

Both are measured on the store as written, before cropping (crops sample cells
with slightly different frequencies, so read them to about ±0.05).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clasp.pretraining.model import LossConfig
from clasp.store import ShardStore


@dataclass
class NoInformationLosses:
    part: float  # entropy of the kept cells' part labels
    attribute: float  # mean over groups of mean_rows KL(target ‖ mean target)
    attribute_uniform: float  # mean over groups of ln k: a uniform guess

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / max(counts.sum(), 1)
    return max(0.0, float(-(p * np.log(p)).sum()))  # one label alone: 0, not -0


def mean_kl_to_mean(targets: np.ndarray) -> float:
    """mean_i KL(t_i ‖ t̄) for rows t_i of probabilities, t̄ their mean."""
    mean = targets.mean(0, keepdims=True)
    safe = np.clip(targets, 1e-12, None)
    return float((targets * (np.log(safe) - np.log(np.clip(mean, 1e-12, None)))).sum(1).mean())


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def no_information_losses(shards: str | Path, conf_threshold: float = LossConfig.part_conf_threshold,
                          attr_temperature: float = LossConfig.attr_temperature) -> NoInformationLosses:
    """The two no-information values of a store, with pre-training's default loss settings."""
    store = ShardStore.open(shards)
    vocab = store.manifest.vocab
    part_counts = np.zeros(vocab.num_parts, np.int64)
    logits = []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            rows = shard.read(fields=("part_mask", "part_conf", "attr_logits"))
        kept = rows.part_conf.astype(np.float32) >= conf_threshold
        part_counts += np.bincount(rows.part_mask[kept].astype(np.int64), minlength=vocab.num_parts)
        logits.append(rows.attr_logits.astype(np.float64))
    table = np.concatenate(logits) if logits else np.zeros((0, vocab.num_attributes))
    groups = [columns for _, columns in vocab.group_slices()]
    attribute = float(np.mean([mean_kl_to_mean(softmax(table[:, c], attr_temperature)) for c in groups])) \
        if len(table) else 0.0
    return NoInformationLosses(part=entropy(part_counts), attribute=attribute,
                               attribute_uniform=float(np.mean([math.log(c.stop - c.start) for c in groups])))
