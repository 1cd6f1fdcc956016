"""`clasp pretrain` as a real process: SIGTERM, kill -9 and resume; two processes under `accelerate launch`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from clasp.pretraining.config import PretrainConfig
from clasp.pretraining.train import run_pretraining
from tests.conftest import TINY_RUN, losses, steps_logged

TINY = {**TINY_RUN, "local_crops": 2, "num_workers": 1, "steps": 1000}
VENV_BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def start(store: Path, out: Path, config_file: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clasp.cli", "pretrain", "--shards", str(store), "--out", str(out),
                             "--config", str(config_file), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def reference(store: Path, tmp_path: Path, steps: int) -> dict[int, float]:
    """Losses of an uninterrupted run with the same settings, in this process."""
    run_pretraining(PretrainConfig(**TINY, shards=str(store), out=str(tmp_path / "ref"), stop_at=steps,
                                   save_every=1000))
    return losses(tmp_path / "ref")


def test_sigterm_stops_with_a_checkpoint_and_resume_matches(store: Path, tmp_path: Path, config_file: Path) -> None:
    out = tmp_path / "run"
    proc = start(store, out, config_file, "--save-every", "1000")
    wait_for(lambda: len(steps_logged(out)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr
    stopped = max(steps_logged(out))
    assert [c.name for c in (out / "checkpoints").iterdir()] == [f"step-{stopped:08d}"]

    # continue two more steps in this process; compare with a run that was never interrupted
    run_pretraining(PretrainConfig(**TINY, shards=str(store), out=str(out), resume=True, stop_at=stopped + 2,
                                   save_every=1000))
    want = reference(store, tmp_path, stopped + 2)
    got = losses(out)
    assert sorted(got) == list(range(1, stopped + 3))
    for step in range(1, stopped + 3):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step


def test_kill_9_after_a_checkpoint_then_resume_matches(store: Path, tmp_path: Path, config_file: Path) -> None:
    out = tmp_path / "run"
    proc = start(store, out, config_file, "--save-every", "2")
    wait_for(lambda: (out / "checkpoints" / "step-00000002" / "trainer.json").exists()
             and max(steps_logged(out), default=0) >= 3, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    last = max(int(p.name[5:13]) for p in (out / "checkpoints").iterdir() if not p.name.endswith(".tmp"))
    (out / "checkpoints" / f"step-{last + 1:08d}.tmp").mkdir(exist_ok=True)  # as if killed while saving

    run_pretraining(PretrainConfig(**TINY, shards=str(store), out=str(out), resume=True, stop_at=last + 2,
                                   save_every=2))
    want = reference(store, tmp_path, last + 2)
    got = losses(out)
    assert steps_logged(out) == list(range(1, last + 3))  # lines after the checkpoint were dropped, then redone
    assert not list((out / "checkpoints").glob("*.tmp"))  # an interrupted save never counts and is cleared
    for step in range(1, last + 3):
        assert got[step] == pytest.approx(want[step], abs=1e-6), step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(store: Path, out: Path, config_file: Path, *extra: str) -> subprocess.Popen:
    command = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "clasp.cli", "pretrain", "--shards", str(store), "--out", str(out), "--config", str(config_file),
               "--log-rows", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env(), "ACCELERATE_USE_CPU": "1"})


def test_two_processes_stop_resume_read_disjoint_rows_and_end_identical(store: Path, tmp_path: Path,
                                                                         config_file: Path) -> None:
    out = tmp_path / "run"
    # 17 rows over 2 ranks: 8 and 9 rows -> 3 batches per rank and epoch
    first = launch(store, out, config_file, "--save-every", "1000")
    wait_for(lambda: len(steps_logged(out)) >= 4, first, timeout=300)
    first.send_signal(signal.SIGTERM)  # to the launcher, which passes it to its whole process group
    _, stderr = first.communicate(timeout=180)
    stopped = max(steps_logged(out))
    assert stderr.count(f"stopped by SIGTERM after step {stopped}") == 2, stderr[-3000:]  # both ranks, same step
    assert [c.name for c in (out / "checkpoints").iterdir()] == [f"step-{stopped:08d}"]

    end = (stopped // 3 + 2) * 3  # an epoch boundary, at least one whole epoch after the stop
    second = launch(store, out, config_file, "--save-every", "1000", "--resume", "--stop-at", str(end))
    _, stderr = second.communicate(timeout=400)
    assert second.returncode == 0, stderr[-3000:]

    logs = {rank: [json.loads(l) for l in (out / f"rows-rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    rows = {rank: {l["step"]: l["rows"] for l in lines if "rows" in l} for rank, lines in logs.items()}
    assert sorted(rows[0]) == sorted(rows[1]) == list(range(1, end + 1))  # same number of batches on both ranks
    for epoch in range(end // 3):
        steps = range(3 * epoch + 1, 3 * epoch + 4)
        mine = [[r for s in steps for r in rows[rank][s]] for rank in (0, 1)]
        assert set(mine[0]).isdisjoint(mine[1]), epoch  # ranks read disjoint rows ...
        assert sorted(mine[0] + mine[1]) == list(range(17)), epoch  # ... and together every row once per epoch
    digests = [lines[-1]["state_sha256"] for lines in logs.values()]
    assert digests[0] == digests[1]  # identical weights (student, teacher, centre) on both ranks
    saved = json.loads((out / "config.json").read_text())
    assert saved["derived"]["world_size"] == 2 and saved["derived"]["total_batch"] == 8
    assert steps_logged(out) == list(range(1, end + 1))
    assert {p.name for p in (out / "checkpoints" / f"step-{end:08d}").iterdir()} >= {
        "rng-rank0.pt", "rng-rank1.pt", "stream-rank0.pt", "stream-rank1.pt", "model.safetensors"}
