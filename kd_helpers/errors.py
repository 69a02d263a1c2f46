"""Errors a learner can act on: each message is one line naming the file, column, row or value at fault."""


class KDError(ValueError):
    """Bad input or configuration. The CLI prints ``error: <message>`` and exits with code 2."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step and the last finite losses."""
