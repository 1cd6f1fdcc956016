"""Loading an exported backbone: `load_backbone(DIR)` -> a plain `torch.nn.Module`.

An export folder (written by `clasp export`, see export.py) holds

```
model.safetensors   the backbone's weights only, keys as in PromptedViT.state_dict()
                    (patch_embed.*, cls_token, pos_embed, blocks.N.*, moe_blocks.N.*, task_prompts, norm.*)
config.json         {"format": "clasp-backbone", "version": 1, "architecture": ViTConfig fields,
                     "task": the task prompt, "image_hw": [256, 128], "normalization": {...}, ...}
```

Exports written before `num_experts` was renamed `experts` still load:
`ViTConfig.from_dict` reads the older names (`RENAMED_FIELDS` in vit.py).

This module needs only torch, safetensors and the backbone definition
(vit.py, moe.py): no training code, no store, no model heads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from clasp.hardware import available_memory
from clasp.pretraining.vit import TASKS, PromptedViT, TaskBackbone, ViTConfig

BACKBONE_FORMAT = "clasp-backbone"
BACKBONE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class BackboneError(ValueError):
    """An export folder that cannot be loaded; the message names the file."""


def read_backbone_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackboneError(f"{path}: not found (is {folder} a `clasp export` folder?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneError(f"{path}: cannot be read ({exc})") from None
    if data.get("format") != BACKBONE_FORMAT:
        raise BackboneError(f"{path}: not a clasp backbone (format {data.get('format')!r})")
    if data.get("version") != BACKBONE_VERSION:
        raise BackboneError(f"{path}: unknown backbone version {data.get('version')!r}; "
                            f"this clasp reads version {BACKBONE_VERSION}")
    task = data.get("task")
    if not isinstance(task, str) or task not in TASKS:
        raise BackboneError(f"{path}: task must be one of {list(TASKS)}, got {task!r}")
    try:
        architecture = ViTConfig.from_dict(data.get("architecture"))
    except (ValueError, TypeError) as exc:
        raise BackboneError(f"{path}: architecture: {exc}") from None
    feature_dim = data.get("feature_dim", architecture.dim)
    if feature_dim != architecture.dim:
        raise BackboneError(f"{path}: feature_dim {feature_dim!r} differs from architecture.dim {architecture.dim}")
    image_hw = data.get("image_hw", list(architecture.img_hw))
    if not isinstance(image_hw, (list, tuple)) or list(image_hw) != list(architecture.img_hw):
        raise BackboneError(f"{path}: image_hw {image_hw!r} differs from architecture.img_hw {list(architecture.img_hw)}")
    memory = available_memory()
    need = architecture.estimated_params() * 4 * 2  # fp32 weights, once built and once read
    if memory is not None and need > memory:
        raise BackboneError(f"{path}: architecture needs about {need / 2**30:.1f} GiB to load, "
                            f"{memory / 2**30:.1f} GiB available")
    return data


def load_backbone(folder: str | Path, task: str | None = None, device: str | torch.device = "cpu") -> TaskBackbone:
    """The exported backbone in eval mode, fixed to its task prompt (or `task`).

    Call it with images (B, 3, 256, 128), uint8 0..255 or float in [0, 1], RGB;
    it returns (cls (B, D), patches (B, N, D)) with N = 16 x 8 patch tokens in
    row-major order. Normalisation happens inside.
    """
    folder = Path(folder)
    data = read_backbone_config(folder)
    backbone = PromptedViT(ViTConfig.from_dict(data["architecture"]))  # checked by read_backbone_config
    weights_path = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights_path))
    except FileNotFoundError:
        raise BackboneError(f"{weights_path}: not found") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise BackboneError(f"{weights_path}: cannot be read ({exc})") from None
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor whose shape differs from the architecture's
        shapes = " ".join(str(exc).split())
        raise BackboneError(f"{weights_path}: does not match config.json ({shapes[:400]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(f"{weights_path}: does not match config.json (missing {result.missing_keys[:5]}, "
                            f"unexpected {result.unexpected_keys[:5]})")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise BackboneError(f"{weights_path}: tensor {key!r} holds {bad} NaN or infinite values of {tensor.numel()}")
    chosen = task or data["task"]
    if backbone.config.moe_layers and chosen not in backbone.config.tasks:
        raise BackboneError(f"{folder}: no task prompt {chosen!r}; this backbone has {list(backbone.config.tasks)}")
    return backbone.for_task(chosen).to(device).eval()
