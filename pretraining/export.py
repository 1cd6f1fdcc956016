"""`clasp export`: a checkpoint's backbone as safetensors + config + model card, or as one ONNX graph.

Users of DINO, DINOv2 and SOLIDER trip over teacher/student key prefixes,
leftover head weights and `module.` wrappers. The export keeps only the
backbone (the EMA teacher's by default), with the keys `PromptedViT` itself
uses, and writes what a user needs to run it into config.json (see
backbone.py for the format and the loader), and what a reader needs to trust
it into README.md (model_card.py). `--format onnx` writes model.onnx instead
(onnx_export.py), checked against PyTorch with onnxruntime before it counts.

Every check of the request and of the checkpoint comes before anything is
written; config.json comes last, so a folder cut short is no export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from clasp import __version__
from clasp.errors import InputError, RunError
from clasp.pretraining.backbone import (BACKBONE_FORMAT, BACKBONE_VERSION, CARD_FILE, CONFIG_FILE, ONNX_FILE,
                                        WEIGHTS_FILE)
from clasp.runs.checkpoint import find_checkpoint, list_checkpoints
from clasp.pretraining.export_config import FORMATS, ExportConfig
from clasp.runs.layout import MODEL_FILE, RUN_CONFIG as RUN_CONFIG_FILE
from clasp.pretraining.vit import IMAGENET_MEAN, IMAGENET_STD, TASKS, PromptedViT, ViTConfig
from clasp.common.durable import write_json_atomic

__all__ = ["ExportConfig", "ExportError", "ExportWriteError", "export_backbone"]

LOG = logging.getLogger(__name__)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# onnxruntime against PyTorch, fp32: more than this and the graph computes something else.
ONNX_TOLERANCE = 1e-3


class ExportError(InputError, ValueError):
    """A run or checkpoint that cannot be exported; the message names the file."""


class ExportWriteError(RunError):
    """The export could not be written (disk full, permissions, the ONNX exporter) or its check failed;
    nothing a loader would accept was left. A failed run (exit 1), so not an ExportError."""


@dataclass
class Checkpointed:
    """What one checkpoint gives an export: its backbone's weights, checked, and the run config saved with it."""

    run: Path
    checkpoint: Path
    saved: dict
    architecture: ViTConfig
    which: str  # 'teacher' or 'student'
    weights: dict[str, torch.Tensor]


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
    """Write the export `config.format` asks for into `config.out`; return the folder."""
    evaluation = check_request(config)
    source = read_checkpoint(config)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if config.format == "onnx":
        write_onnx_export(out, source, config.task)
    else:
        write_safetensors_export(out, source, config, evaluation)
    return out


def check_request(config: ExportConfig) -> dict | None:
    """Refuse what no checkpoint could satisfy, before reading one; returns the eval results to cite, if any."""
    if config.out is None:
        raise ExportError("no export folder given (--out DIR)")
    if config.format not in FORMATS:
        raise ExportError(f"unknown format {config.format!r}; choose one of {'|'.join(FORMATS)}")
    if config.task not in TASKS:
        raise ExportError(f"unknown task {config.task!r}; choose one of {'|'.join(TASKS)}")
    if config.format == "onnx":
        from clasp.pretraining.onnx_export import missing_onnx_packages

        if missing := missing_onnx_packages():
            raise ExportError(f"--format onnx needs {', '.join(missing)} (pip install 'clasp[onnx]')")
        if config.eval_results is not None:
            raise ExportError("--eval-results goes into the model card of a safetensors export, not into model.onnx")
        return None
    if config.eval_results is None:
        return None
    from clasp.pretraining.model_card import EvalResultsError, read_eval_results

    try:
        return read_eval_results(Path(config.eval_results))
    except EvalResultsError as exc:
        raise ExportError(str(exc)) from None


def read_checkpoint(config: ExportConfig) -> Checkpointed:
    """The checkpoint `config` names, its architecture and its backbone's weights, each checked."""
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
    if architecture.moe_layers and config.task not in architecture.tasks:
        raise ExportError(f"{checkpoint}: the run trained no {config.task!r} prompt (its tasks: "
                          f"{list(architecture.tasks)})")
    which = "student" if config.student else "teacher"
    weights = checked_weights(checkpoint / MODEL_FILE, which, architecture)
    return Checkpointed(run, checkpoint, saved, architecture, which, weights)


