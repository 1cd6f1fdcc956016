"""Checkpoints of a training run: everything exact resume needs, and no pickle.

Accelerate's `save_state` writes the RNG states and registered objects with
pickle and reads registered objects back with `weights_only=False` (accelerate
1.x, `load_custom_state`), and it swallows a failed RNG restore. So the pieces
are written here, each in a format that loads without unpickling code (the
files: layout.py):

```
OUT/checkpoints/step-00000100/
  model.safetensors   the whole training model (a command's extra state lives in its buffers)
  optimizer.pt        AdamW state_dict        (torch.save; loaded with weights_only=True)
  scaler.pt           fp16 GradScaler state   (only with --precision fp16)
  rng-rank{R}.pt      RNG states of process R (python, numpy, torch, cuda) as tensors/ints
  stream-rank{R}.pt   data position of process R (only for a command that gives one)
  config.json         the resolved run config
  trainer.json        global step, world size, clasp version
```

Invariants:

- A checkpoint is written into `step-XXXXXXXX.tmp/` and renamed when every
  process has written its part (trainer.json last), so a crash (even
  `kill -9`) during a save leaves the previous checkpoint as the newest
  complete one; a failed write removes the `.tmp` folder and says which
  checkpoint is the last complete one (`CheckpointWriteError`, a RunError).
- Loading is strict and reads everything before the run folder is touched:
  every model key, the optimizer state's parameter count and shapes, the
  step in trainer.json against the folder's name, and the RNG state; any
  mismatch is one `CheckpointError` line naming the file (an InputError).
- After `restore_checkpoint` the Python, NumPy and torch (CUDA) random
  streams continue as they would have in the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from clasp.common.durable import fsync_dir, write_json_atomic
from clasp.errors import InputError, RunError
from clasp.runs.layout import (
    CHECKPOINTS_DIR, MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, RUN_CONFIG, SCALER_FILE, STREAM_FILE, TRAINER_FILE,
)

STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


class CheckpointWriteError(RunError, RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); its `.tmp` folder has been removed."""


