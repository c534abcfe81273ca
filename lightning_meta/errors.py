"""The exception types for bad input and for training that cannot go on; the command line prints their message as
one line and exits non-zero."""


class ConfigError(ValueError):
    """Bad config, data or checkpoint. The message names the problem and the fix."""


class DataError(ConfigError):
    """Bad data or data settings; the message says what is wrong and how to fix it."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step, the algorithm and the way
    out, and the last good checkpoint is kept."""
