"""One exception type for bad input; ``train.py`` prints its message as one line and exits non-zero."""


class ConfigError(ValueError):
    """Bad config, data or checkpoint. The message names the problem and the fix."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step, the algorithm and the way
    out, and the last good checkpoint is kept."""
