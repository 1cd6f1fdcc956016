"""The no-information losses: what a backbone that ignores the image ends at, read off a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clasp.evaluation.no_information import entropy, mean_kl_to_mean, no_information_losses, softmax
from clasp.evaluation.truth_store import TruthStoreConfig, write_truth_store
from clasp.store import ShardStore


def kl_rows(targets: np.ndarray, prediction: np.ndarray) -> float:
    return float((targets * (np.log(np.clip(targets, 1e-12, None)) - np.log(prediction))).sum(1).mean())


def test_the_mean_target_is_the_best_constant_prediction() -> None:
    rng = np.random.default_rng(0)
    targets = softmax(rng.normal(size=(200, 4)) * 2, 1.0)
    bar = mean_kl_to_mean(targets)
    assert bar > 0
    for _ in range(50):  # no other constant prediction does better
        other = softmax(rng.normal(size=(1, 4)), 1.0)
        assert kl_rows(targets, other) > bar
    assert mean_kl_to_mean(np.repeat(targets[:1], 10, 0)) == pytest.approx(0, abs=1e-9)


def test_one_hot_targets_give_the_entropy_of_their_frequencies() -> None:
    values = np.array([0] * 50 + [1] * 30 + [2] * 20)
    one_hot = np.eye(3)[values]
    assert mean_kl_to_mean(one_hot) == pytest.approx(entropy(np.bincount(values)), abs=1e-9)
    assert entropy(np.array([7, 0, 0])) == 0.0 and entropy(np.zeros(3)) == 0.0


def test_truth_store_values_are_the_entropies_of_its_labels(synth_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "truth"
    write_truth_store(TruthStoreConfig(world=synth_world, out=out, grid=(14, 7)))
    store = ShardStore.open(out)
    vocab = store.manifest.vocab
    masks, logits = [], []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            rows = shard.read(fields=("part_mask", "attr_logits"))
        masks.append(rows.part_mask.ravel())
        logits.append(rows.attr_logits.astype(np.float32))
    table = np.concatenate(logits)
    group_entropies = [entropy(np.bincount(table[:, c].argmax(1))) for _, c in vocab.group_slices()]

    losses = no_information_losses(out)
    assert losses.part == pytest.approx(entropy(np.bincount(np.concatenate(masks))), abs=1e-6)
    # truth logits (±TRUTH_LOGIT) soften each one-hot target a little, which lowers the bar slightly
    assert np.mean(group_entropies) - 0.02 < losses.attribute < np.mean(group_entropies)
    assert losses.attribute < losses.attribute_uniform
    # a threshold above every confidence keeps no cell: nothing to learn, nothing to lose
    assert no_information_losses(out, conf_threshold=1.5).part == 0.0
    noisy = tmp_path / "noisy"
    write_truth_store(TruthStoreConfig(world=synth_world, out=noisy, grid=(14, 7), noise=0.5, seed=1))
    assert no_information_losses(noisy).part > losses.part  # noise spreads the labels over more parts
