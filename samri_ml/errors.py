"""Errors a user should see as one line (cause and hint), never as a traceback."""


class SamriMLError(Exception):
    """A failure with a one-line, user-facing cause (and, after a colon or 'hint:', a fix)."""
