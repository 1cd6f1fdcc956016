"""The one error type of evaluation: input the user must fix (the CLI prints it as one line)."""


class EvalInputError(Exception):
    """Missing or malformed input: a folder without ground truth, not an export, a Market-1501 part missing."""
