"""An exported backbone with a task head, and its parameter groups.

- re-ID (`BNNeckHead`, Luo et al. 2019): the CLS feature f trains the triplet
  loss; BatchNorm(f) (no bias learned) feeds a bias-free linear identity
  classifier; retrieval uses BatchNorm(f).
- attributes (`AttributeHead`): one linear layer on CLS, one logit per attribute.
- parsing (`ParsingHead`): the patch tokens as a (D, 16, 8) map, two 3x3
  convolutions with BatchNorm and ReLU, each followed by x2 bilinear
  upsampling, and a 1x1 classifier: logits at a quarter of the input size,
  brought to the label size by bilinear upsampling for the loss and mIoU.
- pose (`HeatmapHead`): ViTPose's "simple" decoder: the patch tokens as a
  map, ReLU, bilinear upsampling to a quarter of the input size (x4 for patch
  16) and one 3x3 convolution to a heat map per keypoint. ViTPose measured it
  within 0.3 AP of the classic two deconvolutions on ViT-B and it costs a
  fraction of their compute: the backbone's features, not the head, carry the
  pose.

`param_groups`: weight decay on weights only (biases, norms, position
embedding, CLS token and task prompts exempt, as pre-training does); with
layer-wise decay every group carries `lr_scale = layer_decay ** (depth + 1 -
layer)`, where the patch embedding is layer 0, block i is layer i + 1 (MoE
blocks continue the count, task prompts sit with the first MoE block) and the
final norm and the head are layer depth + 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NO_DECAY = ("cls_token", "pos_embed", "task_prompts")


class BNNeckHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = nn.BatchNorm1d(dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        neck = self.bottleneck(cls.float())
        return {"feature": cls, "neck": neck, "logits": self.classifier(neck)}


class AttributeHead(nn.Module):
    def __init__(self, dim: int, num_attributes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_attributes)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.linear(cls)}


class ParsingHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, grid: tuple[int, int], hidden: int = 128) -> None:
        super().__init__()
        self.grid = grid
        self.conv1 = nn.Sequential(nn.Conv2d(dim, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.classifier = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n, d = patches.shape
        x = patches.transpose(1, 2).reshape(b, d, *self.grid)
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=False)
        x = F.interpolate(self.conv2(x), scale_factor=2, mode="bilinear", align_corners=False)
        return {"logits": self.classifier(x)}


class HeatmapHead(nn.Module):
    def __init__(self, dim: int, keypoints: int, input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.input_hw = input_hw
        self.final = nn.Conv2d(dim, keypoints, 3, padding=1)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        from clasp.evaluation.features import patch_grid
        from clasp.evaluation.heatmaps import heatmap_hw

        b, n, d = patches.shape
        x = patches.transpose(1, 2).reshape(b, d, *patch_grid(n, self.input_hw))
        x = F.interpolate(F.relu(x), size=heatmap_hw(self.input_hw), mode="bilinear", align_corners=False)
        return {"heatmaps": self.final(x)}


class FinetuneModel(nn.Module):
    """images (B, 3, H, W), uint8 or float in [0, 1] -> the head's outputs."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone  # a TaskBackbone from load_backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        cls, patches = self.backbone(images)
        return self.head(cls, patches)


def layer_of(name: str, num_shared: int, depth: int) -> int:
    name = name.removeprefix("backbone.backbone.")
    if name.startswith(("patch_embed", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith("moe_blocks."):
        return num_shared + int(name.split(".")[1]) + 1
    if name.startswith("task_prompts"):
        return num_shared + 1
    return depth + 1  # final norm and the head


def param_groups(model: FinetuneModel, weight_decay: float, layer_decay: float) -> list[dict]:
    vit = model.backbone.backbone
    depth, num_shared = vit.config.depth, vit.num_shared
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_of(name, num_shared, depth)
        decay = param.ndim > 1 and not name.rsplit(".", 1)[-1] in NO_DECAY
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer), "name": f"layer{layer}-{'decay' if decay else 'no_decay'}"})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]
