"""The three heads on top of the backbone's task branches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP → L2-normalised bottleneck → weight-normalised prototypes.

    The last layer is DINO's `weight_norm` with the norm frozen at 1
    (`norm_last_layer=True`), written directly: the prototypes are the rows of
    `last_layer.weight` divided by their norm. That keeps plain parameter names
    (`last_layer.weight`) for checkpoints and the teacher EMA.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.last_layer.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=-1))


class PartHead(nn.Module):
    """Per-token linear classifier: patches (B, N, D) → part logits (B, N, num_parts).

    No extra norm: the backbone's final LayerNorm already precedes it.
    """

    def __init__(self, dim: int, num_parts: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_parts)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.classifier(patches)


class AttributeHead(nn.Module):
    """Linear classifier on the attribute branch's CLS: (B, D) → (B, A) logits, softmaxed per group by the loss."""

    def __init__(self, dim: int, num_attributes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_attributes)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.classifier(cls)
