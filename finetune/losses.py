"""The recipes' losses, each as its baseline defines it (their schedule: `clasp.runs.schedules`).

- `batch_hard_triplet` (Hermans et al. 2017, used by BNNeck/strong baseline):
  Euclidean distances within the batch; per anchor the farthest image of its
  identity and the nearest of another; mean of max(0, d_ap - d_an + margin).
- identity loss: cross-entropy with label smoothing eps, targets
  (1 - eps) * onehot + eps / C (torch's `label_smoothing` computes exactly this).
- `attribute_weights` / `weighted_bce` (DeepMAR, the pedestrian-attribute
  baseline): with r_j the share of positives of attribute j in the training
  split, a positive label weighs exp(1 - r_j) and a negative exp(r_j).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    squared = (x * x).sum(1, keepdim=True)
    d2 = squared + squared.t() - 2 * x @ x.t()
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    dist = pairwise_distances(features.float())
    same = labels[:, None] == labels[None, :]
    hardest_positive = (dist * same).max(1).values
    hardest_negative = dist.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def attribute_weights(train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive weight, negative weight) per attribute from an (N, A) 0/1 training label matrix."""
    ratio = np.asarray(train_labels, np.float64).mean(0)
    return np.exp(1 - ratio), np.exp(ratio)


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, positive_ratio: torch.Tensor) -> torch.Tensor:
    targets = targets.float()
    weight = torch.where(targets > 0.5, torch.exp(1 - positive_ratio), torch.exp(positive_ratio))
    return F.binary_cross_entropy_with_logits(logits.float(), targets, weight=weight)
