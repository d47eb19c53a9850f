"""One run at a time per output folder and per work dir (an advisory lock that dies with its
process)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from samri_ml.errors import SamriMLError

#: the lock's file name in the folder it keeps
LOCK_NAME = ".samri_ml.lock"


def _busy(fd: int, folder: Path, what: str) -> SamriMLError:
    """The error for a folder whose lock (open as ``fd``) another run holds; names its pid."""
    other = os.read(fd, 64).decode(errors="replace").strip() or "?"
    if what == "-w":
        return SamriMLError(f"another samri_ml run (pid {other}) is using the work dir "
                            f"{folder}; hint: wait for it, or give another {what}")
    return SamriMLError(f"another samri_ml run (pid {other}) is writing to {folder}; "
                        f"hint: wait for it, or use another {what}")


def _names_it(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed, nor made anew)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


class OutputLock:
    """Hold ``OUTPUT_DIR/.samri_ml.lock`` (or the work dir's) for the duration of a run.

    A second run on the same folder refuses at once with a clear message, instead of two runs
    writing the same derivatives (or the same Nipype node folders: two runs sharing a ``-w``
    crashed each other). The lock is released by the kernel if the process is killed, so an
    interrupted run never blocks the next one. ``what`` names the folder in the message: the
    work dir's option, ``-w``, or the folder's argument or option (``OUTPUT_DIR``, ``--out``).
    ``remove``: the lock file is removed when the run ends, for the folders of commands other
    than ``samri_ml-register`` (a data set, a folder of masks or tables, which had no such
    file); one that a killed run left behind is taken over by the next run.
    """

    def __init__(self, folder, what: str = "OUTPUT_DIR", *, remove: bool = False):
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self.remove = remove
        self._fd = None

    def __enter__(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                try:
                    busy = _busy(fd, self.path.parent, self.what)
                finally:
                    os.close(fd)
                raise busy from err
            if _names_it(self.path, fd):
                break
            # removed (``remove``) by the run that held it between this open and the lock:
            # a lock on that file keeps nothing out, the next run makes a new one
            os.close(fd)
        self._fd = fd
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    @staticmethod
    def check(folder, what: str = "OUTPUT_DIR") -> None:
        """Refuse, as :meth:`__enter__` would, where a live run holds ``folder``'s lock, but
        create nothing and take nothing (for ``--dry-run``)."""
        path = Path(folder) / LOCK_NAME
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
        if self.remove:  # while held: a run that opened it meanwhile sees it gone
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        return False


@contextmanager
def holding(folder, what: str) -> Iterator[Path]:
    """``folder``, created where missing, locked for the block (:class:`OutputLock`, its file
    removed at the end); the folders made here are removed again where the block left them
    empty, so that a run refused inside it leaves no folder behind."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with OutputLock(folder, what, remove=True):
            yield folder
    finally:
        for path in made:
            try:
                path.rmdir()  # only where empty: another run's files are never touched
            except OSError:
                break
