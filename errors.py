"""The two kinds of failure every clasp command reports, and their exit codes.

- `InputError` (exit 2): something the user gave cannot be used as it is: a
  missing or malformed file, a setting out of bounds, a folder another run
  holds. Nothing was computed on it; fixing the input and running again is the
  remedy.
- `RunError` (exit 1): the inputs were good but the run could not finish: a
  non-finite loss, out of memory, a disk that filled while writing. What was
  done before is kept (the last complete checkpoint, the shards written).

Every exception of the project derives from one of the two, and the command
line maps them to one `error:` line and the exit code in one place. This module
imports nothing, so every package may use it.
"""

from __future__ import annotations

import re


class ClaspError(Exception):
    """Any failure the project reports as one line; `exit_code` is what the command line exits with."""

    exit_code = 1


class InputError(ClaspError):
    """Input the user must fix; the message is one line naming the file or setting and the problem."""

    exit_code = 2


class RunError(ClaspError):
    """A run that failed after its inputs were accepted; the message says what was kept."""

    exit_code = 1


def one_line(exc: BaseException, limit: int | None = None, drop_types: tuple[str, ...] = ()) -> str:
    """An exception's message on one line (at most `limit` characters).

    One re-raised from a DataLoader worker reads "Caught X in DataLoader worker process N. Original
    Traceback ..." with the original `module.X: message` as its last line: that line is kept, without its
    `X: ` when X is one of `drop_types` (errors whose message already says everything).
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        if drop_types:
            text = re.sub(rf"^[\w.]*(?:{'|'.join(drop_types)}): ", "", text)
    text = " ".join(text.split())
    return text if limit is None else text[:limit]
