"""The two exceptions for bad user input (bad data, bad configuration): the CLI prints either as one
line naming the file or key, instead of a traceback."""
from __future__ import annotations


class DataError(ValueError):
    """Input data (a file, a folder, a submission) is not what the competition format requires.

    The message always names the offending file and the problem.
    """


class ConfigError(ValueError):
    """A configuration key or value is wrong (unknown key, bad type, conflicting choice)."""
