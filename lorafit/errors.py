"""The one exception type for errors a user can cause (bad names, bad files, bad numbers)."""


class LorafitError(ValueError):
    """A user-facing error: the message is one line that names the problem and the fix.

    The CLI prints it on stderr and exits with status 2; anything else is a bug.
    """
