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


SECOND_SIGNAL = """
import os, signal, sys, time
from clasp.runs.stop_signals import run_stop_signals

kept = (lambda: "the model was not saved") if sys.argv[2] == "model" else None
with run_stop_signals(sys.argv[1], True, lambda: 7, "and saving the model", kept) as signals:
    os.kill(os.getpid(), signal.SIGTERM)
    while signals.received is None:
        time.sleep(0.01)
    print("first seen", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
"""


def test_the_second_signal_exits_at_once_with_its_line_in_error_log(tmp_path) -> None:
    import subprocess
    import sys

    for what, kept in (("checkpoint", "the last complete checkpoint is none; continue with --resume"),
                       ("model", "the model was not saved")):
        out = tmp_path / what
        done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, str(out), what], capture_output=True, text=True,
                              timeout=60)
        line = f"error: second SIGTERM: stopped at once during step 7; {kept}"
        assert done.returncode == 143 and done.stdout == "first seen\n", done.stderr
        assert "SIGTERM: stopping after step 7 and saving the model; send it again to stop at once" in done.stderr
        assert done.stderr.strip().splitlines()[-1] == line
        assert (out / "error.log").read_text().splitlines() == [line]
