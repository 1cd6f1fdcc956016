"""`clasp pretrain` against hostile input: impossible settings, damaged checkpoints, a full disk, a bad row,
two stop signals, and DataLoader workers whose parent is killed.

Each failure is one `error:` line naming the file and the field (exit 2 for bad
input, 1 for a failed run), error.log in the run folder, and nothing that was
already written lost or changed. Counts are refused before any process starts;
the full disk is a patched writer raising OSError(ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from clasp.cli import main
from clasp.runs.checkpoint import find_checkpoint, read_trainer_state
from clasp.store import Vocabulary
from tests.conftest import TINY_RUN, one_error_line, snapshot, write_store

TINY = {**TINY_RUN, "local_crops": 1, "num_workers": 0, "save_every": 1, "steps": 3}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_store(root: Path) -> Path:
    """Nine rows of random 64x32 images and labels, the store of every run in this file."""
    return write_store(root, Vocabulary.default(), [9], grid=(8, 4), hw=(64, 32))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(store, run stopped after step 1 of 3 with checkpoint step-00000001), made once for the module."""
    root = tmp_path_factory.mktemp("hostile")
    store = _write_store(root / "shards")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = pretrain("--shards", str(store), "--out", str(root / "run"),
                      "--config", str(write_config(root / "a.yaml")), "--stop-at", "1")
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return store, root / "run"


@pytest.fixture
def store(template: tuple[Path, Path]) -> Path:
    return template[0]


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **settings}))
    return path


def pretrain(*args: str):
    return CliRunner().invoke(main, ["pretrain", *args])


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("settings, needle", [
    ({"num_workers": 100000}, "num_workers 100000 is more than 4 per available core"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"lr": float("inf")}, "lr must be a finite number, got inf"),
    ({"lr": 1e30}, "lr must be in [0, 1]"),
    ({"min_lr": -1.0}, "min_lr must"),
    ({"weight_decay_end": 50.0}, "weight_decay_end must be in [0, 1]"),
    ({"clip_grad": float("inf")}, "clip_grad must be a finite number"),
    ({"w_part": float("nan")}, "w_part must be a finite number"),
    ({"teacher_temp": 0.0}, "teacher_temp must"),
    ({"warmup_teacher_temp": 100.0}, "warmup_teacher_temp must be in (0, 1]"),
    ({"momentum_teacher": float("nan")}, "momentum_teacher must be a finite number, got nan"),
    ({"batch_size": 10_000_000}, "batch_size must be in [1, 65536]"),
    ({"batch_size": 60_000, "global_crops": 16, "local_crops": 64}, "of memory available"),
    ({"grad_accum": 10**9}, "grad_accum must be in"),
    ({"steps": 10**12}, "steps must be in"),
    ({"shuffle_buffer": 10**9}, "shuffle_buffer must be in"),
    ({"local_crops": 1000}, "local_crops must be in"),
    ({"save_every": 10**12}, "save_every must be in"),
    ({"seed": 2**40}, "seed must be in"),
    ({"dino_out_dim": 10**9}, "dino_out_dim must be in"),
    ({"dim": 100, "heads": 6}, "dim 100 is not divisible by heads 6"),
    ({"dim": 4}, "dim must be in [8, 4096]"),
    ({"dim": 100_000}, "dim must be in [8, 4096]"),
    ({"moe_layers": 5}, "moe_layers must be in [0, depth=2]"),
    ({"top_k": 7, "experts": 6}, "top_k (7) cannot exceed experts (6)"),
])
def test_impossible_settings_are_refused_before_anything_starts(store: Path, tmp_path: Path, monkeypatch,
                                                                settings: dict, needle: str) -> None:
    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr("multiprocessing.process.BaseProcess.start", no_process)
    config = write_config(tmp_path / "bad.yaml", **settings)
    out = tmp_path / "run"
    line = one_error_line(pretrain("--shards", str(store), "--out", str(out), "--config", str(config)), 2)
    assert line.startswith(f"error: {config}: ") and needle in line, line
    assert sorted(p.name for p in out.iterdir()) == ["error.log"]
    assert (out / "error.log").read_text().strip() == line


