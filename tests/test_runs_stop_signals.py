"""The stop-signal watcher thread ends with its `with` block, whoever else holds its pipe."""

from __future__ import annotations

import os
import signal
import threading
import time

from clasp.runs.stop_signals import StopSignals


def _watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "clasp-stop-signals"]


def test_the_watcher_ends_at_exit_while_a_forked_child_still_holds_the_pipe() -> None:
    """A DataLoader worker forked inside the block inherits the pipe; the watcher must not wait for it,
    or it wakes during interpreter shutdown and the process aborts."""
    with StopSignals():
        assert len(_watchers()) == 1
        child = os.fork()
        if child == 0:  # the worker: outlives the block, holding its copy of the pipe
            time.sleep(30)
            os._exit(0)
    try:
        assert _watchers() == []
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_signal_inside_the_block_is_counted_and_handlers_return_afterwards() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(on_first=lambda name: None) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while signals.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (signals.received, signals.count) == ("SIGTERM", 1)
    assert signal.getsignal(signal.SIGTERM) == before
