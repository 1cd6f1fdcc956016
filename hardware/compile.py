"""`--compile`: torch.compile a forward where it works, eager where it does not, said in one line.

`torch.compile` is lazy: wrapping succeeds and the failure (no C compiler, an
unsupported op, a Triton that does not match the card) comes at the first call.
`compiled_or_eager(fn)` returns a callable that compiles on its first call; if
that call raises, it logs one warning line naming `what` and the error, and from
then on runs `fn` eagerly (the failed call is rerun eagerly, so the caller sees
no difference but the warning). A failure after the first call is not caught:
the compiled code ran once, so a later error is the model's, not the compiler's.

Labeling, pre-training and fine-tuning call this one function, so a compile
failure reads the same in every command.

`--compile auto` turns it on only where it was measured to pay
(`compile_pays`): nowhere at present. The CLIP forward in bf16 on an AMX CPU
ran 1.06–1.2× faster compiled until its eager forward gained what inductor's
frozen graph did (quick-GELU folded, oneDNN's fused linears); since then eager
is as fast (docs/results.md), and a compiled bf16 training step was never
faster. CUDA and fp32 CPUs are not measured, so auto stays eager there rather
than spend a minute compiling on a guess.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Callable

COMPILE_CHOICES = ("auto", "on", "off")
# max-autotune writes a table per GEMM it times to stderr (a hundred lines for a ViT): one warning line is
# all --compile prints
QUIET_AUTOTUNING = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def compile_pays(precision: str, device_type: str, training: bool = False) -> bool:
    """Whether `--compile auto` compiles a forward at this resolved precision on this device type.

    Nowhere yet (module docstring): on the AMX Xeon neither the labeling forward (compiled 16.0 images/s against
    eager 16.8) nor a bf16 training step ran faster compiled, and no GPU figure exists (`benchmarks/gpu.sh`
    measures it). The arguments are what a measured exception would be decided on."""
    return False


def compiling(choice: str, precision: str, device_type: str, training: bool = False) -> bool:
    """Whether `--compile choice` (on, off, auto) compiles here."""
    return choice == "on" or (choice == "auto" and compile_pays(precision, device_type, training))


class CompiledOrEager:
    """`fn` compiled on the first call, or `fn` itself after a compile failure (one warning)."""

    def __init__(self, fn: Callable[..., Any], what: str, inductor_config: dict | None = None,
                 **options: Any) -> None:
        import torch

        self.eager, self.what = fn, what
        self.compiled: Callable[..., Any] | None = torch.compile(fn, **options)
        self.inductor_config = inductor_config or {}  # patched in while the first call compiles
        self.first = True
        self.failure: str | None = None  # the error that made it fall back, if it did

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        if not self.first:
            return self.compiled(*args, **kwargs)
        try:
            with _patched_inductor(self.inductor_config), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the compiler's own deprecation notes are not the user's business
                out = self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means eager
            self.failure = _one_line(exc)
            logging.getLogger("clasp").warning(f"--compile: {self.what} runs eagerly, compiling failed "
                                               f"({self.failure})")
            self.compiled = None
            return self.eager(*args, **kwargs)
        self.first = False
        return out

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None


def _patched_inductor(config: dict) -> contextlib.AbstractContextManager:
    """Inductor's settings `config` (quiet autotuning besides) while a compile runs, the process's own restored
    after it: `freezing`, for one, is not reached through `torch.compile`'s options where inductor reads it."""
    import torch._inductor.config as inductor

    return inductor.patch({**QUIET_AUTOTUNING, **config})


def _one_line(exc: BaseException) -> str:
    """The root cause of a compiler failure (dynamo wraps it), as `Type: first line`."""
    root = getattr(exc, "inner_exception", None) or exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {lines[0] if lines else ''}"[:300]


def compiled_or_eager(fn: Callable[..., Any], enabled: bool = True, what: str = "the model",
                      **options: Any) -> Callable[..., Any]:
    """`fn` itself when not `enabled`, else a `CompiledOrEager` of it (`options`: torch.compile's, and
    `inductor_config`: inductor settings for its compile)."""
    return CompiledOrEager(fn, what, **options) if enabled else fn
