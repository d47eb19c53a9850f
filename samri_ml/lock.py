"""One run at a time per output folder and per work dir (an advisory lock that dies with its
process)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from samri_ml.errors import SamriMLError


def _busy(fd: int, folder: Path, what: str) -> SamriMLError:
    """The error for a folder whose lock (open as ``fd``) another run holds; names its pid."""
    other = os.read(fd, 64).decode(errors="replace").strip() or "?"
    if what == "OUTPUT_DIR":
        return SamriMLError(f"another samri_ml run (pid {other}) is writing to {folder}; "
                            "hint: wait for it, or use another OUTPUT_DIR")
    return SamriMLError(f"another samri_ml run (pid {other}) is using the work dir {folder}; "
                        f"hint: wait for it, or give another {what}")


class OutputLock:
    """Hold ``OUTPUT_DIR/.samri_ml.lock`` (or the work dir's) for the duration of a run.

    A second run on the same folder refuses at once with a clear message, instead of two runs
    writing the same derivatives (or the same Nipype node folders: two runs sharing a ``-w``
    crashed each other). The lock is released by the kernel if the process is killed, so an
    interrupted run never blocks the next one. ``what`` names the folder in the message
    (``OUTPUT_DIR`` or the work dir's option, ``-w``).
    """

    def __init__(self, folder, what: str = "OUTPUT_DIR"):
        self.path = Path(folder) / ".samri_ml.lock"
        self.what = what
        self._fd = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            try:
                busy = _busy(self._fd, self.path.parent, self.what)
            finally:
                os.close(self._fd)
            raise busy from err
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    @staticmethod
    def check(folder, what: str = "OUTPUT_DIR") -> None:
        """Refuse, as :meth:`__enter__` would, where a live run holds ``folder``'s lock, but
        create nothing and take nothing (for ``--dry-run``)."""
        path = Path(folder) / ".samri_ml.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise _busy(fd, path.parent, what) from err
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        return False
