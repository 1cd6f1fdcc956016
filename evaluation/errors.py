"""The one error type of evaluation: input the user must fix (the CLI prints it as one line)."""

from clasp.errors import InputError


class EvalInputError(InputError):
    """Input of `clasp eval` or `clasp eval-labels` that cannot be used: not an export, a store that does not
    match the world. A data set folder's own problems are `clasp.datasets.errors.DatasetError`."""
