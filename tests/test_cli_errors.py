"""The one error policy of every command (cli.py's ClaspGroup): an InputError is one line, exit 2; a RunError
one line, exit 1, error.log in a run folder; an unexpected exception is one line naming its type, exit 1,
error.log in a run folder; `clasp --debug` shows the traceback of the last instead."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from clasp.cli import UserError, main
from clasp.errors import InputError, RunError


def _boom(*args, **kwargs):
    raise RuntimeError("something broke\n  on a second line")


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("clasp.evaluation.run_eval.evaluate", _boom)
    result = CliRunner().invoke(main, ["eval", "--backbone", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "eval: RuntimeError: something broke on a second line" in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("clasp.evaluation.run_eval.evaluate", _boom)
    result = CliRunner().invoke(main, ["--debug", "eval", "--backbone", str(tmp_path), "--data", str(tmp_path)])
    assert isinstance(result.exception, RuntimeError) and "something broke" in str(result.exception)
    assert result.exit_code == 1


def test_a_run_folder_gets_error_log_and_user_errors_keep_exit_2(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("clasp.pretraining.train.run_pretraining", _boom)
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "shards").mkdir()
    result = CliRunner().invoke(main, ["pretrain", "--shards", str(tmp_path / "shards"), "--out", str(out)])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "pretrain: RuntimeError: something broke" in line
    assert (out / "error.log").read_text().strip() in line
    usage = CliRunner().invoke(main, ["eval", "--backbone", str(tmp_path / "none"), "--data", str(tmp_path)])
    assert usage.exit_code == 2 and usage.output.startswith("error: ")


def test_bad_options_are_one_line_exit_2(tmp_path: Path) -> None:
    cases = [
        (["label", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "100000"],
         "error: main label: Invalid value for '--workers': 100000 processes is more than 4 per available core"),
        (["label", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--batch-size", "10000000"],
         "error: main label: Invalid value for '--batch-size'"),
        (["pretrain", "--lr", "abc"], "error: main pretrain: Invalid value for '--lr'"),
        (["finetune", "reid", "--bogus"], "error: main finetune reid: No such option '--bogus'"),
        (["labl"], "error: main: No such command 'labl'"),
        (["--bogus", "label"], "error: main: No such option '--bogus'"),
    ]
    for args, start in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), result.output
    assert not (tmp_path / "o").exists()
    alone = CliRunner().invoke(main, [])
    assert alone.output.startswith("Usage:") and "error:" not in alone.output  # `clasp` alone shows its help


def _raise(exc: Exception):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_an_input_error_is_one_line_and_exit_2(monkeypatch, tmp_path: Path) -> None:
    from clasp.evaluation.errors import EvalInputError
    from clasp.store import StoreError

    monkeypatch.setattr("clasp.evaluation.run_eval.evaluate", _raise(EvalInputError(f"{tmp_path}: not an export")))
    result = CliRunner().invoke(main, ["eval", "--backbone", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code == 2 and result.output.splitlines() == [f"error: {tmp_path}: not an export"]
    monkeypatch.setattr("clasp.store.inspect.inspect_store", _raise(StoreError(tmp_path / "manifest.json", "bad")))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and result.output.splitlines() == [f"error: {tmp_path / 'manifest.json'}: bad"]
    assert issubclass(UserError, InputError)


def test_a_run_error_is_one_line_exit_1_and_error_log_in_the_run_folder(monkeypatch, tmp_path: Path) -> None:
    out, shards = tmp_path / "run", tmp_path / "shards"
    out.mkdir()
    shards.mkdir()
    monkeypatch.setattr("clasp.pretraining.train.run_pretraining", _raise(RunError(f"{out}: no space left on device")))
    result = CliRunner().invoke(main, ["pretrain", "--shards", str(shards), "--out", str(out)])
    assert result.exit_code == 1 and result.output.splitlines() == [f"error: {out}: no space left on device"]
    assert (out / "error.log").read_text() == f"error: {out}: no space left on device\n"


def test_a_run_error_the_run_logged_itself_is_logged_once(monkeypatch, tmp_path: Path) -> None:
    from clasp.runs.error_log import write_error_log

    out, shards = tmp_path / "run", tmp_path / "shards"
    out.mkdir()
    shards.mkdir()
    (out / "error.log").write_text("error: an earlier start\n")

    def run(config):
        write_error_log(out, "step 3: loss is nan")
        raise RunError("step 3: loss is nan")

    monkeypatch.setattr("clasp.pretraining.train.run_pretraining", run)
    result = CliRunner().invoke(main, ["pretrain", "--shards", str(shards), "--out", str(out)])
    assert result.exit_code == 1 and result.output.splitlines() == ["error: step 3: loss is nan"]
    assert (out / "error.log").read_text().splitlines() == ["error: an earlier start", "error: step 3: loss is nan"]


def test_a_run_error_without_a_run_folder_writes_no_log(monkeypatch, tmp_path: Path) -> None:
    from clasp.labeling.errors import LabelingRunError

    monkeypatch.setattr("clasp.labeling.run.run_labeling", _raise(LabelingRunError("shard-000001.h5: disk full")))
    out = tmp_path / "shards"
    result = CliRunner().invoke(main, ["label", "--images", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 1 and result.output.splitlines() == ["error: shard-000001.h5: disk full"]
    assert not out.exists()