def _one_line(exc: BaseException, limit: int = 400) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as (step, folder)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / TRAINER_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_checkpoint(run_dir: str | Path, step: int | None = None) -> Path | None:
    """The newest complete checkpoint, or the one at `step`; None when there is none."""
    found = list_checkpoints(run_dir)
    if step is None:
        return found[-1][1] if found else None
    for s, path in found:
        if s == step:
            return path
    return None


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Process RNG states as tensors and plain numbers (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_state"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_name"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- save / load


def safe_load(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers; a bad file names itself."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path}: cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None


@dataclass
class CheckpointWriter:
    """Writes checkpoints of one run; the same object on every process."""

    run_dir: Path
    rank: int
    is_main: bool
    keep: int

    def remove_unfinished(self) -> None:
        """Main process, at start: drop `.tmp` folders of saves that a crash interrupted."""
        root = self.run_dir / CHECKPOINTS_DIR
        if self.is_main and root.is_dir():
            for child in root.glob("step-*.tmp"):
                shutil.rmtree(child, ignore_errors=True)

    def begin(self, step: int) -> Path:
        """Main process: an empty temp folder for `step` (call `barrier` before others write)."""
        tmp = self.run_dir / CHECKPOINTS_DIR / (step_dir_name(step) + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            with self._failing_write(tmp, "the folder"):
                tmp.mkdir(parents=True)
        return tmp

    @contextlib.contextmanager
    def _failing_write(self, tmp: Path, what: str) -> Iterator[None]:
        """A write into `tmp`: any failure removes `tmp` and becomes one CheckpointWriteError line.

        Disk full shows as OSError(ENOSPC) from plain writes but as RuntimeError from
        torch.save's zip writer and as safetensors' own error, so every exception counts.
        """
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - see above
            shutil.rmtree(tmp, ignore_errors=True)
            last = find_checkpoint(self.run_dir)
            raise CheckpointWriteError(
                f"{tmp}: writing {what} of the checkpoint failed ({_one_line(exc, 200)}); it was removed, "
                f"the last complete checkpoint is {last or 'none'}") from None

    def write_shared(self, tmp: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: Any, saved_config: dict[str, Any]) -> None:
        """Main process: the pieces every process holds identically."""
        with self._failing_write(tmp, MODEL_FILE):
            save_model(model, str(tmp / MODEL_FILE))
        with self._failing_write(tmp, OPTIMIZER_FILE):
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scaler is not None:
            with self._failing_write(tmp, SCALER_FILE):
                torch.save(scaler.state_dict(), tmp / SCALER_FILE)
        with self._failing_write(tmp, RUN_CONFIG):
            write_json_atomic(tmp / RUN_CONFIG, saved_config)

    def write_own(self, tmp: Path, stream_state: Any = None) -> None:
        """Every process: its RNG states and, when the command has one, its data position."""
        with self._failing_write(tmp, RNG_FILE.format(rank=self.rank)):
            torch.save(capture_rng(), tmp / RNG_FILE.format(rank=self.rank))
        if stream_state is not None:
            with self._failing_write(tmp, STREAM_FILE.format(rank=self.rank)):
                torch.save(stream_state, tmp / STREAM_FILE.format(rank=self.rank))

    def save(self, accelerator, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             saved_config: dict[str, Any], stream_state: Any = None, trainer: dict[str, Any] | None = None) -> Path:
        """A checkpoint of `step` written by every process together (each calls it); the complete folder.

        `model` is the unwrapped module; `trainer`: more of trainer.json (step and world size are always there).
        """
        tmp = self.begin(step)
        accelerator.wait_for_everyone()
        if self.is_main:
            self.write_shared(tmp, model, optimizer, accelerator.scaler, saved_config)
        self.write_own(tmp, stream_state)
        accelerator.wait_for_everyone()
        final = None
        if self.is_main:
            final = self.commit(tmp, step, {"step": step, "world_size": accelerator.num_processes,
                                            "time": time.time(), **(trainer or {})})
        accelerator.wait_for_everyone()
        return final or self.run_dir / CHECKPOINTS_DIR / step_dir_name(step)

    def commit(self, tmp: Path, step: int, trainer_state: dict[str, Any]) -> Path:
        """Main process, after every process wrote: mark complete, rename, prune old ones."""
        final = tmp.with_name(step_dir_name(step))
        with self._failing_write(tmp, TRAINER_FILE):
            write_json_atomic(tmp / TRAINER_FILE, trainer_state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        for _, old in list_checkpoints(self.run_dir)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


@dataclass
class LoadedCheckpoint:
    path: Path
    trainer: dict[str, Any]
    stream_state: Any  # None for a command without a data position of its own
    rng: dict[str, Any]

    @property
    def step(self) -> int:
        return self.trainer["step"]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    scaler: Any, rank: int, with_stream: bool = True) -> LoadedCheckpoint:
    """Load weights and optimizer/scaler state in place; return the rest (`restore_rng` is the caller's)."""
    trainer = read_trainer_state(path)
    load_weights(path / MODEL_FILE, model)
    if optimizer is not None:
        state = safe_load(path / OPTIMIZER_FILE)
        check_optimizer_state(state, optimizer, path / OPTIMIZER_FILE)
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path / OPTIMIZER_FILE}: does not fit the optimizer ({_one_line(exc)})") from None
    if scaler is not None and (path / SCALER_FILE).exists():
        try:
            scaler.load_state_dict(safe_load(path / SCALER_FILE))
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path / SCALER_FILE}: does not fit the scaler ({_one_line(exc)})") from None
    stream = safe_load(path / STREAM_FILE.format(rank=rank)) if with_stream else None
    rng = safe_load(path / RNG_FILE.format(rank=rank))
    if not isinstance(rng, dict):
        raise CheckpointError(f"{path / RNG_FILE.format(rank=rank)}: not an RNG state")
    return LoadedCheckpoint(path, trainer, stream, rng)


def load_weights(file: Path, model: torch.nn.Module) -> None:
    """Every key of `model` from a safetensors file, none missing and none left over."""
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{file}: cannot be loaded ({_one_line(exc)})") from None
    if missing or unexpected:
        raise CheckpointError(f"{file}: does not match the model (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")


def restore_checkpoint_rng(loaded: LoadedCheckpoint, rank: int) -> None:
    """This process's RNG states from a loaded checkpoint; CheckpointError naming the file when unusable."""
    try:
        restore_rng(loaded.rng)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{loaded.path / RNG_FILE.format(rank=rank)}: not an RNG state "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def read_trainer_state(path: Path) -> dict[str, Any]:
    """trainer.json of a checkpoint: an object whose `step` is the integer in the folder's name."""
    file = path / TRAINER_FILE
    try:
        trainer = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: cannot be read ({_one_line(exc)})") from None
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(trainer).__name__}")
    step = trainer.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{file}: step must be a non-negative integer, got {step!r}")
    match = STEP_DIR.match(path.name)
    if match and int(match.group(1)) != step:
        raise CheckpointError(f"{file}: step {step} differs from the folder's {int(match.group(1))}")
    return trainer


def check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Refuse an optimizer state whose parameter count or per-parameter tensor shapes differ from the model's."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise CheckpointError(f"{path}: not an optimizer state (needs 'state' and 'param_groups')")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        ids = [i for group in state["param_groups"] for i in group["params"]]
    except (TypeError, KeyError):
        raise CheckpointError(f"{path}: param_groups is malformed") from None
    if len(ids) != len(params):
        raise CheckpointError(f"{path}: holds {len(ids)} parameters, the model has {len(params)}")
    for index, (saved_id, param) in enumerate(zip(ids, params)):
        entry = state["state"].get(saved_id, {})
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: state of parameter {index} is not a mapping")
        for key, value in entry.items():
            if torch.is_tensor(value) and value.ndim > 0 and tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(f"{path}: {key} of parameter {index} has shape {tuple(value.shape)}, "
                                      f"the model's parameter {tuple(param.shape)}")
