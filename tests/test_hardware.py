"""clasp.hardware: the precision rule on faked devices, and core counts from affinity and cgroup quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clasp.hardware import Capability, PrecisionError, dataloader_workers, probe_capability, resolve_precision
from clasp.hardware.cores import available_cores, cgroup_quota_cores

AMX = Capability("cpu", "AVX512", amx=True)
AVX512_BF16 = Capability("cpu", "AVX512", avx512_bf16=True)
AVX2 = Capability("cpu", "AVX2")
CUDA_BF16 = Capability("cuda", "NVIDIA H100 sm_90", cuda_bf16=True)
CUDA_OLD = Capability("cuda", "Tesla V100 sm_70")


@pytest.mark.parametrize("capability, precision, line", [
    (AMX, "bf16", "precision auto → bf16: CPU capability AVX512 with AMX"),
    (AVX512_BF16, "bf16", "precision auto → bf16: CPU capability AVX512 with AVX512-BF16"),
    (AVX2, "fp32", "precision auto → fp32: CPU capability AVX2, no native bf16"),
    (CUDA_BF16, "bf16", "precision auto → bf16: CUDA NVIDIA H100 sm_90, bf16 supported"),
    (CUDA_OLD, "fp16", "precision auto → fp16: CUDA Tesla V100 sm_70, no bf16 support; fp16 with a gradient scaler"),
])
def test_auto_follows_the_documented_rule(capability: Capability, precision: str, line: str) -> None:
    choice = resolve_precision("auto", capability)
    assert choice.precision == precision
    assert choice.line() == line
    assert choice.warning is None


def test_an_explicit_choice_is_kept_and_an_emulated_one_warns() -> None:
    assert resolve_precision("fp32", AMX).precision == "fp32"
    assert resolve_precision("bf16", AMX).warning is None
    slow = resolve_precision("bf16", AVX2)
    assert slow.precision == "bf16"
    assert slow.warning.startswith("warning: precision bf16 is emulated here (CPU capability AVX2, no native bf16)")
    assert "7.6x slower than fp32" in slow.warning and "\n" not in slow.warning
    assert resolve_precision("bf16", CUDA_OLD).warning is not None
    assert resolve_precision("fp16", CUDA_OLD).precision == "fp16"


@pytest.mark.parametrize("requested, capability, message", [
    ("fp16", AVX2, "precision fp16 needs a CUDA device"),
    ("fp16", AMX, "precision fp16 needs a CUDA device"),
    ("half", AVX2, "unknown precision 'half'"),
])
def test_impossible_choices_are_refused_in_one_line(requested: str, capability: Capability, message: str) -> None:
    with pytest.raises(PrecisionError, match=message):
        resolve_precision(requested, capability)


def test_this_cpu_is_described_from_what_torch_reports() -> None:
    import torch

    capability = probe_capability("cpu")
    assert capability.isa == torch.backends.cpu.get_cpu_capability()
    assert capability.amx == torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", capability).precision == ("bf16" if capability.native_bf16 else "fp32")
    assert resolve_precision("auto", capability).record()["device"].startswith("cpu:")


def test_the_record_names_request_result_and_device() -> None:
    assert resolve_precision("auto", AVX2).record() == {
        "requested": "auto", "precision": "fp32", "device": "cpu:AVX2", "capability": "CPU capability AVX2, no native bf16"}
    assert resolve_precision("auto", AMX).record()["device"] == "cpu:AVX512+AMX"
    assert resolve_precision("auto", CUDA_BF16).record()["device"] == "cuda:sm_90+bf16"


# --------------------------------------------------------------------------- cores


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    write(v2 / "cpu.max", "150000 100000\n")
    assert cgroup_quota_cores(v2) == 1.5
    write(v2 / "cpu.max", "max 100000\n")
    assert cgroup_quota_cores(v2) is None
    v1 = tmp_path / "v1"
    write(v1 / "cpu" / "cpu.cfs_quota_us", "50000\n")
    write(v1 / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_quota_cores(v1) == 0.5
    assert available_cores(v1) == 1  # half a core still runs one thread
    write(v1 / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_quota_cores(v1) is None
    assert cgroup_quota_cores(tmp_path / "none") is None


def test_loader_workers_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import clasp.hardware.cores as cores

    for available, cpu, gpu in ((1, 1, 1), (2, 1, 1), (16, 2, 8), (64, 8, 8)):
        monkeypatch.setattr(cores, "available_cores", lambda available=available: available)
        assert (dataloader_workers("cpu"), dataloader_workers("cuda")) == (cpu, gpu), available
    monkeypatch.setattr(cores, "available_cores", lambda: 16)
    assert dataloader_workers("cuda", processes_on_host=4) == 3  # 4 cores each, one left for the training process


CHILD = """
import os, sys
os.sched_setaffinity(0, {next(iter(os.sched_getaffinity(0)))})
import torch
from clasp.hardware import available_cores, use_available_cores
print(os.cpu_count(), available_cores(), use_available_cores(), torch.get_num_threads())
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_threads_follow_a_restricted_affinity() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True).stdout
    machine, available, set_to, torch_threads = map(int, out.split())
    assert (available, set_to, torch_threads) == (1, 1, 1)
    assert machine == os.cpu_count()  # the machine count is not what the child may use


def test_omp_num_threads_is_honoured() -> None:
    code = "from clasp.hardware import use_available_cores; print(use_available_cores())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "3"}).stdout
    assert out.strip() == "3"
