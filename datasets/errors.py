"""The one error of the data set readers: a folder that does not hold what its layout promises."""

from clasp.errors import InputError


class DatasetError(InputError):
    """A data set folder that cannot be read as its layout says (a part missing, a malformed annotation);
    the message names the file."""
