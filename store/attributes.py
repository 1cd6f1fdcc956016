"""Reading `attr_logits` the way the vocabulary means it: one softmax per group.

Values within a group are mutually exclusive, so "the" attribute of an image in
a group is the argmax over that group's columns, and its confidence is the
softmax probability within the group. The stored logits are CLIP's scaled
cosines (logit scale included), used here as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clasp.store.vocabulary import Vocabulary


def group_argmax(attr_logits: np.ndarray, vocab: Vocabulary) -> list[np.ndarray]:
    """For each group, the index (within the group) of each row's top value: a list of (N,) arrays."""
    logits = np.asarray(attr_logits, dtype=np.float32)
    return [np.argmax(logits[:, cols], axis=1) for _, cols in vocab.group_slices()]


def group_probabilities(logits_row: np.ndarray, vocab: Vocabulary) -> list[np.ndarray]:
    """Softmax within each group for one row of `attr_logits`."""
    row = np.asarray(logits_row, dtype=np.float64)
    out = []
    for _, cols in vocab.group_slices():
        z = row[cols] - np.max(row[cols])
        e = np.exp(z)
        out.append(e / e.sum())
    return out


@dataclass(frozen=True)
class TopValue:
    group: str
    value: str
    probability: float
    # (p - 1/K) / (1 - 1/K) for a group of K values: 0 = no better than chance,
    # 1 = certain. Ranks a 2-value and a 10-value group on the same scale.
    confidence: float


def top_values(logits_row: np.ndarray, vocab: Vocabulary, k: int | None = None) -> list[TopValue]:
    """Each group's top value with its probability, most confident groups first (at most `k`)."""
    tops = []
    for group, probs in zip(vocab.attributes, group_probabilities(logits_row, vocab)):
        best = int(np.argmax(probs))
        chance = 1.0 / len(probs)
        p = float(probs[best])
        tops.append(TopValue(group.group, group.values[best].name, p, (p - chance) / (1.0 - chance)))
    tops.sort(key=lambda t: -t.confidence)  # stable: ties keep vocabulary order
    return tops if k is None else tops[:k]
