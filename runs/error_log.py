"""OUT/error.log: why the last start of a command was refused, or why its run failed.

The one writer of the file. A refused start writes nothing else to OUT (the
line here tells whoever finds the folder what happened); a run that starts
deletes the previous file (`clear_error_log`). A folder that cannot be written
is no reason for a second error: the line goes to stderr either way.
"""

from __future__ import annotations

from pathlib import Path

ERROR_LOG = "error.log"


def write_error_log(out: str | Path | None, message: str, create: bool = True) -> None:
    """Append `error: message` to OUT/error.log (creating OUT unless `create` is False); never raises."""
    if out is None or not str(out):
        return  # no run folder was given
    folder = Path(out)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            return
        with open(folder / ERROR_LOG, "a", encoding="utf-8") as f:
            f.write(f"error: {message}\n")
    except OSError:
        pass  # the error itself is reported on stderr either way


def clear_error_log(out: str | Path) -> None:
    """A start that got past its checks removes the previous start's error.log."""
    (Path(out) / ERROR_LOG).unlink(missing_ok=True)
