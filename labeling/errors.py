"""The error `clasp label` raises for problems with its inputs or its output folder.

The command line turns it into one line and exit code 2; library callers can
catch it without parsing messages.
"""

from __future__ import annotations


class LabelingError(Exception):
    """A problem the user can fix: a missing images folder, an output path that is a file, …"""
