"""PC-MoE and the prompted ViT: routing, dispatch, balance loss, shared blocks, position embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clasp.pretraining.moe import PCMoE, load_balancing_loss
from clasp.pretraining.vit import PRESETS, PromptedViT, ViTConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_vit(**overrides) -> PromptedViT:
    torch.manual_seed(0)
    config = dict(dim=32, depth=3, heads=2, moe_layers=2, experts=4, top_k=2)
    return PromptedViT(ViTConfig(**{**config, **overrides})).eval()


def images(n: int, hw: tuple[int, int] = (256, 128), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *hw), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_moe_output_is_the_explicit_top_k_mixture_token_by_token(top_k: int) -> None:
    torch.manual_seed(1)
    moe = PCMoE(dim=8, hidden=16, experts=4, top_k=top_k)
    x = torch.randn(3, 5, 8)
    prompt = torch.randn(3, 8)
    out = moe(x, prompt)

    expected = torch.zeros_like(x)
    for r in range(3):
        p = F.layer_norm(prompt[r], (8,))
        for t in range(5):
            token = x[r, t]
            probs = (moe.router(token) + moe.prompt_router(p)).softmax(-1)
            gate, chosen = probs.topk(top_k)
            gate = gate / gate.sum()
            expected[r, t] = sum(g * moe.experts[int(e)](token) for g, e in zip(gate, chosen))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_moe_gradients_equal_the_explicit_mixture_padding_included() -> None:
    """37 pairs over 3 experts: every group is padded, yet inputs, router and experts get the same gradients."""
    from clasp.pretraining.moe import ALIGN_ROWS

    torch.manual_seed(3)
    moe = PCMoE(dim=8, hidden=16, experts=3, top_k=2)
    x = torch.randn(37, 1, 8, requires_grad=True)
    prompt = torch.randn(37, 8)
    source, gates, slots, sizes, padded = moe._dispatch(*moe.route(x, prompt)[1:])
    assert sum(sizes) == 74 and all(p % ALIGN_ROWS == 0 and p >= s for s, p in zip(sizes, padded))
    assert torch.equal(source[slots], torch.arange(37).unsqueeze(1).expand(37, 2))  # each pair reads its token
    padding = torch.ones(sum(padded), dtype=torch.bool)
    padding[slots.reshape(-1)] = False
    assert int(padding.sum()) == sum(padded) - 74 and float(gates.detach()[padding].abs().sum()) == 0.0
    weights = torch.randn(37, 1, 8)
    (moe(x, prompt) * weights).sum().backward()
    fast = [x.grad.clone()] + [p.grad.clone() for p in moe.parameters()]

    x.grad = None
    moe.zero_grad()
    expected = []
    for t in range(37):
        probs = (moe.router(x[t, 0]) + moe.prompt_router(F.layer_norm(prompt[t], (8,)))).softmax(-1)
        gate, chosen = probs.topk(2)
        gate = gate / gate.sum()
        expected.append(sum(g * moe.experts[int(e)](x[t, 0]) for g, e in zip(gate, chosen)))
    (torch.stack(expected).unsqueeze(1) * weights).sum().backward()
    slow = [x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in moe.parameters()]
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_every_expert_gets_a_gradient_even_when_no_token_chooses_it() -> None:
    torch.manual_seed(2)
    moe = PCMoE(dim=8, hidden=16, experts=4, top_k=1)
    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))  # every token picks expert 0
    moe(torch.randn(2, 3, 8), torch.randn(2, 8)).sum().backward()
    for e, expert in enumerate(moe.experts):
        assert expert.fc1.weight.grad is not None, e
    assert moe.experts[0].fc1.weight.grad.abs().sum() > 0
    assert moe.experts[3].fc1.weight.grad.abs().sum() == 0


def test_task_prompts_route_the_same_tokens_differently() -> None:
    vit = tiny_vit(experts=6)
    seen = []
    vit.moe_blocks[0].moe.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        features, _ = vit(images(4), ("instance", "part"))
        x = seen[0][:4]  # the instance rows of the tasks' stacked batch
        instance_prompt, part_prompt = vit.task_prompts[0].expand(4, -1), vit.task_prompts[1].expand(4, -1)
        _, by_instance, _ = vit.moe_blocks[0].moe.route(x, instance_prompt)
        _, by_part, _ = vit.moe_blocks[0].moe.route(x, part_prompt)
        _, by_instance_again, _ = vit.moe_blocks[0].moe.route(x, instance_prompt)
    differs = (by_instance.sort(-1).values != by_part.sort(-1).values).any(-1).float().mean()
    assert differs > 0.1, f"only {differs:.1%} of tokens change experts with the task prompt"
    assert torch.equal(by_instance, by_instance_again)
    assert not torch.allclose(features["instance"][1], features["part"][1])


def test_uniform_routing_has_balance_loss_one_and_collapsed_routing_more() -> None:
    experts, tokens = 4, 32
    moe = PCMoE(dim=experts, hidden=8, experts=experts, top_k=1)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(experts))
        moe.router.bias.zero_()
        moe.prompt_router.weight.zero_()
    # token t points at expert t mod E: each expert gets 1/E of the tokens, and by symmetry P_e = 1/E
    x = 3.0 * F.one_hot(torch.arange(tokens) % experts, experts).float().view(2, tokens // 2, experts)
    moe.reset_stats()
    moe(x, torch.zeros(2, experts))
    balance, load = moe.stats()
    assert balance.item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(load, torch.full((experts,), 1 / experts))

    with torch.no_grad():
        moe.router.bias.copy_(torch.tensor([20.0, 0.0, 0.0, 0.0]))  # everything collapses onto expert 0
    moe.reset_stats()
    moe(x, torch.zeros(2, experts))
    balance, load = moe.stats()
    assert balance.item() > 3.9  # → E = 4 when one expert takes every token with certainty
    torch.testing.assert_close(load, torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_load_balancing_loss_formula() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    index = torch.tensor([[0, 1], [0, 2]])
    f = torch.tensor([2 / 4, 1 / 4, 1 / 4])
    p = probs.mean(0)
    assert load_balancing_loss(probs, index, 3).item() == pytest.approx(3 * (f * p).sum().item())


def test_the_moe_layer_reports_the_tested_balance_formula() -> None:
    torch.manual_seed(4)
    moe = PCMoE(dim=8, hidden=16, experts=4, top_k=2)
    x, prompt = torch.randn(2, 5, 8), torch.randn(2, 8)
    with torch.no_grad():
        probs, index, _ = moe.route(x, prompt)
        moe.reset_stats()
        moe(x, prompt)
    balance, _ = moe.stats()
    expected = load_balancing_loss(probs.reshape(-1, 4), index.reshape(-1, 2), 4)
    assert balance.item() == pytest.approx(expected.item(), rel=1e-6)


def test_moe_statistics_cover_every_call_since_reset() -> None:
    torch.manual_seed(3)
    moe = PCMoE(dim=8, hidden=16, experts=4, top_k=2)
    a, b = torch.randn(2, 6, 8), torch.randn(3, 2, 8)
    pa, pb = torch.randn(2, 8), torch.randn(3, 8)
    moe.reset_stats()
    moe(a, pa)
    moe(b, pb)
    balance, load = moe.stats()
    probs_a, index_a, _ = moe.route(a, pa)
    probs_b, index_b, _ = moe.route(b, pb)
    probs = torch.cat([probs_a.reshape(-1, 4), probs_b.reshape(-1, 4)])
    index = torch.cat([index_a.reshape(-1, 2), index_b.reshape(-1, 2)])
    assert balance.item() == pytest.approx(load_balancing_loss(probs, index, 4).item(), rel=1e-6)
    torch.testing.assert_close(load, torch.bincount(index.reshape(-1), minlength=4).float() / index.numel())


def test_shared_blocks_run_once_per_image_the_upper_ones_on_the_tasks_stacked_the_last_once_per_task() -> None:
    vit = tiny_vit(depth=4, moe_layers=2)
    rows: dict[str, list[int]] = {}
    for i, block in enumerate(vit.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: rows.setdefault(f"shared{i}", []).append(a[0].shape[0]))
    for i, block in enumerate(vit.moe_blocks):
        block.register_forward_hook(lambda m, a, o, i=i: rows.setdefault(f"moe{i}", []).append(a[0].shape[0]))
    with torch.no_grad():
        features, stats = vit(images(5), ("instance", "part", "attribute"))
    assert rows == {"shared0": [5], "shared1": [5], "moe0": [15], "moe1": [5, 5, 5]}
    assert set(features) == {"instance", "part", "attribute"}
    for cls, patches in features.values():
        assert cls.shape == (5, 32) and patches.shape == (5, 16 * 8, 32)
    assert stats.expert_load.shape == (2, 4)
    torch.testing.assert_close(stats.expert_load.sum(1), torch.ones(2))


def test_tasks_run_together_equal_tasks_run_one_at_a_time() -> None:
    vit = tiny_vit()
    x = images(3)
    with torch.no_grad():
        together, _ = vit(x, ("instance", "part", "attribute"))
        for task in ("instance", "part", "attribute"):
            alone, _ = vit(x, (task,))
            torch.testing.assert_close(together[task][0], alone[task][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(together[task][1], alone[task][1], rtol=1e-5, atol=1e-5)
            cls, patches = vit.for_task(task)(x)
            torch.testing.assert_close(patches, alone[task][1])


def test_position_embedding_is_interpolated_for_local_crops() -> None:
    vit = tiny_vit()
    assert vit.position_embedding(16, 8) is vit.pos_embed
    small = vit.position_embedding(8, 4)
    assert small.shape == (1, 1 + 8 * 4, 32)
    torch.testing.assert_close(small[:, 0], vit.pos_embed[:, 0])
    grid = vit.pos_embed[:, 1:].reshape(1, 16, 8, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(small[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 32, 32))
    with torch.no_grad():  # a constant field stays constant; a vertical ramp stays ordered top to bottom
        vit.pos_embed[:, 1:] = torch.arange(16.0).repeat_interleave(8).view(1, 128, 1).expand(1, 128, 32)
        ramp = vit.position_embedding(8, 4)[0, 1:, 0].view(8, 4)
    assert torch.all(ramp[1:, 0] > ramp[:-1, 0]) and torch.allclose(ramp, ramp[:, :1].expand(8, 4))

    with torch.no_grad():
        features, _ = vit(images(2, hw=(128, 64)), ("instance", "part"))
    assert features["part"][1].shape == (2, 8 * 4, 32)


def test_uint8_and_unit_float_images_give_the_same_features() -> None:
    vit = tiny_vit()
    x = images(2)
    with torch.no_grad():
        a, _ = vit(x, ("part",))
        b, _ = vit(x.float() / 255.0, ("part",))
    torch.testing.assert_close(a["part"][1], b["part"][1])


def test_without_moe_layers_the_backbone_is_a_plain_vit() -> None:
    vit = tiny_vit(moe_layers=0)
    assert not hasattr(vit, "task_prompts") and len(vit.moe_blocks) == 0 and len(vit.blocks) == 3
    with torch.no_grad():
        features, stats = vit(images(2), ("instance", "part"))
    assert features["instance"][1] is features["part"][1]
    assert stats.balance_loss.item() == 0.0 and stats.expert_load.shape == (0, 4)


def test_presets_and_config_round_trip() -> None:
    assert PRESETS["tiny"] == {"dim": 192, "depth": 12, "heads": 3}
    assert PRESETS["small"] == {"dim": 384, "depth": 12, "heads": 6}
    assert PRESETS["base"] == {"dim": 768, "depth": 12, "heads": 12}
    config = ViTConfig.preset("small", moe_layers=3)
    assert (config.dim, config.heads, config.moe_layers, config.grid) == (384, 6, 3, (16, 8))
    assert config.expert_hidden == 384 * 4 // 2
    assert ViTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown preset"):
        ViTConfig.preset("huge")
    with pytest.raises(ValueError, match="top_k"):
        ViTConfig(dim=32, heads=2, experts=2, top_k=3)


def test_explicit_attention_matches_pytorch_attention() -> None:
    from clasp.pretraining.vit import explicit_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 7, 8).unbind(0)
    torch.testing.assert_close(explicit_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("moe_layers", [0, 1, 2])
def test_cls_only_tasks_get_the_same_cls_without_patches(moe_layers: int) -> None:
    vit = tiny_vit(moe_layers=moe_layers)
    x = images(3)
    tasks = ("instance", "part", "attribute")
    with torch.no_grad():
        full, full_stats = vit(x, tasks)
        (short,), _ = vit.forward_groups([(x, tasks)], cls_only={"instance", "attribute"})
        (alone,), _ = vit.forward_groups([(x, ("instance",))], cls_only={"instance"})
    for task in tasks:
        torch.testing.assert_close(short[task][0], full[task][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short["part"][1], full["part"][1], rtol=1e-5, atol=1e-5)
    assert short["instance"][1] is None and short["attribute"][1] is None and alone["instance"][1] is None
    torch.testing.assert_close(alone["instance"][0], full["instance"][0], rtol=1e-5, atol=1e-5)
