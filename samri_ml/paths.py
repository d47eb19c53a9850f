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


def existing_data_dir(given=None, option: str = "--data-dir") -> Path:
    """The real-data folder of a command's ``--data-dir`` (else :func:`shared_data_dir`), or a
    :class:`~samri_ml.errors.SamriMLError` saying where it was looked for; ``option``: the
    command's option that stands in for the folder (named in the hint).

    From an installed package the default, ``../shared/data`` beside the repository, is a
    folder beside ``site-packages``; the message named that path and hinted at ``--data-dir``
    only, not ``SAMRI_ML_SHARED_DATA``.
    """
    from samri_ml.errors import SamriMLError

    path = Path(given) if given else shared_data_dir()
    if path.is_dir():
        return path
    if given:
        where = f"{option} {path}"
    elif "SAMRI_ML_SHARED_DATA" in os.environ:
        where = f"SAMRI_ML_SHARED_DATA={path}"
    else:
        where = f"{path} (the default: ../shared/data beside a source checkout)"
    raise SamriMLError(f"{where}: data folder not found; hint: pass {option} DIR or set "
                       "SAMRI_ML_SHARED_DATA")
