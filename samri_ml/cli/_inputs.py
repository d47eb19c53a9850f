"""``samri_ml-register``'s inputs: the dataset's scans found (pybids, the lab's
``.bidsignore`` honoured, labels checked) and every selected scan read and checked before
anything is built (readable, finite, 3D or 4D as expected, a plausible field of view, the
functional runs' sidecars against their images), so that a broken file fails in seconds with
its name instead of hours later inside a node.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from samri_ml.cli._notes import Note, note
from samri_ml.errors import SamriMLError
from samri_ml.func import (
    MAX_TR_SECONDS,
    MIN_SLICE_TIMING_VOLUMES,
    SLICE_ENCODING_DIRECTIONS,
    header_slice_axis,
    is_repetition_time,
    is_slice_timing,
    n_dummy_to_drop,
    slice_axis,
    slice_times_outside,
    too_few_volumes_note,
)

PROG = "samri_ml-register"


def header_affines_disagree(img, tol_mm: float = 0.1) -> bool:
    """Whether a NIfTI header's sform and qform are both set (codes > 0) and map some corner
    voxel of the grid more than ``tol_mm`` apart."""
    import numpy as np

    header = getattr(img, "header", None)
    if header is None or not hasattr(header, "get_sform"):
        return False
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if not scode or not qcode or sform is None or qform is None:
        return False
    shape = np.asarray(img.shape[:3]) - 1
    corners = np.array([[i, j, k, 1] for i in (0, shape[0]) for j in (0, shape[1])
                        for k in (0, shape[2])], dtype=float).T
    return bool(np.abs((sform - qform) @ corners).max() > tol_mm)


def field_of_view(img) -> float:
    """The largest side of an image's field of view in mm: ``max_i n_i * |column_i(A)|``,
    with ``n_i`` the number of voxels along axis ``i`` and ``A`` the 3x3 part of the affine in
    mm (:func:`samri_ml.qc.volume.affine_mm`: a header in microns or meters, which ANTs reads
    in mm, was refused as 1000x the template's)."""
    import numpy as np
    from nibabel.affines import voxel_sizes

    from samri_ml.qc.volume import affine_mm

    return float(np.max(np.asarray(img.shape[:3]) * voxel_sizes(affine_mm(img))))


#: fields of view (mm) a rodent head or brain image can have; outside, its header is the
#: scaled one (the emory template's 10x voxel sizes give 114 mm)
PLAUSIBLE_FOV_MM = (3.0, 60.0)


def _fov_message(path, extent: float, args) -> str:
    """The error for a scan whose field of view is far from the template's: it names the file
    whose own field of view is implausible for a rodent (the template, where it is; every
    subject was blamed in turn before), and for a factor near 10 says how to fix the header
    instead of offering --no-fov-check (which registered such a scan into a blur, VCF 0.002)."""
    ratio = extent / args.template_extent
    lo, hi = PLAUSIBLE_FOV_MM
    template_odd = not lo <= args.template_extent <= hi and lo <= extent <= hi
    factor = 1 / ratio if template_odd else ratio
    head = (f"{args.template}: the template's field of view {args.template_extent:.3g} mm is "
            f"implausible for a rodent, {factor:.3g}x that of {path} ({extent:.3g} mm)"
            if template_odd else
            f"{path}: field of view {extent:.3g} mm is {ratio:.3g}x the template's "
            f"({args.template_extent:.3g} mm)")
    if template_odd:
        # the template is the scaled one: its own extent says by how much, not the ratio to a
        # scan (the emory template, 10x, is 5.6x the sammba head, whose field of view is wide,
        # and got the hint to pass --no-fov-check, which registers into a blur)
        factor = next((f for f in (10, 0.1) if lo <= args.template_extent / f <= hi), factor)
    if 7 <= factor <= 14 or 1 / 14 <= factor <= 1 / 7:
        scaled, fix = ("10", "0.1") if factor > 1 else ("0.1", "10")
        return (f"{head}; its voxel sizes look scaled by {scaled} (common for SPM/FSL exports); "
                f"hint: fix its header: multiply the affine's first three columns (and pixdim) "
                f"by {fix}, e.g. with nibabel")
    return (f"{head}; the voxel sizes in one of the headers look scaled; hint: fix the header's "
            "pixdim/affine, or pass --no-fov-check if both are right")


#: a scan whose field of view differs from the template's by more than this factor (either
#: way) almost surely has scaled voxel sizes in its header (x10 is common for SPM/FSL)
FOV_RATIO_LIMIT = 4.0


def check_scans(args, sessions) -> None:
    """Load every selected scan once before building anything, so that a broken file fails
    in seconds with its name instead of hours later inside a node.

    Structural scans must be 3D, functional runs 4D; every scan must be a readable NIfTI with
    finite, not all-zero values (:func:`samri_ml.io.load_nifti`) and a field of view within
    a factor :data:`FOV_RATIO_LIMIT` of the template's (unless ``--no-fov-check``).
    """
    from samri_ml.bids import parse_entities
    from samri_ml.io import annex_unfetched, load_nifti

    unfetched = [Path(scan) for item in sessions for scan in session_scans(item)
                 if annex_unfetched(scan)]
    if unfetched:
        # all of them at once: one `datalad get`, not one failed run per file
        where = sorted({scan.relative_to(args.bids_dir).parts[0] for scan in unfetched
                        if scan.is_relative_to(args.bids_dir)})
        raise SamriMLError(
            f"{len(unfetched)} selected scan(s) have no content here (DataLad/git-annex files "
            f"not fetched): {some_names([scan.name for scan in unfetched])}; hint: cd "
            f"{args.bids_dir} && datalad get {' '.join(where) or '.'}")
    dangling = [Path(scan) for item in sessions for scan in session_scans(item)
                if Path(scan).is_symlink() and not Path(scan).exists()]
    if dangling:
        # all of them too (a storage not mounted): they were named one per run
        raise SamriMLError(
            f"{len(dangling)} selected scan(s) are symbolic links to files that do not exist: "
            f"{some_names([f'{scan.name} -> {os.readlink(scan)}' for scan in dangling])}; "
            "hint: mount or restore what they point to, or fix the links")
    no_timing, direct, too_short, two_affines, unchecked = [], [], [], [], []
    discarded = []  # runs whose sidecar says volumes were dropped before (scanner, user)
    for item in sessions:
        scans = ([(item["anat"], "structural")] if item["anat"] else [])
        scans += [(bold, "functional") for bold in item["bold"]]
        metadata = dict(zip(item["bold"], item.get("bold_metadata", []), strict=False))
        sidecars = dict(zip(item["bold"], item.get("bold_sidecars", []), strict=False))
        if item["bold"] and not item["anat"] and \
                getattr(args, "registration_method", "composite") != "functional":
            direct.append(f"sub-{item['subject']}"
                          + (f" ses-{item['session']}" if item["session"] else ""))
        for path, kind in scans:
            # the scan before's image dropped first: it holds its data (read to check them),
            # and a session's two large runs were held at once (3 runs' memory at the peak)
            img = None
            try:
                img = load_nifti(path, allow_4d=kind == "functional")
            except SamriMLError:
                if kind == "structural":
                    _check_structural_volumes(path)  # a 4D one: the error with a way out
                raise
            if kind == "functional" and len(img.shape) != 4:
                import nibabel as nb

                # load_nifti drops a trailing one-volume axis: the file's own header says
                n = "one volume" if len(nb.load(path).shape) == 4 else "3D"
                raise SamriMLError(
                    f"{path}: functional run is {n} {img.shape}; expected a 4D time series "
                    "of 2 volumes or more; hint: select only 4D runs with "
                    "-f/--functional-match")
            if kind == "functional" and min(img.shape[:3]) == 1:
                # a structural scan of one slice is refused by load_nifti; a run of one slice
                # passed and failed in its N4 step ("exited 1 without a word")
                raise SamriMLError(
                    f"{path}: functional run of one slice {img.shape}; its volumes must be 3D "
                    "to be bias-corrected and registered; hint: leave it out with "
                    "-f/--functional-match or the dataset's .bidsignore")
            if kind == "functional" and path in metadata:
                _check_run_metadata(args, path, img, metadata[path], no_timing,
                                    sidecars.get(path, []))
            dummies = getattr(args, "dummy_scans", 0)
            before = _discarded_before(metadata.get(path, {})) if kind == "functional" else 0
            if before and dummies:
                discarded.append(f"{Path(path).name} ({before})")
            few = too_few_volumes_note(img.shape[3], dummies) if kind == "functional" else None
            if few:  # the run is kept, cut to its last volume: said here, not in a node's warning
                note(PROG, f"{path}: {few}")
            if (kind == "functional" and metadata.get(path, {}).get("SliceTiming")
                    and not getattr(args, "no_slice_timing", False)):
                kept = img.shape[3] - n_dummy_to_drop(img.shape[3], dummies)
                if kept < MIN_SLICE_TIMING_VOLUMES:
                    too_short.append(Path(path).name)
            if header_affines_disagree(img):
                two_affines.append(Path(path).name)
            extent = field_of_view(img)
            ratio = extent / args.template_extent
            if not 1 / FOV_RATIO_LIMIT <= ratio <= FOV_RATIO_LIMIT:
                if not getattr(args, "no_fov_check", False):
                    raise SamriMLError(_fov_message(path, extent, args))
                # registered as asked; its VCF note blamed the field of view, not the header
                unchecked.append(f"{Path(path).name} ({extent:.3g} mm, {ratio:.3g}x)")
    # said with the run's summary (register._announce), once every check has passed
    args.scan_notes = []
    if no_timing:
        args.scan_notes.append(Note(
            f"{len(no_timing)} functional run(s) without SliceTiming in their sidecar, not "
            f"slice-timing corrected: {some_names(no_timing)}", no_timing))
    if two_affines:
        args.scan_notes.append(Note(
            f"{len(two_affines)} scan(s) whose header holds two different orientations (sform "
            "and qform), which tools read differently (a mirrored qform gave a mirrored "
            f"result): {some_names(two_affines)}; "
            "hint: make them agree, e.g. nibabel's img.set_qform(img.get_sform())",
            two_affines))
    if unchecked:
        args.scan_notes.append(Note(
            f"--no-fov-check: {len(unchecked)} scan(s) registered with a field of view far "
            f"from the template's ({args.template_extent:.3g} mm), as their headers give it: "
            f"{some_names(unchecked)}; a header scaled by 10 registers into a blur, with a VCF "
            "far from 1", unchecked))
    if too_short:
        args.scan_notes.append(Note(
            f"{len(too_short)} functional run(s) with fewer than {MIN_SLICE_TIMING_VOLUMES} "
            "volumes after the dummy scans, not slice-timing corrected: "
            f"{some_names(too_short)}", too_short))
    if discarded:
        # BIDS: those volumes are not in the file; the first volumes may be at steady state
        # already, and the default 10 dummy scans were dropped on top of them, unsaid
        args.scan_notes.append(Note(
            f"{len(discarded)} functional run(s) whose sidecar says volumes were discarded "
            "before (NumberOfVolumesDiscardedByScanner/ByUser): "
            f"{some_names(discarded)}; --dummy-scans drops {args.dummy_scans} more volumes "
            "from each; hint: --dummy-scans 0 where the runs start at steady state",
            discarded))
    echoes = multi_echo_runs(sessions)
    if echoes:
        # each echo was registered as a run of its own, without a word: a transform each,
        # a registered run and QC each, and no combined run
        names = [name for group in echoes for name in group]
        first = parse_entities(names[0])["echo"]
        one = {**getattr(args, "functional_match", {}),
               "echo": int(first) if first.isdigit() else first}
        args.scan_notes.append(Note(
            f"{len(names)} functional run(s) are the echoes of {len(echoes)} multi-echo "
            f"acquisition(s): {some_names(names)}; each echo is registered as a run of its "
            "own (its own transform, registered run and QC), the echoes are not combined; "
            f"hint: register one echo with -f '{json.dumps(one)}', or combine the echoes "
            "beforehand (e.g. tedana) and register the combined run", names))
    if direct:
        # a structural scan of the subject's other sessions is not borrowed: the run-to-
        # structural step assumes one placement of the head, and the structural scan's own
        # derivatives belong to its session (said, as users expected it to be borrowed)
        elsewhere = sorted({f"sub-{item['subject']} ses-{item['session']}" for item in sessions
                            if item["anat"] and item["session"] and any(
                                w.startswith(f"sub-{item['subject']} ") for w in direct)})
        other = (f"; the structural scan of {', '.join(elsewhere)} is not used for them (a run "
                 "is paired only with its own session's, where the head lies as in the run)"
                 if elsewhere else "")
        args.scan_notes.append(
            f"no structural scan in {', '.join(direct)}: its functional runs are registered "
            f"straight to the template (as --registration-method functional){other}")


def multi_echo_runs(sessions) -> list[list[str]]:
    """The names of each session's functional runs that are echoes of one acquisition: runs
    whose names differ only in their ``echo-`` entity (``..._task-rest_echo-1_bold.nii.gz``,
    ``..._echo-2_bold...``), one list per acquisition of two echoes or more."""
    from samri_ml.bids import parse_entities

    groups: dict[tuple, list[str]] = {}
    for item in sessions:
        for run in item["bold"]:
            name = Path(run).name
            if "echo" in parse_entities(name):
                key = (item["subject"], item["session"],
                       re.sub(r"_echo-[a-zA-Z0-9]+", "", name))
                groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _check_structural_volumes(path: str) -> None:
    """Where load_nifti refused a structural scan: refuse, with a way out, one stored as a
    4D series of 3D volumes (repetitions or echoes a converter kept apart): it got
    load_nifti's bare "has 4 dimensions ...; expected 3D", with no word of what to do."""
    import warnings

    import nibabel as nb

    from samri_ml.io import _nibabel_log

    try:  # (load_nifti has said what it had to of the header: not twice)
        with warnings.catch_warnings(), _nibabel_log():
            warnings.simplefilter("ignore")
            shape = nb.load(path).shape
    except Exception:  # noqa: BLE001 - load_nifti's error says what is wrong with the file
        return
    if len(shape) == 4 and shape[3] > 1:
        raise SamriMLError(
            f"{path}: structural scan of {shape[3]} volumes {tuple(shape)}; expected one 3D "
            "volume; hint: average its volumes or keep one (e.g. nibabel: "
            "nb.funcs.four_to_three(img)[0]), or select a 3D scan with -s/--structural-match")


def some_names(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names``, comma-separated, with ``..., N in all`` where there
    are more (the first 20 of 100 participants read as all of them)."""
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown
                                       else "")


#: ``part-`` labels of images that are not magnitudes (complex data stored as phase, or
#: real and imaginary parts): left out unless -s/-f names ``part`` (a phase run was registered
#: as a magnitude one, into a failure, VCF 0.09)
NOT_MAGNITUDE = ("phase", "real", "imag")

def _header_tr(img) -> float:
    """A 4D image's repetition time in seconds from its NIfTI header (pixdim[4] in the
    header's time unit); 0 where the header has none."""
    zooms = img.header.get_zooms()
    unit = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else None
    tr = float(zooms[3]) if len(zooms) > 3 else 0.0
    return tr / 1000 if unit == "msec" else tr * 1e-6 if unit == "usec" else tr


def _discarded_before(meta: dict) -> int:
    """The volumes a run's sidecar says were discarded before the file was written, by the
    user and by the scanner (:func:`~samri_ml.workflows.generic.raw_discarded`)."""
    from samri_ml.workflows.generic import raw_discarded

    return sum(count or 0 for count in raw_discarded(meta))


def _check_run_metadata(args, path: str, img, meta: dict, no_timing: list,
                        chain: list[str] = ()) -> None:
    """A functional run's sidecar against its image, before anything runs: the number of
    slice times (a wrong count failed 20 s into the run), the repetition time (from the NIfTI
    header where the sidecar has none) and the task name (from the ``task-`` entity). Fills
    ``meta`` in place; names runs without slice times in ``no_timing``. The messages name an
    inherited sidecar of ``chain`` (:func:`_sidecar_of`) where the value comes from one."""
    from samri_ml.bids import parse_entities

    name = Path(path).name
    # 0 is a value given (refused below), not one missing: it was replaced by the header's,
    # with a note that the sidecar had none
    had_tr = meta.get("RepetitionTime") is not None
    header_tr = _header_tr(img)
    if not had_tr:
        if header_tr > 0:
            meta["RepetitionTime"] = header_tr
            note(PROG, f"{name}: no RepetitionTime in its sidecar; using the NIfTI "
                 f"header's, {header_tr:g} s")
        else:
            # the registered run's sidecar and header then had none either (BIDS requires
            # it of a bold run), without a word
            note(PROG, f"{name}: no RepetitionTime in its sidecar nor its NIfTI "
                 "header; the registered run has none either; hint: add RepetitionTime (in "
                 "seconds) to its sidecar")
    tr = meta.get("RepetitionTime")
    if had_tr and not is_repetition_time(tr):
        # a string ("1.0") or a negative time was blamed on the registration flavour ("a
        # setting Nipype refuses"), or ended in a bare ValueError
        raise SamriMLError(f"{path}: RepetitionTime {tr!r} in "
                           f"{_sidecar_of(path, chain, 'RepetitionTime')} is not a number of "
                           "seconds above 0; hint: fix the sidecar (BIDS: a number, 1.5, "
                           "not \"1.5\")")
    tr = float(tr) if tr else None
    if tr is not None and tr > MAX_TR_SECONDS:
        # BIDS gives seconds: 1000 (ms) was taken as 1000 s, written into the outputs'
        # sidecars and headers
        where = (_sidecar_of(path, chain, "RepetitionTime") if had_tr
                 else "its NIfTI header, the sidecar having none")
        raise SamriMLError(f"{path}: RepetitionTime {tr:g} s ({where}) is over "
                           f"{MAX_TR_SECONDS:g} s: milliseconds? "
                           f"hint: give it in seconds ({tr / 1000:g} for {tr:g} ms)")
    if tr is not None and tr > 0 < header_tr and abs(tr - header_tr) > 0.01 * tr:
        # BIDS: the sidecar wins; a header of another TR was used as it was, silently
        note(PROG, f"{name}: RepetitionTime {tr:g} s in "
             f"{_sidecar_of(path, chain, 'RepetitionTime')}, {header_tr:g} s in its NIfTI "
             "header; the sidecar's is used (hint: fix the one that is wrong)")
    task = parse_entities(path).get("task")
    if not meta.get("TaskName") and task:
        meta["TaskName"] = task
    if getattr(args, "no_slice_timing", False):
        return
    times = meta.get("SliceTiming")
    if not times:
        no_timing.append(name)
        return
    if not is_slice_timing(times):
        # ["0", "0.5"] was blamed on the registration flavour, 0.5 ended in a bare TypeError
        raise SamriMLError(f"{path}: SliceTiming in {_sidecar_of(path, chain, 'SliceTiming')} "
                           "is not a list of numbers (the time in seconds of each slice); "
                           "hint: fix the sidecar, or pass --no-slice-timing")
    slice_dim = header_slice_axis(img)
    if "SliceEncodingDirection" not in meta and slice_dim not in (None, 2):
        # BIDS: without SliceEncodingDirection the header's slice_dim tells the slice axis;
        # the third was taken whatever it said (a run of slices along j, corrected along k)
        meta["SliceEncodingDirection"] = "ijk"[slice_dim]
        note(PROG, f"{name}: no SliceEncodingDirection in its sidecar; using the "
             f"NIfTI header's slice axis (slice_dim), {'ijk'[slice_dim]}")
    direction = str(meta.get("SliceEncodingDirection", "k"))
    axis = slice_axis(direction)
    if axis is None:
        raise SamriMLError(f"{path}: SliceEncodingDirection {direction!r} in "
                           f"{_sidecar_of(path, chain, 'SliceEncodingDirection')} is "
                           f"not one of {', '.join(SLICE_ENCODING_DIRECTIONS)}; hint: fix the "
                           "sidecar, or pass --no-slice-timing")
    if slice_dim is not None and slice_dim != axis:
        note(PROG, f"{name}: SliceEncodingDirection {direction} in "
             f"{_sidecar_of(path, chain, 'SliceEncodingDirection')}, slice axis "
             f"{'ijk'[slice_dim]} in its NIfTI header (slice_dim); the sidecar's is used "
             "(hint: fix the one that is wrong)")
    if len(times) != img.shape[axis]:
        raise SamriMLError(f"{path}: {_sidecar_of(path, chain, 'SliceTiming')} gives "
                           f"{len(times)} SliceTiming values for "
                           f"{img.shape[axis]} slices along axis {axis} (SliceEncodingDirection "
                           f"{direction}); hint: fix the sidecar, or pass --no-slice-timing")
    if not meta.get("RepetitionTime"):
        raise SamriMLError(f"{path}: SliceTiming but no RepetitionTime, in its sidecar or its "
                           "header; hint: add RepetitionTime to the sidecar, or pass "
                           "--no-slice-timing")
    tr = float(meta["RepetitionTime"])
    outside = slice_times_outside(times, tr)
    if outside:
        # slice times in ms against a TR in s shifted every slice by hundreds of seconds of
        # a 1 s signal: the run came out scrambled, without a word
        raise SamriMLError(f"{path}: SliceTiming in {_sidecar_of(path, chain, 'SliceTiming')} "
                           f"({outside[0]:g} to {outside[1]:g}) is "
                           f"not within the repetition time, 0 to {tr:g} s; hint: give both in "
                           "seconds (BIDS: milliseconds / 1000), or pass --no-slice-timing")


def _index_failure(bids_dir, err) -> tuple[str | None, str]:
    """``(file, message)`` of pybids' failure to index ``bids_dir``: the file it names (None
    where it names none) and a one-line message with a hint."""
    from samri_ml.io import annex_unfetched, content_missing

    # a sidecar not fetched: pybids reads every JSON while indexing (a link to nothing
    # raises FileNotFoundError; a pointer file, its own error naming the file)
    match = re.search(r"filename='([^']+)'", str(err))
    name = getattr(err, "filename", None) or (match.group(1) if match else None)
    missing = name and content_missing(name)
    if missing and annex_unfetched(name):
        # its subject's folder, as for the scans: fetching one sidecar per run stopped at the
        # next one not fetched
        folder, root = Path(name).parent.resolve(), Path(bids_dir).resolve()
        rel = folder.relative_to(root).parts if folder.is_relative_to(root) else ()
        where = rel[0] if rel and rel[0].startswith("sub-") else \
            Path(*rel, Path(name).name).as_posix()
        return name, (f"{name}: its content is not here (a DataLad/git-annex file not "
                      f"fetched); hint: cd {bids_dir} && datalad get {where}")
    if missing:
        return name, f"{name}: {missing}"
    if name and "decode JSON" in str(err):  # pybids' words; the JSON error is its cause
        cause = err.__cause__ or err.__context__
        detail = f" ({cause})" if cause is not None else ""
        return name, (f"{name}: not valid JSON{detail}; hint: fix the file, or list it in the "
                      "dataset's .bidsignore")
    return name, f"{bids_dir}: cannot index the BIDS dataset ({err})"


def _unselected_subject(bids_dir, path, selected) -> str | None:
    """The label of the subject whose folder holds ``path`` where it is not ``selected``
    (None: no selection, or the file belongs to a selected subject or none)."""
    if path is None or selected is None:
        return None
    try:  # the folder resolved, not the file: a DataLad/git-annex file links into .git/
        first = (Path(path).parent.resolve().relative_to(Path(bids_dir).resolve())
                 .parts[0])
    except (ValueError, IndexError):
        return None
    if not first.startswith("sub-") or first[4:] in selected:
        return None
    return first[4:]


def _entity_folder(root, used=()) -> tuple[str, str] | None:
    """``(folder, entity)`` where a folder holding the dataset at ``root`` is named as pybids
    reads the subject, the session or an entity of ``used`` (the -s/-f keys), or None.
    pybids matches its entities on a file's whole path, the first match winning: under
    ``/data/sub-01/`` every scan was sub-01's (sub-02's run registered with sub-01's T2w),
    under ``/data/task-x/`` every run's task x (-f's ``task`` matched nothing). Other entities
    so named do no harm (every file has the same); the datatype is read from the scan's own
    folder (:func:`_datatype_of`)."""
    from bids.layout.models import Config

    text = Path(root).as_posix().rstrip("/") + "/"
    for name, entity in Config.load("bids").entities.items():
        if name in ("subject", "session", *used) and name != "datatype" and entity.regex:
            found = entity.regex.search(text)
            if found:
                return found.group(0).strip("/_"), name
    return None


def collect_sessions(args) -> list[dict]:
    """Query the dataset: one entry per subject/session with its structural and functional scans."""
    import bids
    from bids.layout import Query
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    from samri_ml.bids import bidsignore_patterns, parse_entities

    named = _entity_folder(args.bids_dir, {*args.structural_match, *args.functional_match})
    if named:
        raise SamriMLError(
            f"{args.bids_dir}: a folder holding the dataset is named as a BIDS entity "
            f"({named[0]}), which pybids reads as every scan's {named[1]}; hint: rename that "
            f"folder ({named[0]} -> {named[0].replace('-', '')}) or move the dataset out of it")

    # pybids does not read .bidsignore: a scan a lab listed there (a scratch or failed
    # acquisition) was registered, even chosen before the good scan of its session
    listed = bidsignore_patterns(args.bids_dir)
    ignore = [*DEFAULT_LOCATIONS_TO_IGNORE, *listed]
    chosen = (_labels_once("--participant-label", "sub-", args.participant_label)
              if args.participant_label else None)  # its note said once
    selected = set(chosen) if chosen else None
    while True:
        try:
            layout = bids.BIDSLayout(str(args.bids_dir), validate=False,
                                     indexer=bids.BIDSLayoutIndexer(validate=False,
                                                                    ignore=ignore))
            break
        except Exception as err:  # pybids raises many kinds for broken datasets
            name, why = _index_failure(args.bids_dir, err)
            other = _unselected_subject(args.bids_dir, name, selected)
            if other is None:
                raise SamriMLError(why) from err
            # a broken sidecar of a subject not asked for stopped the run of the others
            note(PROG, f"{why.split('; hint')[0]}; sub-{other} is not selected: "
                 "left out")
            ignore.append(re.compile(f"^/sub-{re.escape(other)}/"))
    subjects = layout.get_subjects()
    if not subjects:
        raise SamriMLError(f"{args.bids_dir}: no sub-* folders with scans found")
    wanted = subjects
    # sub-* folders that pybids found nothing in (empty, or a scan under another name), where
    # the lab's .bidsignore does not leave them out: they were passed over without a word
    folders = subject_folders(args.bids_dir)
    ignored = {m for m in folders if any(p.search(f"/sub-{m}/") for p in listed)}
    bare = [m for m in folders if m not in subjects and m not in ignored]
    # animals participants.tsv lists whose scans were not copied over (passed over unsaid)
    unfoldered = [m for m in listed_participants(args.bids_dir) if m not in folders]
    if args.participant_label:
        wanted = chosen
        missing = sorted(set(wanted) - set(subjects))
        if missing:
            # a folder that is there, left out by the lab's own .bidsignore, is not "not found"
            why = [f"{', '.join(f'sub-{m}' for m in found)}: {reason}" for found, reason in (
                ([m for m in missing if m in ignored], "left out by its .bidsignore"),
                ([m for m in missing if m in bare], "no BIDS files in the folder"),
                ([m for m in missing if m in unfoldered], "in participants.tsv, no folder"))
                if found]
            why = f" ({'; '.join(why)})" if why else ""
            raise SamriMLError(f"participant(s) {', '.join(missing)} not found in {args.bids_dir}"
                               f"{why}; available: {some_names(subjects, 20)}")
    sessions_wanted = (_labels_once("--session-label", "ses-", args.session_label)
                       if args.session_label else None)
    if sessions_wanted is not None:
        # a label no selected subject has is a typo (as an unknown participant is): '3' beside
        # '2' was dropped in silence, '3' alone ended in "no scans match ... check -s/-f"
        present = sorted(set(layout.get_sessions(subject=wanted)))
        missing = [s for s in sessions_wanted if s not in present]
        if missing:
            whose = "the selected participants" if args.participant_label else args.bids_dir
            raise SamriMLError(f"session(s) {', '.join(missing)} not found in {whose}; "
                               f"available: {some_names(present, 20) if present else 'none'}")

    def query(filters, subject, session):
        filters = dict(filters)
        filters.setdefault("extension", [".nii", ".nii.gz"])
        datatype = filters.pop("datatype", None)  # pybids' can be wrong: _datatype_of
        kw = dict(subject=subject, return_type="object", **filters)
        if session is not None:
            kw["session"] = session
        try:
            found = layout.get(**kw)
        except Exception as err:
            raise SamriMLError(f"invalid BIDS filter {filters} ({err})") from err
        found = [f for f in found if _of_datatype(f.path, layout.root, datatype)]
        # a copy set aside in a folder of its own (func/old/) was registered beside its
        # scan, its derivatives written outside func/; a phase image as a magnitude one
        nested.update(f.path for f in found if len(_folders_below_session(f.path,
                                                                          layout.root)) > 1)
        phase.update(f.path for f in found if "part" not in filters and f.path not in nested
                     and parse_entities(f.path).get("part") in NOT_MAGNITUDE)
        return [f for f in found if f.path not in nested and f.path not in phase]

    out, empty, outside, nested, phase = [], [], [], set(), set()
    skipped = [] if args.participant_label else (
        [f"sub-{m} (no BIDS files in its folder)" for m in bare]
        + [f"sub-{m} (in participants.tsv, no folder)" for m in unfoldered])
    for subject in wanted:
        sessions = layout.get_sessions(subject=subject) or [None]
        if sessions_wanted is not None:
            sessions = [s for s in sessions if s in sessions_wanted]
            if not sessions:
                skipped.append(f"sub-{subject} (no session {', '.join(sessions_wanted)})")
                continue
        elif sessions != [None]:
            # sub-01/anat/sub-01_T2w.nii.gz beside sub-01/ses-1/: in no session, so in no
            # query of one; its runs were registered 'without a structural scan', unsaid
            outside += [f.path for match in (args.structural_match, args.functional_match)
                        for f in query(match, subject, Query.NONE)]
        found, unmatched = len(out), []
        for session in sessions:
            anats = query(args.structural_match, subject, session)
            anats.sort(key=lambda f: _structural_rank(f, args.structural_match.get("suffix")))
            funcs = query(args.functional_match, subject, session)
            if not anats and not funcs:
                unmatched.append(f"sub-{subject} ses-{session}")
                continue
            if len(anats) > 1:
                where = f"sub-{subject}" + (f" ses-{session}" if session else "")
                note(PROG, f"{where}: {len(anats)} structural scans; using "
                     f"{Path(anats[0].path).name} (the others are not registered); hint: "
                     "choose with -s, a whole filter, e.g. -s "
                     f"'{json.dumps(_filter_for(anats[1], anats[0], layout.root))}' for "
                     f"{Path(anats[1].path).name}")  # fmt: skip
            out.append({
                "subject": subject, "session": session,
                "anat": anats[0].path if anats else None,
                "bold": [f.path for f in funcs],
                "bold_metadata": [f.get_metadata() for f in funcs],
                "bold_sidecars": [_sidecar_chain(f) for f in funcs],
            })
        if len(out) == found:
            skipped.append(f"sub-{subject} (no scan matches)")
        else:  # the sessions of a subject that has others (one of only dwi or fmap scans)
            empty += unmatched
    if out and skipped:
        note(PROG, f"skipped {len(skipped)} participant(s): {'; '.join(skipped)}")
    if out and empty:
        # such a session was dropped without a word, beside its subject's other sessions
        note(PROG, f"skipped {len(empty)} session(s) where no scan matches -s/-f: "
             f"{some_names(empty, 20)}", about=empty)
    if outside:
        where = [Path(p).relative_to(layout.root).as_posix() for p in outside]
        note(PROG, f"left out {len(outside)} scan(s) in no ses-* folder of a subject "
             f"that has sessions (each scan belongs to one session): {some_names(where)}; "
             "hint: move it into its session's folder, named with its ses- label", about=where)
    if nested:
        where = [Path(p).relative_to(layout.root).as_posix() for p in sorted(nested)]
        note(PROG, f"left out {len(nested)} scan(s) in a folder below their datatype "
             f"folder (not BIDS files): {some_names(where)}; hint: list the folder in the "
             "dataset's .bidsignore", about=where)
    if phase:
        names = [Path(p).name for p in sorted(phase)]
        note(PROG, f"left out {len(phase)} scan(s) that are not magnitude images "
             f"(part-{'/'.join(NOT_MAGNITUDE)}): {some_names(names)}; hint: -s/-f with a "
             "\"part\" entity selects them", about=names)
    check_names(args.bids_dir, [scan for item in out for scan in session_scans(item)])
    if not out:
        raise SamriMLError(
            f"no scans match in {args.bids_dir} (structural {json.dumps(args.structural_match)}, "
            f"functional {json.dumps(args.functional_match)}); hint: check -s/-f and the labels")
    if not any(item["bold"] for item in out):
        # a misspelt task in -f dropped every run: the structural scans alone were registered,
        # exit 0, without a word (an -s that matches nothing is noted per session)
        # those named as left out above (in no session, nested, phase) matched -f: not again
        # as "check -f"
        named = {*outside, *nested, *phase}
        runs = [f for f in layout.get(subject=wanted, extension=[".nii", ".nii.gz"],
                                      return_type="filename")
                if _datatype_of(f, layout.root) == "func" and f not in named]
        if runs:
            note(PROG, f"no functional run matches -f "
                 f"{json.dumps(args.functional_match)}, of the {len(runs)} in the selected "
                 f"participants' func/ folders (e.g. {Path(runs[0]).name}): only structural "
                 "scans are registered; hint: check -f")
    return out


def check_names(bids_dir: Path, scans: list[str]) -> None:
    """Refuse selected scans whose name and folders disagree
    (:func:`samri_ml.bids.name_folder_mismatch`): their derivatives are named from the
    name, so ``sub-02/anat/sub-01_T2w.nii.gz`` (a copy not renamed) overwrote sub-01's, in
    silence, and ``sub-05/anat/T2w.nii.gz`` failed with a message about a source_file."""
    from samri_ml.bids import name_folder_mismatch

    bad = [(scan, why) for scan in scans if (why := name_folder_mismatch(scan, bids_dir))]
    if bad:
        (scan, why), more = bad[0], (f" (and {len(bad) - 1} more such scan(s))"
                                     if len(bad) > 1 else "")
        raise SamriMLError(f"{scan}: {why}{more}; hint: rename it as BIDS names it (the name "
                           "repeats its folders' sub- and ses- labels: sub-01/ses-1/anat/"
                           "sub-01_ses-1_T2w.nii.gz), or list it in the dataset's .bidsignore")


def _sidecar_chain(scan) -> list[str]:
    """The JSON files whose metadata a BIDS file (a pybids BIDSFile) gets, nearest first: its
    own sidecar, then those it inherits (``sub-01/sub-01_task-rest_bold.json``,
    ``task-rest_bold.json`` at the dataset root), as pybids merges them."""
    chain, todo = [], list(scan.get_associations(kind="Metadata"))
    while todo:
        sidecar = todo.pop(0)
        if sidecar.path not in chain:
            chain.append(sidecar.path)
            todo += sidecar.get_associations(kind="Child")
    return chain


def _sidecar_of(path: str, chain: list[str], key: str | None = None) -> str:
    """Which sidecar of a run (``chain``: :func:`_sidecar_chain`) a message names: ``its
    sidecar`` where that is the run's own (or there is none), else the inherited file that
    gives ``key`` (``the sidecar task-rest_bold.json it inherits``): "fix the sidecar" sent
    users to a file that does not exist."""
    from samri_ml.bids import sidecar_path

    for sidecar in chain:
        try:
            given = key is None or key in json.loads(Path(sidecar).read_text())
        except (OSError, ValueError):
            continue
        if given:
            if Path(sidecar) == sidecar_path(path):
                break
            return f"the sidecar {sidecar} it inherits"
    return "its sidecar"


def _datatype_of(path, root) -> str:
    """The datatype of a scan of the dataset at ``root``: the folder below its ``sub-`` and
    ``ses-`` folders (``sub-01/ses-1/anat/...``), whatever folders hold the dataset (pybids
    takes the first datatype-named folder of the whole path: under /data/func/ every scan
    was 'func', the T2w left out; under /data/anat/ the runs were)."""
    folders = _folders_below_session(path, root)
    return folders[0] if folders else ""


def _folders_below_session(path, root) -> tuple[str, ...]:
    """The folders of a file of the dataset at ``root`` below its ``sub-`` and ``ses-``
    folders: ``("func",)`` for a BIDS scan, more where it lies deeper (``func/old/``)."""
    folders = Path(path).relative_to(root).parts[1:-1]  # below sub-<label>
    return folders[1:] if folders and folders[0].startswith("ses-") else folders


def _of_datatype(path, root, datatype) -> bool:
    """Whether a scan's datatype (:func:`_datatype_of`) is ``datatype``, a name or a list of
    names (None: any)."""
    wanted = [datatype] if isinstance(datatype, str) else datatype
    return datatype is None or _datatype_of(path, root) in wanted


def _structural_rank(scan, suffixes) -> tuple[int, int]:
    """Sort key of a session's structural scans (pybids BIDSFile objects), best first: the
    first suffix of ``suffixes`` listed (T2w before T1w), then the plainest name (fewest
    entities beyond subject and session). pybids orders by name, so ``sub-01_acq-lowres_T2w``
    (a scout) was chosen over the session's ``sub-01_T2w``."""
    entities = scan.get_entities(metadata=False)
    suffix = entities.get("suffix")
    first = suffixes.index(suffix) if isinstance(suffixes, list) and suffix in suffixes else 0
    extra = set(entities) - {"subject", "session", "datatype", "suffix", "extension"}
    return first, len(extra)


def _filter_for(scan, other, root) -> dict:
    """A pybids filter (``-s``) that selects ``scan`` and not ``other`` (BIDSFile objects of
    one session): its datatype and suffix, and where the suffixes are the same, the entities
    the two file names differ in (``null`` for one ``scan`` lacks)."""
    mine = scan.get_entities(metadata=False)
    theirs = other.get_entities(metadata=False)
    out = {"datatype": _datatype_of(scan.path, root), "suffix": mine.get("suffix")}
    if mine.get("suffix") == theirs.get("suffix"):
        for key in sorted(mine.keys() | theirs.keys()):
            if key not in ("subject", "session", "datatype", "suffix") and \
                    mine.get(key) != theirs.get(key):
                value = mine.get(key)
                out[key] = int(value) if isinstance(value, int) else value
    return out


def listed_participants(bids_dir) -> list[str]:
    """The labels (without ``sub-``) of ``bids_dir/participants.tsv``'s ``participant_id``
    column, in its order; none where the file or the column is missing or unreadable."""
    import csv

    try:
        # utf-8-sig: a file saved from a spreadsheet starts with a byte-order mark, which
        # hid its first column (no participant_id, its animals not named)
        with open(Path(bids_dir) / "participants.tsv", newline="", encoding="utf-8-sig",
                  errors="replace") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, csv.Error):
        return []
    labels = [(row.get("participant_id") or "").strip().removeprefix("sub-") for row in rows]
    return list(dict.fromkeys(label for label in labels if label))


def subject_folders(bids_dir) -> list[str]:
    """The labels of the ``sub-<label>`` folders at the root of ``bids_dir``."""
    return sorted(p.name[4:] for p in Path(bids_dir).glob("sub-*")
                  if p.is_dir() and re.fullmatch(r"sub-[a-zA-Z0-9]+", p.name))


def _labels_once(option: str, prefix: str, given: list[str]) -> list[str]:
    """``given`` without ``prefix`` and surrounding spaces (``"01 "``, from a spreadsheet or a
    quoted list, was "not found; available: 01"), each label once (in the order given); a
    label given more than once (``01 sub-01``) is said in one note."""
    labels = [s.strip().removeprefix(prefix) for s in given]
    repeated = [label for label in dict.fromkeys(labels) if labels.count(label) > 1]
    if repeated:
        note(PROG, f"{option}: {', '.join(repeated)} given more than once; taken once")
    return list(dict.fromkeys(labels))


def session_scans(item: dict) -> list[str]:
    """A session's scans (from :func:`collect_sessions`): its structural scan, then its runs."""
    return ([item["anat"]] if item["anat"] else []) + list(item["bold"])
