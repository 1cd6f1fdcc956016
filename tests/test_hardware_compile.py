"""--compile: compiled where torch.compile works (equal to eager within tolerance), eager with one warning where not."""

from __future__ import annotations

import logging

import pytest
import torch

from clasp.hardware.compile import CompiledOrEager, compiled_or_eager

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def broken_backend(graph, inputs):
    raise RuntimeError("no compiler here\nsecond line")


def test_disabled_returns_the_function_itself() -> None:
    fn = torch.nn.Linear(3, 2)
    assert compiled_or_eager(fn, enabled=False) is fn


def test_a_compile_failure_falls_back_to_eager_with_one_warning_line(caplog) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 4)
    run = compiled_or_eager(model, what="the CLIP vision forward", backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="clasp"):
        out = run(x)
        again = run(x)
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(again, model(x))
    warnings = [r.getMessage() for r in caplog.records if r.name == "clasp"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("--compile: the CLIP vision forward runs eagerly, compiling failed (")
    assert isinstance(run, CompiledOrEager) and not run.is_compiled and "no compiler here" in run.failure


def test_a_working_backend_stays_compiled_and_equals_eager() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    run = compiled_or_eager(model, backend="eager")  # dynamo's tracing without a code generator: fast
    x = torch.randn(5, 4)
    torch.testing.assert_close(run(x), model(x))
    torch.testing.assert_close(run(x * 2), model(x * 2))
    assert run.is_compiled and run.failure is None


def test_inductor_settings_hold_while_compiling_and_are_restored_after() -> None:
    import torch._inductor.config as inductor

    seen = []

    def backend(graph, example_inputs):  # records what a compiler would read, then runs the graph as it is
        seen.append((inductor.freezing, inductor.autotune_num_choices_displayed))
        return graph.forward

    before = (inductor.freezing, inductor.autotune_num_choices_displayed)
    run = compiled_or_eager(torch.nn.Linear(3, 2), backend=backend, inductor_config={"freezing": not before[0]})
    run(torch.randn(4, 3))
    assert run.is_compiled and seen == [(not before[0], 0)]  # the asked setting, and no autotuning tables
    assert (inductor.freezing, inductor.autotune_num_choices_displayed) == before


@pytest.mark.slow
def test_inductor_compiled_equals_eager_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    run = compiled_or_eager(model)
    x = torch.randn(7, 16)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-5)
    assert run.is_compiled, run.failure


def _labels(tiny_clip_dir, vocab, compile: str):
    from clasp.labeling.config import ClipLabelerConfig
    from clasp.labeling.labeler import ClipLabeler

    labeler = ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), clip_size=(64, 32), compile=compile), vocab)
    pixels = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    return labeler, labeler.label(pixels), labeler.vision_forward(pixels)


def test_clasp_label_compile_labels_as_eager_does(tiny_clip_dir, vocab, monkeypatch) -> None:
    import numpy as np

    import clasp.labeling.labeler as labeler_module

    monkeypatch.setattr(labeler_module, "COMPILE_OPTIONS", {"backend": "eager"})  # dynamo's tracing, no codegen
    _, eager, eager_vision = _labels(tiny_clip_dir, vocab, compile="off")
    compiled, labels, vision = _labels(tiny_clip_dir, vocab, compile="on")
    assert compiled._dense.is_compiled and compiled._vision.is_compiled
    np.testing.assert_array_equal(labels[0], eager[0])
    np.testing.assert_allclose(labels[1].astype(np.float32), eager[1].astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(labels[2].astype(np.float32), eager[2].astype(np.float32), atol=1e-2)
    torch.testing.assert_close(vision, eager_vision, rtol=1e-5, atol=1e-5)


def test_auto_compiles_nothing_yet() -> None:
    from clasp.hardware.compile import compile_pays
    from clasp.labeling.config import LabelConfig

    config = LabelConfig(images="i", out="o")
    assert config.compile == "auto" and config.labeler().compile == "auto"
    # eager labeling with fused linears was as fast as compiled on AMX; training never faster; GPUs unmeasured
    assert not any(compile_pays(p, d, training) for p, d in (("bf16", "cpu"), ("fp32", "cpu"), ("bf16", "cuda"),
                                                             ("fp16", "cuda")) for training in (False, True))


def test_on_and_off_overrule_auto(monkeypatch) -> None:
    import clasp.hardware.compile as compile_module

    for precision, device, training in (("bf16", "cpu", False), ("fp32", "cpu", False), ("bf16", "cpu", True),
                                        ("bf16", "cuda", True)):
        assert compile_module.compiling("on", precision, device, training)
        assert not compile_module.compiling("off", precision, device, training)
        assert not compile_module.compiling("auto", precision, device, training)
    monkeypatch.setattr(compile_module, "compile_pays", lambda *args, **kwargs: True)
    assert compile_module.compiling("auto", "bf16", "cpu") and not compile_module.compiling("off", "bf16", "cpu")


def test_compile_on_pads_a_short_batch_to_the_compiled_size(tiny_clip_dir, vocab, monkeypatch) -> None:
    import numpy as np

    import clasp.labeling.labeler as labeler_module
    from clasp.labeling.config import ClipLabelerConfig
    from clasp.labeling.labeler import ClipLabeler

    monkeypatch.setattr(labeler_module, "COMPILE_OPTIONS", {"backend": "eager"})
    labeler = ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), clip_size=(64, 32), compile="on"), vocab)
    eager = ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), clip_size=(64, 32), compile="off"), vocab)
    assert eager._dense == eager._dense_eager and not eager.compiles  # no compiled forward
    pixels = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    labeler.label(pixels)  # compiled from the first batch
    assert labeler._dense.is_compiled and labeler._compiled_rows == 3
    short, reference = labeler.label(pixels[:2]), eager.label(pixels[:2])  # padded to the compiled 3 rows
    assert short[0].shape[0] == 2 and labeler._compiled_rows == 3
    np.testing.assert_array_equal(short[0], reference[0])
    np.testing.assert_allclose(short[2].astype(np.float32), reference[2].astype(np.float32), atol=1e-2)


@pytest.mark.slow
def test_clasp_label_compile_with_inductor_labels_as_eager_does(tiny_clip_dir, vocab) -> None:
    import numpy as np

    _, eager, eager_vision = _labels(tiny_clip_dir, vocab, compile="off")
    compiled, labels, vision = _labels(tiny_clip_dir, vocab, compile="on")
    assert compiled._dense.is_compiled, compiled._dense.failure
    np.testing.assert_allclose(labels[1].astype(np.float32), eager[1].astype(np.float32), atol=1e-2)
    np.testing.assert_allclose(labels[2].astype(np.float32), eager[2].astype(np.float32), atol=5e-2)
    # inductor fuses and reorders: equal within the rounding of the dtype the tower computes in
    scale = eager_vision.abs().max().item()
    rtol, atol = (1e-3, 1e-3) if vision.dtype == torch.float32 else (2e-2, 2e-2 * scale)
    torch.testing.assert_close(vision, eager_vision, rtol=rtol, atol=atol)
