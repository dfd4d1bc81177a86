"""Errors of the admin tool; each maps to an exit code (bad input 2, server failure 1)."""

from __future__ import annotations


class AdminError(Exception):
    """Base; `str(err)` is one line for the operator."""

    exit_code = 1


class AdminInputError(AdminError):
    """Bad flags, unreadable files, invalid policy: the operator must fix the input."""

    exit_code = 2


class AdminServerError(AdminError):
    """The server could not be reached or refused the request (carries its error message)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        # A 4xx means the request itself was wrong (bad token, stale version): like bad input.
        self.exit_code = 2 if status_code is not None and 400 <= status_code < 500 else 1
