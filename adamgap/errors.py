"""The one exception a user ever sees as ``error: ...``: a bad setting, named in one line."""


class ConfigError(ValueError):
    """A bad configuration, or a run that must not start as configured: the message is one
    line naming the key (or the file) and what is allowed. Scripts print it as ``error: ...``
    and exit with status 2, before anything is written."""
