"""BIDS naming, derivatives layout and atomic writes (pure Python, no pybids needed)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path

#: raw-entity order of the BIDS specification (1.9; the derivative entities space, res, den,
#: label, desc... are added by the caller)
ENTITY_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc",
                "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc",
                "hemi", "split", "recording", "chunk")
#: pybids' names of the entities whose BIDS key differs (``-s '{"acq": "fast"}'`` was
#: refused by pybids, "'acq' is not a recognized entity")
PYBIDS_NAMES = {"sub": "subject", "ses": "session", "acq": "acquisition", "nuc": "nucleus",
                "voi": "volume", "ce": "ceagent", "trc": "tracer", "stain": "staining",
                "rec": "reconstruction", "dir": "direction", "mod": "modality"}
#: the raw entities that the specification puts after ``space``
AFTER_SPACE = ("split", "recording", "chunk")
_ENTITY = re.compile(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9]+)")


def parse_entities(path) -> dict:
    """Entities, suffix, datatype and extension of a BIDS file name.

    >>> parse_entities("sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz")["task"]
    'rest'
    """
    path = Path(path)
    name = path.name
    ext = "".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix
    stem = name[: len(name) - len(ext)] if ext else name
    parts = stem.split("_")
    out = {k: v for k, v in _ENTITY.findall(stem)}
    out["suffix"] = parts[-1] if "-" not in parts[-1] else ""
    out["extension"] = ext
    out["datatype"] = path.parent.name if path.parent.name in ("anat", "func", "dwi", "fmap", "perf") else ""
    return out


def is_label(value) -> bool:
    """Whether ``value`` is a BIDS label (letters and digits only: what follows ``key-`` in a
    file name, as ``Phantom`` in ``space-Phantom``)."""
    return isinstance(value, str) and re.fullmatch(r"[a-zA-Z0-9]+", value) is not None


def dataset_root(path) -> Path | None:
    """The BIDS dataset ``path`` (a raw file) lies in: the folder above its innermost
    ``sub-<label>`` folder; None where it lies in none (a file given from Python outside a
    dataset)."""
    path = Path(path)
    label = parse_entities(path).get("sub")
    if not label:
        return None
    for folder in path.parents:
        if folder.name == f"sub-{label}":
            return folder.parent
    return None


def raw_source_uri(path) -> str | None:
    """``path`` as a BIDS URI into the raw dataset (``bids:raw:sub-01/ses-1/anat/...``, the
    ``raw`` link of the derivatives' ``DatasetLinks``), for a sidecar's ``Sources``; None where
    it lies in no dataset (:func:`dataset_root`).

    >>> raw_source_uri("/data/study/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz")
    'bids:raw:sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz'
    """
    root = dataset_root(path)
    return None if root is None else "bids:raw:" + Path(path).relative_to(root).as_posix()


def name_folder_mismatch(path, bids_dir) -> str | None:
    """What is wrong where a raw file's name and its folders disagree, or None: a name without
    ``sub-<label>`` (``sub-05/anat/T2w.nii.gz``), or a ``sub-``/``ses-`` label other than its
    folder's (``sub-06/anat/sub-6_T2w.nii.gz``; a file copied from another subject's folder).
    Its derivatives are named from its name, so they went to another subject's folder (where
    they replaced that subject's) or could not be named.

    >>> name_folder_mismatch("/d/sub-02/anat/sub-01_T2w.nii.gz", "/d")
    'its name says sub-01, its folder sub-02'
    """
    rel = Path(path).relative_to(bids_dir) if Path(path).is_relative_to(bids_dir) else Path(path)
    folders = {m.group(1): m.group(2) for part in rel.parts[:-1]
               if (m := re.fullmatch(r"(sub|ses)-([a-zA-Z0-9]+)", part))}
    ent = parse_entities(path)
    if not ent.get("sub"):
        return "not a BIDS file name (no sub-<label> entity)"
    for key in ("sub", "ses"):
        if ent.get(key) != folders.get(key) and (key in folders or key in ent):
            if key not in ent:
                return f"its name has no {key}- label, its folder is {key}-{folders[key]}"
            if key not in folders:
                return f"its name says {key}-{ent[key]}, but it is in no {key}- folder"
            return f"its name says {key}-{ent[key]}, its folder {key}-{folders[key]}"
    return None


def derivative_path(
    out_dir, source, *, suffix=None, extension=None, datatype=None, **extra
) -> Path:
    """Where a derivative of ``source`` goes: ``out_dir/sub-X[/ses-Y]/<datatype>/<name>``.

    ``extra`` entities (``space``, ``desc``, ``from_``, ``to``, ``mode``...) follow the raw
    entities in the given order, but for ``space``, which goes where the specification puts it
    (before ``split``, ``recording`` and ``chunk``); a trailing underscore in a key is dropped
    (``from_`` -> ``from``).
    """
    ent = parse_entities(source)
    if not ent.get("sub"):
        from samri_ml.errors import SamriMLError

        raise SamriMLError(f"{source}: not a BIDS file name (no sub-<label> entity), so its "
                           "derivatives cannot be named; hint: give the raw BIDS file it derives "
                           "from as source_file, e.g. sub-01_ses-1_T2w.nii.gz")
    extra = {k.rstrip("_"): v for k, v in extra.items() if v}
    values = {k: ent[k] for k in ENTITY_ORDER if k in ent}
    if "space" in extra:  # before split/recording/chunk, as the specification orders them
        values["space"] = extra.pop("space")
    order = [k for k in ENTITY_ORDER if k not in AFTER_SPACE] + ["space", *AFTER_SPACE]
    parts = [f"{k}-{values[k]}" for k in order if k in values]
    # entities this list does not know are kept too (in the source's order), so that two
    # sources never share a derivative name
    known = {*ENTITY_ORDER, "suffix", "extension", "datatype", *values, *extra}
    parts += [f"{k}-{v}" for k, v in ent.items() if k not in known]
    parts += [f"{k}-{v}" for k, v in extra.items()]
    suffix = ent["suffix"] if suffix is None else suffix
    if suffix:
        parts.append(suffix)
    ext = ent["extension"] if extension is None else extension
    folder = Path(out_dir) / f"sub-{ent['sub']}"
    if "ses" in ent:
        folder = folder / f"ses-{ent['ses']}"
    datatype = ent["datatype"] if datatype is None else datatype
    if datatype:
        folder = folder / datatype
    return folder / ("_".join(parts) + ext)


def _temporary_prefix(name: str, suffix: str = "") -> str:
    """``.NAME.``, the hidden prefix of a temporary file beside ``NAME``, cut where the
    temporary name (with ``tempfile``'s 8 random characters and ``suffix``) would pass the
    file system's limit: an output of a 250-byte name that fits could not be written
    (``File name too long`` for its temporary file). The name's bytes as the file system
    stores them (:func:`os.fsencode`): one that is not UTF-8 (a Latin-1 byte) could not be
    written (UnicodeEncodeError)."""
    from samri_ml.paths import NAME_MAX

    room = NAME_MAX - len(suffix.encode()) - 8 - 2  # the random part, the two dots
    return "." + os.fsencode(name)[:room].decode(errors="ignore") + "."


@contextmanager
def atomic_target(dst: Path, suffix: str = "", *, replace: bool = True):
    """Yield a temporary path beside ``dst`` (ending in ``suffix``, e.g. ``.nii.gz`` for a
    writer that picks its format by the name); rename it onto ``dst`` if the block succeeds.

    The rename is atomic on one file system, so ``dst`` is never seen half-written; on failure
    the temporary file is removed. ``dst`` gets the mode ``open()`` would give it: an existing
    file's own, a new one ``0o666`` less the umask (:func:`current_umask`; ``mkstemp`` makes
    the temporary file ``0o600``). With ``replace=False`` a ``dst`` that exists by then (made
    by another process since the caller looked) is kept and ``FileExistsError`` raised
    (:func:`_place_new`).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(dst.name, suffix), suffix=suffix,
                               dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            mode = stat.S_IMODE(os.stat(dst).st_mode) if dst.is_file() else None
        except OSError:
            mode = None
        os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
        if replace:
            os.replace(tmp, dst)
        else:
            _place_new(Path(tmp), dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _place_new(tmp: Path, dst: Path) -> None:
    """Give ``tmp`` the name ``dst`` where no file has it; ``FileExistsError`` where one has
    (``os.replace`` would replace it). A hard link is made and checked in one step, so of two
    processes that both found no ``dst`` only one writes it; on a file system without hard
    links, the check and the rename are two steps."""
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE file systems)
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        os.replace(tmp, dst)
        return
    tmp.unlink()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (``Umask:`` in
    ``/proc/self/status``); elsewhere set and reset at once (``os.umask`` has no read-only
    form; another thread creating a file in between would get mode 0o022's files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_copy(src, dst, *, skip_identical: bool = True) -> Path:
    """Copy ``src`` to ``dst`` so that ``dst`` is never seen half-written (temp file + rename).

    Where ``dst`` already holds the same bytes (``skip_identical``), nothing is written: a rerun
    that changes nothing keeps its derivatives' modification times, which Nipype's default
    (timestamp) hashing reads, so that a lab's downstream workflow does not recompute. A
    missing or different ``dst`` is (re)written.
    """
    dst = Path(dst)
    if skip_identical and same_content(src, dst):
        return dst
    with atomic_target(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def same_content(src, dst) -> bool:
    """Whether ``dst`` is a file with the bytes of ``src`` (compared byte by byte, not by size
    and time; False where either is missing)."""
    import filecmp

    try:
        filecmp.clear_cache()  # its cache is keyed by size and mtime, which may not move
        return Path(dst).is_file() and filecmp.cmp(src, dst, shallow=False)
    except OSError:
        return False


def atomic_write_text(text: str, dst, *, skip_identical: bool = False) -> Path:
    """Write text (UTF-8) to ``dst`` atomically (:func:`atomic_write_bytes`)."""
    return atomic_write_bytes(text.encode(), dst, skip_identical=skip_identical)


def atomic_write_bytes(data: bytes, dst, *, skip_identical: bool = False) -> Path:
    """Write ``data`` to ``dst`` atomically (``skip_identical``: not where it holds them
    already, keeping its modification time)."""
    dst = Path(dst)
    if skip_identical:
        try:
            if dst.is_file() and dst.read_bytes() == data:
                return dst
        except OSError:
            pass
    with atomic_target(dst) as tmp:
        tmp.write_bytes(data)
    return dst


@contextmanager
def atomic_folder(dst):
    """Yield a new temporary folder beside the folder ``dst`` to write files into; if the block
    succeeds, move them into ``dst`` (created where missing, its other files kept), one rename
    each. On failure ``dst`` is left as it was and the temporary folder is removed."""
    dst = Path(dst).resolve()  # beside the real folder: one file system, renames are atomic
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(dst.name), dir=dst.parent))
    try:
        yield tmp
        dst.mkdir(exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, dst / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_dataset_description(out_dir, source_dir, version: str, command: str) -> Path:
    """BIDS-Derivatives ``dataset_description.json`` with ``GeneratedBy``.

    ``GeneratedBy`` keeps the entries of earlier runs into the same folder (other subjects'
    derivatives may come from other options; each run used to replace the list with its own
    command), each distinct command once, this run's last. No ``CodeURL``: samri_ml is not
    published at an address of its own yet (the PyPI page it named does not exist)."""
    this = {"Name": "samri_ml", "Version": version, "Description": command}
    path = Path(out_dir) / "dataset_description.json"
    earlier = []
    try:
        old = json.loads(path.read_text()).get("GeneratedBy", [])
        # one entry written as an object (not BIDS' list) is kept; a number or a string, not
        # (a number stopped the run with a TypeError, an object lost its entry)
        old = [old] if isinstance(old, dict) else old if isinstance(old, list) else []
        # an entry of an older samri_ml that named a CodeURL is this run's all the same
        earlier = [g for g in old if isinstance(g, dict) and {k: g.get(k) for k in this} != this]
    except (OSError, ValueError, AttributeError):  # none yet, or not ours to keep
        pass
    desc = {
        "Name": "samri_ml registration",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [*earlier, this],
    }
    if source_dir is not None:
        source = Path(source_dir).resolve().as_uri()
        desc["SourceDatasets"] = [{"URL": source}]
        # what the sidecars' ``Sources`` (``bids:raw:sub-01/...``) point into
        desc["DatasetLinks"] = {"raw": source}
    # a rerun of the same command leaves it as it is, mtime included (as the derivatives)
    return atomic_write_text(json.dumps(desc, indent=2) + "\n", path, skip_identical=True)


def write_bidsignore(out_dir, patterns) -> Path:
    """Add to ``out_dir/.bidsignore`` each of ``patterns`` (gitignore syntax) it lacks, its own
    lines kept (a lab's additions); one that holds them all is left as it is, modification
    time included. The BIDS validator then leaves those files out: files BIDS does not
    describe are its errors (``NOT_INCLUDED``)."""
    path = Path(out_dir) / ".bidsignore"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    have = {line.strip() for line in text.splitlines()}
    missing = [p for p in patterns if p not in have]
    if not missing:
        return path
    if text and not text.endswith("\n"):
        text += "\n"
    return atomic_write_text(text + "".join(f"{p}\n" for p in missing), path)


def output_bidsignore() -> tuple[str, ...]:
    """What OUTPUT_DIR holds that BIDS does not describe (yet), as ``.bidsignore`` lines: the
    reports and their pictures, crash files, the ANTs transforms (``_xfm.h5``) and the QC
    records, their tables and the tables' data dictionary."""
    from samri_ml.qc.metrics import QC_SUFFIX, QC_TABLE_DICTIONARY, QC_TABLE_SUFFIX

    return ("*.html", "figures", "log", "*_xfm.h5", f"*_{QC_SUFFIX}.json",
            f"*_{QC_TABLE_SUFFIX}.tsv", QC_TABLE_DICTIONARY)


def bidsignore_regex(line: str) -> re.Pattern | None:
    """One line of a ``.bidsignore`` (gitignore syntax, as the BIDS validator reads it) as a
    regular expression on a path relative to the dataset root with a leading ``/`` (how pybids
    matches its ``ignore`` patterns); None for a blank line, a comment or a negation (``!``,
    not supported: nothing is un-ignored).

    A pattern with a ``/`` before its end is anchored at the root, one without matches at any
    depth; a trailing ``/`` matches folders only; ``*`` and ``?`` stay within one path part,
    ``**`` spans parts, ``[0-9]`` and ``[!0-9]`` are classes of one character. A match
    covers everything below it.

    >>> bool(bidsignore_regex("*acq-scratch*").search("/sub-01/anat/sub-01_acq-scratch_T2w.nii"))
    True
    >>> bool(bidsignore_regex("/extra/").search("/sub-01/extra/x.nii"))
    False
    """
    line = line.rstrip("\n").rstrip()
    if not line or line.startswith(("#", "!")):
        return None
    folder_only = line.endswith("/")
    body = line.strip("/")
    if not body:
        return None
    anchored = "/" in line.rstrip("/")
    out = ""
    i = 0
    while i < len(body):
        if body.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif body.startswith("**", i):
            out += ".*"
            i += 2
        elif body[i] == "*":
            out += "[^/]*"
            i += 1
        elif body[i] == "?":
            out += "[^/]"
            i += 1
        elif body[i] == "[" and "]" in body[i + 2:]:
            # a class, [0-9] or [!a] (gitignore's): it was read as the letters '[0-9]'
            end = body.index("]", i + 2)
            inner = body[i + 1:end]
            negated = inner[:1] in ("!", "^")
            out += ("[^/" if negated else "[") + \
                inner[negated:].replace("\\", "\\\\").replace("[", "\\[") + "]"
            i = end + 1
        else:
            out += re.escape(body[i])
            i += 1
    start = "^/" if anchored else "(?:^|/)"
    return re.compile(start + out + ("/" if folder_only else "(?:/|$)"))


def bidsignore_patterns(bids_dir) -> list[re.Pattern]:
    """The patterns of ``bids_dir/.bidsignore`` (:func:`bidsignore_regex`); none where the
    file is absent or unreadable."""
    try:
        text = (Path(bids_dir) / ".bidsignore").read_text(errors="replace")
    except OSError:
        return []
    return [patt for patt in map(bidsignore_regex, text.splitlines()) if patt is not None]


def sidecar_path(path) -> Path:
    """The JSON sidecar of a data file: ``x_bold.nii.gz`` -> ``x_bold.json``."""
    path = Path(path)
    ext = parse_entities(path)["extension"]
    return path.with_name(path.name[: len(path.name) - len(ext)] + ".json")


def stale_files(out_dir, produced, sources, figures_drawn=None) -> list[Path]:
    """Files in the derivative folders of ``sources`` (raw BIDS files) that a run did not
    write: ``produced`` is what it wrote (data files; their JSON sidecars count as written).
    With ``figures_drawn`` (the pictures the reports drew, :data:`samri_ml.report.DRAWN`:
    a picture that held the same bytes is not rewritten, so its time tells nothing), also
    the files of the subjects' ``figures`` folders not among them.

    A rerun with other options (another ``-f``, ``--masking none`` after ``unet``) leaves the
    earlier run's derivatives beside the new ones; this names them (it deletes nothing).
    """
    produced = {Path(p).resolve() for p in produced}
    produced |= {sidecar_path(p) for p in produced}
    folders = {derivative_path(out_dir, src).parent.resolve() for src in sources}
    stale = [f for folder in folders if folder.is_dir() for f in folder.iterdir()
             if f.is_file() and not f.name.startswith(".") and f.resolve() not in produced]
    if figures_drawn is not None:
        drawn = {Path(p).resolve() for p in figures_drawn}
        # a subject's figures folder is shared by its sessions: only this run's sessions' own
        tags: dict[Path, set[str]] = {}
        for src in sources:
            ent = parse_entities(src)
            tag = f"sub-{ent['sub']}" + (f"_ses-{ent['ses']}" if "ses" in ent else "")
            tags.setdefault(Path(out_dir) / f"sub-{ent['sub']}" / "figures", set()).add(tag + "_")
        stale += [f for figures, prefixes in tags.items() if figures.is_dir()
                  for f in figures.iterdir()
                  if f.is_file() and f.name.startswith(tuple(prefixes))
                  and f.resolve() not in drawn]
    return sorted(stale)


#: a temporary file of :func:`atomic_target` beside a derivative or a report picture:
#: ``.NAME.`` + tempfile's 8 characters + a suffix that ends NAME (:func:`_is_temporary`)
_TEMPORARY = re.compile(r"^\.(sub-.+)\.[a-z0-9_]{8}((?:\.[A-Za-z0-9]+){0,2})$")


def _is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_target` beside a file of
    samri_ml's (``sub-…``): not a user's hidden file such as ``.backup.original.nii.gz``."""
    found = _TEMPORARY.match(name)
    return bool(found) and found.group(1).endswith(found.group(2))


def leftover_temporaries(out_dir, sources, before: float) -> list[Path]:
    """The temporary files (:func:`atomic_target`'s) written before ``before`` in the derivative
    folders of ``sources`` and their subjects' ``figures``: a run killed with SIGKILL (out of
    memory, a scheduler's limit) during a write leaves one, which nothing removed or named."""
    folders = {derivative_path(out_dir, src).parent for src in sources}
    folders |= {Path(out_dir) / f"sub-{parse_entities(src)['sub']}" / "figures"
                for src in sources}
    found = []
    for folder in folders:
        try:
            found += [f for f in folder.iterdir() if _is_temporary(f.name) and f.is_file()
                      and f.stat().st_mtime < before]
        except OSError:
            continue
    return sorted(found)


def old_figure_name(path) -> bool:
    """A report picture in a ``figures`` folder named as samri_ml's first release named them,
    the scan's suffix amid the entities (``sub-01_ses-1_T2w_desc-overview.png``; now
    ``sub-01_ses-1_desc-overview_T2w.png``, the suffix last): no report shows it any more.

    >>> old_figure_name("out/sub-01/figures/sub-01_ses-1_task-rest_bold_desc-mask.svg")
    True
    >>> old_figure_name("out/sub-01/figures/sub-01_ses-1_task-rest_desc-mask_bold.svg")
    False
    """
    path = Path(path)
    return path.parent.name == "figures" and \
        path.name.split(".")[0].rsplit("_", 1)[-1].startswith("desc-")


def old_qc_table_name(path) -> bool:
    """A QC record's one-row table named as samri_ml named it until 2026-12-05, as the record
    (``*_desc-qc_metrics.tsv``; now ``*_desc-qctable_metrics.tsv``): BIDS tools read the
    record beside it as its sidecar, and a rerun leaves it (this run wrote no such file).

    >>> old_qc_table_name("out/sub-01/anat/sub-01_space-Phantom_desc-qc_metrics.tsv")
    True
    >>> old_qc_table_name("out/sub-01/anat/sub-01_space-Phantom_desc-qctable_metrics.tsv")
    False
    """
    from samri_ml.qc.metrics import QC_SUFFIX

    return Path(path).name.endswith(f"_{QC_SUFFIX}.tsv")


class DeferredInterrupt(KeyboardInterrupt):
    """Ctrl-C that :func:`deferred_sigint` held back: raised when its block was done."""


@contextmanager
def deferred_sigint():
    """Inside, Ctrl-C (SIGINT) waits: it is raised as ``KeyboardInterrupt`` when the block
    ends (as :class:`DeferredInterrupt`), so that a few renames are all done or none. SIGTERM
    waits too where Python handles it (a command under
    :func:`~samri_ml.cli._common.terminate_as_interrupt`, which raises it as ``Terminated``):
    it is delivered again when the block ends. Outside the main thread (where no handler can
    be set) nothing changes, nor for SIGINT where it is not Python's default handler
    (ignored, or another handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hold_int = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    term = signal.getsignal(signal.SIGTERM)
    hold_term = callable(term)  # (SIG_DFL and SIG_IGN are not)
    caught, terms = [], []
    if hold_int:
        signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    if hold_term:
        signal.signal(signal.SIGTERM, lambda *_: terms.append(True))
    try:
        yield
    finally:
        if hold_int:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if hold_term:
            signal.signal(signal.SIGTERM, term)
    if terms:
        signal.raise_signal(signal.SIGTERM)  # its handler raises here
    if caught:
        raise DeferredInterrupt


@contextmanager
def atomic_targets(dsts, remove=()):
    """:func:`atomic_target` for a set of files: yields their temporary paths (in the order of
    ``dsts``, each ending in its file's suffix); when the block succeeds they are renamed onto
    ``dsts`` all together, the first one last, and the files of ``remove`` (ones that no
    longer belong to the set) deleted, with Ctrl-C deferred (:func:`deferred_sigint`). An
    interruption or a failure before that leaves the previous files as they were and no
    temporary file, so the set is never of two writes."""
    dsts = [Path(d) for d in dsts]
    with ExitStack() as stack:
        # entered in order, renamed in reverse: the first file is never newer than the rest;
        # a signal while one is made (its file created, its removal not yet on the stack) left
        # it behind, hidden and empty: it waits until each one's removal is on the stack
        with deferred_sigint():
            tmps = [stack.enter_context(atomic_target(d, d.suffix)) for d in dsts]
        yield tmps
        renames = stack.pop_all()
    with deferred_sigint():
        renames.close()
        for path in remove:
            Path(path).unlink(missing_ok=True)
