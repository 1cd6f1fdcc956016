"""The meta-architecture and its losses: teacher, EMA, centering, weight decay, a short optimisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clasp.pretraining.attribute_loss import AttributeLoss, AttributeLossConfig
from clasp.pretraining.batch import MultiCropBatch
from clasp.pretraining.dino_loss import DINOLoss, DINOLossConfig
from clasp.pretraining.model import ClaspModel, LossConfig, ModelConfig
from clasp.pretraining.part_loss import PartLoss, PartLossConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(dino_out_dim=64, dino_hidden_dim=64, dino_bottleneck_dim=32, dim=32, depth=3, heads=2, moe_layers=2,
            experts=4, top_k=2)


def tiny_model(vocab, loss: LossConfig | None = None, **overrides) -> ClaspModel:
    torch.manual_seed(0)
    return ClaspModel(ModelConfig.build("tiny", vocab, loss=loss, **{**TINY, **overrides}))


def random_batch(vocab, batch_size: int = 3, global_crops: int = 2, local_crops: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return MultiCropBatch(
        global_crops=torch.randint(0, 256, (global_crops, batch_size, 3, 256, 128), dtype=torch.uint8, generator=g),
        local_crops=torch.randint(0, 256, (local_crops, batch_size, 3, 128, 64), dtype=torch.uint8, generator=g),
        part_mask=torch.randint(0, vocab.num_parts, (global_crops, batch_size, 16, 8), generator=g),
        part_conf=torch.rand(global_crops, batch_size, 16, 8, generator=g),
        attr_logits=torch.randn(batch_size, vocab.num_attributes, generator=g) * 3,
        row_id=torch.arange(batch_size),
    )


def test_forward_returns_finite_losses_and_the_documented_stats(vocab) -> None:
    model = tiny_model(vocab)
    total, stats = model(random_batch(vocab))
    assert set(stats) == {"loss", "dino", "part", "attribute", "balance", "part_kept", "teacher_temp", "expert_load"}
    for name in ("loss", "dino", "part", "attribute", "balance"):
        assert stats[name].ndim == 0 and math.isfinite(stats[name].item()) and stats[name].item() > 0, name
    assert not any(v.requires_grad for v in stats.values())
    w = model.config.loss
    expected = stats["dino"] + w.w_part * stats["part"] + w.w_attr * stats["attribute"] + w.w_balance * stats["balance"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["expert_load"].shape == (2, 4)
    assert 0 < stats["part_kept"].item() < 1


def test_teacher_gets_no_gradient_and_every_student_parameter_does(vocab) -> None:
    model = tiny_model(vocab)
    total, _ = model(random_batch(vocab))
    total.backward()
    for name, p in model.teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    missing = [name for name, p in model.student.named_parameters() if p.grad is None]
    assert missing == []


def test_student_runs_each_crop_once_through_shared_blocks_and_teacher_only_globals(vocab) -> None:
    model = tiny_model(vocab)
    rows: dict[str, int] = {}

    def count(key):
        return lambda m, a, o: rows.__setitem__(key, rows.get(key, 0) + a[0].shape[0])

    for side in ("student", "teacher"):
        model.__getattr__(side)["backbone"].blocks[0].register_forward_hook(count(f"{side}.shared"))
        model.__getattr__(side)["backbone"].moe_blocks[0].register_forward_hook(count(f"{side}.moe"))
    model(random_batch(vocab, batch_size=3, global_crops=2, local_crops=4))
    assert rows == {"student.shared": 2 * 3 + 4 * 3,  # every crop once
                    "student.moe": 3 * 2 * 3 + 4 * 3,  # globals × 3 tasks, locals × instance
                    "teacher.shared": 2 * 3, "teacher.moe": 2 * 3}


def test_update_teacher_follows_the_ema_formula(vocab) -> None:
    model = tiny_model(vocab)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    student = {k: v.clone() for k, v in model.student.state_dict().items()}
    teacher = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.update_teacher(0.9)
    for key, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, 0.9 * teacher[key] + 0.1 * student[key], rtol=0, atol=1e-6)
    model.update_teacher(0.0)
    for key, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, student[key], rtol=0, atol=1e-6)
    assert set(model.teacher.state_dict()) == {k for k in student if k.startswith(("backbone.", "dino_head."))}


def test_dino_loss_pairs_views_like_dino_and_updates_the_centre() -> None:
    torch.manual_seed(0)
    loss_fn = DINOLoss(8, DINOLossConfig(student_temp=0.1, teacher_temp=0.04, center_momentum=0.9))
    with torch.no_grad():
        loss_fn.center.copy_(torch.randn(1, 8))
    centre = loss_fn.center.clone()
    batch, student_views = 5, 4
    student = torch.randn(student_views * batch, 8)
    teacher = torch.randn(2 * batch, 8)
    loss = loss_fn(student, teacher, student_views)

    s = [F.log_softmax(v / 0.1, -1) for v in student.chunk(student_views)]
    t = [F.softmax((v - centre) / 0.04, -1) for v in teacher.chunk(2)]
    terms = [-(t[i] * s[j]).sum(-1).mean() for i in range(2) for j in range(student_views) if i != j]
    assert len(terms) == 6
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    torch.testing.assert_close(loss_fn.center, 0.9 * centre + 0.1 * teacher.mean(0, keepdim=True))

    loss_fn.eval()
    loss_fn(student, teacher, student_views)  # evaluation does not move the centre
    torch.testing.assert_close(loss_fn.center, 0.9 * centre + 0.1 * teacher.mean(0, keepdim=True))


def test_teacher_temperature_warms_up_linearly() -> None:
    loss_fn = DINOLoss(4, DINOLossConfig(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10))
    # DINO: np.concatenate((np.linspace(warmup, final, n), np.ones(rest) * final)), indexed by step
    dino = np.concatenate((np.linspace(0.04, 0.07, 10), np.ones(5) * 0.07))
    assert [loss_fn.teacher_temp_at(step) for step in range(15)] == pytest.approx(dino.tolist())
    assert loss_fn.teacher_temp_at(9) == pytest.approx(0.07) and loss_fn.teacher_temp_at(None) == pytest.approx(0.07)


def test_part_loss_ignores_cells_below_the_confidence_threshold() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 6)  # (G, B, N=2*2, parts)
    mask = torch.randint(0, 6, (2, 3, 2, 2))
    conf = torch.rand(2, 3, 2, 2)
    loss, kept = PartLoss(PartLossConfig(conf_threshold=0.5))(logits.flatten(0, 1), mask, conf)
    keep = conf.reshape(-1) >= 0.5
    expected = F.cross_entropy(logits.reshape(-1, 6)[keep], mask.reshape(-1)[keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert kept.item() == pytest.approx(keep.float().mean().item())

    other = mask.clone().reshape(-1)
    other[~keep] = (other[~keep] + 1) % 6  # changing ignored cells changes nothing
    again, _ = PartLoss(PartLossConfig(0.5))(logits.flatten(0, 1), other.view_as(mask), conf)
    assert again.item() == pytest.approx(loss.item())

    nothing, kept = PartLoss(PartLossConfig(1.1))(logits.flatten(0, 1).requires_grad_(), mask, conf)
    assert nothing.item() == 0.0 and kept.item() == 0.0 and nothing.requires_grad


def test_attribute_loss_is_the_mean_over_groups_of_the_kl_to_clip(vocab) -> None:
    config = AttributeLossConfig(tuple((s.start, s.stop) for _, s in vocab.group_slices()), temperature=2.0)
    assert config.num_attributes == vocab.num_attributes and len(config.groups) == len(vocab.attributes)
    torch.manual_seed(0)
    prediction = torch.randn(4, vocab.num_attributes)
    clip = torch.randn(4, vocab.num_attributes) * 5
    loss = AttributeLoss(config)(prediction, clip)
    per_group = []
    for start, stop in config.groups:
        p = F.softmax(clip[:, start:stop] / 2.0, -1)
        q = F.softmax(prediction[:, start:stop], -1)
        per_group.append((p * (p.log() - q.log())).sum(-1).mean())
    assert loss.item() == pytest.approx(torch.stack(per_group).mean().item(), rel=1e-5)
    assert AttributeLoss(config)(clip / 2.0, clip).item() == pytest.approx(0.0, abs=1e-6)


def test_weight_decay_exempts_biases_norms_position_embedding_cls_and_prompts(vocab) -> None:
    model = tiny_model(vocab)
    decay, no_decay = model.param_groups()
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    names = {id(p): n for n, p in model.student.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    expected_exempt = {n for n in names.values()
                       if n.endswith(".bias") or ".norm" in n or "norm1" in n or "norm2" in n
                       or n in {"backbone.pos_embed", "backbone.cls_token", "backbone.task_prompts"}}
    assert exempt == expected_exempt
    assert decayed == set(names.values()) - expected_exempt
    assert "backbone.blocks.0.attn.qkv.weight" in decayed and "dino_head.last_layer.weight" in decayed
    assert "backbone.moe_blocks.0.moe.experts.3.fc1.weight" in decayed
    assert "backbone.moe_blocks.0.moe.prompt_router.weight" in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.student.parameters()))


def test_dino_baseline_builds_and_runs_only_the_instance_branch(vocab) -> None:
    torch.manual_seed(0)
    model = ClaspModel(ModelConfig.dino_baseline("tiny", dino_out_dim=64, dino_hidden_dim=64, dino_bottleneck_dim=32,
                                                 dim=32, depth=3, heads=2))
    assert model.config.tasks == ("instance",) and model.config.vit.moe_layers == 0
    assert set(model.student) == {"backbone", "dino_head"}
    assert len(model.student["backbone"].moe_blocks) == 0
    total, stats = model(random_batch(vocab))
    assert total.item() == pytest.approx(stats["dino"].item())
    assert stats["part"].item() == stats["attribute"].item() == stats["balance"].item() == 0.0


def test_model_config_survives_json(vocab) -> None:
    config = ModelConfig.build("small", vocab, moe_layers=3, experts=8, top_k=1,
                               loss=LossConfig(w_part=0.5, part_conf_threshold=0.2))
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.num_attributes == vocab.num_attributes and again.num_parts == vocab.num_parts
    assert ModelConfig.build("tiny", vocab, loss=LossConfig(w_attr=0.0)).vit.tasks == ("instance", "part")


def learnable_batch(vocab, batch_size: int = 4) -> MultiCropBatch:
    """Images painted in horizontal bands, one colour per part; the mask says which band each cell is in."""
    g = torch.Generator().manual_seed(0)
    palette = torch.randint(0, 256, (vocab.num_parts, 3), generator=g)
    masks = torch.zeros(2, batch_size, 16, 8, dtype=torch.long)
    crops = torch.zeros(2, batch_size, 3, 256, 128, dtype=torch.uint8)
    for v in range(2):
        for b in range(batch_size):
            bounds = torch.sort(torch.randperm(15, generator=g)[: vocab.num_parts - 1] + 1).values.tolist()
            rows = torch.zeros(16, dtype=torch.long)
            for part, start in enumerate(bounds, start=1):
                rows[start:] = part
            masks[v, b] = rows[:, None].expand(16, 8)
            pixels = palette[masks[v, b]].permute(2, 0, 1).repeat_interleave(16, 1).repeat_interleave(16, 2)
            noise = torch.randint(-20, 21, pixels.shape, generator=g)
            crops[v, b] = (pixels + noise).clamp(0, 255).to(torch.uint8)
    conf = torch.full((2, batch_size, 16, 8), 0.9)
    conf[:, :, :, 0] = 0.1  # one column of low-confidence cells, ignored
    return MultiCropBatch(
        global_crops=crops,
        local_crops=crops[:, :, :, ::2, ::2].contiguous(),
        part_mask=masks, part_conf=conf,
        attr_logits=torch.randn(batch_size, vocab.num_attributes, generator=g) * 3,
        row_id=torch.arange(batch_size),
    )


def test_a_short_optimisation_lowers_the_part_and_attribute_losses(vocab) -> None:
    model = tiny_model(vocab, depth=2, moe_layers=1)
    batch = learnable_batch(vocab, batch_size=2)
    optimizer = torch.optim.AdamW(model.param_groups(), lr=3e-3, weight_decay=0.04)
    history = []
    for _ in range(30):
        total, stats = model(batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        model.update_teacher(0.99)
        history.append({k: v.item() for k, v in stats.items() if v.ndim == 0})
    first, last = history[0], history[-1]
    assert all(math.isfinite(h["loss"]) for h in history)
    assert last["part"] < 0.7 * first["part"], (first["part"], last["part"])
    assert last["attribute"] < 0.7 * first["attribute"], (first["attribute"], last["attribute"])
    assert first["part_kept"] == pytest.approx(7 / 8)
