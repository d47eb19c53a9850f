"""Errors a user should see as one line (cause and hint), never as a traceback."""

import errno
import os

#: the errors of a write that found no room: a full disk, the user's quota, a file size
#: limit (the fix is room, not a change to the command)
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: how the operating system words them ("No space left on device", ...), as a failed step's
#: crash file quotes them
FULL_DISK_CAUSES = tuple(os.strerror(code) for code in FULL_DISK_ERRNOS)


class SamriMLError(Exception):
    """A failure with a one-line, user-facing cause (and, after a colon or 'hint:', a fix)."""


class SamriMLNote(UserWarning):
    """Something left out or changed that a user should know of (a warning, not an error):
    the commands show it as one ``<command>: note: ...`` line."""


class MaskVolumeNote(SamriMLNote):
    """:class:`~samri_ml.interfaces.MaskBrain`'s note on a mask whose volume no mouse brain
    has (:func:`samri_ml.masks.brain_volume_note`): ``samri_ml-register`` says it from the
    run's own process instead, after the steps, and leaves the nodes' out by this class."""


class SamriMLValueError(SamriMLError, ValueError):
    """Bad input values to a samri_ml function: a one-line cause (and hint) like any
    :class:`SamriMLError`, and still a ``ValueError``, which these functions raised before (code
    that catches that keeps working)."""
