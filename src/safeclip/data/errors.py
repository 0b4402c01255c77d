"""Errors for bad dataset input: each names the file, the row and the fix (:class:`safeclip.errors.DataError`)."""

from safeclip.errors import DataError

__all__ = ["DataError"]
