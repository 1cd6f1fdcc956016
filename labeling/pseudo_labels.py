"""From joint-space features to the stored labels: part masks, their confidence, attribute logits.

Logits are CLIP's own zero-shot logits, `logit_scale.exp() * cosine`, so a
softmax over them is CLIP's class probability and stage two can re-temper them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clasp.labeling.text_embeddings import TextEmbeddings


def part_logits(patches: torch.Tensor, text: TextEmbeddings, logit_scale: torch.Tensor) -> torch.Tensor:
    """(N, h, w, P) scaled cosines over [background, parts...]; background = its best scene prompt."""
    cells = F.normalize(patches.float(), dim=-1)
    background = (cells @ text.background.T).amax(dim=-1, keepdim=True)
    parts = cells @ text.parts.T
    return logit_scale.float().exp() * torch.cat([background, parts], dim=-1)


def part_labels(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(part index (N, h, w) uint8, its softmax probability (N, h, w) float32)."""
    index = logits.argmax(dim=-1, keepdim=True)
    probability = logits.softmax(dim=-1).gather(-1, index)
    return index[..., 0].to(torch.uint8), probability[..., 0]


def attribute_logits(image: torch.Tensor, text: TextEmbeddings, logit_scale: torch.Tensor) -> torch.Tensor:
    """(N, A) scaled cosines of the image embedding with each attribute value, in column order."""
    return logit_scale.float().exp() * (F.normalize(image.float(), dim=-1) @ text.attributes.T)
