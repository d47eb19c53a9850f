"""One run at a time per output folder (an advisory lock that dies with its process)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from samri_ml.errors import SamriMLError


class OutputLock:
    """Hold ``OUTPUT_DIR/.samri_ml.lock`` for the duration of a run.

    A second run on the same folder refuses at once with a clear message, instead of two runs
    writing the same derivatives. The lock is released by the kernel if the process is killed,
    so an interrupted run never blocks the next one.
    """

    def __init__(self, folder):
        self.path = Path(folder) / ".samri_ml.lock"
        self._fd = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            try:
                other = os.read(self._fd, 64).decode(errors="replace").strip() or "?"
            finally:
                os.close(self._fd)
            raise SamriMLError(
                f"another samri_ml run (pid {other}) is writing to {self.path.parent}; "
                "hint: wait for it, or use another OUTPUT_DIR") from err
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        return False
