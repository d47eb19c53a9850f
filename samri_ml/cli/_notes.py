"""The notes a command prints (``<command>: note: ...``), kept for what outlives the terminal.

``samri_ml-register`` said what it left out or changed (no TR in a sidecar, a header without
orientation, skipped participants, ``.bidsignore``...) on the terminal only: on a cluster
that is a log file deleted with the job, and the HTML reports read later said nothing. A run
keeps its notes (:func:`keeping_notes`); each subject's report shows those that name its files,
``index.html`` the others, and ``OUTPUT_DIR/log/notes.txt`` (:func:`write_notes_log`; a run
of some subjects' ``log/notes_sub-02.txt``) holds them all, as printed. Each run replaces
them: a rerun's notes are its own.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

#: a ``sub-<label>`` in a file's name or path, or in a note's text, and the rest of its path
#: component (up to a ``/`` or a space)
_SUBJECT = re.compile(r"(?<![A-Za-z0-9])sub-([a-zA-Z0-9]+)(?=([^/\s]*)(/?))")


def subjects_named(text: str, roots: Iterable = ()) -> set[str]:
    """The subjects (labels without ``sub-``) that ``text`` names: a BIDS folder
    ``sub-<label>/``, a file name ``sub-<label>_…`` (or ``.html``...), a word ``sub-<label>``;
    not a folder whose name only starts so (``/data/sub-01_study/``, ``sub-01-old/``), nor
    anything in ``roots`` (BIDS_DIR, OUTPUT_DIR, the work dir: where a dataset lies names no
    subject of it). Each path component counted alone: a dataset under ``/data/sub-01_study``
    had every note of its own filed under sub-01."""
    for root in sorted({str(r).rstrip("/") for r in roots if str(r).strip("/")}, key=len,
                       reverse=True):
        text = re.sub(re.escape(root) + r"(?=/|\s|$|[:;,)'\"])", "", text)
    return {label for label, rest, folder in _SUBJECT.findall(text)
            if not rest.startswith("-") and not (rest and folder)}


#: where a run's notes are written, relative to OUTPUT_DIR (``log/`` is in its .bidsignore)
NOTES_LOG = Path("log") / "notes.txt"


class Note(str):
    """A note's text, with the subjects (labels without ``sub-``) whose files it concerns:
    those its text names and those of the files in ``about`` (a note naming the first 3 of
    many runs concerns them all)."""

    #: the note's text and the files it is about, whose subjects :meth:`subjects_below` tells
    sources: tuple[str, ...]

    def __new__(cls, text: str, about: Iterable = ()) -> Note:
        note = super().__new__(cls, text)
        note.sources = tuple(dict.fromkeys((*getattr(text, "sources", (str(text),)),
                                            *map(str, about))))
        return note

    @property
    def subjects(self) -> frozenset[str]:
        """The subjects this note concerns, wherever the run's folders lie."""
        return frozenset(self.subjects_below())

    def subjects_below(self, roots: Iterable = ()) -> set[str]:
        """The subjects this note concerns, ``roots`` (the run's folders) left out of its
        text and files (:func:`subjects_named`)."""
        roots = tuple(roots)
        return {label for item in self.sources for label in subjects_named(item, roots)}


_kept: list[Note] | None = None


@contextmanager
def keeping_notes():
    """Keep the notes said in the block (a run's own: none of an earlier run in the same
    process); yields the list they go into."""
    global _kept
    before, _kept = _kept, []
    try:
        yield _kept
    finally:
        _kept = before


def kept_notes() -> list[Note]:
    """The notes said in :func:`keeping_notes`' block (none where nothing keeps them)."""
    return list(_kept or [])


def note(prog: str, text: str, about: Iterable = ()) -> None:
    """Print ``<prog>: note: <text>`` on stderr; where notes are kept, keep it (once: the same
    note said again, e.g. of a scan read again by a step, is not printed again either)."""
    if _kept is not None:
        if text in _kept:
            return
        _kept.append(Note(text, about))
    print(f"{prog}: note: {text}", file=sys.stderr)


def notes_of(notes: Iterable[Note], subjects: Iterable[str], roots: Iterable = ()
             ) -> tuple[dict[str, list[str]], list[str]]:
    """``notes`` split into those of each of ``subjects`` (a note naming two subjects is each
    one's) and the others, the dataset's (a note that names no subject, or only subjects
    outside ``subjects``: a participant skipped has no report). ``roots``: the run's folders
    (BIDS_DIR, OUTPUT_DIR...), whose own names name no subject (:func:`subjects_named`)."""
    subjects = list(subjects)
    roots = tuple(roots)
    by_subject: dict[str, list[str]] = {s: [] for s in subjects}
    rest = []
    for item in notes:
        named = (item if isinstance(item, Note) else Note(item)).subjects_below(roots)
        mine = [s for s in subjects if s in named]
        for subject in mine:
            by_subject[subject].append(str(item))
        if not mine:
            rest.append(str(item))
    return {s: n for s, n in by_subject.items() if n}, rest


def write_notes_log(output_dir, prog: str, notes: Iterable[str], *, started: float,
                    command: str | None = None, end: str | None = None,
                    where=NOTES_LOG) -> Path:
    """``OUTPUT_DIR/log/notes.txt`` (``where``, relative to OUTPUT_DIR: a run of a selection
    of subjects has a log of its own, ``log/notes_sub-02.txt``): the run's notes, one per
    line as printed, under a line with the run's start and command, and ``end``, how the run
    ended, last; replaced by each such run (a run without notes says so)."""
    import datetime

    from samri_ml.bids import atomic_write_text

    when = datetime.datetime.fromtimestamp(started).astimezone()
    head = [f"# {prog}: the notes of the run started {when:%Y-%m-%d %H:%M:%S %Z}"]
    if command:
        head.append(f"# {command}")
    lines = [f"{prog}: note: {text}" for text in notes] or [f"{prog}: no notes"]
    if end:
        lines.append(f"# {prog}: {end}")
    path = Path(output_dir) / where
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text("\n".join(head + lines) + "\n", path)
