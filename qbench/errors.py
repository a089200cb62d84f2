"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it (and config validation's ValueError) into a one-line message and
exit code 2; anything else is a bug and keeps its traceback.
"""


class QbenchError(Exception):
    """A user-facing error: bad path, bad option, unreadable data. One line, no traceback."""


class ConfigError(QbenchError, ValueError):
    """A config field out of range or of the wrong type; names the field and what is allowed."""
