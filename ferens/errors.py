"""The one exception type ferens raises for bad user input; the CLI turns it into exit code 2."""


class FerensError(ValueError):
    """A user-facing error: the message names the file, the row (when known) and the problem."""
