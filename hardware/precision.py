"""`--precision auto`: the arithmetic a run uses, decided once from what torch reports about the device.

bf16 autocast pays only where the hardware multiplies bf16 natively. On a CPU
with AMX or AVX512-BF16 it is about 3x faster than fp32; on an AVX2-only CPU
(every AMD CPU before Zen 4, most laptops) torch emulates it and one
768->3072 linear layer over 32x393 tokens took 12.7 s against 1.66 s in fp32,
7.6x *slower*. GPUs differ the same way: bf16 is native from Ampere on, older
cards want fp16 with a gradient scaler.

The rule of `auto` (`resolve_precision`, the only place it is written):

| device | auto |
| --- | --- |
| CUDA, bf16 supported | bf16 |
| CUDA, no bf16 | fp16 (training adds a gradient scaler) |
| CPU with AMX or AVX512-BF16 | bf16 |
| any other CPU | fp32 |

An explicit `fp32`, `bf16` or `fp16` is honoured; one this device only
emulates (bf16 without native support) comes with a one-line warning, and fp16
on a CPU is refused (torch has no fast CPU fp16 path and accelerate would
silently train in fp32). The capability is read from torch
(`torch.backends.cpu.get_cpu_capability`, `torch.cpu._is_amx_tile_supported`,
`torch.cpu._is_avx512_bf16_supported`, `torch.cuda.is_bf16_supported`), never
from a list of CPU models.
"""

from __future__ import annotations

from dataclasses import dataclass

from clasp.errors import InputError

DEFAULT_PRECISION = "auto"  # every command's default: resolved on the device by `resolve_precision`
PRECISIONS = (DEFAULT_PRECISION, "fp32", "bf16", "fp16")
PRECISION_HELP = ("auto: bf16 where the device multiplies it natively (CUDA with bf16, CPUs with AMX or "
                  "AVX512-BF16), fp16 on older GPUs, else fp32. An explicit choice that is only emulated here warns.")
# bf16 autocast / fp32, measured on a 2-core AVX2 EPYC (see the module docstring).
EMULATED_BF16_SLOWDOWN = 7.6


class PrecisionError(InputError, ValueError):
    """A precision this device cannot run; the message is one line saying what to use instead."""


@dataclass(frozen=True)
class Capability:
    """What torch says about one device's arithmetic."""

    device: str  # "cpu" or "cuda"
    isa: str  # CPU: torch's capability (AVX2, AVX512, ...); CUDA: the device name and compute capability
    amx: bool = False
    avx512_bf16: bool = False
    cuda_bf16: bool = False

    @property
    def native_bf16(self) -> bool:
        return self.cuda_bf16 if self.device == "cuda" else (self.amx or self.avx512_bf16)

    def describe(self) -> str:
        """e.g. `CPU capability AVX2, no native bf16` or `CPU capability AVX512 with AMX`."""
        if self.device == "cuda":
            return f"CUDA {self.isa}, " + ("bf16 supported" if self.cuda_bf16 else "no bf16 support")
        extras = [name for name, present in (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16)) if present]
        if extras:
            return f"CPU capability {self.isa} with {' and '.join(extras)}"
        return f"CPU capability {self.isa}, no native bf16"

    def tag(self) -> str:
        """Short form for logs and tables: `cpu:AVX2`, `cpu:AVX512+AMX`, `cuda:sm_90+bf16`."""
        if self.device == "cuda":
            return f"cuda:{self.isa.rsplit(' ', 1)[-1]}" + ("+bf16" if self.cuda_bf16 else "")
        return "cpu:" + "+".join([self.isa] + (["AMX"] if self.amx else []) + (["AVX512-BF16"] if self.avx512_bf16 else []))


def probe_capability(device="cpu") -> Capability:
    """The capability of `device` (a CPU, or the CUDA device it names) as torch reports it."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = f"{torch.cuda.get_device_name(index)} sm_{major}{minor}"
        return Capability("cuda", name, cuda_bf16=bool(torch.cuda.is_bf16_supported()))
    if device.type != "cpu":
        raise PrecisionError(f"device {str(device)!r}: precision is decided for cpu and cuda devices only")
    return Capability("cpu", torch.backends.cpu.get_cpu_capability(), amx=_cpu_flag("_is_amx_tile_supported"),
                      avx512_bf16=_cpu_flag("_is_avx512_bf16_supported"))


def _cpu_flag(name: str) -> bool:
    import torch

    probe = getattr(torch.cpu, name, None)  # private helpers of torch; absent means "not reported"
    return bool(probe()) if probe is not None else False


@dataclass(frozen=True)
class PrecisionChoice:
    """The outcome of resolving a requested precision on one device."""

    requested: str
    precision: str  # fp32 | bf16 | fp16
    reason: str
    capability: Capability
    warning: str | None = None

    def line(self) -> str:
        """The one log line, e.g. `precision auto → fp32: CPU capability AVX2, no native bf16`."""
        return f"precision {self.requested} → {self.precision}: {self.reason}"

    @property
    def autocast_dtype(self):
        """The torch dtype for `torch.autocast`, None for fp32 (no autocast)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def record(self) -> dict[str, str]:
        """What a manifest or run config stores about it."""
        return {"requested": self.requested, "precision": self.precision, "device": self.capability.tag(),
                "capability": self.capability.describe()}


def resolve_precision(requested: str, capability: Capability) -> PrecisionChoice:
    """Apply the rule of the module docstring; raises PrecisionError for a choice the device cannot run."""
    if requested not in PRECISIONS:
        raise PrecisionError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    described = capability.describe()
    if requested == DEFAULT_PRECISION:
        if capability.native_bf16:
            return PrecisionChoice(requested, "bf16", described, capability)
        if capability.device == "cuda":
            return PrecisionChoice(requested, "fp16", f"{described}; fp16 with a gradient scaler", capability)
        return PrecisionChoice(requested, "fp32", described, capability)
    if requested == "fp16" and capability.device == "cpu":
        raise PrecisionError("precision fp16 needs a CUDA device; on a CPU use auto, fp32 or bf16")
    warning = None
    if requested == "bf16" and not capability.native_bf16:
        slowdown = f"about {EMULATED_BF16_SLOWDOWN:g}x slower than fp32" if capability.device == "cpu" else "slow"
        warning = (f"warning: precision bf16 is emulated here ({described}): expect it {slowdown}; "
                   "--precision auto picks the fast one")
    return PrecisionChoice(requested, requested, f"as asked ({described})", capability, warning)
