"""`clasp export`: a checkpoint's backbone as safetensors + config, nothing else.

Users of DINO, DINOv2 and SOLIDER trip over teacher/student key prefixes,
leftover head weights and `module.` wrappers. The export keeps only the
backbone (the EMA teacher's by default), with the keys `PromptedViT` itself
uses, and writes what a user needs to run it into config.json (see
backbone.py for the format and the loader).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clasp import __version__
from clasp.pretraining.backbone import BACKBONE_FORMAT, BACKBONE_VERSION, CONFIG_FILE, WEIGHTS_FILE
from clasp.pretraining.layout import RUN_CONFIG as RUN_CONFIG_FILE
from clasp.pretraining.checkpoint import MODEL_FILE, find_checkpoint, list_checkpoints
from clasp.pretraining.vit import IMAGENET_MEAN, IMAGENET_STD, TASKS, PromptedViT, ViTConfig
from clasp.store.durable import write_json_atomic

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ExportError(ValueError):
    """A run or checkpoint that cannot be exported; the message names the file."""


class ExportWriteError(ExportError):
    """The export could not be written (disk full, permissions); nothing a loader would accept was left."""


@dataclass
class ExportConfig:
    run: Path  # run folder of `clasp pretrain`
    out: Path  # export folder to write
    task: str = "instance"  # task prompt the backbone is fixed to: instance | part | attribute
    checkpoint: int | None = None  # step of the checkpoint; None = the newest
    student: bool = False  # export the student instead of the EMA teacher


def strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def backbone_state(state: dict, which: str) -> dict:
    """The keys of `which` ('teacher' or 'student') backbone, prefixes removed; heads and the rest dropped."""
    prefix = f"{which}.backbone."
    out = {}
    for key, value in state.items():
        key = strip_wrappers(key)
        if key.startswith(prefix):
            out[key[len(prefix):]] = value.contiguous()
    return out


def export_backbone(config: ExportConfig) -> Path:
    """Write `config.out`/model.safetensors and config.json; return the folder."""
    run = Path(config.run)
    if not run.is_dir():
        raise ExportError(f"{run}: run folder not found")
    checkpoint = find_checkpoint(run, config.checkpoint)
    if checkpoint is None:
        steps = [s for s, _ in list_checkpoints(run)]
        wanted = "no checkpoint" if config.checkpoint is None else f"no checkpoint at step {config.checkpoint}"
        raise ExportError(f"{run}: {wanted} (available steps: {steps or 'none'})")
    try:
        saved = json.loads((checkpoint / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
        architecture = ViTConfig.from_dict(saved["model"]["vit"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{checkpoint / RUN_CONFIG_FILE}: no model architecture ({type(exc).__name__}: {exc})") from None
    if config.task not in TASKS:
        raise ExportError(f"unknown task {config.task!r}; choose one of {'|'.join(TASKS)}")
    if architecture.moe_layers and config.task not in architecture.tasks:
        raise ExportError(f"{checkpoint}: the run trained no {config.task!r} prompt (its tasks: "
                          f"{list(architecture.tasks)})")
    try:
        state = load_file(str(checkpoint / MODEL_FILE))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{checkpoint / MODEL_FILE}: cannot be read ({exc})") from None
    which = "student" if config.student else "teacher"
    weights = backbone_state(state, which)
    # The weights must rebuild the backbone exactly, or the export is useless.
    try:
        check = PromptedViT(architecture).load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise ExportError(f"{checkpoint / MODEL_FILE}: {which} backbone does not match its config "
                          f"({' '.join(str(exc).split())[:300]})") from None
    if check.missing_keys or check.unexpected_keys:
        raise ExportError(f"{checkpoint / MODEL_FILE}: {which} backbone does not match its config "
                          f"(missing {check.missing_keys[:5]}, unexpected {check.unexpected_keys[:5]})")
    for key, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ExportError(f"{checkpoint / MODEL_FILE}: the {which} backbone's {key!r} holds NaN or infinite "
                              "values; export an earlier checkpoint (--checkpoint STEP)")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    try:
        write_weights(out, weights, config.task)
    except OSError as exc:
        raise ExportWriteError(f"{out / WEIGHTS_FILE}: cannot be written ({exc.strerror or exc})") from None
    grid = architecture.grid
    description = {
        "format": BACKBONE_FORMAT,
        "version": BACKBONE_VERSION,
        "clasp_version": __version__,
        "architecture": architecture.to_dict(),
        "task": config.task,
        "weights": which,
        "image_hw": list(architecture.img_hw),
        "input": "RGB images (B, 3, H, W): uint8 0..255 or float in [0, 1]; normalised inside",
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "outputs": {"cls": "(B, dim)", "patches": f"(B, {grid[0] * grid[1]}, dim), {grid[0]}x{grid[1]} row-major"},
        "feature_dim": architecture.dim,
        "source": {"run": str(run.resolve()), "checkpoint": checkpoint.name,
                   "step": int(checkpoint.name.split("-")[-1])},
    }
    try:
        write_json_atomic(out / CONFIG_FILE, description)  # last: a folder without it is no export
    except OSError as exc:
        raise ExportWriteError(f"{out / CONFIG_FILE}: cannot be written ({exc.strerror or exc})") from None
    return out


def write_weights(out: Path, weights: dict, task: str) -> None:
    """model.safetensors via a temporary file; an older export's config.json goes first, so a folder
    left by a failed export is never taken for a complete one."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)
    tmp = out / (WEIGHTS_FILE + ".tmp")
    try:
        save_file(weights, str(tmp), metadata={"format": BACKBONE_FORMAT, "task": task})
        os.replace(tmp, out / WEIGHTS_FILE)
    except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk with its own error type
        tmp.unlink(missing_ok=True)
        raise OSError(getattr(exc, "errno", None), f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") \
            from None
