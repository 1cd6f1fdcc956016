"""One writer per run folder: two `clasp pretrain` started at once on one `--out` end with exactly one run
in it; a second writer is refused, naming the holder, and changes nothing; a lock left by a killed run is
taken over with a line; `--resume` into a folder that holds no run is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from clasp.cli import main
from clasp.runs import LOCK_NAME, FolderLockError, exclusive_folder
from clasp.store import Vocabulary
from tests.conftest import TINY_RUN, one_error_line, read_metrics, snapshot, write_store

TINY = {**TINY_RUN, "local_crops": 1, "num_workers": 0, "save_every": 5}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("lock") / "shards", Vocabulary.default(), [9], grid=(8, 4), hw=(64, 32))


def config_file(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **settings}))
    return path


def pretrain(*args: str):
    return CliRunner().invoke(main, ["pretrain", *args])


# Each process imports everything, then waits for the test's signal, so that both ask for the lock at once.
WAIT_THEN_RUN = """
import os, sys, time
from clasp.cli import main
open(sys.argv[1] + ".ready", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
sys.argv = ["clasp"] + sys.argv[3:]
main()
"""


def test_two_pretrain_runs_started_at_once_leave_exactly_one_run(store: Path, tmp_path: Path) -> None:
    out, go = tmp_path / "run", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = {}
    for seed in (1, 2):
        config = config_file(tmp_path / f"seed{seed}.yaml", seed=seed, steps=10)
        procs[seed] = subprocess.Popen(
            [sys.executable, "-c", WAIT_THEN_RUN, str(tmp_path / f"p{seed}"), str(go),
             "pretrain", "--shards", str(store), "--out", str(out), "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"p{seed}.ready").exists() for seed in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outcomes = {seed: (p.wait(timeout=300), p.stderr.read()) for seed, p in procs.items()}
    winners = [seed for seed, (code, _) in outcomes.items() if code == 0]
    assert len(winners) == 1, outcomes
    (winner,) = winners
    loser = 3 - winner
    code, stderr = outcomes[loser]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and errors == [f"error: {out}: `clasp pretrain` (pid {procs[winner].pid}) is writing this folder; "
                                    "wait for it to finish or stop it, or choose another folder"], stderr
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == winner
    checkpoint = out / "checkpoints" / "step-00000010"
    assert json.loads((checkpoint / "config.json").read_text())["config"]["seed"] == winner
    assert (checkpoint / "model.safetensors").is_file()
    assert [row["step"] for row in read_metrics(out) if "step" in row] == list(range(1, 11))
    assert not (out / LOCK_NAME).exists() and not (out / "error.log").exists()


def test_a_second_writer_is_refused_naming_the_holder_and_changes_nothing(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = config_file(tmp_path / "a.yaml", steps=2)
    assert pretrain("--shards", str(store), "--out", str(out), "--config", str(config)).exit_code == 0
    before = snapshot(out)
    with exclusive_folder(out, "clasp pretrain"):
        line = one_error_line(pretrain("--out", str(out), "--resume", "--steps", "4"), 2)
    assert f"`clasp pretrain` (pid {os.getpid()}) is writing this folder" in line
    assert snapshot(out) == before and not (out / "error.log").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_line(store: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("`clasp pretrain` (pid 999999999)")  # no flock holds it: its holder is gone
    config = config_file(tmp_path / "a.yaml", steps=1)
    with caplog.at_level("WARNING", logger="clasp"):
        result = pretrain("--shards", str(store), "--out", str(out), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert f"{out}: taking over the lock left by `clasp pretrain` (pid 999999999), which ended without releasing it" \
        in caplog.text
    assert not (out / LOCK_NAME).exists() and (out / "checkpoints" / "step-00000001").is_dir()


def test_resume_into_a_folder_that_holds_no_run_is_refused(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    config = config_file(tmp_path / "a.yaml", steps=1)
    line = one_error_line(pretrain("--shards", str(store), "--out", str(out), "--config", str(config), "--resume"), 2)
    assert f"{out}: holds no clasp run to resume (no config.json)" in line
    assert sorted(p.name for p in out.iterdir()) == ["error.log", "notes.txt"]


def test_the_lock_is_released_with_its_file_and_a_refused_fresh_folder_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with exclusive_folder(out, "clasp label"):
            assert (out / LOCK_NAME).read_text() == f"`clasp label` (pid {os.getpid()})"
            with pytest.raises(FolderLockError, match=r"`clasp label` \(pid \d+\) is writing this folder"):
                with exclusive_folder(out, "clasp pretrain"):
                    pass
            raise RuntimeError("the command failed before writing anything")
    assert not out.exists()


def test_an_out_that_cannot_be_a_folder_is_one_line_exit_2(store: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = config_file(tmp_path / "a.yaml", steps=1)
    line = one_error_line(pretrain("--shards", str(store), "--out", str(blocker / "run"), "--config", str(config)), 2)
    assert f"{blocker / 'run'}: cannot write to this folder" in line
