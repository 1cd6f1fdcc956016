"""The batch that the shard stream yields and the model consumes.

Crops travel as uint8 (4× less to copy out of DataLoader workers than float32);
the backbone converts and normalises them itself, so an exported backbone takes
the same images the training stream produced.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class MultiCropBatch:
    global_crops: torch.Tensor  # (G, B, 3, 256, 128) uint8
    local_crops: torch.Tensor  # (L, B, 3, 128, 64) uint8; L may be 0
    part_mask: torch.Tensor  # (G, B, 16, 8) int64: part index per token of each global crop
    part_conf: torch.Tensor  # (G, B, 16, 8) float32: CLIP's probability of that part
    attr_logits: torch.Tensor  # (B, A) float32: CLIP attribute logits in manifest order
    row_id: torch.Tensor  # (B,) int64: global row index (rows of earlier shards + row in shard)

    @property
    def batch_size(self) -> int:
        return int(self.row_id.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MultiCropBatch":
        return MultiCropBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                                 for f in fields(self)})

    def pin_memory(self) -> "MultiCropBatch":
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        return MultiCropBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})
