"""keep_freed_memory: a step's freed activations are reused by the next step without page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
from clasp.hardware.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()

def faults_in_one_step() -> int:
    # A training step in miniature: activations allocated and touched, then all freed.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(48 * 2**20, dtype=torch.uint8) for _ in range(6)]
    del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(min(faults_in_one_step() for _ in range(6)))
"""


# More than 2 GiB malloc'ed, touched and freed at once: the whole heap top is free, above the
# largest trim threshold a positive int can set.
LARGE_TOP_PROBE = """
import ctypes, resource
from clasp.hardware.host_memory import keep_freed_memory
assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def faults_in_one_step() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(360 * 2**20) for _ in range(6)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, 360 * 2**20)
    for block in reversed(blocks):
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_in_one_step()
print(faults_in_one_step())
"""


def faults_on_reuse(mode: str) -> int:
    """Fewest page faults of six identical steps in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_a_steps_freed_activations_are_reused_without_page_faults() -> None:
    pages = 6 * 48 * 2**20 // 4096
    assert faults_on_reuse("default") > pages // 2  # glibc maps blocks over 32 MB afresh each time
    assert faults_on_reuse("keep") < pages // 50


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_more_than_2_gib_freed_at_once_is_kept_too() -> None:
    # 2.1 GiB freed in one go: above the largest trim threshold an int can set, so only "never trim" keeps it
    out = subprocess.run([sys.executable, "-c", LARGE_TOP_PROBE], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 6 * 360 * 2**20 // 4096 // 50  # with 2**31 - 1 as threshold: every page again


def test_only_a_cpu_model_keeps_freed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from clasp.hardware import host_memory

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert host_memory.keep_freed_memory_on("cpu") and calls == [1]
    assert not host_memory.keep_freed_memory_on("cuda") and calls == [1]


def test_the_labeler_keeps_freed_memory_on_cpu(tiny_clip_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    from clasp.labeling import labeler
    from clasp.labeling.config import ClipLabelerConfig

    asked = []
    monkeypatch.setattr(labeler, "keep_freed_memory_on", asked.append)
    labeler.ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), clip_size=(64, 32), precision="fp32"))
    assert asked == ["cpu"]
