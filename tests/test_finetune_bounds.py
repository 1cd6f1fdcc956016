"""`clasp finetune` refuses non-finite or absurd numbers and more loader workers than the machine can run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from clasp.cli import main


@pytest.mark.parametrize("settings, needle", [
    ({"num_workers": 100000}, "num_workers 100000 is more than 4 per available core"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"lr": 1e30}, "lr must be in [0, 1]"),
    ({"batch_size": 10**8}, "batch_size must be in [1, 65536], got 100000000"),
    ({"margin": float("inf")}, "margin must be a finite number"),
])
def test_finetune_bounds(tmp_path: Path, monkeypatch, settings: dict, needle: str) -> None:
    def no_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr("clasp.finetune.loop.run_finetune", no_run)
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["finetune", "reid", "--backbone", str(tmp_path), "--data", str(tmp_path),
                                       "--out", str(out), "--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert f"{config}: " in lines[0]  # the file that set it
    assert sorted(p.name for p in out.iterdir()) == ["error.log"]
