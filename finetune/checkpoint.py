"""The run folder of a fine-tuning run, and its checkpoints (no pickle, exact resume).

```
OUT/
  config.json        resolved settings + derived values (classes, steps, data), rewritten at every start
  metrics.jsonl      one JSON object per logged step
  results.json       the final metrics (fractions) and what produced them
  keypoints_val_results.json   pose: the predictions scored, in COCO's results format
  checkpoints/step-XXXXXXXX/
    model.safetensors  backbone + head, BatchNorm statistics included
    optimizer.pt       AdamW state (torch.save; loaded with weights_only=True)
    scaler.pt          fp16 only
    rng-rankR.pt       torch RNG state of process R
    config.json, trainer.json (step, world size)
  error.log          why the last start was refused
```

The data order and augmentation are functions of (seed, step, rank), so the
step is the whole data position. A checkpoint is written to `step-X.tmp/` and
renamed once complete. The folder rules are pre-training's: a folder holding
another run is used only with `resume` (settings compared first) or `force`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from clasp.evaluation.oks import KEYPOINT_RESULTS
from clasp.finetune.config import CONFIG_NAME, FinetuneConfig, load_saved, resume_differences
from clasp.runs import LOCK_NAME
from clasp.runs.error_log import ERROR_LOG, write_error_log  # noqa: F401 - the one error.log writer
from clasp.runs.metrics_log import METRICS_FILE
from clasp.common.durable import fsync_dir, write_json_atomic

CHECKPOINTS = "checkpoints"
METRICS = METRICS_FILE
RESULTS = "results.json"
RUN_FILES = (CONFIG_NAME, METRICS, RESULTS, CHECKPOINTS, ERROR_LOG, KEYPOINT_RESULTS)
STEP_DIR = re.compile(r"^step-(\d{8})$")


class RunFolderError(Exception):
    """The run folder cannot be used as asked (one line naming it)."""


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    root = Path(out) / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
             if (m := STEP_DIR.match(p.name)) and (p / "trainer.json").is_file()]
    return sorted(found)


def plan_run(config: FinetuneConfig, derived: dict[str, Any]) -> tuple[Path | None, bool]:
    """(checkpoint to resume from, wipe the previous run first); raises RunFolderError. Writes nothing."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: exists and is not a folder")
    names = sorted(p.name for p in out.iterdir() if p.name not in (ERROR_LOG, LOCK_NAME)) if out.exists() else []
    if config.resume:
        return _resume_from(config, derived, out), False
    ours = [n for n in names if n in RUN_FILES]
    if config.force:
        return None, bool(ours)
    if ours:
        raise RunFolderError(f"{out}: holds another run ({', '.join(ours)}); pass --resume to continue it "
                             "or --force to start over")
    if names:
        raise RunFolderError(f"{out}: is not empty and not a clasp run ({', '.join(names[:3])}); "
                             "choose an empty folder or pass --force")
    return None, False


def _resume_from(config: FinetuneConfig, derived: dict[str, Any], out: Path) -> Path | None:
    """The newest checkpoint (None: the run stopped before its first), if the settings allow continuing."""
    found = checkpoints(out)
    latest = found[-1][1] if found else None
    saved_path = (latest or out) / CONFIG_NAME
    if not saved_path.is_file():
        raise RunFolderError(f"{out}: holds no clasp run to resume (no {CONFIG_NAME}); drop --resume to start a run there")
    diffs = resume_differences(*load_saved(saved_path), config, derived)
    if diffs:
        raise RunFolderError(f"{saved_path}: cannot resume, settings differ ({'; '.join(diffs)}); "
                             "use the run's settings, or --force to start over")
    return latest


def wipe(out: Path) -> None:
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def save_checkpoint(accelerator, out: Path, step: int, model, optimizer, saved_config: dict, keep: int) -> Path:
    """Every process calls it; the main one writes the shared pieces, each its RNG state."""
    tmp = out / CHECKPOINTS / f"step-{step:08d}.tmp"
    final = tmp.with_name(f"step-{step:08d}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        write_json_atomic(tmp / CONFIG_NAME, saved_config)
    torch.save({"torch": torch.get_rng_state()}, tmp / f"rng-rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "trainer.json", {"step": step, "world_size": accelerator.num_processes})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        for _, old in checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _safe_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise RunFolderError(f"{path}: cannot be read ({type(exc).__name__})") from None


def load_checkpoint(path: Path, model, optimizer, scaler, rank: int) -> int:
    """Restore weights, optimizer (and scaler) and this process's RNG; return the step."""
    try:
        trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except Exception as exc:  # noqa: BLE001
        raise RunFolderError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    if missing or unexpected:
        raise RunFolderError(f"{path / 'model.safetensors'}: does not match the model "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    optimizer.load_state_dict(_safe_load(path / "optimizer.pt"))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(_safe_load(path / "scaler.pt"))
    torch.set_rng_state(_safe_load(path / f"rng-rank{rank}.pt")["torch"])
    return int(trainer["step"])

