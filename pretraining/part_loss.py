"""Per-token cross-entropy against CLIP's part mask of each global crop.

Cells whose CLIP confidence (`part_conf`) is below `conf_threshold` are left out:
with the default six classes a uniform guess has probability 1/6, and cells a
crop pushed outside the image carry confidence 0, so the default 0.3 keeps the
cells CLIP was reasonably sure about. When every cell of a batch is left out the
loss is 0 (still in the graph, so every parameter gets a gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PartLossConfig:
    conf_threshold: float = 0.3


class PartLoss(nn.Module):
    def __init__(self, config: PartLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or PartLossConfig()

    def forward(self, logits: torch.Tensor, part_mask: torch.Tensor,
                part_conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (..., N, P); part_mask, part_conf (..., h, w) with h·w = N.

        Returns (loss, fraction of cells kept).
        """
        logits = logits.float().reshape(-1, logits.shape[-1])
        target = part_mask.reshape(-1).long()
        keep = part_conf.reshape(-1) >= self.config.conf_threshold
        if logits.shape[0] != target.shape[0]:
            raise ValueError(f"{logits.shape[0]} part predictions for {target.shape[0]} mask cells")
        per_cell = F.cross_entropy(logits, target, reduction="none")
        kept = keep.sum()
        loss = (per_cell * keep).sum() / kept.clamp(min=1)
        return loss, kept.float() / keep.numel()
