"""Checkpoints of every training command: written whole or not at all, read strictly, RNG restored in full."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from clasp.runs.checkpoint import (
    CheckpointError, CheckpointWriter, find_checkpoint, load_checkpoint, restore_checkpoint_rng,
)


class OneProcess:
    """What a checkpoint needs of an Accelerator, for one process."""

    is_main_process, num_processes, process_index, scaler = True, 1, 0, None

    def wait_for_everyone(self) -> None:
        pass


def trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()
    return model, optimizer


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def save(tmp_path: Path, step: int = 3, stream=None) -> Path:
    model, optimizer = trained()
    writer = CheckpointWriter(tmp_path, 0, True, keep=2)
    return writer.save(OneProcess(), step, model, optimizer, {"config": {}}, stream)


def test_python_numpy_and_torch_streams_continue_identically_after_a_restore(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save(tmp_path)
    expected = [draws() for _ in range(3)]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # another process's state
    model, optimizer = trained(seed=5)
    loaded = load_checkpoint(path, model, optimizer, None, 0, with_stream=False)
    restore_checkpoint_rng(loaded, 0)
    assert loaded.step == 3 and loaded.stream_state is None
    assert [draws() for _ in range(3)] == expected
    reference, _ = trained()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_a_checkpoint_is_complete_or_absent_and_old_ones_are_pruned(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        path = save(tmp_path, step, stream={"epoch": step})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "optimizer.pt",
                                                     "rng-rank0.pt", "stream-rank0.pt", "trainer.json"]
    (tmp_path / "checkpoints" / "step-00000004.tmp").mkdir()
    assert find_checkpoint(tmp_path) == path
    model, optimizer = trained()
    assert load_checkpoint(path, model, optimizer, None, 0).stream_state == {"epoch": 3}


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "optimizer.pt").write_bytes(b"not a zip"), r"optimizer.pt: cannot be read \("),
    (lambda p: (p / "rng-rank0.pt").unlink(), r"rng-rank0.pt: missing from the checkpoint"),
    (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 16), r"model.safetensors: cannot be loaded"),
    (lambda p: (p / "trainer.json").write_text(json.dumps({"step": 7})), r"trainer.json: step 7 differs from"),
    (lambda p: torch.save({"python_version": 3}, p / "rng-rank0.pt"), r"rng-rank0.pt: not an RNG state"),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path: Path, damage, message: str) -> None:
    path = save(tmp_path)
    damage(path)
    model, optimizer = trained()
    with pytest.raises(CheckpointError, match=message) as caught:
        restore_checkpoint_rng(load_checkpoint(path, model, optimizer, None, 0, with_stream=False), 0)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_an_optimizer_state_of_another_model_is_refused_by_shape(tmp_path: Path) -> None:
    path = save(tmp_path)
    other = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5))
    optimizer = torch.optim.AdamW(other.parameters())
    with pytest.raises(CheckpointError, match="model.safetensors: cannot be loaded .*size mismatch"):
        load_checkpoint(path, other, optimizer, None, 0)
    model, _ = trained()
    small = torch.optim.AdamW(list(model.parameters())[:2])
    with pytest.raises(CheckpointError, match="optimizer.pt: holds 4 parameters, the model has 2"):
        load_checkpoint(path, model, small, None, 0)