def test_a_bad_setting_on_resume_leaves_the_run_as_it_was(stopped_run: Path) -> None:
    out = stopped_run
    before = snapshot(out)
    line = one_error_line(pretrain("--out", str(out), "--resume", "--num-workers", "100000"), 2)
    assert "command line: num_workers 100000" in line
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture
def stopped_run(template: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the module's run stopped after step 1 of 3 (checkpoint step-00000001)."""
    import shutil

    return Path(shutil.copytree(template[1], tmp_path / "run"))


def _optimizer_with_a_wrong_shape(folder: Path) -> Path:
    state = torch.load(folder / "optimizer.pt", weights_only=True)
    key = sorted(state["state"])[0]
    state["state"][key]["exp_avg"] = torch.zeros(3, 5)
    torch.save(state, folder / "optimizer.pt")
    return folder / "optimizer.pt"


def _model_with_a_wrong_shape(folder: Path) -> Path:
    tensors = load_file(str(folder / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[key] = torch.zeros(7, 3)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


DAMAGE = {
    "trainer step is text": (lambda f: _write(f / "trainer.json", json.dumps({"step": "abc"})),
                             "step must be a non-negative integer, got 'abc'"),
    "trainer.json does not parse": (lambda f: _write(f / "trainer.json", "{"), "cannot be read"),
    "trainer step of another folder": (lambda f: _write(f / "trainer.json", json.dumps({"step": 7})),
                                       "differs from the folder's 1"),
    "optimizer tensor of another shape": (_optimizer_with_a_wrong_shape, "has shape (3, 5)"),
    "model tensor of another shape": (_model_with_a_wrong_shape, "cannot be loaded"),
    "stream state is garbage": (lambda f: (torch.save([1, 2, 3], f / "stream-rank0.pt"), f / "stream-rank0.pt")[1],
                                "not a usable stream position"),
    "stream state lacks its position": (lambda f: (torch.save({"epoch": 0}, f / "stream-rank0.pt"),
                                                   f / "stream-rank0.pt")[1], "not a usable stream position"),
    "rng state is garbage": (lambda f: (torch.save({"torch": 3}, f / "rng-rank0.pt"), f / "rng-rank0.pt")[1],
                             "not an RNG state"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_its_file(stopped_run: Path, kind: str) -> None:
    damage, needle = DAMAGE[kind]
    bad_file = damage(stopped_run / "checkpoints" / "step-00000001")
    before = snapshot(stopped_run)
    line = one_error_line(pretrain("--out", str(stopped_run), "--resume"), 2)
    assert line.startswith(f"error: {bad_file}: ") and needle in line, line
    assert snapshot(stopped_run) == before  # nothing rewritten, nothing removed
    assert (stopped_run / "error.log").read_text().strip().splitlines()[-1] == line


# ----------------------------------------------------------------------------- failures during the run


def test_disk_full_while_saving_keeps_the_last_checkpoint(store: Path, tmp_path: Path, monkeypatch) -> None:
    import clasp.runs.checkpoint as checkpoint

    real, calls, seen = checkpoint.save_model, [], {}

    def save_model(model, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the checkpoint of step 2
            seen.update(snapshot(tmp_path / "run" / "checkpoints" / "step-00000001"))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(model, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_model", save_model)
    out = tmp_path / "run"
    line = one_error_line(pretrain("--shards", str(store), "--out", str(out),
                                   "--config", str(write_config(tmp_path / "a.yaml", steps=2))), 1)
    tmp = out / "checkpoints" / "step-00000002.tmp"
    assert line.startswith(f"error: step 2: {tmp}: writing model.safetensors of the checkpoint failed")
    assert "No space left on device" in line and str(out / "checkpoints" / "step-00000001") in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]  # no .tmp left
    assert snapshot(out / "checkpoints" / "step-00000001") == seen
    assert read_trainer_state(out / "checkpoints" / "step-00000001")["step"] == 1
    assert (out / "error.log").read_text().strip() == line
    monkeypatch.setattr(checkpoint, "save_model", real)
    resumed = pretrain("--out", str(out), "--resume")  # the kept checkpoint is a good one
    assert resumed.exit_code == 0, resumed.output
    assert find_checkpoint(out).name == "step-00000002"


def test_torch_save_failing_is_the_same_one_line(store: Path, tmp_path: Path, monkeypatch) -> None:
    import clasp.runs.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    out = tmp_path / "run"
    line = one_error_line(pretrain("--shards", str(store), "--out", str(out),
                                   "--config", str(write_config(tmp_path / "a.yaml", steps=1))), 1)
    assert "step-00000001.tmp: writing optimizer.pt of the checkpoint failed (RuntimeError:" in line
    assert "the last complete checkpoint is none" in line
    assert list((out / "checkpoints").iterdir()) == []


def test_a_bad_row_stops_with_a_checkpoint_of_the_last_finished_step(store: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    from clasp.pretraining import train
    from clasp.pretraining.stream import BadRowError

    real, calls = train.BatchSource.next, []

    def next_batch(self, window):
        calls.append(1)
        if len(calls) == 3:
            raise BadRowError(f"{store / 'shard-000000.h5'}: row 5: image: cannot decode")
        return real(self, window)

    monkeypatch.setattr(train.BatchSource, "next", next_batch)
    out = tmp_path / "run"
    line = one_error_line(pretrain("--shards", str(store), "--out", str(out),
                                   "--config", str(write_config(tmp_path / "a.yaml", save_every=100, steps=3))), 1)
    kept = out / "checkpoints" / "step-00000002"
    assert line == (f"error: {store / 'shard-000000.h5'}: row 5: image: cannot decode; "
                    f"saved the last finished step as {kept}; continue with --resume")
    assert read_trainer_state(kept)["step"] == 2
    assert (out / "error.log").read_text().strip() == line
    monkeypatch.setattr(train.BatchSource, "next", real)
    resumed = pretrain("--out", str(out), "--resume", "--stop-at", "3")
    assert resumed.exit_code == 0, resumed.output


# ----------------------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def _poll(condition: Callable[[], bool], timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_two_sigterms_end_the_run_and_keep_the_last_checkpoint(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = write_config(tmp_path / "a.yaml", steps=100000, num_workers=1)
    proc = subprocess.Popen([sys.executable, "-m", "clasp.cli", "pretrain", "--shards", str(store), "--out", str(out),
                             "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        assert _poll(lambda: (out / "checkpoints" / "step-00000002" / "trainer.json").exists()
                     or proc.poll() is not None), "no checkpoint"
        assert proc.poll() is None, proc.stderr.read()
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in stderr
    if proc.returncode == 0:  # the first signal's clean stop finished before the second arrived
        assert "stopped by SIGTERM" in stderr
    else:
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert "error: second SIGTERM: stopped at once" in stderr
    newest = find_checkpoint(out)
    assert newest is not None and read_trainer_state(newest)["step"] >= 2
    assert load_file(str(newest / "model.safetensors"))
    assert _poll(lambda: all(_gone(pid) for pid in workers), 60), "a DataLoader worker outlived the run"
    resumed = pretrain("--out", str(out), "--resume", "--stop-at", str(read_trainer_state(newest)["step"] + 1))
    assert resumed.exit_code == 0, resumed.output


def test_dataloader_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    parent = textwrap.dedent("""
        import functools, os, sys, time, torch
        from clasp.pretraining.stream import _init_worker

        class Forever(torch.utils.data.IterableDataset):
            def __iter__(self):
                while True:
                    yield torch.zeros(1)

        loader = torch.utils.data.DataLoader(Forever(), batch_size=None, num_workers=2, persistent_workers=True,
                                             worker_init_fn=functools.partial(_init_worker, parent=os.getpid()))
        it = iter(loader)
        next(it)
        print(" ".join(str(w.pid) for w in it._workers), flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert _poll(lambda: all(_gone(pid) for pid in workers), 60), "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_real_bad_row_read_by_a_worker_is_one_line(tmp_path: Path) -> None:
    """A NaN attribute logit in the middle of a shard, found by a DataLoader worker (on_bad_row=stop)."""
    import numpy as np

    from clasp.store import Manifest, ShardStore, record_shard, shard_name, write_shard_for

    store = _write_store(tmp_path / "shards")
    manifest = Manifest.load(store)
    with ShardStore.open(store).open_shard(ShardStore.open(store).shards[0]) as shard:
        rows = next(iter(shard.iter_chunks(("image", "key", "path", "orig_hw", "part_mask", "part_conf",
                                              "attr_logits"))))
    from clasp.store import LabelRows

    logits = np.array(rows.attr_logits, np.float16)
    logits[6, 2] = np.nan
    bad = LabelRows(image=list(rows.image), key=[k.decode() if isinstance(k, bytes) else k for k in rows.key],
                    path=list(rows.path), orig_hw=rows.orig_hw, part_mask=rows.part_mask, part_conf=rows.part_conf,
                    attr_logits=logits)
    manifest.shards = []
    record_shard(manifest, store, write_shard_for(manifest, store, shard_name(0), bad))
    out = tmp_path / "run"
    result = pretrain("--shards", str(store), "--out", str(out), "--config",
                      str(write_config(tmp_path / "a.yaml", num_workers=1, save_every=100, steps=6)))
    line = one_error_line(result, 1)
    assert line.startswith(f"error: {store / 'shard-000000.h5'}: row 6: attr_logits"), line
    assert (out / "error.log").read_text().strip() == line
    newest = find_checkpoint(out)
    if newest is not None:  # the steps finished before the bad batch are kept
        assert f"saved the last finished step as {newest}" in line
        assert read_trainer_state(newest)["step"] >= 1


def test_out_of_memory_in_a_step_is_one_line_and_keeps_the_checkpoint(store: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    from clasp.pretraining.model import ClaspModel

    real, calls = ClaspModel.forward, []

    def forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 68719476736 bytes. Error code 12")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ClaspModel, "forward", forward)
    out = tmp_path / "run"
    line = one_error_line(pretrain("--shards", str(store), "--out", str(out),
                                   "--config", str(write_config(tmp_path / "a.yaml"))), 1)
    assert line == (f"error: step 2: out of memory (RuntimeError); lower batch_size or the crops; "
                    f"the last complete checkpoint is {out / 'checkpoints' / 'step-00000001'}")
    assert read_trainer_state(out / "checkpoints" / "step-00000001")["step"] == 1
    assert (out / "error.log").read_text().strip() == line


# ----------------------------------------------------------------------------- export


def test_export_refuses_nan_weights_and_a_full_disk_leaves_no_export(stopped_run: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    import clasp.pretraining.export as export

    good = tmp_path / "good"
    assert CliRunner().invoke(main, ["export", str(stopped_run), "--out", str(good)]).exit_code == 0

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(export, "save_file", full)
    result = CliRunner().invoke(main, ["export", str(stopped_run), "--out", str(good)])
    line = one_error_line(result, 1)
    assert line.startswith(f"error: {good / 'model.safetensors'}: cannot be written") and "No space left" in line
    assert sorted(p.name for p in good.iterdir()) == ["model.safetensors"]  # config.json gone: not an export
    from clasp.pretraining.backbone import BackboneError, load_backbone
    with pytest.raises(BackboneError, match="config.json: not found"):
        load_backbone(good)
    monkeypatch.undo()

    weights = stopped_run / "checkpoints" / "step-00000001" / "model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.startswith("teacher.backbone.") and tensors[k].is_floating_point())
    tensors[key][...] = float("nan")
    save_file(tensors, str(weights))
    line = one_error_line(CliRunner().invoke(main, ["export", str(stopped_run), "--out", str(tmp_path / "nan")]), 2)
    assert line.startswith(f"error: {weights}: the teacher backbone's ") and "NaN or infinite" in line
    assert not (tmp_path / "nan").exists()


def test_a_read_error_in_a_worker_is_one_line(store: Path, tmp_path: Path, monkeypatch) -> None:
    from clasp.pretraining import train

    def failing(self, window):
        raise OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):"
                      "\n  File \"x.py\", line 1, in f\nOSError: [Errno 5] Input/output error: 'shard-000000.h5'")

    monkeypatch.setattr(train.BatchSource, "next", failing)
    out = tmp_path / "run"
    line = one_error_line(pretrain("--shards", str(store), "--out", str(out),
                                   "--config", str(write_config(tmp_path / "a.yaml"))), 1)
    assert line == (f"error: {out}: step 1: OSError: [Errno 5] Input/output error: 'shard-000000.h5'; "
                    "the last complete checkpoint is none")
