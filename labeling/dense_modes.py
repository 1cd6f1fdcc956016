"""The names of the dense-feature modes, in a module free of torch so that the CLI can offer them at once.

`dense_features.py` says what each mode computes; this tuple is the one list
of them that the CLI, the run config and the labeler check against.
"""

DENSE_MODES = ("maskclip", "naive", "clearclip", "sclip", "naclip")
