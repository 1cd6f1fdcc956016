"""Keep freed host memory inside the process when a model computes on the CPU.

A training step frees its activations at the end and allocates the same sizes
again in the next step; a labeling batch does the same. glibc hands large freed
blocks back to the kernel (blocks above its mmap threshold, and heap tops above
its trim threshold), so on CPU every step page-faults that memory in again and
the kernel zeroes it first: at preset `small`, batch 32, that was ~0.7 s of
system time in a ~11 CPU-second step; labeling with ViT-B/16 in bf16 (its MLP
activations are 79 MB a batch of 32) took ~950,000 page faults and 1.6 s of
system time a batch, and ran at 10.4 images/s against 13.8 with the memory kept
(2-core AMX Xeon). PyTorch's CUDA caching allocator keeps device memory for the
same reason; this is the host counterpart: serve every allocation from the heap
and never trim it. The price is that the process keeps its peak footprint,
which it reaches again on every step or batch anyway. Trimming is switched off
outright (-1), not set to the largest threshold an int allows: with that, a
heap top of more than 2 GiB freed at once (a large batch's activations) was
still handed back, and page-faulted in again on the next step. `clasp pretrain`,
`clasp finetune` and `clasp label` ask for it where they compute on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = -1  # mallopt(3): "-1 disables trimming completely"; any positive int is at most 2 GiB


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def keep_freed_memory_on(device_type: str) -> bool:
    """`keep_freed_memory()` where the model computes on the CPU, its activations in host memory; False
    elsewhere (a GPU's activations live in its own caching allocator)."""
    return device_type == "cpu" and keep_freed_memory()
