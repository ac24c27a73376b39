"""Exceptions for mistakes a user can fix (bad file, flag, id); the CLIs print them in one line."""


class UserError(Exception):
    """A problem with the user's input: the message names the bad value and where it came from."""


class DataError(UserError):
    """A data file or dataset is missing, malformed or empty.

    The message names the file, the line (1-based, counting the header) and the bad value.
    """


def shown(value) -> str:
    """A bad value as an error message shows it: its ``repr``, numpy scalars as the Python
    value they hold (``1.5``, not ``np.float64(1.5)``; ``'x'``, not ``np.str_('x')``)."""
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        value = value.item()
    return repr(value)
