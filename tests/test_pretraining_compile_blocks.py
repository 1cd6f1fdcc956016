"""--compile for training: every block through one compiled function, equal to eager in outputs and gradients."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from clasp.pretraining.compile_blocks import compile_blocks, compile_if_asked
from clasp.pretraining.vit import Block, MoEBlock, PromptedViT, ViTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASKS = ("instance", "part", "attribute")


def tiny_vit() -> PromptedViT:
    torch.manual_seed(0)
    return PromptedViT(ViTConfig(dim=32, depth=3, heads=2, moe_layers=2, experts=4, top_k=2))


def crops() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (2, 3, 256, 128), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (4, 3, 128, 64), dtype=torch.uint8, generator=g)]


def outputs_and_grads(vit: PromptedViT) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """A global and a local crop batch through every task, and the gradient of a sum of all outputs."""
    vit.zero_grad(set_to_none=True)
    outs = []
    for x in crops():
        features, stats = vit(x, TASKS)
        outs += [t for task in TASKS for t in features[task] if t is not None] + [stats.balance_loss]
    sum(o.float().square().mean() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad for n, p in vit.named_parameters() if p.grad is not None}


def broken_backend(graph, example_inputs):
    raise RuntimeError("no compiler here")


def test_compiled_blocks_equal_eager_in_outputs_and_gradients_and_share_one_function() -> None:
    eager = tiny_vit()
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled, backend="eager") == 3  # 1 dense block, 2 MoE blocks' attention
    blocks = [m for m in compiled.modules() if isinstance(m, Block)]
    attentions = [m.attn for m in compiled.modules() if isinstance(m, MoEBlock)]
    assert len({id(b.forward.func) for b in blocks}) == 1 and len({id(a.forward.func) for a in attentions}) == 1
    assert blocks[0].forward.func.is_compiled and attentions[0].forward.func.is_compiled
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    (want, want_grads), (got, got_grads) = outputs_and_grads(eager), outputs_and_grads(compiled)
    assert len(got) == len(want) and got_grads.keys() == want_grads.keys()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-6)


def test_a_compile_failure_is_one_warning_per_compiled_function_and_everything_runs_eagerly(caplog) -> None:
    eager = tiny_vit()
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled, "CLASP", backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="clasp"):
        got, _ = outputs_and_grads(compiled)
        outputs_and_grads(compiled)  # a second step: no new warning
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("--compile: CLASP's MoE-block attention runs eagerly, compiling failed (")
    assert warnings[1].startswith("--compile: CLASP's transformer blocks runs eagerly")
    for a, b in zip(got, outputs_and_grads(eager)[0]):
        torch.testing.assert_close(a, b)


def test_training_compiles_only_when_asked() -> None:
    for choice, device, expected in (("on", "cpu", True), ("off", "cpu", False), ("auto", "cpu", False),
                                     ("auto", "cuda", False)):
        vit = tiny_vit()
        assert compile_if_asked(vit, choice, "bf16", device) is expected
        assert ("forward" in vit.blocks[0].__dict__) is expected  # the block's own forward replaced, or not


@pytest.mark.slow
def test_inductor_compiled_blocks_equal_eager_in_a_training_step() -> None:
    eager = tiny_vit()
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    (want, want_grads), (got, got_grads) = outputs_and_grads(eager), outputs_and_grads(compiled)
    assert [m for m in compiled.modules() if isinstance(m, Block)][0].forward.func.is_compiled
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-3, atol=1e-5)
