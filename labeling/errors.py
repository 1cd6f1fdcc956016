"""The errors `clasp label` raises: for problems with its inputs or output folder, and for a run that failed.

The command line turns `LabelingError` into one line and exit code 2, and
`LabelingRunError` into one line and exit code 1; library callers can catch
them without parsing messages.
"""

from __future__ import annotations

import errno

from clasp.errors import InputError, RunError


class LabelingError(InputError):
    """A problem the user can fix: a missing images folder, an output path that is a file, …"""


class LabelingRunError(RunError):
    """The run failed part way (the disk filled up, a write failed); the message is one line naming the file.

    Shards finished before it stay intact and listed in the manifest: rerunning
    the same command, once the cause is fixed, does the rest.
    """


def write_problem(exc: OSError) -> str:
    """What went wrong in a write, in words; h5py's OSErrors carry the errno only in their text."""
    text = " ".join(str(exc).split())
    if exc.errno == errno.ENOSPC or "No space left on device" in text:
        return "no space left on device"
    if exc.errno == errno.EDQUOT or "Disk quota exceeded" in text:
        return "disk quota exceeded"
    return exc.strerror or text or type(exc).__name__
