"""PC-MoE: the batched dispatch (stacked experts, one baddbmm per layer) equals the loop of per-expert GEMMs,
and the bucketed row counts (bf16 on CPU) change nothing but the padding."""

from __future__ import annotations

import copy

import pytest
import torch

from clasp.pretraining.moe import ALIGN_ROWS, ROW_BUCKETS_PER_OCTAVE, PCMoE, aligned, low_precision_on_cpu, set_dispatch
from clasp.pretraining.vit import PromptedViT, ViTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def skewed_moe(experts: int, top_k: int, empty: tuple[int, ...], seed: int = 0) -> PCMoE:
    """A PC-MoE whose router never picks the experts in `empty` and favours expert 0: uneven groups."""
    torch.manual_seed(seed)
    moe = PCMoE(dim=8, hidden=16, experts=experts, top_k=top_k)
    with torch.no_grad():
        for e in empty:
            moe.router.bias[e] = -1e4
        moe.router.bias[0] += 2.0
    return moe


def run(moe: PCMoE, dispatch: str, x: torch.Tensor, prompt: torch.Tensor, weights: torch.Tensor) -> tuple:
    """Output, gradients of the input and of every parameter, and the balance statistics, under `dispatch`."""
    moe.dispatch = dispatch
    moe.zero_grad(set_to_none=True)
    moe.reset_stats()
    x = x.clone().requires_grad_(True)
    out = moe(x, prompt)
    balance, load = moe.stats()
    ((out * weights).sum() + balance).backward()
    grads = {name: p.grad.clone() for name, p in moe.named_parameters()}
    return out.detach(), x.grad.clone(), grads, balance.detach(), load


