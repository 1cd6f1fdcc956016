"""The run-folder plan every training command shares: fresh, resume, force; the refusals; taking the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clasp.runs.run_folder import RunFiles, RunFolderError, plan_run_folder, take_run_folder, wipe_run_files
from clasp.runs.saved_config import ResumeRule, saved_form

RULE = ResumeRule(keys=("lr", "out", "steps"), resumable=frozenset({"out"}), defaults={"lr": 0.1, "out": "", "steps": 4})
FILES = RunFiles(own=("results.json", "rows-rank*.jsonl"))
SETTINGS = {"lr": 0.1, "out": "o", "steps": 4}


class OneProcess:
    """What take_run_folder needs of an Accelerator, for one process."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def plan(out: Path, resume: bool = False, force: bool = False, settings=None, derived=None):
    return plan_run_folder(out, resume, force, FILES, RULE, settings or SETTINGS, derived or {"world_size": 1})


def write_run(out: Path, step: int | None = 2, **settings) -> None:
    """A run folder as a command leaves it: config.json, metrics.jsonl, a checkpoint of `step`."""
    out.mkdir(parents=True, exist_ok=True)
    saved = saved_form({**SETTINGS, **settings}, {"world_size": 1})
    (out / "config.json").write_text(json.dumps(saved))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    if step is not None:
        checkpoint = out / "checkpoints" / f"step-{step:08d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "config.json").write_text(json.dumps(saved))
        (checkpoint / "trainer.json").write_text(json.dumps({"step": step}))
        (out / "checkpoints" / f"step-{step + 1:08d}.tmp").mkdir()  # an unfinished save is never resumed


def test_a_new_or_empty_folder_starts_fresh(tmp_path: Path) -> None:
    for out in (tmp_path / "new", tmp_path):
        assert (plan(out).resume_from, plan(out).wipe) == (None, False)
    (tmp_path / "error.log").write_text("error: before\n")
    (tmp_path / ".clasp.lock").write_text("")
    assert plan(tmp_path).wipe is False  # error.log and the lock do not make a run


def test_another_run_or_foreign_files_are_refused_with_one_line(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    (tmp_path / "run" / "rows-rank0.jsonl").write_text("")
    with pytest.raises(RunFolderError, match=r"run: holds another run \(checkpoints, config.json, metrics.jsonl, "
                                             r"rows-rank0.jsonl\); pass --resume to continue it or --force"):
        plan(tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RunFolderError, match=r"mine: is not empty and not a clasp run \(notes.txt…\)"):
        plan(tmp_path / "mine")
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="exists and is not a folder"):
        plan(tmp_path / "file")


def test_force_wipes_the_run_files_and_only_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out)
    for name in ("results.json", "rows-rank1.jsonl", "notes.txt", "error.log"):
        (out / name).write_text("x")
    (out / "trackers").mkdir()
    chosen = plan(out, force=True)
    assert chosen.wipe and chosen.resume_from is None
    wipe_run_files(out, FILES)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert plan(tmp_path / "other", force=True).wipe is False


def test_resume_continues_the_newest_complete_checkpoint_when_the_rule_allows(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out)
    chosen = plan(out, resume=True, settings={**SETTINGS, "out": "moved"})  # `out` may change
    assert chosen.resume_from == out / "checkpoints" / "step-00000002" and chosen.resume
    with pytest.raises(RunFolderError, match=r"step-00000002/config.json: cannot resume, settings differ from the "
                                             r"run's \(lr: checkpoint 0.1, now 0.2; derived.world_size: checkpoint 1, "
                                             r"now 2\); use the run's settings, or --force to start over"):
        plan(out, resume=True, settings={**SETTINGS, "lr": 0.2}, derived={"world_size": 2})
    with pytest.raises(RunFolderError, match=r"holds no clasp run to resume \(no config.json\); drop --resume"):
        plan(tmp_path / "empty", resume=True)
    stopped_early = tmp_path / "early"
    write_run(stopped_early, step=None)
    assert plan(stopped_early, resume=True).resume_from is None  # stopped before its first checkpoint
    (stopped_early / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="early/config.json: not a saved run config"):
        plan(stopped_early, resume=True)


def test_a_setting_an_older_run_did_not_save_counts_as_its_default(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out)
    saved = json.loads((out / "checkpoints" / "step-00000002" / "config.json").read_text())
    del saved["config"]["steps"]
    (out / "checkpoints" / "step-00000002" / "config.json").write_text(json.dumps(saved))
    assert plan(out, resume=True).resume_from is not None
    with pytest.raises(RunFolderError, match="steps: checkpoint 4, now 5"):
        plan(out, resume=True, settings={**SETTINGS, "steps": 5})


def test_taking_the_folder_writes_config_clears_error_log_and_truncates_the_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_run(out)
    (out / "error.log").write_text("error: the last start was refused\n")
    chosen = plan(out, resume=True)
    take_run_folder(OneProcess(), chosen, FILES, {"config": {"new": True}}, start_step=2)
    assert not (out / "error.log").exists()
    assert json.loads((out / "config.json").read_text()) == {"config": {"new": True}}
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    fresh = plan(tmp_path / "new")
    take_run_folder(OneProcess(), fresh, FILES, {"config": {}}, start_step=0)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["config.json"]
