"""Probes on features built so that the answer is known, and `clasp eval` wired end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clasp.evaluation.features import extract_features, load_image, patch_grid
from clasp.datasets.label_grid import majority_downsample
from clasp.evaluation.probes import (
    ProbeSettings, attribute_probe, identity_split, parsing_probe, query_gallery_split, reid_probe,
)
from clasp.evaluation.run_eval import EvalConfig, evaluate, format_table
from clasp.datasets.truth import SynthTruth

FAST = ProbeSettings(steps=150)


def _one_hot(labels: np.ndarray, sizes: list[int]) -> np.ndarray:
    return np.concatenate([np.eye(k, dtype=np.float32)[labels[:, g]] for g, k in enumerate(sizes)], axis=1)


def test_attribute_probe_perfect_on_one_hot_features() -> None:
    rng = np.random.default_rng(0)
    sizes = [2, 3, 4]
    labels = np.stack([rng.integers(0, k, 120) for k in sizes], axis=1)
    x = _one_hot(labels, sizes) + rng.normal(0, 0.05, (120, 9)).astype(np.float32)
    res = attribute_probe(x[:60], labels[:60], x[60:], labels[60:], sizes, FAST)
    assert res["mA"] == 1.0
    assert res["group_accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert len(res["per_attribute"]) == 1 + 3 + 4
    again = attribute_probe(x[:60], labels[:60], x[60:], labels[60:], sizes, FAST)
    assert np.array_equal(res["per_attribute"], again["per_attribute"])  # deterministic


def test_attribute_probe_recovers_identity_attributes(vocab) -> None:
    """With enough training identities, one-hot attribute features of the synthetic world give mA 1."""
    from clasp.datasets.synth.identities import sample_identity

    sizes = [len(g.values) for g in vocab.attributes]
    people = [sample_identity(0, pid, vocab) for pid in range(300)]
    labels = np.array([[[v.name for v in g.values].index(p.attributes[g.group]) for g in vocab.attributes]
                       for p in people])
    x = _one_hot(labels, sizes)
    res = attribute_probe(x[:200], labels[:200], x[200:], labels[200:], sizes, FAST)
    assert res["mA"] == 1.0


def test_attribute_probe_at_chance_on_random_features() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (2000, 3))
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    res = attribute_probe(x[:1000], labels[:1000], x[1000:], labels[1000:], [2, 2, 2], FAST)
    assert abs(res["mA"] - 0.5) < 0.05


def test_parsing_probe_perfect_on_one_hot_tokens() -> None:
    rng = np.random.default_rng(2)
    grid_masks = rng.integers(0, 4, (20, 4, 2))
    tokens = np.eye(4, dtype=np.float32)[grid_masks.reshape(20, 8)] + rng.normal(0, 0.05, (20, 8, 4)).astype(np.float32)
    pixel = grid_masks.repeat(16, axis=1).repeat(16, axis=2)  # nearest upsampling of the truth grid
    res = parsing_probe(tokens[:10], grid_masks[:10], tokens[10:], grid_masks[10:], 5, pixel[10:], FAST)
    assert res["mIoU_grid"] == 1.0
    assert np.isnan(res["iou_grid"][4])  # class 4 never occurs: left out of the mean
    assert 0.6 < res["mIoU_pixel"] < 1.0  # bilinear upsampling rounds the cell corners


def test_reid_probe_one_hot_identity_is_perfect_random_is_not() -> None:
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(20), 4)
    cams = np.tile(np.arange(2), 40)  # each identity: cameras 0, 1, 0, 1
    query, gallery = query_gallery_split(ids, cams, np.arange(len(ids)))
    assert len(query) == len(gallery) == 40
    one_hot = np.eye(20, dtype=np.float32)[ids]
    res = reid_probe(one_hot[query], ids[query], cams[query], one_hot[gallery], ids[gallery], cams[gallery])
    assert (res["mAP"], res["rank1"], res["queries"], res["gallery"]) == (1.0, 1.0, 40, 40)
    noise = rng.normal(size=(len(ids), 32)).astype(np.float32)
    res = reid_probe(noise[query], ids[query], cams[query], noise[gallery], ids[gallery], cams[gallery])
    assert res["mAP"] < 0.3


def test_splits_follow_the_documented_rules() -> None:
    ids = np.array([5, 1, 9, 1, 3, 5, 9, 3])
    train, test = identity_split(ids)
    assert sorted(set(ids[train])) == [1, 3] and sorted(set(ids[test])) == [5, 9]
    cams = np.array([0, 0, 1, 0, 1, 0, 0, 1])
    query, gallery = query_gallery_split(ids, cams, np.flatnonzero(test))
    # test rows: 0 (5,c0), 2 (9,c1), 5 (5,c0), 6 (9,c0): first of each (id, cam) is a query
    assert query.tolist() == [0, 2, 6] and gallery.tolist() == [5]


class PooledColour(torch.nn.Module):
    """Stand-in backbone: each 16x16 cell's mean colour is its patch feature; CLS is their mean."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 256, 128)
        cells = torch.nn.functional.avg_pool2d(images.float() / 255, 16)  # (B, 3, 16, 8)
        patches = cells.flatten(2).transpose(1, 2)  # (B, 128, 3)
        return patches.mean(1), patches


