"""The recipes' pieces against small cases worked out by hand: sampler, triplet, re-ranking, weighted BCE, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from clasp.evaluation.metrics import instance_metrics, reid_scores
from clasp.evaluation.rerank import re_rank
from clasp.finetune.batches import StepPlan, pk_batches, rank_batches, shuffled_batches
from clasp.finetune.config import FinetuneConfigError, build_config
from clasp.finetune.losses import attribute_weights, batch_hard_triplet, weighted_bce
from clasp.finetune.model import BNNeckHead, FinetuneModel, param_groups
from clasp.pretraining.vit import PromptedViT, ViTConfig

LABELS = np.array([0] * 5 + [1] * 2 + [2] * 4 + [3] * 1 + [4] * 7)


def test_pk_sampler_yields_p_identities_times_k_and_uses_every_image() -> None:
    batches = pk_batches(LABELS, p=3, k=2, seed=0, epoch=0)
    for batch in batches:
        assert len(batch) == 6
        ids, counts = np.unique(LABELS[batch], return_counts=True)
        assert len(ids) == 3 and (counts == 2).all()
        assert (LABELS[batch].reshape(3, 2) == LABELS[batch].reshape(3, 2)[:, :1]).all()  # K rows per identity
    used = np.concatenate(batches)
    assert set(LABELS[used]) == set(LABELS)  # every identity ...
    assert set(used) == set(range(len(LABELS)))  # ... and every image, each epoch
    again = pk_batches(LABELS, p=3, k=2, seed=0, epoch=0)
    assert all((a == b).all() for a, b in zip(batches, again))  # a pure function of (seed, epoch)
    assert any((a != b).any() for a, b in zip(batches, pk_batches(LABELS, p=3, k=2, seed=0, epoch=1)))
    with pytest.raises(ValueError, match="only 5"):
        pk_batches(LABELS, p=6, k=2, seed=0, epoch=0)


def test_ranks_get_equal_disjoint_shares() -> None:
    batches = shuffled_batches(23, 4, seed=1, epoch=0)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    mine = [rank_batches(batches, r, 2) for r in (0, 1)]
    assert len(mine[0]) == len(mine[1]) == 2
    assert set(np.concatenate(mine[0])).isdisjoint(np.concatenate(mine[1]))
    plan = StepPlan(lambda e: shuffled_batches(23, 4, seed=1, epoch=e), rank=1, world=2)
    assert plan.per_epoch == 2 and plan.epoch_of(5) == 2
    assert (plan.batch(1) == batches[3]).all()


def test_batch_hard_triplet_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchors: a: 1 - 3, b: 1 - 2, c: 3 - 2, d: 3 - 5 (hardest positive - hardest negative)
    assert batch_hard_triplet(x, labels, margin=0.3).item() == pytest.approx((0 + 0 + 1.3 + 0) / 4, abs=1e-5)
    assert batch_hard_triplet(x, labels, margin=2.5).item() == pytest.approx((0.5 + 1.5 + 3.5 + 0.5) / 4, abs=1e-5)


def test_k_reciprocal_re_ranking_by_hand() -> None:
    # q = 0, g1 = 1, g2 = 3 on a line; rows normalised by their maximum
    qg, qq, gg = np.array([[1.0, 3.0]]), np.zeros((1, 1)), np.array([[0.0, 2.0], [2.0, 0.0]])
    got = re_rank(qg, qq, gg, k1=1, k2=1, lambda_value=0.3)
    # R(q) = {q, g1}, R(g1) = {g1, q}, R(g2) = {g2}; V from exp(-d) over each set
    vq = np.array([1, math.exp(-1 / 3)]) / (1 + math.exp(-1 / 3))  # on (q, g1)
    vg1 = np.array([math.exp(-0.5), 1]) / (1 + math.exp(-0.5))  # on (q, g1)
    shared = np.minimum(vq, vg1).sum()
    jaccard_g1 = 1 - shared / (2 - shared)
    want = [0.7 * jaccard_g1 + 0.3 * (1 / 3), 0.7 * 1 + 0.3 * 1]
    assert got == pytest.approx(np.array([want]), abs=1e-9)
    # without the Jaccard term it is the normalised original distance
    assert re_rank(qg, qq, gg, k1=1, k2=1, lambda_value=1.0) == pytest.approx(np.array([[1 / 3, 1.0]]))


def test_re_ranking_keeps_well_separated_identities_first() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 3
    gallery = np.repeat(centres, 5, axis=0) + rng.normal(size=(20, 8)) * 0.3
    ids = np.repeat(np.arange(4), 5)
    query = centres + rng.normal(size=(4, 8)) * 0.3

    def dist(a, b):
        return ((a[:, None] - b[None]) ** 2).sum(-1)

    ranked = re_rank(dist(query, gallery), dist(query, query), dist(gallery, gallery), k1=4, k2=2)
    score = reid_scores(-ranked, np.arange(4), np.zeros(4), ids, np.ones(20))
    assert score.mAP == pytest.approx(1.0) and score.rank5 == 1.0


def test_weighted_bce_weights_from_positive_ratios() -> None:
    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    positive, negative = attribute_weights(labels)
    assert positive == pytest.approx([math.exp(0.25), math.exp(0.75)])
    assert negative == pytest.approx([math.exp(0.75), math.exp(0.25)])
    loss = weighted_bce(torch.zeros(4, 2), torch.tensor(labels), torch.tensor([0.75, 0.25]))
    weights = np.where(labels == 1, positive, negative)
    assert loss.item() == pytest.approx(math.log(2) * weights.mean(), rel=1e-6)


def test_instance_metrics_by_hand() -> None:
    pred = np.array([[1, 1, 0], [0, 0, 0]], bool)
    truth = np.array([[1, 0, 0], [0, 1, 0]], bool)
    got = instance_metrics(pred, truth)
    assert got == pytest.approx({"accuracy": 0.25, "precision": 0.25, "recall": 0.5, "f1": 1 / 3})


def test_layer_decay_and_weight_decay_groups() -> None:
    vit = PromptedViT(ViTConfig(dim=16, depth=3, heads=2, moe_layers=1, experts=2, top_k=1))
    model = FinetuneModel(vit.for_task("instance"), BNNeckHead(16, 5))
    groups = {g["name"]: g for g in param_groups(model, 0.05, 0.5)}
    names = {id(p): n for n, p in model.named_parameters()}
    where = {names[id(p)]: g for g in groups.values() for p in g["params"]}
    assert where["backbone.backbone.patch_embed.weight"]["lr_scale"] == 0.5 ** 4
    assert where["backbone.backbone.blocks.1.attn.qkv.weight"]["lr_scale"] == 0.5 ** 2
    assert where["backbone.backbone.moe_blocks.0.attn.qkv.weight"]["lr_scale"] == 0.5
    assert where["head.classifier.weight"]["lr_scale"] == 1.0
    for exempt in ("backbone.backbone.pos_embed", "backbone.backbone.task_prompts", "head.bottleneck.weight",
                   "backbone.backbone.blocks.0.attn.qkv.bias"):
        assert where[exempt]["weight_decay"] == 0.0, exempt
    assert "head.bottleneck.bias" not in where  # BNNeck: the bias is not learned


def test_config_file_and_flags(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"ids_per_batch": 8, "epochs": 5, "lr": "1e-4"}))
    config = build_config(path, task="reid", backbone="b", data="d", out="o", steps=7)
    assert (config.ids_per_batch, config.steps, config.epochs, config.lr) == (8, 7, None, 1e-4)
    with pytest.raises(FinetuneConfigError, match="layout for reid must be one of market1501|msmt17"):
        build_config(task="reid", backbone="b", data="d", out="o", layout="lip")
    with pytest.raises(FinetuneConfigError, match="milestones"):
        build_config(task="reid", backbone="b", data="d", out="o", milestones="0.5,2")


def test_parsing_probe_leaves_ignored_pixels_unscored() -> None:
    from clasp.evaluation.probes import parsing_probe

    # two tokens per image (a 2x1 grid), features saying their class; pixel maps 4x2 with 255 on the boundary
    grid = np.array([[[0], [1]], [[1], [0]]])
    tokens = np.eye(2, dtype=np.float32)[grid.reshape(2, 2)] + 0.01 * np.arange(4, dtype=np.float32).reshape(2, 2, 1)
    pixels = np.repeat(np.repeat(grid, 2, axis=1), 2, axis=2).astype(np.uint8)
    pixels[:, 1:3, :] = 255  # the rows either side of the border between the two tokens
    probe = parsing_probe(tokens, grid, tokens, grid, 2, pixels)
    assert probe["mIoU_grid"] == 1.0 and probe["mIoU_pixel"] == 1.0
    pixels[0, 0, 0] = 1  # a scored pixel the probe gets wrong counts
    assert parsing_probe(tokens, grid, tokens, grid, 2, pixels)["mIoU_pixel"] < 1.0
