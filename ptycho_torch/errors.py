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


class ConfigError(UserError):
    """A configuration value is wrong; the message names the field and the fix."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, FloatingPointError, OSError)


MAX_MESSAGE_CHARS = 800  # a message longer than this keeps its head (field, value) and tail (the fix)


def clipped(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line and at most about `limit` characters: the middle of a longer one (e.g. a
    huge value quoted from a file) is replaced by '... [N characters left out] ...'."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head, tail = limit * 5 // 8, limit // 4
    return f"{text[:head]} ... [{len(text) - head - tail} characters left out] ... {text[-tail:]}"


def one_line(error: BaseException) -> str:
    """The message of a user error on one line of bounded length (OSErrors name their file)."""
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.filename:
        return clipped(f"{error.filename}: {error.strerror or error}")
    return clipped(str(error))
