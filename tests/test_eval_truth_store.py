"""`clasp truth-labels`: a store of a world's ground truth, exact at noise 0 and corrupted at the rate asked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clasp.cli import main
from clasp.evaluation.label_quality import LabelQualityConfig, evaluate_labels
from clasp.evaluation.truth_store import TRUTH_MODEL_PREFIX, TruthStoreConfig, corrupt, write_truth_store
from clasp.store import ShardStore, verify_store


def test_noise_zero_is_the_truth_and_a_valid_store(synth_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "truth"
    summary = write_truth_store(TruthStoreConfig(world=synth_world, out=out, grid=(14, 7), shard_size=20))
    assert (summary.rows, summary.shards) == (48, 3)
    assert summary.part_cells_changed == 0 and summary.attribute_values_changed == 0
    assert verify_store(out).ok
    store = ShardStore.open(out)
    assert store.manifest.clip.model.startswith(TRUTH_MODEL_PREFIX)
    assert tuple(store.manifest.label_grid) == (14, 7)
    quality = evaluate_labels(LabelQualityConfig(out, synth_world))
    assert quality["matched_rows"] == 48
    assert quality["parts"]["mIoU"] == 1.0
    assert quality["attributes"]["mA"] == 1.0


@pytest.mark.parametrize("noise", [0.25, 0.5])
def test_the_measured_corruption_is_the_noise_asked(synth_world: Path, tmp_path: Path, noise: float) -> None:
    out = tmp_path / "noisy"
    summary = write_truth_store(TruthStoreConfig(world=synth_world, out=out, noise=noise, seed=3))
    cells = 48 * 16 * 8
    # binomial standard error of a share over `cells` cells; 4 of them is far outside chance
    assert abs(summary.part_cells_changed - noise) < 4 * np.sqrt(noise * (1 - noise) / cells)
    values = 48 * 11
    assert abs(summary.attribute_values_changed - noise) < 4 * np.sqrt(noise * (1 - noise) / values)
    quality = evaluate_labels(LabelQualityConfig(out, synth_world))
    # eval-labels, reading the store, sees the same share of correct group values
    mean_accuracy = np.mean(list(quality["attributes"]["accuracy"].values()))
    assert mean_accuracy == pytest.approx(1 - summary.attribute_values_changed, abs=1e-9)


def test_corruption_always_picks_another_value_uniformly() -> None:
    rng = np.random.default_rng(0)
    values = np.zeros(60_000, np.uint8)
    noisy = corrupt(values, 4, 1.0, rng)
    assert (noisy != 0).all()
    shares = np.bincount(noisy, minlength=4)[1:] / len(noisy)
    assert np.allclose(shares, 1 / 3, atol=0.01)
    assert (corrupt(values, 4, 0.0, rng) == values).all()


def test_same_seed_same_store_other_seed_other_noise(synth_world: Path, tmp_path: Path) -> None:
    def masks(name: str, seed: int) -> np.ndarray:
        write_truth_store(TruthStoreConfig(world=synth_world, out=tmp_path / name, noise=0.5, seed=seed))
        store = ShardStore.open(tmp_path / name)
        with store.open_shard(store.manifest.shards[0]) as shard:
            return shard.read(fields=("part_mask",)).part_mask

    a, b, c = masks("a", 1), masks("b", 1), masks("c", 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cli_writes_a_store_and_refuses_bad_input(synth_world: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(main, ["truth-labels", str(synth_world), "--out", str(out), "--noise", "0.25"])
    assert result.exit_code == 0, result.output
    assert "changed" in result.output and json.loads((out / "manifest.json").read_text())["totals"]["rows"] == 48
    again = runner.invoke(main, ["truth-labels", str(synth_world), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a store" in again.output
    missing = runner.invoke(main, ["truth-labels", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and missing.output.startswith("error:") and "nowhere" in missing.output
    bad = runner.invoke(main, ["truth-labels", str(synth_world), "--out", str(tmp_path / "y"), "--noise", "1.5"])
    assert bad.exit_code == 2