@pytest.mark.parametrize("top_k", [1, 2])
def test_batched_equals_the_loop_in_outputs_gradients_and_balance_with_empty_experts(top_k: int) -> None:
    moe = skewed_moe(experts=5, top_k=top_k, empty=(2, 4))
    g = torch.Generator().manual_seed(1)
    x, prompt = torch.randn(7, 11, 8, generator=g), torch.randn(7, 8, generator=g)
    weights = torch.randn(7, 11, 8, generator=g)
    sizes = moe._dispatch(*moe.route(x, prompt)[1:])[3]
    assert sizes[2] == sizes[4] == 0 and len(set(sizes)) > 2, sizes  # uneven, two experts empty

    loop, batched = run(moe, "loop", x, prompt, weights), run(moe, "batched", x, prompt, weights)
    torch.testing.assert_close(batched[0], loop[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], loop[1], rtol=1e-5, atol=1e-5)
    assert batched[2].keys() == loop[2].keys()
    for name in loop[2]:  # the empty experts' parameters included (zero gradient, but present)
        torch.testing.assert_close(batched[2][name], loop[2][name], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(batched[3], loop[3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[4], loop[4], rtol=0, atol=0)


def test_batched_pads_every_group_to_the_largest_rounded_up() -> None:
    moe = skewed_moe(experts=4, top_k=2, empty=(3,))
    x, prompt = torch.randn(9, 5, 8), torch.randn(9, 8)
    source, gates, slots, sizes, padded = moe._dispatch(*moe.route(x, prompt)[1:], same_rows=True)
    rows = -(-max(sizes) // ALIGN_ROWS) * ALIGN_ROWS
    assert padded == [rows] * 4 and source.numel() == 4 * rows and sum(sizes) == 90
    padding = torch.ones(4 * rows, dtype=torch.bool)
    padding[slots.reshape(-1)] = False
    assert float(gates.detach()[padding].abs().sum()) == 0.0  # padding rows carry no gate


def test_batched_equals_the_loop_under_bf16_autocast() -> None:
    moe = skewed_moe(experts=4, top_k=2, empty=())
    x, prompt = torch.randn(4, 9, 8), torch.randn(4, 8)
    outs = {}
    for dispatch in ("loop", "batched"):
        moe.dispatch = dispatch
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[dispatch] = moe(x, prompt)
    assert outs["batched"].dtype == outs["loop"].dtype
    torch.testing.assert_close(outs["batched"].float(), outs["loop"].float(), rtol=2e-2, atol=2e-2)


def test_the_state_dict_is_the_same_under_either_dispatch_and_loads_across() -> None:
    torch.manual_seed(0)
    config = ViTConfig(dim=32, depth=2, heads=2, moe_layers=1, experts=3, top_k=1)
    looped = PromptedViT(config).eval()
    batched = copy.deepcopy(looped)
    assert set_dispatch(batched, "batched") == 1
    assert {k: v.shape for k, v in looped.state_dict().items()} == {k: v.shape for k, v in batched.state_dict().items()}
    fresh = PromptedViT(config).eval()
    set_dispatch(fresh, "batched")
    fresh.load_state_dict(looped.state_dict())  # a checkpoint of the loop loads into a batched model
    images = torch.randint(0, 256, (2, 3, 64, 32), dtype=torch.uint8)
    with torch.no_grad():
        (a, a_stats), (b, b_stats) = looped(images, config.tasks), fresh(images, config.tasks)
    for task in config.tasks:
        for mine, theirs in zip(b[task], a[task]):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_stats.balance_loss, a_stats.balance_loss, rtol=1e-5, atol=1e-5)


def test_an_unknown_dispatch_is_refused() -> None:
    moe = PCMoE(dim=8, hidden=16, experts=2, top_k=1)
    moe.dispatch = "grouped"
    with pytest.raises(ValueError, match="dispatch"):
        moe(torch.randn(1, 2, 8), torch.randn(1, 8))
    with pytest.raises(ValueError, match="dispatch"):
        set_dispatch(moe, "grouped")


def test_bucketed_rows_are_few_sizes_each_at_most_a_sixteenth_more() -> None:
    for rows in range(0, 40_000):
        size = aligned(rows, bucketed=True)
        assert size >= aligned(rows) >= rows and size % ALIGN_ROWS == 0
        assert size - rows < max(ALIGN_ROWS, rows / ROW_BUCKETS_PER_OCTAVE), rows
    for octave in range(9, 15):  # above 512 rows the buckets are coarser than the alignment
        sizes = {aligned(rows, bucketed=True) for rows in range(2 ** octave, 2 ** (octave + 1))}
        assert len(sizes - {2 ** (octave + 1)}) == ROW_BUCKETS_PER_OCTAVE, (octave, sorted(sizes))
    assert aligned(2784, bucketed=True) == 2816 and aligned(2784) == 2784


def test_bucketed_padding_changes_neither_outputs_nor_gradients() -> None:
    moe = skewed_moe(experts=3, top_k=2, empty=())
    g = torch.Generator().manual_seed(2)
    x, prompt = torch.randn(50, 60, 8, generator=g), torch.randn(50, 8, generator=g)
    weights = torch.randn(50, 60, 8, generator=g)
    route = moe.route(x, prompt)[1:]
    fine, coarse = moe._dispatch(*route)[4], moe._dispatch(*route, bucketed=True)[4]
    assert coarse != fine and all(c >= f for c, f in zip(coarse, fine)), (fine, coarse)

    results = []
    for bucket in (False, True):
        moe.bucket_rows = bucket
        results.append(run(moe, "loop", x, prompt, weights))
    aligned_only, bucketed = results
    torch.testing.assert_close(bucketed[0], aligned_only[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bucketed[1], aligned_only[1], rtol=1e-6, atol=1e-6)
    for name in aligned_only[2]:
        torch.testing.assert_close(bucketed[2][name], aligned_only[2][name], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(bucketed[3], aligned_only[3], rtol=0, atol=0)


def test_rows_are_bucketed_in_bf16_and_fp16_on_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert low_precision_on_cpu(torch.zeros(1, dtype=torch.bfloat16))
    assert low_precision_on_cpu(torch.zeros(1, dtype=torch.float16))
    assert not low_precision_on_cpu(torch.zeros(1)) and not low_precision_on_cpu(torch.zeros(1, dtype=torch.float64))
    moe = skewed_moe(experts=3, top_k=2, empty=())
    asked = []
    real = moe._dispatch
    monkeypatch.setattr(moe, "_dispatch", lambda *a, **kw: asked.append(kw["bucketed"]) or real(*a, **kw))
    x, prompt = torch.randn(2, 5, 8), torch.randn(2, 8)
    moe(x, prompt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        moe(x, prompt)
    moe.bucket_rows = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        moe(x, prompt)
    assert asked == [False, True, False]


def test_gather_copies_sums_each_rows_copies_and_drops_the_paddings_gradient() -> None:
    from clasp.pretraining.moe import GatherCopies, gather_copies

    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, generator=g, requires_grad=True)
    slots = torch.randperm(16, generator=g)[:10].view(5, 2)  # 10 of 16 positions; the other 6 are padding
    source = torch.zeros(16, dtype=torch.long)  # padding reads row 0
    source[slots.reshape(-1)] = torch.arange(5).repeat_interleave(2)
    real = torch.zeros(16, dtype=torch.bool)
    real[slots.reshape(-1)] = True
    weights = torch.randn(16, 3, generator=g)
    (GatherCopies.apply(x, source, slots) * weights).sum().backward()
    torch.testing.assert_close(x.grad, torch.zeros(5, 3).index_add_(0, source[real], weights[real]))
    assert torch.equal(gather_copies(x, source, slots), x.index_select(0, source))
    with torch.no_grad():
        assert gather_copies(x, source, slots).grad_fn is None
