"""Helpers for samri_ml's own tests and CI (a local SLURM cluster); not needed at run time."""

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