def checked_weights(path: Path, which: str, architecture: ViTConfig) -> dict[str, torch.Tensor]:
    """`which` backbone's tensors of the checkpoint file: they must rebuild the backbone exactly, all finite."""
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{path}: cannot be read ({exc})") from None
    weights = backbone_state(state, which)
    try:
        check = PromptedViT(architecture).load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise ExportError(f"{path}: {which} backbone does not match its config "
                          f"({' '.join(str(exc).split())[:300]})") from None
    if check.missing_keys or check.unexpected_keys:
        raise ExportError(f"{path}: {which} backbone does not match its config "
                          f"(missing {check.missing_keys[:5]}, unexpected {check.unexpected_keys[:5]})")
    for key, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ExportError(f"{path}: the {which} backbone's {key!r} holds NaN or infinite values; "
                              "export an earlier checkpoint (--checkpoint STEP)")
    return weights


def describe(source: Checkpointed, task: str) -> dict:
    """config.json of the export: what a loader needs to rebuild and feed the backbone."""
    architecture = source.architecture
    grid = architecture.grid
    return {
        "format": BACKBONE_FORMAT,
        "version": BACKBONE_VERSION,
        "clasp_version": __version__,
        "architecture": architecture.to_dict(),
        "task": task,
        "weights": source.which,
        "image_hw": list(architecture.img_hw),
        "input": "RGB images (B, 3, H, W): uint8 0..255 or float in [0, 1]; normalised inside",
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "outputs": {"cls": "(B, dim)", "patches": f"(B, {grid[0] * grid[1]}, dim), {grid[0]}x{grid[1]} row-major"},
        "feature_dim": architecture.dim,
        "source": {"run": str(source.run.resolve()), "checkpoint": source.checkpoint.name,
                   "step": int(source.checkpoint.name.split("-")[-1])},
    }


def write_safetensors_export(out: Path, source: Checkpointed, config: ExportConfig, evaluation: dict | None) -> None:
    """model.safetensors, README.md, then config.json."""
    from clasp.pretraining.model_card import render_card

    description = describe(source, config.task)
    params = sum(t.numel() for t in source.weights.values())
    card = render_card(description, source.saved, params, evaluation, config.eval_results)
    with written(out / WEIGHTS_FILE):
        write_weights(out, source.weights, config.task)
    with written(out / CARD_FILE):
        write_text_atomic(out / CARD_FILE, card)
    with written(out / CONFIG_FILE):
        write_json_atomic(out / CONFIG_FILE, description)  # last: a folder without it is no export


@contextlib.contextmanager
def written(path: Path) -> Iterator[None]:
    """A failed write of `path` (disk full, permissions) as one line naming it."""
    try:
        yield
    except OSError as exc:
        raise ExportWriteError(f"{path}: cannot be written ({exc.strerror or exc})") from None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_onnx_export(out: Path, source: Checkpointed, task: str) -> None:
    """model.onnx (onnx_export.py), kept only when onnxruntime gives PyTorch's features back."""
    from clasp.pretraining.onnx_export import OnnxExportError, onnx_difference, write_onnx

    backbone = PromptedViT(source.architecture)
    backbone.load_state_dict(source.weights)
    backbone = backbone.for_task(task).eval()
    description = {**describe(source, task), "format": f"{BACKBONE_FORMAT}-onnx",
                   "input": "images: float32 (batch, 3, H, W), RGB in [0, 1] (uint8 / 255); normalised inside"}
    path = out / ONNX_FILE
    try:
        with written(path):
            write_onnx(backbone, path, {key: value if isinstance(value, str) else json.dumps(value)
                                        for key, value in description.items()})
    except OnnxExportError as exc:
        raise ExportWriteError(f"{path}: {exc}") from None
    difference = onnx_difference(path, backbone)
    if not difference <= ONNX_TOLERANCE:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".data").unlink(missing_ok=True)
        raise ExportWriteError(f"{path}: onnxruntime's features differ from PyTorch's by {difference:.2g} "
                               f"(more than {ONNX_TOLERANCE:g}); the graph was removed")
    LOG.info(f"{path}: onnxruntime matches PyTorch to {difference:.1e} (largest difference, CLS and patch tokens "
             "of random images at batch sizes 1 and 3)")


def write_weights(out: Path, weights: dict, task: str) -> None:
    """model.safetensors via a temporary file; an older export's config.json and card go first, so a
    folder left by a failed export is never taken for a complete one, nor described as the older one."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, CARD_FILE):
        (out / name).unlink(missing_ok=True)
    tmp = out / (WEIGHTS_FILE + ".tmp")
    try:
        save_file(weights, str(tmp), metadata={"format": BACKBONE_FORMAT, "task": task})
        os.replace(tmp, out / WEIGHTS_FILE)
    except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk with its own error type
        tmp.unlink(missing_ok=True)
        raise OSError(getattr(exc, "errno", None), f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") \
            from None
