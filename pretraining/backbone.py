"""Loading an exported backbone: `load_backbone(DIR)` -> a plain `torch.nn.Module`.

An export folder (written by `clasp export`, see export.py) holds

```
model.safetensors   the backbone's weights only, keys as in PromptedViT.state_dict()
                    (patch_embed.*, cls_token, pos_embed, blocks.N.*, moe_blocks.N.*, task_prompts, norm.*)
config.json         {"format": "clasp-backbone", "version": 1, "architecture": ViTConfig fields,
                     "task": the task prompt, "image_hw": [256, 128], "normalization": {...}, ...}
README.md           the model card (model_card.py): for people and the hub; no loader reads it
```

`load_backbone("owner/name")` reads the same files from a Hugging Face Hub
repository (hub.py). `img_hw=` serves another input size: the patch part of pos_embed is
resampled once (`resample_position_embedding`, as the forward does for local crops).

Exports written before `num_experts` was renamed `experts` still load:
`ViTConfig.from_dict` reads the older names (`RENAMED_FIELDS` in vit.py).

This module needs only torch, safetensors and the backbone definition
(vit.py, moe.py): no training code, no store, no model heads (huggingface_hub
too, for a hub id only).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from clasp.errors import InputError
from clasp.hardware import available_memory
from clasp.pretraining.hub import HubError, download, is_hub_id
from clasp.pretraining.vit import TASKS, PromptedViT, TaskBackbone, ViTConfig, resample_position_embedding

BACKBONE_FORMAT = "clasp-backbone"
BACKBONE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"  # the model card (model_card.py); loaders do not read it
ONNX_FILE = "model.onnx"  # written by `clasp export --format onnx` (onnx_export.py)


class BackboneError(InputError, ValueError):
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


def load_backbone(source: str | Path, task: str | None = None, device: str | torch.device = "cpu",
                  img_hw: Sequence[int] | None = None, revision: str | None = None) -> TaskBackbone:
    """The exported backbone in eval mode, fixed to its task prompt (or `task`).

    `source` is an export folder, or (a string naming no folder) a Hugging Face
    Hub id `owner/name` downloaded at `revision` (hub.py). Call the module with
    images (B, 3, H, W), uint8 0..255 or float in [0, 1], RGB; it returns
    (cls (B, D), patches (B, N, D)) with N = (H/16)(W/16) patch tokens in
    row-major order. Normalisation happens inside. `img_hw` (e.g. (256, 192)
    for pose crops) resizes the position embedding once, bicubically, as the
    forward would at that size; other sizes still work, resized on each call.
    """
    folder = export_folder(source, revision)
    data = read_backbone_config(folder)
    native = ViTConfig.from_dict(data["architecture"])  # checked by read_backbone_config
    architecture = sized(native, img_hw)
    weights_path = folder / WEIGHTS_FILE
    state = resized_positions(read_weights(weights_path), native, architecture)
    backbone = PromptedViT(architecture)
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor whose shape differs from the architecture's
        shapes = " ".join(str(exc).split())
        raise BackboneError(f"{weights_path}: does not match config.json ({shapes[:400]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(f"{weights_path}: does not match config.json (missing {result.missing_keys[:5]}, "
                            f"unexpected {result.unexpected_keys[:5]})")
    chosen = task or data["task"]
    if backbone.config.moe_layers and chosen not in backbone.config.tasks:
        raise BackboneError(f"{source}: no task prompt {chosen!r}; this backbone has {list(backbone.config.tasks)}")
    return backbone.for_task(chosen).to(device).eval()


def export_folder(source: str | Path, revision: str | None) -> Path:
    """The folder to read: `source` itself, or the hub snapshot of the repository it names."""
    if not is_hub_id(source):
        if revision is not None:
            raise BackboneError(f"{source}: revision={revision!r} is for hub ids; this is a folder")
        return Path(source)
    try:
        return download(str(source), (CONFIG_FILE, WEIGHTS_FILE), revision)
    except HubError as exc:
        raise BackboneError(str(exc)) from None


def sized(architecture: ViTConfig, img_hw: Sequence[int] | None) -> ViTConfig:
    """`architecture` for input images of `img_hw` (its own size when None); a size it cannot take is refused."""
    if img_hw is None:
        return architecture
    try:
        return replace(architecture, img_hw=tuple(img_hw))
    except (TypeError, ValueError) as exc:
        raise BackboneError(f"load_backbone(img_hw={img_hw!r}): {exc}") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors; NaN or infinite values are refused, naming the tensor."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise BackboneError(f"{path}: not found") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise BackboneError(f"{path}: cannot be read ({exc})") from None
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise BackboneError(f"{path}: tensor {key!r} holds {bad} NaN or infinite values of {tensor.numel()}")
    return state


def resized_positions(state: dict[str, torch.Tensor], native: ViTConfig, target: ViTConfig) -> dict[str, torch.Tensor]:
    """`state` with pos_embed resampled from `native`'s patch grid to `target`'s (vit.py: bicubic, CLS kept).

    A pos_embed of another shape than `native`'s is left as it is, for the
    shape check of load_state_dict to name.
    """
    pos = state.get("pos_embed")
    if target.grid == native.grid or pos is None or tuple(pos.shape) != (1, 1 + native.grid[0] * native.grid[1],
                                                                         native.dim):
        return state
    return {**state, "pos_embed": resample_position_embedding(pos, native.grid, target.grid)}
