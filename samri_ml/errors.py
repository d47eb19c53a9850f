"""Errors a user should see as one line (cause and hint), never as a traceback."""


class SamriMLError(Exception):
    """A failure with a one-line, user-facing cause (and, after a colon or 'hint:', a fix)."""


class SamriMLNote(UserWarning):
    """Something left out or changed that a user should know of (a warning, not an error):
    the commands show it as one ``<command>: note: ...`` line."""


class SamriMLValueError(SamriMLError, ValueError):
    """Bad input values to a samri_ml function: a one-line cause (and hint) like any
    :class:`SamriMLError`, and still a ``ValueError``, which these functions raised before (code
    that catches that keeps working)."""
