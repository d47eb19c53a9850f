"""Shared fixtures: where the real data is, and a small example dataset built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from samri_ml.paths import shared_data_dir

SHARED_DATA = shared_data_dir()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SAMRI_ML_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory):
    """The user's cache (``$XDG_CACHE_HOME``: the atlas indexes ``--atlas`` and
    ``IdentifyPlate``'s ``atlas_dir`` keep) in a folder of the test session's, the commands
    the tests start included: a test neither writes into ``~/.cache`` nor finds what an
    earlier session left there."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session", autouse=True)
def _ants_on_path():
    from samri_ml.ants import ensure_ants_on_path

    ensure_ants_on_path()


@pytest.fixture(scope="session")
def example_dataset(tmp_path_factory) -> Path:
    """The project's own example BIDS dataset (2 subjects, short runs), built once."""
    from samri_ml.example import write_example_dataset

    out = tmp_path_factory.mktemp("example") / "bids"
    write_example_dataset(out, n_subjects=2, n_volumes=14, seed=0)
    return out


@pytest.fixture
def sigint_as_in_a_terminal():
    """SIGINT raises KeyboardInterrupt, as in a terminal, whatever started pytest: a job that
    a non-interactive shell puts in the background ignores SIGINT, and so do its children."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
