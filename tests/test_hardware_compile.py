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


@pytest.mark.slow
def test_inductor_compiled_equals_eager_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    run = compiled_or_eager(model)
    x = torch.randn(7, 16)
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-5)
    assert run.is_compiled, run.failure
