"""Errors for bad dataset input: each names the file, the row and the fix."""


class DataError(ValueError):
    """Input data that cannot be used as given (missing file, corrupt image, wrong schema)."""
