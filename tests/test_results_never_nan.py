"""Results files are strict JSON: a metric without a value is null with its reason, and a run whose main
metric has no value exits 1 with one line, after writing the rest of its results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.evaluation.results_json import write_results
from clasp.evaluation.undefined import NOT_COMPUTABLE, PerItem, undefined
from tests.test_finetune_run import write_random_export

NO_MATCH = "no query has a gallery match of another camera"


def strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def unscorable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Market-1501 layout where every query's identity is in the gallery only under the query's own camera."""
    root = tmp_path_factory.mktemp("unscorable") / "market"
    names = {"query": ["0001_c1s1_000001_00.jpg", "0002_c2s1_000002_00.jpg"],
             "bounding_box_test": ["0001_c1s1_000003_00.jpg", "0001_c1s1_000004_00.jpg", "0002_c2s1_000005_00.jpg",
                                   "0000_c3s1_000006_00.jpg", "-1_c4s1_000007_00.jpg"],
             "bounding_box_train": [f"{pid:04d}_c{cam}s1_{pid * 10 + cam * 2 + n:06d}_00.jpg"
                                    for pid in (5, 6) for cam in (1, 2) for n in (0, 1)]}
    rng = np.random.default_rng(0)
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            Image.new("RGB", (16, 32), tuple(int(v) for v in rng.integers(0, 256, 3))).save(root / folder / name)
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_export(tmp_path_factory.mktemp("export") / "export")


def assert_failed_with_one_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [expected] and "Traceback" not in result.output, result.output


def test_clasp_eval_without_a_scorable_query_writes_null_and_exits_1(unscorable: Path, export: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = CliRunner().invoke(main, ["eval", "--backbone", str(export), "--data", str(unscorable),
                                       "--out", str(out), "--precision", "fp32"])
    assert_failed_with_one_line(result, f"error: {NO_MATCH}: {unscorable} (2 queries, all skipped)")
    reid = strict_json(out)["reid"]
    assert (reid["mAP"], reid["mAP_reason"], reid["rank1"], reid["rank1_reason"]) == (None, NO_MATCH, None, NO_MATCH)
    assert reid["mAP_interval"] == {"value": None, "value_reason": NO_MATCH, "low": None, "low_reason": NO_MATCH,
                                    "high": None, "high_reason": NO_MATCH}
    assert (reid["queries"], reid["skipped_queries"], reid["gallery"]) == (0, 2, 4)  # the rest is written
    assert reid["junk_images"] == {"query": 0, "gallery": 1, "train": 0}


def test_finetune_reid_without_a_scorable_query_writes_null_and_exits_1(unscorable: Path, export: Path,
                                                                         tmp_path: Path, monkeypatch,
                                                                         one_torch_thread) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["finetune", "reid", "--backbone", str(export), "--data", str(unscorable),
                                       "--out", str(run), "--steps", "1", "--ids-per-batch", "2",
                                       "--images-per-id", "2", "--precision", "fp32", "--num-workers", "0",
                                       "--rerank", "--k1", "2", "--k2", "1"])
    assert_failed_with_one_line(result, f"error: {NO_MATCH}: {unscorable} (2 queries, all skipped)")
    saved = strict_json(run / "results.json")
    assert (saved["map"], saved["map_reason"], saved["map_rerank"], saved["map_rerank_reason"]) == \
           (None, NO_MATCH, None, NO_MATCH)
    assert (saved["queries"], saved["skipped_queries"], saved["gallery"], saved["steps"]) == (0, 2, 4, 1)
    assert saved["junk_images"]["gallery"] == 1 and saved["distractor_gallery_images"] == 1


def test_every_nan_is_null_with_a_reason_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    written = write_results(path, {
        "mA": undefined("no attribute has both positive and negative test images"), "plain": float("nan"),
        "per_attribute": PerItem(["a", "b"], np.array([0.5, np.nan]), "no positive or no negative test image"),
        "whole": PerItem(["a"], [0.25], "unused"), "nested": {"x": np.float32("nan"), "y": np.int64(3)}})
    assert strict_json(path) == written == {
        "mA": None, "mA_reason": "no attribute has both positive and negative test images",
        "plain": None, "plain_reason": NOT_COMPUTABLE,
        "per_attribute": {"a": 0.5, "b": None}, "per_attribute_reason": "no positive or no negative test image",
        "whole": {"a": 0.25}, "nested": {"x": None, "x_reason": NOT_COMPUTABLE, "y": 3}}
