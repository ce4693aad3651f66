"""The one exception type for errors a user can cause (bad names, bad files, bad numbers)."""


class LorafitError(ValueError):
    """A user-facing error: the message is one line that names the problem and the fix.

    The CLI prints it on stderr and exits with status 2; anything else is a bug.
    """


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for the
    one-line errors that wrap a library's or a user's exception."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
