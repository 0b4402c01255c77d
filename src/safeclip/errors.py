"""The project's own error types: input a user can fix, as opposed to bugs.

``safeclip`` (the CLI) prints a :class:`UserError` as one line naming the problem and the fix, with exit
status 2; any other exception is a bug and keeps its traceback. Each type also derives from the built-in
exception it refines (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.

    from safeclip.errors import ConfigError
    raise ConfigError("optim.lr must be > 0, got -1.0")
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input the user can fix; the CLI prints it without a traceback."""


class ConfigError(UserError, ValueError):
    """A setting, option, name or spec that cannot be used as written (unknown key, wrong type, out of range)."""


class DataError(UserError, ValueError):
    """Input data that cannot be used as given (corrupt file, wrong schema, missing rows or columns)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or an earlier stage should have written) does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output folder already holds results that would be overwritten."""
