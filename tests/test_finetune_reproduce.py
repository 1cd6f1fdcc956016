"""`make reproduce-finetune` in miniature: reproduce/finetune.py on three tiny random exports, two steps a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_finetune_run import write_random_export

SCRIPT = Path(__file__).resolve().parents[1] / "reproduce" / "finetune.py"
METHODS = ("clasp", "dino-only", "random")


@pytest.mark.slow
def test_reproduce_finetune_in_miniature(tmp_path: Path) -> None:
    for seed, method in enumerate(METHODS):
        write_random_export(tmp_path / "exports" / method, seed=seed)
    env = {**os.environ, "EXPORTS": str(tmp_path / "exports"), "FT_STEPS": "2", "FT_IDENTITIES": "8", "FT_JOBS": "2",
           "FT_PRECISION": "fp32", "HF_HUB_OFFLINE": "1"}
    got = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, env=env, timeout=900)
    assert got.returncode == 0, got.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["steps"] == 2 and saved["jobs"] == 2 and len(saved["load_average"]) == 2
    for method in METHODS:
        for task, keys in (("reid", ("map", "rank1", "map_rerank")), ("attributes", ("ma", "f1"))):
            for mode in ("fine-tuned", "frozen"):
                row = saved["results"][method][task][mode]
                assert row["steps"] == 2 and all(0 <= row[k] <= 1 for k in keys), (method, task, mode)
                assert row["hardware"]["precision"] == "fp32"
                run = json.loads((tmp_path / "out" / "runs" / f"{method}-{task}-{mode}" / "config.json").read_text())
                assert run["config"]["freeze_backbone"] == (mode == "frozen")
    table = (tmp_path / "out" / "results.md").read_text()
    assert all(f"| {title} |" in table for title in ("CLASP", "DINO only", "random weights"))
    assert "2 runs at a time" in table and "Precision fp32" in table
