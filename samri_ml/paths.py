"""Where things are: the real data used for training, validation and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """``$SAMRI_ML_SHARED_DATA``, else ``../shared/data`` beside the repository.

    The real data is read from there and never copied into the project.
    """
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("SAMRI_ML_SHARED_DATA", repo.parent / "shared" / "data"))
