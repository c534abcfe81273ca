"""One exception type for bad input; ``train.py`` prints its message as one line and exits non-zero."""


class ConfigError(ValueError):
    """Bad config, data or checkpoint. The message names the problem and the fix."""
