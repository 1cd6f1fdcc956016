"""What every benchmark prints before it measures: the machine, and the precision it computes in.

A ratio or a rate means little without the machine it came from: the device,
the CPU capability torch found (`torch.backends.cpu.get_cpu_capability()`:
AVX2, AVX512, ...; bf16 is native only with AMX or AVX512-BF16, and emulated
bf16 runs ~7.6x slower than fp32), the cores this process may use against the
threads torch runs, and what `--precision auto` resolved to. `print_header`
prints that in two lines, from `clasp.hardware`, the same rule every `clasp`
command follows.

The compute benchmarks also say how hard they drive the arithmetic: FLOPs of
their work counted by `torch.utils.flop_counter.FlopCounterMode`, divided by
the measured time, as a fraction of the GEMM peak that `machine_peak.py`
measures at the same precision (`efficiency_line`). Targets print as PASS or
MISS beside the measured figure (`verdict`).

Benchmarks are run as `python benchmarks/NAME.py`, so their folder is on
`sys.path` and they import this module as `machine`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from clasp.hardware import DEFAULT_PRECISION, PrecisionChoice, PrecisionError, available_cores, probe_capability, resolve_precision

CPUINFO = Path("/proc/cpuinfo")


def choose_precision(requested: str, device: str = "cpu") -> PrecisionChoice:
    """`requested` resolved on `device` as every `clasp` command does; a precision the device cannot run exits."""
    try:
        return resolve_precision(requested, probe_capability(device))
    except PrecisionError as exc:
        raise SystemExit(f"error: {exc}") from None


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (for the reader only: nothing is decided from it)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def header_lines(choice: PrecisionChoice) -> list[str]:
    """Line 1: device, torch's CPU capability, cores vs threads. Line 2: how the precision was resolved."""
    import torch

    capability = choice.capability
    name = cpu_model() if capability.device == "cpu" else capability.isa
    machine = (f"machine: {capability.device} ({name}), torch {torch.__version__}, "
               f"get_cpu_capability() {torch.backends.cpu.get_cpu_capability()} [{capability.tag()}], "
               f"cores available {available_cores()}, torch threads {torch.get_num_threads()}")
    precision = choice.line() + (f"  ({choice.warning})" if choice.warning else "")
    return [machine, precision]


def print_header(requested: str = DEFAULT_PRECISION, device: str = "cpu", note: str = "") -> PrecisionChoice:
    """Resolve `requested`, print the two header lines (`note` ends the second), return the choice.

    Call it after setting torch's threads, so that the count printed is the one measured with.
    """
    choice = choose_precision(requested, device)
    lines = header_lines(choice)
    lines[-1] += f"; {note}" if note else ""
    for line in lines:
        print(line, flush=True)
    return choice


def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's fused linear (`labeling/fused_linear.py`): X (..., K) times Wᵀ, W (N, K)."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _cpu_kernel_mapping() -> dict:
    """FLOP formulas for CPU kernels FlopCounterMode does not count: those of `scaled_dot_product_attention`
    and oneDNN's fused linear.

    Without them the attention of CLIP and of the fp32 ViT, and the labeler's
    linears, would count as zero FLOPs; the attention formulas are torch's own
    for the CUDA flash kernels.
    """
    import torch

    aten = torch.ops.aten
    mapping = {}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_attention_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_attention_backward_flops
    return mapping


def count_flops(work: Callable[[], object]) -> int:
    """FLOPs of the matrix products (linear, matmul, conv, attention) that `work()` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_kernel_mapping()) as counter:
        work()
    return int(counter.get_total_flops())


def efficiency_line(what: str, flops: float, seconds: float, peak: float, precision: str) -> str:
    """e.g. `bare CLIP forward: 67.1 GFLOP in 1.52 s = 44.1 GFLOP/s, 38 % of the fp32 GEMM peak (116 GFLOP/s)`."""
    achieved = flops / seconds / 1e9
    if peak != peak:  # nan: the peak was not measured
        return f"{what}: {flops / 1e9:.1f} GFLOP in {seconds:.3f} s = {achieved:.1f} GFLOP/s (GEMM peak not measured)"
    return (f"{what}: {flops / 1e9:.1f} GFLOP in {seconds:.3f} s = {achieved:.1f} GFLOP/s, "
            f"{achieved / peak:.0%} of the {precision} GEMM peak at its shapes ({peak:.1f} GFLOP/s)")


def verdict(value: float, target: float, at_least: bool, shown: str | None = None) -> str:
    """`PASS` or `MISS` with the target, e.g. `PASS (target >= 0.9)`; `shown` spells the target (`10%`)."""
    met = value >= target if at_least else value <= target
    return f"{'PASS' if met else 'MISS'} (target {'>=' if at_least else '<='} {shown or format(target, 'g')})"


PROFILE_TOP = 8  # ops listed by `--profile`


def op_shares(work: Callable[[], object], top: int = PROFILE_TOP) -> list[tuple[str, float]]:
    """The `top` aten ops by wall time while `work()` runs once, each as a share of all ops' time: where a
    step's time goes (GEMMs, attention, layer norm, GELU, the MoE's gather and index_add_, casts).

    Each op is timed by the clock around its call (a `TorchDispatchMode`; on a GPU synchronised after it).
    `torch.profiler`'s self CPU times were 3-5x the clock's for the large elementwise ops on a 2-core AMX
    VM (GELU over 64x129x1536 bf16: 31 ms a call against 5.6 ms), so its shares misplaced the time."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    seconds: dict[str, float] = collections.defaultdict(float)

    class OpClock(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            seconds[func.overloadpacket.__name__] += time.perf_counter() - start
            return out

    with OpClock():
        work()
    total = sum(seconds.values()) or 1.0
    ranked = sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:top]
    return [(name, spent / total) for name, spent in ranked]


def op_shares_line(what: str, shares: list[tuple[str, float]]) -> str:
    return f"{what}, top {len(shares)} ops by time: " + ", ".join(f"{name} {100 * share:.1f} %"
                                                                        for name, share in shares)


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets, by a part of the name
# `torch.cuda.get_device_name()` reports; the first match wins, so the more specific names come first.
BF16_DENSE_TFLOPS = (
    ("H200", 989.0),  # SXM; NVL 835
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM, HBM3
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("4090", 165.0),  # fp32 accumulation
)


def card_peak_tflops(device_name: str) -> float | None:
    """The datasheet dense bf16 peak of a CUDA card by its name; None for a card not in the table."""
    for part, tflops in BF16_DENSE_TFLOPS:
        if part.lower() in device_name.lower():
            return tflops
    return None


def mfu_line(what: str, flops: float, seconds: float, device: str) -> str:
    """Model FLOPs utilisation against the card's datasheet bf16 peak, e.g. `CLASP step MFU: 41.2 % of ...`."""
    import torch

    if not device.startswith("cuda"):
        return f"{what} MFU: n/a on {device} (the GEMM peak above is this machine's measured ceiling)"
    name = torch.cuda.get_device_name(torch.device(device))
    peak = card_peak_tflops(name)
    achieved = flops / seconds / 1e12
    if peak is None:
        return f"{what}: {achieved:.1f} TFLOP/s; MFU n/a ({name} is not in BF16_DENSE_TFLOPS)"
    return f"{what} MFU: {achieved / peak:.1%} of the {name} dense bf16 peak ({achieved:.1f} of {peak:.0f} TFLOP/s)"


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a CUDA timer must, a CPU one need not)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
