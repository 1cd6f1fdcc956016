"""The Market-1501 reader and re-ID evaluation on a tiny folder in that layout; `clasp eval` bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.datasets.errors import DatasetError
from clasp.evaluation.errors import EvalInputError
from clasp.datasets.market1501 import read_market1501
from clasp.evaluation.run_eval import EvalConfig, evaluate

RED, GREEN, BLUE, DARK_RED = (250, 0, 0), (0, 250, 0), (0, 0, 250), (160, 20, 0)


def _write(folder: Path, name: str, colour: tuple[int, int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 128), colour).save(folder / name, quality=100)


@pytest.fixture
def market(tmp_path: Path) -> Path:
    """Identity 1 is red, 2 green; 0000 are distractors, -1 junk. Images are 64x128 as in Market-1501."""
    root = tmp_path / "Market-1501-v15.09.15"
    _write(root / "query", "0001_c1s1_000151_01.jpg", RED)
    _write(root / "query", "0002_c2s1_000301_01.jpg", GREEN)
    (root / "query" / "Thumbs.db").write_bytes(b"\0")
    g = root / "bounding_box_test"
    _write(g, "0001_c1s1_000176_01.jpg", RED)  # same camera as the query: excluded
    _write(g, "0001_c3s1_000201_02.jpg", DARK_RED)  # the correct answer
    _write(g, "0002_c1s2_000051_01.jpg", GREEN)  # correct for query 2
    _write(g, "0000_c2s1_000101_01.jpg", BLUE)  # distractor
    _write(g, "-1_c3s1_000011_03.jpg", RED)  # junk, identical to query 1: must not count
    _write(root / "bounding_box_train", "0005_c1s1_001051_01.jpg", BLUE)
    return root


def mean_colour(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    assert images.shape[1:] == (3, 256, 128)  # Market's 128x64 crops are resized for the backbone
    cls = images.float().mean((2, 3))
    return cls, cls[:, None, :].expand(-1, 128, -1)


def test_reader_parses_names_junk_and_distractors(market: Path) -> None:
    m = read_market1501(market)
    assert m.query.identity.tolist() == [1, 2] and m.query.camera.tolist() == [1, 2]
    assert m.query.ignored == 1  # Thumbs.db
    assert sorted(m.gallery.identity.tolist()) == [0, 1, 1, 2]  # junk dropped when reading, and counted
    assert (m.gallery.junk, m.query.junk) == (1, 0)
    by_name = dict(zip([p.name for p in m.gallery.paths], zip(m.gallery.identity, m.gallery.camera)))
    assert "-1_c3s1_000011_03.jpg" not in by_name
    assert by_name["0002_c1s2_000051_01.jpg"] == (2, 1)
    assert m.train is not None and m.train.identity.tolist() == [5]


@pytest.mark.parametrize("missing", ["query", "bounding_box_test"])
def test_reader_names_a_missing_part(market: Path, missing: str) -> None:
    import shutil

    shutil.rmtree(market / missing)
    with pytest.raises(DatasetError, match=f"missing {missing}/"):
        read_market1501(market)


def test_reid_on_market_layout(market: Path) -> None:
    results = evaluate(EvalConfig(backbone=Path("stand-in"), data=market), extractor=mean_colour)
    r = results["reid"]
    # query 1 (red, cam 1): junk red and same-camera red are removed; dark red is nearer than green and blue
    # query 2 (green, cam 2): the green gallery image (cam 1) is first
    assert (r["mAP"], r["rank1"], r["queries"], r["gallery"]) == (1.0, 1.0, 2, 4)
    assert r["junk_images"] == {"query": 0, "gallery": 1, "train": 0}
    assert (r["distractor_queries"], r["distractor_gallery_images"], r["ignored_files"]) == (0, 1, 1)
    assert results["kind"] == "market1501" and results["tasks"] == ["reid"]


def test_distractor_ranked_first_halves_the_ap(market: Path) -> None:
    # make the distractor look like identity 1: query 1's correct answer drops to rank 2 -> AP 1/2
    _write(market / "bounding_box_test", "0000_c2s1_000101_01.jpg", RED)
    r = evaluate(EvalConfig(backbone=Path("stand-in"), data=market), extractor=mean_colour)["reid"]
    assert r["mAP"] == pytest.approx((0.5 + 1.0) / 2) and r["rank1"] == pytest.approx(0.5)


def test_market_has_no_attribute_ground_truth(market: Path) -> None:
    with pytest.raises(EvalInputError, match="reid only"):
        evaluate(EvalConfig(backbone=Path("x"), data=market, tasks=("reid", "attributes")), extractor=mean_colour)


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_cli_bad_inputs_exit_2_with_one_line(market: Path, synth_world: Path, tmp_path: Path) -> None:
    not_export = tmp_path / "not-an-export"
    not_export.mkdir()
    (market / "bounding_box_test").rename(market / "gallery")
    cases = [
        (["--backbone", str(not_export), "--data", str(tmp_path)], "no ground truth"),
        (["--backbone", str(not_export), "--data", str(synth_world)], "config.json"),
        (["--backbone", str(tmp_path / "absent"), "--data", str(synth_world)], "does not exist"),
        (["--backbone", str(not_export), "--data", str(market)], "missing bounding_box_test/"),
        (["--backbone", str(not_export), "--data", str(synth_world), "--tasks", "depth"], "unknown task"),
        (["--backbone", str(not_export), "--data", str(synth_world), "--tasks", ""], "--tasks is empty"),
        (["--backbone", str(not_export), "--data", str(synth_world), "--tasks", " , "], "--tasks is empty"),
    ]
    for args, expected in cases:
        result = _invoke("eval", *args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, result.output)


def test_cli_eval_on_an_export(synth_world: Path, tmp_path: Path) -> None:
    """A backbone saved in the export format (random weights) runs through `clasp eval` end to end."""
    import json

    from safetensors.torch import save_file

    from clasp.pretraining.backbone import BACKBONE_FORMAT, BACKBONE_VERSION
    from clasp.pretraining.vit import PromptedViT, ViTConfig

    config = ViTConfig(dim=32, depth=2, heads=2, moe_layers=1, experts=2, top_k=1)
    model = PromptedViT(config)
    export = tmp_path / "export"
    export.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(export / "model.safetensors"))
    (export / "config.json").write_text(json.dumps({
        "format": BACKBONE_FORMAT, "version": BACKBONE_VERSION, "architecture": config.to_dict(),
        "task": "instance", "image_hw": [256, 128]}))
    out = tmp_path / "results.json"
    result = _invoke("eval", "--backbone", str(export), "--data", str(synth_world), "--out", str(out),
                     "--tasks", "reid,attributes", "--probe-steps", "30")
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["feature_dim"] == 32
    assert 0.0 <= saved["reid"]["mAP"] <= 1.0 and saved["reid"]["queries"] == 12
    assert "attributes mA" in result.output and "re-ID rank-1" in result.output