def test_extract_features_batches_and_orders(synth_world: Path) -> None:
    truth = SynthTruth.load(synth_world)
    paths = [truth.images_dir / p for p in truth.paths[:7]]
    a = extract_features(PooledColour(), paths, batch_size=3)
    b = extract_features(PooledColour(), paths, batch_size=100)
    assert a.cls.shape == (7, 3) and a.patches.shape == (7, 128, 3) and a.grid == (16, 8)
    np.testing.assert_allclose(a.cls, b.cls, rtol=1e-6)
    single = extract_features(PooledColour(), paths[4:5])
    np.testing.assert_allclose(single.cls[0], a.cls[4], rtol=1e-6)
    assert patch_grid(128) == (16, 8) and patch_grid(32) == (8, 4)
    with pytest.raises(ValueError):
        patch_grid(127)


class Oracle(torch.nn.Module):
    """Knows every image of a world: CLS = one-hot identity + one-hot attribute values,
    patches = one-hot ground-truth part per token. Probes on it must be perfect."""

    def __init__(self, truth: SynthTruth, vocab) -> None:
        super().__init__()
        self.row = {hashlib.sha1(load_image(truth.images_dir / p).tobytes()).hexdigest(): i
                    for i, p in enumerate(truth.paths)}
        sizes = [len(g.values) for g in vocab.attributes]
        ids = np.eye(int(truth.identity.max()) + 1, dtype=np.float32)[truth.identity]
        self.cls = np.concatenate([ids, _one_hot(truth.attribute_indices(vocab), sizes)], axis=1)
        grid = majority_downsample(truth.read_masks(), (16, 8), vocab.num_parts)
        self.patches = np.eye(vocab.num_parts, dtype=np.float32)[grid.reshape(len(truth), 128)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        rows = [self.row[hashlib.sha1(im.tobytes()).hexdigest()] for im in hwc]
        return torch.from_numpy(self.cls[rows]), torch.from_numpy(self.patches[rows])


def test_eval_on_a_synthetic_world_with_an_oracle(vocab, tmp_path: Path) -> None:
    from clasp.datasets.synth import SynthConfig, synthesize

    world = tmp_path / "world"
    synthesize(SynthConfig(world, identities=60, images_per_id=4, cameras=2, seed=0))
    truth = SynthTruth.load(world)
    out = tmp_path / "results.json"
    results = evaluate(EvalConfig(backbone=Path("oracle"), data=world, out=out, batch_size=32, probe=FAST),
                       extractor=Oracle(truth, vocab))
    assert results["kind"] == "synth" and results["images"] == 240
    assert results["split"]["train_identities"] == 30 and results["split"]["test_identities"] == 30
    assert results["reid"]["mAP"] == 1.0 and results["reid"]["rank1"] == 1.0
    assert results["reid"]["queries"] == 30 * 2  # 30 test identities x 2 cameras
    assert results["parsing"]["mIoU_grid"] == 1.0
    # thin arms and feet are one 16x16 cell wide or less: the token grid cannot draw them exactly
    assert 0.4 < results["parsing"]["mIoU_pixel"] < 1.0
    # the identity one-hot dimensions also fit the training rows, so the penalised probe shares weight
    # with them: far above chance (0.5), not perfect; exactness is tested on pure attribute features above
    assert results["attributes"]["mA"] > 0.8
    assert results["attributes"]["group_accuracy"]["bag"] == 1.0
    saved = json.loads(out.read_text())
    assert saved["reid"]["mAP"] == 1.0 and set(saved["attributes"]["per_attribute"]) >= {"gender=male", "age=child"}
    # perfect on every identity: every resample scores 1.0
    assert saved["reid"]["mAP_interval"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert saved["parsing"]["mIoU_grid_interval"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    ma = saved["attributes"]["mA_interval"]
    assert ma["value"] == results["attributes"]["mA"] and ma["low"] < ma["value"] <= ma["high"] <= 1.0
    assert "per_query_ap" not in saved["reid"]
    table = format_table(results)
    assert "re-ID mAP" in table and "100.00" in table


def random_backbone(images: torch.Tensor):
    g = torch.Generator().manual_seed(int(images.float().sum().item()) % 100_000)
    return torch.randn(len(images), 16, generator=g), torch.randn(len(images), 128, 16, generator=g)


def test_each_probe_reads_its_own_extractor(vocab, synth_world: Path) -> None:
    truth = SynthTruth.load(synth_world)
    oracle = Oracle(truth, vocab)
    results = evaluate(EvalConfig(backbone=Path("per-probe"), data=synth_world, task_prompt="per-probe", probe=FAST),
                       extractor={"attributes": random_backbone, "parsing": oracle, "reid": oracle})
    assert results["parsing"]["mIoU_grid"] == 1.0 and results["reid"]["mAP"] == 1.0
    assert results["attributes"]["mA"] < 0.75 and results["task_prompt"] == "per-probe"


def test_eval_on_random_features_is_near_chance(synth_world: Path) -> None:

    results = evaluate(EvalConfig(backbone=Path("random"), data=synth_world, tasks=("attributes", "reid"),
                                  probe=FAST), extractor=random_backbone)
    assert "parsing" not in results
    assert 0.25 < results["attributes"]["mA"] < 0.75
    assert results["reid"]["mAP"] < 0.8  # 4 identities: chance is high, perfection is not expected
    interval = results["reid"]["mAP_interval"]
    assert interval["value"] == results["reid"]["mAP"] and interval["low"] < interval["value"] < interval["high"]


@pytest.mark.parametrize("moe_layers", [2, 0])
def test_per_probe_features_come_from_one_pass_equal_to_one_pass_per_prompt(synth_world: Path, moe_layers: int,
                                                                             monkeypatch) -> None:
    """Per-probe evaluation decodes each image once and runs the shared blocks once, with the features each
    prompt gives on its own; only parsing keeps patch tokens."""
    import clasp.evaluation.features as features_module
    from clasp.evaluation.run_eval import _features_per_probe
    from clasp.pretraining.vit import PromptedViT, ViTConfig

    torch.manual_seed(0)
    backbone = PromptedViT(ViTConfig(dim=32, depth=3, heads=2, moe_layers=moe_layers, experts=3, top_k=2)).eval()
    truth = SynthTruth.load(synth_world)
    paths = [truth.images_dir / p for p in truth.paths[:10]]
    probes = {"attributes": "attribute", "parsing": "part", "reid": "instance"}
    separate = {probe: extract_features(backbone.for_task(task), paths, batch_size=4, keep_patches=probe == "parsing")
                for probe, task in probes.items()}
    decoded = []
    monkeypatch.setattr(features_module, "load_image", lambda p: decoded.append(p) or load_image(p))
    extractors = {probe: backbone.for_task(task) for probe, task in probes.items()}
    together = _features_per_probe(extractors, tuple(probes), paths, EvalConfig(Path("b"), synth_world, batch_size=4),
                                   None, lambda _: None)
    assert len(decoded) == len(paths)
    for probe in probes:
        np.testing.assert_allclose(together[probe].cls, separate[probe].cls, rtol=0, atol=1e-5)
        assert (together[probe].patches is None) == (probe != "parsing")
    np.testing.assert_allclose(together["parsing"].patches, separate["parsing"].patches, rtol=0, atol=1e-5)
    assert together["parsing"].grid == (16, 8)
    if moe_layers:  # the prompts do change what a MoE backbone gives
        assert not np.allclose(together["attributes"].cls, together["reid"].cls, atol=1e-4)
