"""The one error policy of every command (cli.py's ClaspGroup): an unexpected exception is one line, exit 1,
error.log in a run folder; `clasp --debug` shows the traceback instead."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from clasp.cli import main


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
