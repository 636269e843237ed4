"""Errors a user can fix, apart from bugs.

`UserError` (a ValueError) marks bad input: a missing or damaged file, a config value, a request
the machine cannot serve. The command lines print such errors as one line naming the field or file
and the fix, and exit 2; anything else is a bug and keeps its traceback. `USER_ERRORS` adds the
standard errors that mean the same (a path that does not exist, a disk that is full, a non-finite
number in a user's data).
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; the message says what was expected, what was found, and the fix."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, FloatingPointError, OSError)


def one_line(error: BaseException) -> str:
    """The message of a user error on one line (OSErrors name their file)."""
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)
