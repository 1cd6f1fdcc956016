"""Stopping a run cleanly on SIGTERM/SIGINT, and at once on the second one (every training command).

The first signal only sets a flag that the loop reads at its next step
boundary (several processes stop together, on the flag their all-reduce
carries: `step_stats.reduce_stats`); the loop then saves what the command
saves (a checkpoint; train-clip: its model) and ends. The second ends the
process at once with exit status 128 + the signal's number (143 for SIGTERM,
130 for SIGINT), after printing one line and writing it to error.log
(`run_stop_signals`), leaving the last complete checkpoint as it is.

Invariant: signals are counted by a watcher thread as they arrive, not when
the main thread next runs Python, so a second signal during a long backward
pass still exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable


# Ends the watcher. Closing the pipe's write end is not enough: a DataLoader worker forked while the
# pipe was open holds a copy of it, so the watcher would wait for that worker's death and could wake
# during interpreter shutdown, when a daemon thread that wants the GIL is ended by pthread_exit and
# the process aborts ("terminate called without an active exception"). No signal has number 0.
WAKE_TO_END = 0


class StopSignals:
    """SIGTERM/SIGINT: the first sets `received`, which the loop reads at the next step boundary; the second
    ends the process at once (exit 128 + signal number), leaving the last complete checkpoint as it is.

    Python runs signal handlers in the main thread between bytecodes, so a handler waits as long as the
    C++ operation under way (one backward pass of the small preset takes tens of seconds on two busy
    cores), and signals that arrive meanwhile merge into one call: three SIGTERMs could end up as one
    late "stop at the next step". So the C-level handler's wakeup pipe (`signal.set_wakeup_fd`, one byte
    per signal delivered) is read by a watcher thread, which counts every signal as it arrives and does
    not wait for the main thread. `on_first(signal name)` and `on_exit_now(signal name)` return the line
    printed on the first signal and before the exit (None: print nothing).
    """

    def __init__(self, on_exit_now=None, on_first=None) -> None:
        self.received: str | None = None
        self.count = 0
        self._on_exit_now = on_exit_now
        self._on_first = on_first
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set in the main thread: no clean stop
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, args=(read_fd,), name="clasp-stop-signals", daemon=True)
        self._watcher.start()
        return self

    def _handle(self, signum: int, frame) -> None:
        """The Python-level handler: nothing to do, the watcher thread has counted the signal."""

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data or WAKE_TO_END in data:
                os.close(read_fd)
                return
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.signal(signum)

    def signal(self, signum: int) -> None:
        """Count one stop signal: the first asks for a stop at the step boundary, the second exits now."""
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            self.received = name
            line = self._on_first(name) if self._on_first is not None else None
            if line:
                os.write(2, ("\n" + line + "\n").encode("utf-8", "replace"))
            return
        line = self._on_exit_now(name) if self._on_exit_now is not None else f"error: second {name}: stopped at once"
        try:
            os.write(2, (line + "\n").encode("utf-8", "replace"))
        finally:
            os._exit(128 + signum)

    def __exit__(self, *exc) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.write(self._pipe[1], bytes([WAKE_TO_END]))
        os.close(self._pipe[1])
        self._pipe = None
        if self._watcher is not None:
            self._watcher.join(timeout=5.0)
            self._watcher = None


def run_stop_signals(out: str | Path, is_main: bool, next_step: Callable[[], int],
                     saves: str = "with a checkpoint", kept: Callable[[], str] | None = None) -> StopSignals:
    """The watcher of a run in folder `out`, with the lines every command prints: on the first signal
    (main process) "stopping after step N `saves`", on the second "stopped at once during step N" and
    what is kept (`kept()`; by default the last complete checkpoint, to continue with --resume), also
    written to OUT/error.log. `next_step()`: the step under way (1-based)."""
    from clasp.runs.checkpoint import find_checkpoint
    from clasp.runs.error_log import write_error_log

    def last_checkpoint() -> str:
        return f"the last complete checkpoint is {find_checkpoint(out) or 'none'}; continue with --resume"

    def first(name: str) -> str | None:
        return (f"{name}: stopping after step {next_step()} {saves}; send it again to stop at once"
                if is_main else None)

    def exit_now(name: str) -> str:
        line = f"second {name}: stopped at once during step {next_step()}; {(kept or last_checkpoint)()}"
        if is_main:
            write_error_log(out, line)
        return f"error: {line}"

    return StopSignals(exit_now, first)
