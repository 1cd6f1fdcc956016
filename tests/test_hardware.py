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


# --------------------------------------------------------------------------- cores other work keeps busy

STAT = "cpu  {a} 0 0 {b} 0 0 0 0 0 0\ncpu0 {c0} 0 {s0} {i0} 0 0 0 {t0} 0 0\ncpu1 {c1} 0 0 {i1} 0 0 0 0 0 0\nintr 1 2\n"


def _stat(path: Path, cpu0: tuple[int, int, int, int], cpu1: tuple[int, int]) -> Path:
    (c0, s0, i0, t0), (c1, i1) = cpu0, cpu1
    path.write_text(STAT.format(a=c0 + c1, b=i0 + i1, c0=c0, s0=s0, i0=i0, t0=t0, c1=c1, i1=i1))
    return path


def test_busy_share_counts_user_system_and_steal_per_cpu(tmp_path: Path) -> None:
    from clasp.hardware.load import busy_share, cpu_times

    before = cpu_times(_stat(tmp_path / "a", (100, 0, 100, 0), (50, 150)))
    after = cpu_times(_stat(tmp_path / "b", (160, 20, 100, 20), (60, 240)))  # cpu0 all busy (steal too), cpu1 10 %
    assert before == {0: (100, 200), 1: (50, 200)}
    assert busy_share(before, after, {0, 1}) == pytest.approx(1.1)
    assert busy_share(before, after, {1}) == pytest.approx(0.1)  # only the CPUs this process may use count


def test_busy_cores_samples_twice_over_the_affinity(tmp_path: Path) -> None:
    from clasp.hardware.load import busy_cores

    stat = _stat(tmp_path / "stat", (0, 0, 0, 0), (0, 0))
    later = lambda seconds: _stat(stat, (100, 0, 0, 0), (0, 100))  # noqa: E731 - cpu0 busy, cpu1 idle
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count()))
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.00 0.90 0.80 2/120 4242\n")  # the reader and one other task runnable
    assert busy_cores(stat=stat, loadavg=loadavg, sleep=later) == pytest.approx(1.0 if 0 in cpus else 0.0, abs=0.2)
    assert busy_cores(stat=tmp_path / "missing", loadavg=loadavg) is None


def test_nothing_else_runnable_costs_no_sample(tmp_path: Path) -> None:
    from clasp.hardware.load import busy_cores, others_runnable

    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.01 0.02 0.00 1/120 4242\n")  # only the reader
    slept = []
    assert busy_cores(loadavg=loadavg, sleep=slept.append) == 0.0 and slept == []
    assert others_runnable(loadavg) == 0 and others_runnable(tmp_path / "missing") is None


@pytest.mark.parametrize("cores, busy, free", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1),
                                                (8, 3.2, 5), (4, None, 4)])
def test_a_core_counts_as_taken_when_other_work_uses_half_of_it(cores: int, busy, free: int) -> None:
    from clasp.hardware.load import free_cores

    assert free_cores(cores, busy) == free


def test_threads_leave_the_cores_other_work_keeps_busy(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import clasp.hardware.cores as cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "available_cores", lambda: 4)
    monkeypatch.setattr(cores, "busy_cores", lambda: 1.0)
    with caplog.at_level("WARNING", logger="clasp"):
        assert cores.torch_threads() == 3 and cores.torch_threads(processes_on_host=2) == 2
    assert "other work keeps 1.0 of 4 cores busy: 3 torch threads instead of 4" in caplog.text
    monkeypatch.setattr(cores, "busy_cores", lambda: 0.2)
    assert cores.torch_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setattr(cores, "busy_cores", lambda: 3.0)
    assert cores.torch_threads() == 4  # the user's word wins


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to leave one free")
def test_a_real_busy_process_is_seen_on_its_core() -> None:
    from clasp.hardware.load import busy_cores

    cpu = min(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        import time

        time.sleep(0.3)  # let it start spinning
        assert 0.6 <= busy_cores(sample_seconds=0.5) <= 2.0
    finally:
        spin.kill()
        spin.wait()
