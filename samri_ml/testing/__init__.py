"""Helpers for samri_ml's own tests and CI (a local SLURM cluster, a fake PBS); not needed at run
time."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def read_only_folder(path):
    """Create the folder ``path`` and make it unwritable for the block: ``chmod a-w``, or, for
    root (who ignores the mode bits), ``chattr +i``; the test is skipped where neither works."""
    import pytest

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    if root and (shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode != 0):
        pytest.skip("root ignores permissions and chattr +i is not supported here")
    if not root:
        path.chmod(0o555)
    try:
        yield path
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        else:
            path.chmod(0o755)


def colour_pixels(png, colour: str, tolerance: int = 40) -> int:
    """How many pixels of the picture ``png`` are within ``tolerance`` (per channel, 0-255) of
    ``colour`` (``#rrggbb``): whether an outline of that colour was drawn."""
    import cv2
    import numpy as np

    bgr = cv2.imread(str(png))
    if bgr is None:
        raise AssertionError(f"{png}: not a readable picture")
    want = np.array([int(colour[i:i + 2], 16) for i in (5, 3, 1)])  # OpenCV's BGR order
    return int((np.abs(bgr.astype(int) - want) <= tolerance).all(-1).sum())


def file_size_limit(limit: int):
    """A ``preexec_fn`` for :mod:`subprocess`: the child's files may not grow past ``limit``
    bytes, and a write beyond fails with EFBIG (SIGXFSZ ignored), as a full disk or a quota
    fails one; a real failure of the operating system, without a tmpfs to mount."""

    def limit_files():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files
