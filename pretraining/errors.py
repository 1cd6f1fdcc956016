"""How a pre-training run fails: refused before it starts, or stopped after it started.

The command line maps the first to exit 2 (bad input, nothing trained) and the
second to exit 1 (the last complete checkpoint stays usable).
"""

from __future__ import annotations

from clasp.errors import InputError, RunError


class PretrainInputError(InputError):
    """Bad input found before the first step (store, run folder, settings): one line naming the file."""


class RunFailedError(RunError, RuntimeError):
    """The run started and could not go on (disk full, out of memory, a bad store row; a non-finite
    loss is `clasp.runs.step_stats.NonFiniteLossError`).

    One line naming what was being done; exit 1; the last complete checkpoint stays usable.
    """
