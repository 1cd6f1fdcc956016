"""The Accelerator of a training run, from the resolved precision: the one place a command makes one.

`precision` (`auto`, `fp32`, `bf16`, `fp16`) is resolved once per run by `clasp.hardware` on the device the
Accelerator will use (`ACCELERATE_USE_CPU` read the same way it reads it), and the choice is returned for
the run to log and record. Invariant: a process may train more than once (tests, an evaluation
pipeline), so the precision and accumulation settings of a previous run never stick: Accelerate's
process-wide states are reset first.
"""

from __future__ import annotations

from typing import Any

ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def make_accelerator(precision: str, grad_accum: int = 1, **options: Any):
    """(Accelerator, clasp.hardware.PrecisionChoice); `options`: more Accelerator arguments (the trackers').

    A precision the device cannot run is `clasp.hardware.PrecisionError` (an InputError), one line."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import parse_flag_from_env

    from clasp.hardware import probe_capability, resolve_precision

    AcceleratorState._reset_state()
    GradientState._reset_state()
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    choice = resolve_precision(precision, probe_capability(device))
    accelerator = Accelerator(mixed_precision=ACCELERATE_PRECISION[choice.precision],
                              gradient_accumulation_steps=grad_accum, **options)
    return accelerator, choice
