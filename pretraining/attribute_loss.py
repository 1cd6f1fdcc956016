"""Distils CLIP's attribute logits into the attribute head, one softmax per attribute group.

For each group g (values mutually exclusive):

    KL( softmax(clip_logits[g] / T) ‖ softmax(prediction[g]) )

averaged over the batch ("batchmean") and then over groups. T = 1 keeps CLIP's
own zero-shot distribution (its logits already carry CLIP's logit scale);
larger T softens it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttributeLossConfig:
    """`groups`: (start, stop) columns of each group in `attr_logits`, as `Vocabulary.group_slices()` gives them."""

    groups: tuple[tuple[int, int], ...] = ()
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.groups = tuple((int(a), int(b)) for a, b in self.groups)

    @property
    def num_attributes(self) -> int:
        return max((stop for _, stop in self.groups), default=0)


class AttributeLoss(nn.Module):
    def __init__(self, config: AttributeLossConfig) -> None:
        super().__init__()
        if not config.groups:
            raise ValueError("the attribute loss needs at least one attribute group")
        self.config = config

    def forward(self, prediction: torch.Tensor, clip_logits: torch.Tensor) -> torch.Tensor:
        """prediction, clip_logits: (B, A)."""
        prediction, clip_logits = prediction.float(), clip_logits.float()
        losses = []
        for start, stop in self.config.groups:
            target = (clip_logits[:, start:stop] / self.config.temperature).log_softmax(-1)
            predicted = prediction[:, start:stop].log_softmax(-1)
            losses.append(F.kl_div(predicted, target, reduction="batchmean", log_target=True))
        return torch.stack(losses).mean()
