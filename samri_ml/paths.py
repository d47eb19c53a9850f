"""Where things are: the real data used for training, validation and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

#: where the commands look for the real data unless told, as their --help says it: a pip
#: install has no ``../shared/data`` (it used to name that alone, a folder beside the source)
DATA_DIR_DEFAULT = "$SAMRI_ML_SHARED_DATA, else ../shared/data beside a source checkout"


def shared_data_dir() -> Path:
    """``$SAMRI_ML_SHARED_DATA``, else ``../shared/data`` beside the repository.

    The real data is read from there and never copied into the project. An empty variable
    (``SAMRI_ML_SHARED_DATA= cmd``, ``export SAMRI_ML_SHARED_DATA=$UNSET``) counts as unset:
    it was the current folder ("no scans with masks found under .").
    """
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("SAMRI_ML_SHARED_DATA") or repo.parent / "shared" / "data")


def existing_data_dir(given=None, option: str | None = "--data-dir") -> Path:
    """The real-data folder of a command's ``--data-dir`` (else :func:`shared_data_dir`), or a
    :class:`~samri_ml.errors.SamriMLError` saying where it was looked for; ``option``: the
    command's option that stands in for the folder (named in the hint; None: a script without
    one, e.g. the benchmarks, whose hint names ``SAMRI_ML_SHARED_DATA`` alone).

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
    elif os.environ.get("SAMRI_ML_SHARED_DATA"):
        where = f"SAMRI_ML_SHARED_DATA={path}"
    else:
        where = f"{path} (the default: ../shared/data beside a source checkout)"
    how = f"pass {option} DIR or set" if option else "set"
    raise SamriMLError(f"{where}: data folder not found; hint: {how} SAMRI_ML_SHARED_DATA")


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/samri_ml/<parts>``, else ``~/.cache/samri_ml/<parts>``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification says. A user without a
    home folder (no ``HOME`` and no password entry: a container's bare uid) gets a
    :class:`~samri_ml.errors.SamriMLError` that says how to name one.
    """
    from samri_ml.errors import SamriMLError

    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg, "samri_ml", *parts)
    try:
        return Path.home().joinpath(".cache", "samri_ml", *parts)
    except RuntimeError as err:  # Path.home(): "Could not determine home directory."
        raise SamriMLError("no home folder for the cache; hint: pass --cache-dir DIR or set "
                           "XDG_CACHE_HOME") from err


def writable_cache(path: Path) -> Path:
    """``path``, created where missing; a :class:`~samri_ml.errors.SamriMLError` naming it
    where it cannot be (a read-only or missing home folder: the registration's worker died
    with a traceback)."""
    from samri_ml.errors import SamriMLError

    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as err:
        raise SamriMLError(f"cannot write the cache folder {path} ({err.strerror}); hint: pass "
                           "--cache-dir DIR or set XDG_CACHE_HOME to a writable folder") from err
    return path


def _writable_dir(path: Path) -> bool:
    """Whether the folder ``path`` could be written, or made and written (nothing is made).
    A folder that cannot be looked into is not writable (``Path.exists`` raised
    ``PermissionError`` under a home of mode 700 owned by another user, e.g. ``docker run -u
    1000`` with ``HOME=/root``: every command stopped with that traceback)."""
    try:
        while not path.exists():
            if path.parent == path:
                return False
            path = path.parent
        return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
    except OSError:
        return False


def quiet_config_dirs() -> None:
    """Before matplotlib's and Keras' import (TensorFlow, ANTs and Nipype import matplotlib):
    where ``MPLCONFIGDIR`` is unset and matplotlib's own folders (``$XDG_CONFIG_HOME`` or
    ``~/.config``, ``$XDG_CACHE_HOME`` or ``~/.cache``, each ``/matplotlib``) cannot be
    written, point it at a temporary folder removed at exit; the same for ``KERAS_HOME`` where
    there is no home folder at all (no ``HOME`` and no password entry).

    Matplotlib makes such a folder itself, but with a two-line warning ("mkdir -p failed ...
    it is highly recommended to set the MPLCONFIGDIR environment variable") on every command
    run with a read-only or missing home folder (cluster nodes, containers). Keras, without a
    home, made a folder literally named ``~`` (``~/.keras/keras.json``) in the current folder,
    which may be the BIDS dataset.
    """
    import sys

    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no password entry
        home = None
    matplotlib = not os.environ.get("MPLCONFIGDIR") and "matplotlib" not in sys.modules
    if matplotlib:
        for variable, default in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache")):
            value = os.environ.get(variable, "")
            base = Path(value) if os.path.isabs(value) else home / default if home else None
            if base is None or not _writable_dir(base / "matplotlib"):
                break
        else:
            matplotlib = False
    keras = home is None and "KERAS_HOME" not in os.environ and "keras" not in sys.modules
    if not (matplotlib or keras):
        return
    import atexit
    import shutil
    import tempfile

    try:
        folder = tempfile.mkdtemp(prefix="samri_ml-config-")
    except OSError:  # no writable temporary folder either: matplotlib says so itself
        return
    atexit.register(shutil.rmtree, folder, True)
    if matplotlib:
        os.environ["MPLCONFIGDIR"] = os.path.join(folder, "matplotlib")
    if keras:
        os.environ["KERAS_HOME"] = os.path.join(folder, "keras")


def interrupted_path(out_path) -> Path:
    """Where an interrupted command keeps what it made of OUT: ``OUT_interrupted.keras`` (a
    training run whose OUT holds a finished model), ``OUT_interrupted.json`` (the sections
    ranked before ``samri_ml-identify-plate --json OUT.json`` was stopped)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + "_interrupted" + out_path.suffix)


#: the longest file name (bytes) of the file systems labs use (ext4, XFS, NTFS, APFS)
NAME_MAX = 255


def file_name_with(name: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``name + suffix``, or, where that is longer than ``limit`` bytes (as the file system
    stores them, :func:`os.fsencode`), the start of ``name`` with ``~`` and 8 hexadecimal
    digits of its hash before ``suffix``: an output named after an input of a 250-byte name (a
    slide scanner's) could not be written (``File name too long``), and two long names cut
    alike keep two files. A name that is not UTF-8 (``sec\\xe9.png``, Latin-1 from a Windows
    share: Python holds its byte as a surrogate) is counted and cut by its bytes too (it ended
    in a UnicodeEncodeError: no montage, no JSON)."""
    import hashlib

    full = name + suffix
    if len(os.fsencode(full)) <= limit:
        return full
    tag = "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
    room = limit - len((tag + suffix).encode())
    if room < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a name")
    start = os.fsencode(name)[:room].decode(errors="ignore")  # never half a character
    return start + tag + suffix
