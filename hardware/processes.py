"""Child processes that cannot outlive the process that started them.

`die_with_parent(parent_pid)` asks the Linux kernel (`prctl(PR_SET_PDEATHSIG,
SIGKILL)`) to kill the calling process the moment its parent thread exits, for
whatever reason (including `kill -9` of the parent), then checks that the parent
is still the one it expects: a parent that died before the request was made
leaves the child re-parented, and the child exits at once. Elsewhere than
Linux it does nothing.

DataLoader workers of `clasp pretrain` call it first thing (they ignore SIGTERM
and SIGINT by design, so nothing else would stop them once orphaned). dask's
LocalCluster workers of `clasp label --workers` need nothing of this: each runs
under a nanny process that watches its parent and takes the worker down with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> bool:
    """SIGKILL this process when its parent exits; exit now if the parent is already gone.

    Returns True when the kernel accepted the request (Linux), False elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        accepted = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request: nobody will read what this process makes
    return accepted
