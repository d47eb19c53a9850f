"""Bad input gets a clear, one-line error and leaves the input untouched (issue 5, part 1).

Every case builds a tiny BIDS dataset (a few thousand voxels), breaks one thing and runs
``samri_ml-register`` in-process with ``--dry-run``: a check that let a broken input through
would return 0 there instead of failing, and nothing heavy ever runs. The table of these cases
is ``docs/errors.rst``; keep both in step.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from samri_ml.cli.register import main
from samri_ml.plates.identify import default_model_dir
from samri_ml.testing.runs import snapshot

ANAT = "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
BOLD = "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz"
TEMPLATE = "template/tpl-Tiny_T2w.nii.gz"
MASK = "template/tpl-Tiny_desc-brain_mask.nii.gz"


def _blob(shape, seed=0) -> np.ndarray:
    """An ellipsoid 'brain' (value ~100) in noise, float32."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.6
    return (inside * 100.0 + rng.normal(0, 1, shape)).astype(np.float32)


def save(data, path: Path, zooms=(0.2, 0.2, 0.4), affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms, 1.0]) if affine is None else affine
    nb.Nifti1Image(np.asarray(data), affine).to_filename(str(path))
    return path


def make_dataset(root: Path) -> Path:
    """``root/bids`` (one subject: a 3D T2w and a 4D BOLD run) and ``root/template``."""
    bids = root / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "tiny",
                                                               "BIDSVersion": "1.8.0"}))
    save(_blob((24, 24, 12)), bids / ANAT)
    run = np.stack([_blob((12, 12, 6), seed=i) for i in range(5)], axis=-1)
    save(run, bids / BOLD, zooms=(0.4, 0.4, 0.8))
    (bids / BOLD.replace(".nii.gz", ".json")).write_text(json.dumps(
        {"RepetitionTime": 1.0, "SliceTiming": [0.0, 0.5, 0.1667, 0.6667, 0.3333, 0.8333]}))
    save(_blob((24, 24, 12)), root / TEMPLATE)
    save((_blob((24, 24, 12)) > 50).astype(np.uint8), root / MASK)
    return bids


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _replace_image(rel: str, data=None, **kw):
    def edit(root: Path) -> None:
        path = root / "bids" / rel if not rel.startswith("template") else root / rel
        img = nb.load(str(path))
        new = np.asarray(img.dataobj) if data is None else data(np.asarray(img.dataobj))
        save(new, path, affine=kw.get("affine", img.affine))

    return edit


def _scaled_zooms(root: Path) -> None:
    path = root / "bids" / ANAT
    img = nb.load(str(path))
    save(np.asarray(img.dataobj), path, affine=np.diag([2.0, 2.0, 4.0, 1.0]))  # 10x 0.2/0.4 mm


def _scaled_template(root: Path) -> None:
    for path in (root / TEMPLATE, root / MASK):  # 20x: 96 mm
        img = nb.load(str(path))
        save(np.asarray(img.dataobj), path, affine=np.diag([*(20 * np.array(img.header.get_zooms()[:3])),
                                                             1.0]))


def _mask_other_grid(root: Path) -> None:
    save((_blob((20, 20, 10)) > 50).astype(np.uint8), root / MASK)


def _text_as_nifti(root: Path) -> None:
    (root / "bids" / ANAT).write_text("this is not an image\n")


def _gzip_of_text(root: Path) -> None:
    (root / "bids" / ANAT).write_bytes(gzip.compress(b"not an image either\n" * 10))


def _truncated_nii(root: Path) -> None:
    """An uncompressed .nii whose data block is cut short."""
    path = root / "bids" / ANAT
    img = nb.load(str(path))
    data = np.asarray(img.dataobj)
    path.unlink()
    new = path.with_name(path.name.replace(".nii.gz", ".nii"))
    save(data, new, affine=img.affine)
    _truncate(new)


def _no_scans(root: Path) -> None:
    shutil.rmtree(root / "bids" / "sub-01" / "ses-1")
    (root / "bids" / "sub-01" / "ses-1" / "anat").mkdir(parents=True)
    (root / "bids" / "sub-01" / "ses-1" / "anat" / "notes.txt").write_text("no scans here\n")


def _slice_timing_count(root: Path) -> None:
    """A sidecar with 3 slice times for a run of 6 slices (it failed 20 s into the run)."""
    (root / "bids" / BOLD.replace(".nii.gz", ".json")).write_text(json.dumps(
        {"RepetitionTime": 1.0, "SliceTiming": [0.0, 0.3, 0.6]}))


def _sidecar(**meta):
    """A breaker: the run's sidecar with ``meta``."""
    def edit(root: Path) -> None:
        (root / "bids" / BOLD.replace(".nii.gz", ".json")).write_text(json.dumps(meta))

    return edit


def _inherited_slice_timing_count(root: Path) -> None:
    """No sidecar of the run's own: it inherits the dataset root's ``task-rest_bold.json``
    (BIDS inheritance), whose 3 slice times are not the run's 6 slices."""
    (root / "bids" / BOLD.replace(".nii.gz", ".json")).unlink()
    (root / "bids" / "task-rest_bold.json").write_text(json.dumps(
        {"RepetitionTime": 1.0, "SliceTiming": [0.0, 0.3, 0.6]}))


def _one_volume_run(root: Path) -> None:
    save(_blob((12, 12, 6))[..., None], root / "bids" / BOLD, zooms=(0.4, 0.4, 0.8))


def _cbv_beside_bold(root: Path) -> None:
    """A cbv run with the bold run's entities (the default -f selects both)."""
    bold = root / "bids" / BOLD
    for ext in (".nii.gz", ".json"):
        src = bold.with_name(bold.name.replace(".nii.gz", ext))
        shutil.copy(src, src.with_name(src.name.replace("_bold", "_cbv")))


def _other_pipelines_derivatives(root: Path) -> None:
    """BIDS_DIR/derivatives/other: another pipeline's derivatives dataset."""
    folder = root / "bids" / "derivatives" / "other"
    folder.mkdir(parents=True)
    (folder / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep outputs", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]}))


def _dataset_outside_bids_dir(root: Path) -> None:
    """ds2: another dataset beside BIDS_DIR (its derivatives/ folder may take samri_ml's)."""
    (root / "ds2").mkdir()
    (root / "ds2" / "dataset_description.json").write_text(
        json.dumps({"Name": "another study", "BIDSVersion": "1.8.0"}))


def _broken_header_extension(root: Path) -> None:
    """vox_offset 0 and an extension flag set over the data (as where the 4 extension bytes
    were lost): nibabel reads the data as a header extension of 1000003 bytes, warns that its
    size is no multiple of 16, then raises HeaderDataError (neither named the file)."""
    _break_extension(root / "bids" / ANAT)


def _break_extension(path: Path) -> Path:
    import struct

    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 108, 0.0)  # vox_offset
    struct.pack_into("<4b2i", raw, 348, 1, 0, 0, 0, 1_000_003, 0)  # flag, esize, ecode
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def _more_subjects(root: Path) -> None:
    """sub-02 ... sub-24 beside sub-01, each with sub-01's scans under its own name."""
    bids = root / "bids"
    for n in range(2, 25):
        for src in (bids / "sub-01").rglob("*.*"):
            dst = bids / str(src.relative_to(bids)).replace("sub-01", f"sub-{n:02d}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)


def _annexed(*rels: str, pointer: bool = False):
    """A breaker: ``rels`` as a DataLad/git-annex dataset has them before ``datalad get``:
    links into ``.git/annex/objects`` to nothing (locked files), or annex pointer files
    (unlocked, ``pointer``)."""
    def edit(root: Path) -> None:
        for rel in rels:
            path = root / "bids" / rel
            key = f"MD5E-s100--{path.name}"
            path.unlink()
            if pointer:
                path.write_text(f"/annex/objects/{key}\n")
            else:
                target = root / "bids" / ".git" / "annex" / "objects" / "Xy" / "Zw" / key / key
                path.symlink_to(os.path.relpath(target, path.parent))

    return edit


def _linked_to_nothing(*rels: str):
    """A breaker: ``rels`` as links into a storage that is not mounted."""
    def edit(root: Path) -> None:
        for rel in rels:
            path = root / "bids" / rel
            path.unlink()
            path.symlink_to(f"/nonexistent/nas/{path.name}")

    return edit


def _scan_of_another_subject(root: Path) -> None:
    """sub-02 beside sub-01, its structural scan a copy of sub-01's not renamed
    (``sub-02/ses-1/anat/sub-01_ses-1_T2w.nii.gz``)."""
    bids = root / "bids"
    shutil.copytree(bids / "sub-01", bids / "sub-02")
    for path in sorted((bids / "sub-02").rglob("*.*")):
        path.rename(path.with_name(path.name.replace("sub-01", "sub-02")))
    (bids / ANAT.replace("sub-01", "sub-02")).unlink()
    shutil.copy(bids / ANAT, bids / "sub-02" / "ses-1" / "anat" / Path(ANAT).name)


def _run_of_another_session(root: Path) -> None:
    """sub-01's run copied into a ses-2 folder under its ses-1 name."""
    bids = root / "bids"
    (bids / "sub-01" / "ses-2" / "func").mkdir(parents=True)
    shutil.copy(bids / BOLD, bids / "sub-01" / "ses-2" / "func" / Path(BOLD).name)


def _template_in_spaced_folder(root: Path) -> None:
    (root / "tpl dir").mkdir()
    shutil.copy(root / TEMPLATE, root / "tpl dir" / "tpl-Tiny_T2w.nii.gz")


#: (id, how to break the dataset, extra arguments, exit code, words the message must contain)
CASES = [
    ("missing_bids_dir", None, ["BIDS=nope"], 2, ["does not exist"]),
    ("not_bids", None, ["BIDS=template"], 1, ["not a BIDS dataset", "hint"]),
    # the root, only without its description: "hint: point to the dataset's root folder"
    ("root_without_dataset_description",
     lambda r: (r / "bids" / "dataset_description.json").unlink(), [], 1,
     ["bids has sub-* folders but no dataset_description.json; hint: add one, e.g. echo "
      "'{\"Name\": \"bids\", \"BIDSVersion\": \"1.8.0\"}' > ",
      "bids/dataset_description.json"]),
    ("empty_dataset", lambda r: shutil.rmtree(r / "bids" / "sub-01"), [], 1,
     ["no sub-* folders"]),
    ("subject_without_scans", _no_scans, [], 1, ["no scans match", "hint"]),
    ("no_matching_scans", None, ["-s", '{"suffix": "FLAIR"}', "-f", '{"suffix": "cbv"}'], 1,
     ["no scans match", "hint"]),
    ("unknown_participant", None, ["--participant-label", "sub-07"], 1,
     ["participant(s) 07 not found", "available: 01"]),
    # the first 20 of 24 participants were listed as if they were all
    ("unknown_participant_among_many", _more_subjects, ["--participant-label", "01", "99"], 1,
     ["participant(s) 99 not found", "available: 01, 02,", "20, ... (24 in all)"]),
    # a session no selected subject has: alone it ended in "no scans match ... check -s/-f",
    # beside a known one it was dropped in silence
    ("unknown_session", None, ["--session-label", "ses-3"], 1,
     ["session(s) 3 not found", "available: 1"]),
    ("unknown_session_beside_a_known_one", None,
     ["--participant-label", "01", "--session-label", "1", "3"], 1,
     ["session(s) 3 not found in the selected participants; available: 1"]),
    ("truncated_scan", lambda r: _truncate(r / "bids" / ANAT), [], 1,
     ["sub-01_ses-1_T2w.nii.gz", "truncated or corrupt"]),
    ("truncated_uncompressed_scan", _truncated_nii, [], 1, ["truncated or corrupt"]),
    # a DataLad dataset before `datalad get`: "no such file" for a file that ls lists
    ("annexed_scans_not_fetched", _annexed(ANAT, BOLD), [], 1,
     ["2 selected scan(s) have no content here (DataLad/git-annex files not fetched): "
      "sub-01_ses-1_T2w.nii.gz, sub-01_ses-1_task-rest_bold.nii.gz; hint: cd ",
      "bids && datalad get sub-01"]),
    # a storage not mounted: the links were named one per run
    ("scans_linked_to_nothing", _linked_to_nothing(ANAT, BOLD), [], 1,
     ["2 selected scan(s) are symbolic links to files that do not exist: "
      "sub-01_ses-1_T2w.nii.gz -> /nonexistent/nas/sub-01_ses-1_T2w.nii.gz, "
      "sub-01_ses-1_task-rest_bold.nii.gz -> /nonexistent/nas/sub-01_ses-1_task-rest_bold.nii.gz;"
      " hint: mount or restore what they point to, or fix the links"]),
    ("annexed_unlocked_scan_not_fetched", _annexed(BOLD, pointer=True), [], 1,
     ["1 selected scan(s) have no content here", "datalad get sub-01"]),
    # its subject's folder, as for the scans (one sidecar fetched per run, stopping at the next)
    ("annexed_sidecar_not_fetched", _annexed(BOLD.replace(".nii.gz", ".json")), [], 1,
     ["sub-01_ses-1_task-rest_bold.json: its content is not here (a DataLad/git-annex file "
      "not fetched); hint: cd ", "bids && datalad get sub-01"]),
    # it said "no dataset_description.json; hint: add one"
    ("annexed_description_not_fetched", _annexed("dataset_description.json"), [], 1,
     ["bids/dataset_description.json: its content is not here (a DataLad/git-annex file not "
      "fetched); hint: fetch it, e.g. datalad get "]),
    # its derivatives are named from its name: they went into sub-01's folder, replacing
    # sub-01's, in silence
    ("scan_named_for_another_subject", _scan_of_another_subject,
     ["--participant-label", "02"], 1,
     ["sub-02/ses-1/anat/sub-01_ses-1_T2w.nii.gz: its name says sub-01, its folder sub-02; "
      "hint: rename it as BIDS names it", "or list it in the dataset's .bidsignore"]),
    ("scan_named_for_another_session", _run_of_another_session,
     ["--session-label", "2"], 1,
     ["sub-01/ses-2/func/sub-01_ses-1_task-rest_bold.nii.gz: its name says ses-1, its "
      "folder ses-2; hint:"]),
    # "not a BIDS file name ...; hint: give the raw BIDS file it derives from as source_file"
    ("scan_name_without_subject", lambda r: (r / "bids" / ANAT).rename(
        r / "bids" / ANAT.replace("sub-01_ses-1_T2w", "T2w")), [], 1,
     ["anat/T2w.nii.gz: not a BIDS file name (no sub-<label> entity); hint: rename it"]),
    # the folder is there: "not found" alone sent users looking for a typo
    ("participant_folder_without_bids_files",
     lambda r: (r / "bids" / "sub-02" / "ses-1" / "anat").mkdir(parents=True),
     ["--participant-label", "02"], 1,
     ["participant(s) 02 not found in ", "bids (sub-02: no BIDS files in the folder); "
      "available: 01"]),
    ("annexed_unlocked_sidecar_not_fetched",
     _annexed(BOLD.replace(".nii.gz", ".json"), pointer=True), [], 1,
     ["sub-01_ses-1_task-rest_bold.json: its content is not here (a DataLad/git-annex file "
      "not fetched); hint: cd ", "bids && datalad get sub-01"]),
    ("truncated_template", lambda r: _truncate(r / TEMPLATE), [], 1,
     ["tpl-Tiny_T2w.nii.gz", "truncated or corrupt"]),
    ("corrupt_template", lambda r: (r / TEMPLATE).write_bytes(os.urandom(4000)), [], 1,
     ["tpl-Tiny_T2w.nii.gz", "not a NIfTI"]),
    ("missing_template", lambda r: (r / TEMPLATE).unlink(), [], 1, ["no such file"]),
    ("text_named_nii_gz", _text_as_nifti, [], 1, ["not a NIfTI", "hint"]),
    ("gzipped_text", _gzip_of_text, [], 1, ["not a NIfTI"]),
    ("2d_scan", _replace_image(ANAT, lambda d: d[:, :, 6]), [], 1, ["2D image"]),
    ("5d_run", _replace_image(BOLD, lambda d: np.stack([d, d], axis=-1)), [], 1,
     ["5 dimensions"]),
    ("4d_template", _replace_image(TEMPLATE, lambda d: np.stack([d, d], axis=-1)), [], 1,
     ["4 dimensions", "expected 3D"]),
    ("4d_structural_scan", _replace_image(ANAT, lambda d: np.stack([d, d], axis=-1)), [], 1,
     ["sub-01_ses-1_T2w.nii.gz: structural scan of 2 volumes (24, 24, 12, 2); expected one 3D "
      "volume; hint: average its volumes or keep one", "-s/--structural-match"]),
    ("3d_functional_run", _replace_image(BOLD, lambda d: d[..., 0]), [], 1,
     ["functional run is 3D", "hint"]),
    # a run of one slice (a coronal EPI cut to its slice of interest) passed the checks and
    # failed in its N4 step, "exited 1 without a word"; a one-slice structural scan was refused
    ("one_slice_functional_run", _replace_image(BOLD, lambda d: d[:, :, 5:6]), [], 1,
     ["sub-01_ses-1_task-rest_bold.nii.gz: functional run of one slice (12, 12, 1, 5); its "
      "volumes must be 3D",
      "hint: leave it out with -f/--functional-match"]),
    ("nan_voxels", _replace_image(ANAT, lambda d: np.where(d > 90, np.nan, d)), [], 1,
     ["NaN or Inf", "hint"]),
    ("inf_voxels", _replace_image(BOLD, lambda d: np.where(d > 90, np.inf, d)), [], 1,
     ["NaN or Inf"]),
    ("all_zero_scan", _replace_image(ANAT, np.zeros_like), [], 1, ["all zeros"]),
    ("all_zero_template", _replace_image(TEMPLATE, np.zeros_like), [], 1, ["all zeros"]),
    ("empty_template_mask", _replace_image(MASK, lambda d: np.zeros_like(d)), [], 1,
     ["all zeros"]),
    # a factor near 10: how to fix the header, not --no-fov-check (which registered the
    # emory template into a blur)
    ("voxel_sizes_10x", _scaled_zooms, [], 1, ["field of view", "10x", "scaled by 10",
                                                "multiply the affine's first three columns"]),
    # every subject used to be named in turn
    ("template_scaled", _scaled_template, [], 1, ["tpl-Tiny_T2w.nii.gz: the template's field "
                                                  "of view 96 mm is implausible for a rodent"]),
    ("template_mask_other_grid", _mask_other_grid, [], 1, ["not on the same grid", "hint"]),
    ("output_is_a_file", lambda r: (r / "out").write_text("x"), ["OUT=out"], 1,
     ["exists and is not a folder"]),
    ("output_under_a_file", lambda r: (r / "out").write_text("x"), ["OUT=out/deriv"], 1,
     ["not a writable folder"]),
    ("output_among_sources", None, ["OUT=bids/sub-01"], 2, ["would write among the source"]),
    ("group_level", None, ["BIDS=bids", "GROUP"], 2, ["there is no group level"]),
    ("bad_plugin_args", None, ["--plugin-args", "{nope"], 2, ["not valid JSON"]),
    ("fast_and_another_flavour", None, ["--registration-flavour", "samri"], 2,
     ["--fast conflicts with --registration-flavour samri"]),
    ("bad_structural_filter", None, ["-s", "[1, 2]"], 2, ["expected a JSON object"]),
    # a masker of the lab's own: unused without a word under --masking none, a missing file
    # found only when the first mask node ran
    ("mask_model_without_unet", lambda r: (r / "own.keras").write_text("x"),
     ["--mask-model", "own.keras"], 2, ["--mask-model own.keras needs --masking unet"]),
    ("mask_model_missing", None, ["--masking", "unet", "--mask-model", "none.keras"], 2,
     ["--mask-model none.keras: model file not found"]),
    # other models: the run failed in its masking steps, 16 s in, with OUTPUT_DIR made (and
    # --dry-run passed them)
    ("mask_model_not_a_keras_file", lambda r: (r / "own.keras").write_text("x"),
     ["--masking", "unet", "MODEL=own.keras"], 2,
     ["--mask-model ", "own.keras: not a Keras model file"]),
    ("mask_model_of_the_plates", lambda r: shutil.copy(
        default_model_dir() / "plates_embedding.keras",
        r / "plates.keras"),
     ["--masking", "unet", "MODEL=plates.keras"], 2,
     ["--mask-model ", "plates.keras: a plate embedding model (samri_ml-identify-plate's), "
      "not a brain-masking model"]),
    # Nipype runs the ANTs programs through a shell with unquoted paths
    ("work_dir_with_space", None, ["WORK=a b/work"], 2, ["has a space", "-w"]),
    ("template_with_space", _template_in_spaced_folder, ["TPL=tpl dir/tpl-Tiny_T2w.nii.gz"],
     2, ["--template", "has a space"]),
    ("template_name_not_a_label", None, ["--template-name", "Tiny_v2"], 2,
     ["letters and digits"]),
    ("output_is_the_derivatives_folder", None, ["OUT=bids/derivatives"], 2,
     ["derivatives folder itself", "derivatives/samri_ml"]),
    ("slice_timing_count", _slice_timing_count, [], 1,
     ["3 SliceTiming values for 6 slices", "--no-slice-timing"]),
    # "its sidecar gives..." sent users to a run sidecar that does not exist
    ("inherited_slice_timing_count", _inherited_slice_timing_count, [], 1,
     ["sub-01_ses-1_task-rest_bold.nii.gz: the sidecar ", "bids/task-rest_bold.json it "
      "inherits gives 3 SliceTiming values for 6 slices", "--no-slice-timing"]),
    ("one_volume_run", _one_volume_run, [], 1, ["one volume", "2 volumes or more"]),
    # milliseconds where BIDS says seconds: the run was scrambled (slice times in ms against
    # a TR in s) or its outputs said TR 1000 s
    ("slice_timing_in_ms", _sidecar(RepetitionTime=1.0, SliceTiming=[0, 500, 167, 667, 333, 833]),
     [], 1, ["SliceTiming in its sidecar (0 to 833) is not within the repetition time, 0 to "
             "1 s; hint: give both in seconds", "--no-slice-timing"]),
    ("repetition_time_in_ms", _sidecar(RepetitionTime=1000), [], 1,
     ["RepetitionTime 1000 s", "over 100 s: milliseconds? hint: give it in seconds (1 for "
      "1000 ms)"]),
    # the transform and QC files drop the suffix: the two runs overwrote each other's
    ("bold_and_cbv_with_the_same_entities", _cbv_beside_bold, [], 1,
     ["sub-01 ses-1: sub-01_ses-1_task-rest_bold.nii.gz and sub-01_ses-1_task-rest_cbv.nii.gz "
      "would write the same transform files; hint: register one suffix per "
      "OUTPUT_DIR, e.g. -f '{\"datatype\": \"func\", \"suffix\": \"bold\"}'"]),
    # its dataset_description.json was rewritten and samri_ml's files mixed into its own
    ("output_is_another_pipelines_derivatives", _other_pipelines_derivatives,
     ["OUT=bids/derivatives/other"], 2,
     ["holds another dataset", "generated by fMRIPrep", "hint: choose an empty folder or "
      "samri_ml's own"]),
    # a folder inside another dataset was taken: samri_ml's description, sub-* folders and
    # work dir were written among that pipeline's files (in BIDS_DIR, or anywhere else)
    ("output_inside_another_pipelines_derivatives", _other_pipelines_derivatives,
     ["OUT=bids/derivatives/other/sub-01"], 2,
     ["bids/derivatives/other/sub-01 is inside the dataset ", "bids/derivatives/other; hint: "
      "give a folder of its own, e.g. ", "bids/derivatives/samri_ml"]),
    ("output_inside_a_dataset_outside_bids_dir", _dataset_outside_bids_dir, ["OUT=ds2/out"], 2,
     ["ds2/out is inside the dataset ", "ds2; hint: give a folder of its own"]),
    ("broken_header_extension", _broken_header_extension, [], 1,
     ["sub-01_ses-1_T2w.nii.gz: truncated or corrupt image (failed to read extension "
      "content)"]),
    # -3 hung the run for ever, with nothing run; NaN likewise
    ("mem_gb_negative", None, ["--mem-gb", "-3"], 2, ["--mem-gb", "-3: must be at least 0.01"]),
    ("mem_gb_tiny", None, ["--mem-gb", "0.005"], 2, ["--mem-gb", "0.005: must be at least 0.01"]),
    ("mem_gb_zero", None, ["--mem-gb", "0"], 2, ["must be at least 0.01"]),
    ("mem_gb_nan", None, ["--mem-gb", "nan"], 2, ["nan: must be at least 0.01"]),
    ("omp_nthreads_zero", None, ["--omp-nthreads", "0"], 2, ["--omp-nthreads", "0: must be at least 1"]),
    # these failed after OUTPUT_DIR and the work dir were made, with a raw ValueError
    ("plugin_args_bad_poll_sleep", None, ["--plugin-args", "poll_sleep_duration=abc"], 2,
     ["--plugin-args", 'poll_sleep_duration="abc": must be a number of seconds, 0 or more']),
    ("plugin_args_no_procs", None, ["--plugin-args", '{"n_procs": 0}'], 2,
     ["n_procs=0: must be a whole number, at least 1"]),
    ("plugin_args_negative_memory", None, ["--plugin-args", "memory_gb=-1"], 2,
     ["memory_gb=-1: must be a number of GB, at least 0.01"]),
    ("plugin_args_not_an_object", None, ["--plugin-args", "[1,2]"], 2,
     ["not a JSON object: '[1,2]'"]),
    # Nipype took the name as the header's text: sbatch refused the script and the run
    # stopped with "IndexError: list index out of range", OUTPUT_DIR made
    ("plugin_args_template_not_a_file", None, ["--plugin-args", "template=hdr_missing.sh"], 2,
     ['template="hdr_missing.sh": no such file (Nipype would take it as the batch script\'s '
      "text, which must start with #!)"]),
    ("plugin_args_comma_in_a_value", None,
     ["--plugin-args", "sbatch_args=--partition=short --mail-type=END,FAIL"], 2,
     ["expected key=value in --plugin-args, got 'FAIL'; hint: a value with a comma needs the "
      "JSON form"]),
    ("empty_participant_label", None, ["--participant-label", ""], 2,
     ["--participant-label: an empty label; hint:"]),
    # labels run up to the next option: the analysis level (or OUTPUT_DIR) given after them
    # was taken as a label, "participant(s) participant not found"
    ("analysis_level_taken_as_a_label", None, ["--participant-label", "01", "participant"], 2,
     ["--participant-label took 'participant' as a label; hint: give BIDS_DIR [OUTPUT_DIR] "
      "participant before --participant-label"]),
    ("output_dir_taken_as_a_session_label", None, ["--session-label", "1", "/data/out"], 2,
     ["--session-label took '/data/out' as a label; hint:"]),
    ("empty_session_label", None, ["--session-label", "ses-"], 2,
     ["--session-label: an empty label"]),
    # "participant(s) 01,02 not found in ...; available: 01, 02"
    ("comma_separated_participant_labels", None, ["--participant-label", "sub-01,sub-02"], 2,
     ["--participant-label: 'sub-01,sub-02' is not a BIDS label (letters and digits only); "
      "hint: separate labels with spaces: --participant-label 01 02"]),
    ("participant_label_with_a_session", None, ["--participant-label", "sub-01_ses-1"], 2,
     ["--participant-label: 'sub-01_ses-1' is not a BIDS label (letters and digits only); "
      "hint: give labels such as 01 or sub-01"]),
]


def _argv(root: Path, extra: list[str]) -> list[str]:
    bids, out, rest, template = str(root / "bids"), None, [], str(root / TEMPLATE)
    for item in extra:
        if item.startswith("BIDS="):
            bids = str(root / item[5:])
        elif item.startswith("WORK="):
            rest += ["-w", str(root / item[5:])]
        elif item.startswith("TPL="):
            template = str(root / item[4:])
        elif item.startswith("OUT="):
            out = str(root / item[4:])
        elif item.startswith("MODEL="):
            rest += ["--mask-model", str(root / item[6:])]
        elif item == "GROUP":  # the BIDS-App analysis level in OUTPUT_DIR's place
            out = "group"
        else:
            rest.append(item)
    # the tiny runs have 5 volumes: 2 dummy scans, so that no note precedes the one-line error
    return [bids, *([out] if out else []), "participant", "--fast", "--no-qc", "--dry-run",
            "--dummy-scans", "2", "--template", template, "--template-mask",
            str(root / MASK), *rest]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_error(case, tmp_path, capsys):
    name, breaker, extra, code, words = case
    make_dataset(tmp_path)
    if breaker is not None:
        breaker(tmp_path)
    before = snapshot(tmp_path)
    rc = main(_argv(tmp_path, extra))
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    # usage errors (2) print argparse's usage synopsis first, then the one error line
    message = lines[-1]
    assert message.startswith("samri_ml-register: error: "), err
    if code == 1:
        assert len(lines) == 1, err
    for word in words:
        assert word in message, message
    # nothing was written anywhere: not into the input, and (default OUTPUT_DIR) no
    # derivatives folder either, because every check runs before anything is created
    assert snapshot(tmp_path) == before


def test_bids_dir_taken_by_participant_label_is_said(tmp_path, capsys):
    """``--participant-label 01 BIDS_DIR``: the labels took BIDS_DIR, and argparse said only
    "the following arguments are required: bids_dir", which was given."""
    make_dataset(tmp_path)
    bids, level, *options = _argv(tmp_path, [])
    assert level == "participant"
    assert main([*options, "--participant-label", "01", bids, level]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("samri_ml-register: error: the following arguments are required: bids_dir; "
                   "hint: give BIDS_DIR [OUTPUT_DIR] participant before --participant-label or "
                   "--session-label, whose labels run up to the next option"), err


@pytest.mark.parametrize("text, said", [
    ('{"Name": "tiny",', "not valid JSON (Expecting property name enclosed in double quotes"),
    ('{"Name": "tiny"}', "no BIDSVersion; the dataset is read anyway"),
    ("[]", "not a JSON object"),
])
def test_a_broken_dataset_description_is_noted_not_passed_in_silence(text, said, tmp_path,
                                                                      capsys):
    """A dataset_description.json that is not JSON, or lacks what BIDS requires, was read
    without a word (pybids does not validate it here); the run goes on, with a note."""
    make_dataset(tmp_path)
    (tmp_path / "bids" / "dataset_description.json").write_text(text)
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("samri_ml-register: note: ") and "bids/dataset_description.json: " \
        f"{said}" in first and first.endswith("hint: fix it (the BIDS validator refuses such a "
                                              "dataset)"), err
    assert "dry run: sub-01 ses-1" in err


def test_plugin_args_key_value_values_are_typed():
    """``--plugin-args n_procs=2`` gave Nipype the string '2' (a TypeError comparing it with
    ints) and ``raise_insufficient=false`` the string 'false', which is true."""
    from samri_ml.cluster import parse_plugin_args

    got = parse_plugin_args("n_procs=2,memory_gb=0.5,raise_insufficient=false,overwrite=True,"
                            "sbatch_args=--partition=short --time=1:00:00,template=none")
    assert got == {"n_procs": 2, "memory_gb": 0.5, "raise_insufficient": False,
                   "overwrite": True, "sbatch_args": "--partition=short --time=1:00:00",
                   "template": None}
    assert parse_plugin_args('{"n_procs": 2}') == {"n_procs": 2}


@pytest.mark.parametrize("text, said", [
    ("n_procs=0", "n_procs=0: must be a whole number, at least 1"),
    ("memory_gb=0.001", "memory_gb=0.001: must be a number of GB, at least 0.01"),
    ("mp_context=bogus", 'mp_context="bogus": must be one of fork, spawn, forkserver'),
    ("status_callback=x", "status_callback: takes a Python function"),
    ("raise_insufficient=2", "raise_insufficient=2: must be true or false"),
    ("[1, 2]", "not a JSON object"),
    ("n_procs", "expected key=value"),
])
def test_plugin_args_refused_in_python_and_on_the_command_line(text, said, capsys):
    """``samri_ml.cluster.parse_plugin_args`` (for Python users) refuses with a ValueError;
    the command line says the same as argparse's one-line usage error, exit 2."""
    from samri_ml.cluster import parse_plugin_args

    with pytest.raises(ValueError, match=re.escape(said)):
        parse_plugin_args(text)
    assert main(["/nonexistent", "--plugin-args", text]) == 2
    assert said in capsys.readouterr().err.strip().splitlines()[-1]


def test_logname_is_set_for_cluster_runs_from_python(tmp_path, monkeypatch):
    """A workflow of one's own run on PBS (SGE, LSF, Condor, OAR) from Python with $LOGNAME
    unset (a container, cron) failed with a bare ``KeyError: 'LOGNAME'`` in Nipype's job
    naming; only samri_ml-register set it. ``check_scheduler`` sets it now
    (``samri_ml.cluster.ensure_logname``), and a set one is kept. Run through the stand-in
    PBS of ``samri_ml.testing.pbs`` (qsub runs each job at once, in a fresh process)."""
    import getpass

    from nipype import Node, Workflow

    from samri_ml.cluster import check_scheduler, ensure_logname
    from samri_ml.interfaces import VolumeConservation
    from samri_ml.testing.pbs import FakePBS

    monkeypatch.setenv("LOGNAME", "lab")
    ensure_logname()
    assert os.environ["LOGNAME"] == "lab"
    pbs = FakePBS(tmp_path / "pbs")
    for key, value in pbs.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LOGNAME")
    check_scheduler("PBS", {})
    assert os.environ["LOGNAME"] == getpass.getuser()
    make_dataset(tmp_path)
    scan = str(tmp_path / "bids" / ANAT)
    wf = Workflow("w", base_dir=str(tmp_path / "work"))
    wf.add_nodes([Node(VolumeConservation(processed_file=scan, raw_file=scan), name="vcf")])
    monkeypatch.chdir(tmp_path)
    graph = wf.run(plugin="PBS", plugin_args={"poll_sleep_duration": 0.5})
    (node,) = graph.nodes()
    assert node.result.outputs.vcf == pytest.approx(1.0)
    assert len(pbs.submitted()) == 1


def test_a_dataset_made_read_only_is_not_written_into_even_by_root(tmp_path, capsys):
    """``chmod -R a-w`` on a dataset (a lab protecting its raw data): as root, the user of a
    Docker BIDS App, the run wrote derivatives/, its lock, work folders and every derivative
    into it (root ignores the mode bits), exit 0. Refused now, before anything is made; the
    same with OUTPUT_DIR elsewhere runs."""
    import stat

    make_dataset(tmp_path)
    root = tmp_path / "bids"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    modes = {}
    for path in [root, *root.rglob("*")]:
        modes[path] = path.stat().st_mode
        path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        assert main(_argv(tmp_path, [])) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "is not a writable folder (read-only: no write permission for anyone" in last, \
            last
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
        assert main(_argv(tmp_path, ["OUT=out"])) == 0
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def test_example_and_graph_refuse_a_read_only_folder_even_to_root(tmp_path, capsys):
    """samri_ml-example and samri_ml-graph wrote into a ``chmod a-w`` folder as root (the
    other commands refuse it): a whole example dataset, a graph picture, exit 0."""
    from samri_ml.cli.example import main as example
    from samri_ml.cli.graph import main as graph

    folder = tmp_path / "protected"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        for command, argv, what in ((example, [str(folder / "ex")], "OUT_DIR"),
                                    (graph, ["structural", str(folder / "g")], "OUT")):
            assert command(argv) == 2
            last = capsys.readouterr().err.strip().splitlines()[-1]
            assert f"error: {what} {folder}" in last and f"{folder} is not writable (" in last, \
                last
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_the_recorded_command_names_absolute_paths(tmp_path, monkeypatch):
    """GeneratedBy's Description (and the reports' command line) recorded the command as typed:
    ``samri_ml-register bids rel_out participant`` could not be run again from another folder.
    Relative paths that exist are made absolute; labels, the level and options stay."""
    from samri_ml.cli.register import recorded_command

    for name in ("bids", "out", "my work", "tpl.nii.gz", "01"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    got = recorded_command(["bids", "out", "participant", "--participant-label", "01", "02",
                            "-w", "my work", "--template=tpl.nii.gz", "--fast"])
    assert got == (f"samri_ml-register {tmp_path / 'bids'} {tmp_path / 'out'} participant "
                   f"--participant-label 01 02 -w '{tmp_path / 'my work'}' "
                   f"--template={tmp_path / 'tpl.nii.gz'} --fast")


def test_verbose_shows_the_traceback(tmp_path, capsys):
    make_dataset(tmp_path)
    _truncate(tmp_path / TEMPLATE)
    assert main([*_argv(tmp_path, []), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "truncated or corrupt" in err.strip().splitlines()[-1]


def test_checks_pass_on_a_good_dataset(tmp_path, capsys):
    """The same dataset, unbroken, passes every check (so the cases above test one thing)."""
    make_dataset(tmp_path)
    assert main(_argv(tmp_path, [])) == 0
    assert "nodes built, none run" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_sidecar_and_header_of_other_repetition_times_are_named(tmp_path, capsys):
    """A sidecar saying 2 s and a header saying 1 s: the sidecar's was used (as BIDS says)
    without a word; now a note names both. Equal ones (the usual case) say nothing."""
    from samri_ml.cli._inputs import check_scans, collect_sessions
    from samri_ml.cli.register import get_parser, validate

    make_dataset(tmp_path)
    sidecar = tmp_path / "bids" / BOLD.replace(".nii.gz", ".json")
    parser = get_parser()
    for tr, said in ((2.0, True), (1.0, False)):
        sidecar.write_text(json.dumps({"RepetitionTime": tr}))
        args = parser.parse_args([a for a in _argv(tmp_path, []) if a != "--dry-run"])
        validate(args, parser)
        sessions = collect_sessions(args)
        check_scans(args, sessions)
        assert sessions[0]["bold_metadata"][0]["RepetitionTime"] == tr
        err = capsys.readouterr().err
        note = (f"{Path(BOLD).name}: RepetitionTime 2 s in its sidecar, 1 s in its NIfTI "
                "header; the sidecar's is used")
        assert (note in err) is said, err


@pytest.mark.parametrize("folder", ["func", "anat"])
def test_scans_are_selected_by_their_own_folder_whatever_folder_holds_the_dataset(
        tmp_path, folder):
    """pybids reads a scan's datatype from the first datatype-named folder of its whole path:
    a dataset kept under /data/func/ had its T2w taken for 'func' (the runs registered
    straight to the template, 'no structural scan'), one under /data/anat/ lost its runs."""
    from samri_ml.cli._inputs import collect_sessions
    from samri_ml.cli.register import get_parser, validate

    root = tmp_path / folder
    make_dataset(root)
    parser = get_parser()
    args = parser.parse_args([a for a in _argv(root, []) if a != "--dry-run"])
    validate(args, parser)
    (session,) = collect_sessions(args)
    assert Path(session["anat"]).name == Path(ANAT).name
    assert [Path(b).name for b in session["bold"]] == [Path(BOLD).name]


def test_filters_take_bids_keys_and_refuse_the_subject_or_session(tmp_path, capsys):
    """-s/-f with BIDS' own keys ("acq") was refused by pybids ("'acq' is not a recognized
    entity"); one with a subject ended in 'TypeError: dict() got multiple values', and a
    session was overridden by each session's query: -f '{"session": "2"}' registered ses-1's
    runs, unsaid."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    fast = root / BOLD.replace("_bold", "_acq-fast_bold")
    shutil.copy(root / BOLD, fast)
    shutil.copy(root / BOLD.replace(".nii.gz", ".json"), fast.with_name(
        fast.name.replace(".nii.gz", ".json")))
    assert main(_argv(tmp_path, ["-f", '{"datatype": "func", "acq": "fast"}'])) == 0
    err = capsys.readouterr().err
    assert f"dry run: sub-01 ses-1: sub-01_ses-1_T2w.nii.gz, {fast.name}\n" in err, err
    for given, said in (('{"subject": "01"}', "choose the subject with --participant-label"),
                        ('{"datatype": "func", "ses": "2"}',
                         "choose the session with --session-label")):
        assert main(_argv(tmp_path, ["-f", given])) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.endswith(f"argument -f/--functional-match: {given!r}: {said}, not in "
                             "-s/-f"), last


@pytest.mark.parametrize("folder, extra, said", [
    ("sub-01", [], "(sub-01), which pybids reads as every scan's subject; hint: rename that "
                   "folder (sub-01 -> sub01)"),
    ("task-x", ["-f", '{"datatype": "func", "task": "rest"}'],
     "(task-x), which pybids reads as every scan's task; hint: rename that folder "
     "(task-x -> taskx)"),
])
def test_a_dataset_in_a_folder_named_as_an_entity_is_refused(tmp_path, capsys, folder, extra,
                                                             said):
    """pybids matches entities on a file's whole path, the first match winning: a dataset
    kept in /data/sub-01/ had every scan taken as sub-01's (sub-02's run registered with
    sub-01's T2w, sub-02 'no BIDS files'), one in /data/task-x/ every run's task as x (-f's
    task matched nothing; without one in -s/-f the task is not read, and it runs)."""
    root = tmp_path / folder
    make_dataset(root)
    bids = root / "bids"
    shutil.copytree(bids / "sub-01", bids / "sub-02")
    for path in sorted((bids / "sub-02").rglob("sub-01*"), reverse=True):
        path.rename(path.with_name(path.name.replace("sub-01", "sub-02")))
    assert main(_argv(root, extra)) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"samri_ml-register: error: {bids}: a folder holding the dataset is named "
                    f"as a BIDS entity {said} or move the dataset out of it"), last
    if extra:
        assert main(_argv(root, [])) == 0
        capsys.readouterr()
    # the same dataset in a folder of another name: both subjects, each with its own scans
    plain = tmp_path / "plain"
    shutil.copytree(root, plain)
    assert main(_argv(plain, extra)) == 0
    err = capsys.readouterr().err
    for sub in ("01", "02"):
        assert f"dry run: sub-{sub} ses-1: sub-{sub}_ses-1_T2w.nii.gz, " \
            f"sub-{sub}_ses-1_task-rest_bold.nii.gz\n" in err, err


@pytest.mark.parametrize("sidecar, said", [
    ({"RepetitionTime": "1.0"}, "RepetitionTime '1.0' in its sidecar is not a number"),
    ({"RepetitionTime": -1}, "RepetitionTime -1 in its sidecar is not a number of seconds "
                             "above 0"),
    ({"RepetitionTime": 0}, "RepetitionTime 0 in its sidecar is not a number of seconds "
                            "above 0"),
    ({"SliceTiming": ["0", "0.5", "0.1", "0.6", "0.3", "0.8"]},
     "SliceTiming in its sidecar is not a list of numbers"),
    ({"SliceTiming": 0.5}, "SliceTiming in its sidecar is not a list of numbers"),
    ({"SliceEncodingDirection": "k+"}, "SliceEncodingDirection 'k+' in its sidecar is not one "
                                       "of i, j, k, i-, j-, k-"),
])
def test_sidecar_values_of_the_wrong_type_are_refused_in_one_line(tmp_path, sidecar, said):
    """Strings where BIDS has numbers failed as 'registration flavour ...: a setting Nipype
    refuses' (hint: compare with default.json), or in a bare ValueError or TypeError."""
    from samri_ml.cli._inputs import check_scans, collect_sessions
    from samri_ml.cli.register import get_parser, validate
    from samri_ml.errors import SamriMLError

    make_dataset(tmp_path)
    path = tmp_path / "bids" / BOLD.replace(".nii.gz", ".json")
    path.write_text(json.dumps({**json.loads(path.read_text()), **sidecar}))
    parser = get_parser()
    args = parser.parse_args([a for a in _argv(tmp_path, []) if a != "--dry-run"])
    validate(args, parser)
    with pytest.raises(SamriMLError, match=re.escape(said)):
        check_scans(args, collect_sessions(args))


def test_a_runs_slice_axis_comes_from_its_header_where_the_sidecar_has_none(tmp_path, capsys):
    """Without SliceEncodingDirection the third axis was taken whatever the header's slice_dim
    said: a run of 12 slices along j (BIDS: the header then tells) was refused for its 12
    slice times, or, where two axes had the same size, corrected along the wrong one. The
    header's axis is used now, said in a note; a sidecar's that disagrees with it is noted."""
    from samri_ml.cli._inputs import check_scans, collect_sessions
    from samri_ml.cli.register import get_parser, validate

    make_dataset(tmp_path)
    path = tmp_path / "bids" / BOLD
    img = nb.load(path)
    img = nb.Nifti1Image(np.asarray(img.dataobj), img.affine)  # (12, 12, 6, 5)
    img.header.set_dim_info(slice=1)
    img.to_filename(path)
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
    times = [i / 12 for i in (0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11)]
    sidecar.write_text(json.dumps({"RepetitionTime": 1.0, "SliceTiming": times}))
    parser = get_parser()
    args = parser.parse_args([a for a in _argv(tmp_path, []) if a != "--dry-run"])
    validate(args, parser)
    sessions = collect_sessions(args)
    check_scans(args, sessions)
    err = capsys.readouterr().err
    assert "no SliceEncodingDirection in its sidecar; using the NIfTI header's slice axis " \
        "(slice_dim), j" in err
    assert sessions[0]["bold_metadata"][0]["SliceEncodingDirection"] == "j"  # what runs
    # a sidecar that says otherwise wins, with a note
    sidecar.write_text(json.dumps({"RepetitionTime": 1.0, "SliceEncodingDirection": "k",
                                   "SliceTiming": [0.0, 0.5, 0.1667, 0.6667, 0.3333, 0.8333]}))
    check_scans(args, collect_sessions(args))
    assert "SliceEncodingDirection k in its sidecar, slice axis j in its NIfTI header " \
        "(slice_dim); the sidecar's is used" in capsys.readouterr().err


def test_the_echoes_of_a_multi_echo_run_are_said_to_be_registered_apart(tmp_path, capsys):
    """Each echo of a multi-echo run (echo-1, echo-2 beside each other) was registered as a
    run of its own without a word: a note names them, with the -f that selects one echo."""
    make_dataset(tmp_path)
    func = tmp_path / "bids" / "sub-01" / "ses-1" / "func"
    for path in list(func.iterdir()):
        for echo in (1, 2):
            shutil.copy(path, path.with_name(path.name.replace("_bold", f"_echo-{echo}_bold")))
        path.unlink()
    argv = _argv(tmp_path, [])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "note: 2 functional run(s) are the echoes of 1 multi-echo acquisition(s): " \
        "sub-01_ses-1_task-rest_echo-1_bold.nii.gz, sub-01_ses-1_task-rest_echo-2_bold.nii.gz; " \
        "each echo is registered as a run of its own" in err, err
    hint = re.search(r"register one echo with -f '([^']+)'", err).group(1)
    assert main([*argv, "-f", hint]) == 0
    err = capsys.readouterr().err
    assert "multi-echo" not in err and "sub-01_ses-1_task-rest_echo-1_bold.nii.gz\n" in err, err
    assert "echo-2" not in err


def test_what_the_checks_fill_in_and_skip_is_said(tmp_path, capsys):
    """A repeated participant label is one participant; a run without a sidecar takes its
    repetition time from the header (said) and its task from the file name; runs without
    slice times, participants without the session asked for, sessions without a structural
    scan are each named in a note, not dropped or switched silently."""
    from samri_ml.cli._inputs import check_scans, collect_sessions
    from samri_ml.cli.register import get_parser, validate

    make_dataset(tmp_path)
    root = tmp_path / "bids"
    (root / BOLD.replace(".nii.gz", ".json")).unlink()  # no sidecar at all
    save(_blob((24, 24, 12)), root / ANAT.replace("sub-01", "sub-02"))
    shutil.copytree(root / "sub-01" / "ses-1" / "func", root / "sub-03" / "ses-2" / "func")
    for path in (root / "sub-03" / "ses-2" / "func").iterdir():
        path.rename(path.with_name(path.name.replace("sub-01_ses-1", "sub-03_ses-2")))
    argv = [a for a in _argv(tmp_path, []) if a != "--dry-run"]
    parser = get_parser()
    args = parser.parse_args([*argv, "--participant-label", "01", "sub-01", "02"])
    validate(args, parser)
    sessions = collect_sessions(args)
    assert [s["subject"] for s in sessions] == ["01", "02"]
    check_scans(args, sessions)
    meta = sessions[0]["bold_metadata"][0]
    assert meta["RepetitionTime"] == pytest.approx(1.0) and meta["TaskName"] == "rest"
    err = capsys.readouterr().err
    assert "no RepetitionTime in its sidecar; using the NIfTI header's, 1 s" in err, err
    assert any("1 functional run(s) without SliceTiming" in n for n in args.scan_notes)
    args = parser.parse_args([*argv, "--session-label", "2"])
    validate(args, parser)
    sessions = collect_sessions(args)
    assert [(s["subject"], s["session"]) for s in sessions] == [("03", "2")]
    check_scans(args, sessions)
    err = capsys.readouterr().err
    assert "skipped 2 participant(s): sub-01 (no session 2); sub-02 (no session 2)" in err, err
    assert any("no structural scan in sub-03 ses-2: its functional runs are registered "
               "straight to the template" in n for n in args.scan_notes), args.scan_notes
    assert main([*argv, "--session-label", "2", "--dry-run"]) == 0
    assert "note: no structural scan in sub-03 ses-2" in capsys.readouterr().err


def test_a_run_without_any_repetition_time_is_said(tmp_path, capsys):
    """A run without a sidecar whose NIfTI header gives no repetition time either (pixdim[4]
    0) was registered without a word; its derivative then had none (BIDS requires one)."""
    import nibabel as nb

    make_dataset(tmp_path)
    root = tmp_path / "bids"
    (root / BOLD.replace(".nii.gz", ".json")).unlink()
    img = nb.load(root / BOLD)
    header = img.header.copy()
    header.set_zooms((*header.get_zooms()[:3], 0.0))
    nb.save(nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine, header), root / BOLD)
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    assert "note: sub-01_ses-1_task-rest_bold.nii.gz: no RepetitionTime in its sidecar nor " \
        "its NIfTI header; the registered run has none either; hint: add RepetitionTime (in " \
        "seconds) to its sidecar" in err, err


def test_a_functional_only_session_says_the_other_sessions_structural_is_not_used(tmp_path,
                                                                                   capsys):
    """A session with functional runs only, beside a session of the same subject with a
    structural scan: its runs go straight to the template, and users expected the other
    session's structural scan to be used. The run's note now says that it is not, and why."""
    bids = make_dataset(tmp_path)
    for rel in (BOLD, BOLD.replace(".nii.gz", ".json")):
        dest = bids / rel.replace("ses-1", "ses-2")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bids / rel, dest)
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "samri_ml-register: note: no structural scan in sub-01 ses-2: its functional runs " \
        "are registered straight to the template (as --registration-method functional); the " \
        "structural scan of sub-01 ses-1 is not used for them (a run is paired only with its " \
        "own session's, where the head lies as in the run)" in err, err
    assert "samri_ml-register: dry run: sub-01 ses-2: no structural scan, " \
        "sub-01_ses-2_task-rest_bold.nii.gz" in err, err


def test_a_session_without_matching_scans_is_named_beside_its_subjects_others(tmp_path,
                                                                              capsys):
    """A session whose scans -s/-f do not select (only a dwi scan, or fieldmaps) was dropped
    without a word where its subject had other sessions; it is named in a note."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    dwi = root / "sub-01" / "ses-2" / "dwi" / "sub-01_ses-2_dwi.nii.gz"
    dwi.parent.mkdir(parents=True)
    shutil.copy(root / BOLD, dwi)
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    assert "note: skipped 1 session(s) where no scan matches -s/-f: sub-01 ses-2" in err, err
    assert "dry run: sub-01 ses-1: sub-01_ses-1_T2w.nii.gz" in err, err


def test_a_subject_folder_without_bids_files_is_named(tmp_path, capsys):
    """A sub-* folder that pybids finds nothing in (empty, or its scans misnamed) was passed
    over without a word; the run names it in its note of skipped participants."""
    make_dataset(tmp_path)
    (tmp_path / "bids" / "sub-02" / "anat").mkdir(parents=True)
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    assert "note: skipped 1 participant(s): sub-02 (no BIDS files in its folder)" in err, err


def test_participants_listed_without_a_folder_are_named(tmp_path, capsys):
    """Animals in participants.tsv whose scans were not copied over (no ``sub-*`` folder)
    were passed over without a word, the run 'finished' on the others; they are named in the
    note of skipped participants, and asked for by label, in the refusal."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    (root / "participants.tsv").write_text("participant_id\tstrain\nsub-01\tC57\n"
                                           "sub-04\tC57\nsub-05\tC57\n")
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    assert ("note: skipped 2 participant(s): sub-04 (in participants.tsv, no folder); "
            "sub-05 (in participants.tsv, no folder)") in err, err
    assert main(_argv(tmp_path, ["--participant-label", "04"])) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "participant(s) 04 not found in " in last, last
    assert last.endswith("(sub-04: in participants.tsv, no folder); available: 01"), last
    # saved from a spreadsheet (a byte-order mark, CRLF): its column was not found, unsaid
    (root / "participants.tsv").write_bytes(b"\xef\xbb\xbfparticipant_id\tstrain\r\n"
                                            b"sub-01\tC57\r\nsub-04\tC57\r\n")
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    assert "note: skipped 1 participant(s): sub-04 (in participants.tsv, no folder)" in err, err


def test_scans_listed_in_bidsignore_are_not_registered(tmp_path, capsys):
    """A lab's ``.bidsignore`` (a scratch acquisition, a folder of extras, a comment) was not
    read: the ignored ``acq-scratch`` scan was registered, chosen before the session's own
    T2w (pybids indexes everything but code/, sourcedata/... and dot files)."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    anat = root / ANAT
    shutil.copy(anat, anat.with_name("sub-01_ses-1_acq-scratch_T2w.nii.gz"))
    (anat.parent / "extra").mkdir()
    shutil.copy(anat, anat.parent / "extra" / "sub-01_ses-1_T1w.nii.gz")
    shutil.copy(root / BOLD, root / BOLD.replace("_bold", "_run-2_bold"))
    argv = _argv(tmp_path, ["--dummy-scans", "0"])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "2 structural scans; using sub-01_ses-1_T2w.nii.gz" in err, err
    assert "sub-01_ses-1_task-rest_run-2_bold.nii.gz" in err, err
    assert "left out 1 scan(s) in a folder below their datatype folder" in err, err
    (root / ".bidsignore").write_text("# scratch scans\n*acq-scratch*\nextra/\n"
                                      "sub-01/**/*_run-2_bold.nii.gz\n")
    assert main(argv) == 0
    err = capsys.readouterr().err
    planned = [line for line in err.splitlines() if "dry run: sub-01" in line]
    assert planned == ["samri_ml-register: dry run: sub-01 ses-1: sub-01_ses-1_T2w.nii.gz, "
                       "sub-01_ses-1_task-rest_bold.nii.gz"], err
    assert "structural scans" not in err and "left out" not in err, err
    # a participant the .bidsignore leaves out is said to be, not just "not found"
    shutil.copytree(root / "sub-01", root / "sub-02")
    for path in (root / "sub-02").rglob("sub-01*"):
        path.rename(path.with_name(path.name.replace("sub-01", "sub-02")))
    with open(root / ".bidsignore", "a") as f:
        f.write("sub-02/\n")
    assert main([*argv, "--participant-label", "02"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("samri_ml-register: error: participant(s) 02 not found in "), last
    assert "(sub-02: left out by its .bidsignore); available: 01" in last, last


def test_set_aside_copies_and_phase_images_are_left_out_with_a_note(tmp_path, capsys):
    """A lab's copies set aside in a folder below anat/ or func/ (``func/old/``) were
    registered beside the session's scans (the run twice, its derivatives written to
    ``sub-01/ses-1/`` outside ``func/``), and a ``part-phase`` run as a magnitude image (a
    VCF of 0.09, "the registration probably failed"). Both are left out, each in a note;
    an -f that names ``part`` still selects a phase run."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    for rel in (ANAT, BOLD):
        (root / rel).parent.joinpath("old").mkdir()
        shutil.copy(root / rel, (root / rel).parent / "old" / Path(rel).name)
    shutil.copy(root / BOLD, root / BOLD.replace("_bold", "_part-phase_bold"))
    argv = _argv(tmp_path, [])
    assert main(argv) == 0
    err = capsys.readouterr().err
    planned = [line for line in err.splitlines() if "dry run: sub-01" in line]
    assert planned == ["samri_ml-register: dry run: sub-01 ses-1: sub-01_ses-1_T2w.nii.gz, "
                       "sub-01_ses-1_task-rest_bold.nii.gz"], err
    assert "structural scans" not in err, err
    assert ("note: left out 2 scan(s) in a folder below their datatype folder (not BIDS "
            "files): sub-01/ses-1/anat/old/sub-01_ses-1_T2w.nii.gz, sub-01/ses-1/func/old/"
            "sub-01_ses-1_task-rest_bold.nii.gz; hint: list the folder in the dataset's "
            ".bidsignore") in err, err
    assert ("note: left out 1 scan(s) that are not magnitude images (part-phase/real/imag): "
            "sub-01_ses-1_task-rest_part-phase_bold.nii.gz") in err, err
    (root / ".bidsignore").write_text("old/\n")
    assert main([*argv, "-f", '{"datatype": "func", "part": "phase"}']) == 0
    err = capsys.readouterr().err
    assert "left out" not in err, err
    assert "dry run: sub-01 ses-1: sub-01_ses-1_T2w.nii.gz, " \
        "sub-01_ses-1_task-rest_part-phase_bold.nii.gz" in err, err


def test_a_scan_outside_the_sessions_of_its_subject_is_named(tmp_path, capsys):
    """A structural scan at the subject's level (``sub-01/anat/sub-01_T2w.nii.gz``, scanned
    once) beside ``sub-01/ses-1/func/`` is in no session, so no session's query found it: its
    runs were registered "without a structural scan", the scan never named. A note names it."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir()
    (root / ANAT).rename(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    assert ("note: left out 1 scan(s) in no ses-* folder of a subject that has sessions (each "
            "scan belongs to one session): sub-01/anat/sub-01_T2w.nii.gz; hint: move it into "
            "its session's folder, named with its ses- label") in err, err
    assert "dry run: sub-01 ses-1: no structural scan, sub-01_ses-1_task-rest_bold" in err, err
    # --session-label chooses the sessions: nothing to say of the others
    assert main(_argv(tmp_path, ["--session-label", "1"])) == 0
    assert "left out" not in capsys.readouterr().err


def test_a_run_left_out_is_not_named_again_as_unmatched_by_f(tmp_path, capsys):
    """A run in no ses-* folder of a subject with sessions was named as left out, then again
    as one that -f did not match ('no functional run matches -f ...; hint: check -f'), the
    -f that had matched it."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    (root / "sub-01" / "func").mkdir()
    for ext in (".nii.gz", ".json"):
        (root / BOLD.replace(".nii.gz", ext)).rename(
            root / "sub-01" / "func" / f"sub-01_task-rest_bold{ext}")
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err
    assert "left out 1 scan(s) in no ses-* folder of a subject that has sessions (each scan " \
        "belongs to one session): sub-01/func/sub-01_task-rest_bold.nii.gz" in err, err
    assert "no functional run matches" not in err, err


def test_a_broken_sidecar_is_named_and_stops_only_its_subject(tmp_path, capsys):
    """A sidecar that is not JSON stopped the run with pybids' words ("Error occurred while
    trying to decode JSON from file <BIDSJSONFile filename=...>"), even where its subject was
    not selected. Now the file and the JSON error are named with a hint, and a subject left
    out by --participant-label is left out of the indexing too, with a note."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    shutil.copytree(root / "sub-01", root / "sub-02")
    for path in (root / "sub-02").rglob("sub-01*"):
        path.rename(path.with_name(path.name.replace("sub-01", "sub-02")))
    broken = root / "sub-02/ses-1/func/sub-02_ses-1_task-rest_bold.json"
    broken.write_text('{"RepetitionTime": 1.0,')
    argv = _argv(tmp_path, [])
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"samri_ml-register: error: {broken}: not valid JSON ("), last
    assert last.endswith("hint: fix the file, or list it in the dataset's .bidsignore"), last
    assert main([*argv, "--participant-label", "01"]) == 0
    err = capsys.readouterr().err
    assert f"note: {broken}: not valid JSON (" in err and "sub-02 is not selected: left out" \
        in err, err
    assert "dry run: sub-01 ses-1" in err and "dry run: sub-02" not in err, err


def test_a_sidecar_not_fetched_stops_only_its_subject(tmp_path, capsys):
    """A DataLad dataset where sub-02's sidecar was not fetched (a link into
    .git/annex/objects to nothing): --participant-label 01 stopped with "its content is not
    here" for sub-02's file, the link's target (under .git) taken for the file's place; sub-02
    is left out with a note, as for a sidecar that is not JSON."""
    make_dataset(tmp_path)
    root = tmp_path / "bids"
    shutil.copytree(root / "sub-01", root / "sub-02")
    for path in (root / "sub-02").rglob("sub-01*"):
        path.rename(path.with_name(path.name.replace("sub-01", "sub-02")))
    sidecar = "sub-02/ses-1/func/sub-02_ses-1_task-rest_bold.json"
    _annexed(sidecar)(tmp_path)
    assert main(_argv(tmp_path, ["--participant-label", "01"])) == 0
    err = capsys.readouterr().err
    assert f"note: {root / sidecar}: its content is not here (a DataLad/git-annex file not " \
        "fetched); sub-02 is not selected: left out" in err, err
    assert "dry run: sub-01 ses-1" in err and "dry run: sub-02" not in err, err


def test_a_run_too_short_for_slice_timing_is_named(tmp_path, capsys):
    """5 volumes less 3 dummy scans leave 2, too few for slice timing: said before the run
    (its sidecar said SliceTimingCorrected false, and nothing else did)."""
    make_dataset(tmp_path)
    argv = _argv(tmp_path, [])  # --dry-run, --dummy-scans 2: 3 volumes kept, corrected
    assert main(argv) == 0
    assert "not slice-timing corrected" not in capsys.readouterr().err
    assert main([*argv, "--dummy-scans", "3"]) == 0
    err = capsys.readouterr().err
    assert "note: 1 functional run(s) with fewer than 3 volumes after the dummy scans, not " \
        "slice-timing corrected: sub-01_ses-1_task-rest_bold.nii.gz" in err, err


def test_a_template_scaled_by_10_is_named_so_whatever_the_ratio():
    """A template whose header is 10x (the emory template: 114 mm) against a head scan with a
    wide field of view (the sammba head, 20.4 mm: 5.6x) got the generic "one of the headers
    look scaled; hint: ... or pass --no-fov-check", which registers into a blur. The
    template's own extent says it: scaled by 10, and how to fix it."""
    from argparse import Namespace

    from samri_ml.cli._inputs import _fov_message

    args = Namespace(template="tpl.nii.gz", template_extent=114.0)
    message = _fov_message("sub-01_T2w.nii.gz", 20.4, args)
    assert message.startswith("tpl.nii.gz: the template's field of view 114 mm is implausible "
                              "for a rodent, 5.59x that of sub-01_T2w.nii.gz (20.4 mm)"), message
    assert "look scaled by 10" in message and "by 0.1" in message, message
    assert "--no-fov-check" not in message, message
    args.template_extent = 1.14  # 0.1x: 11.4 mm once fixed
    message = _fov_message("sub-01_T2w.nii.gz", 20.4, args)
    assert "look scaled by 0.1" in message and "by 10, e.g." in message, message
    args.template_extent = 900.0  # no power of ten makes it a rodent's: no guess
    assert "--no-fov-check" in _fov_message("sub-01_T2w.nii.gz", 20.4, args)


def test_no_fov_check_lets_scaled_headers_through(tmp_path, capsys):
    """... and says which scans it let through: with a header scaled by 10 the run finished
    with a blur and a VCF note that blamed the field of view."""
    make_dataset(tmp_path)
    _scaled_zooms(tmp_path)
    assert main([*_argv(tmp_path, []), "--no-fov-check"]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "--no-fov-check:" in ln]
    assert len(notes) == 1 and "1 scan(s) registered with a field of view far from the " \
        "template's" in notes[0] and "sub-01_ses-1_T2w.nii.gz (" in notes[0] and "10x)" in \
        notes[0], notes


def test_a_header_in_microns_is_no_scaled_header(tmp_path, capsys):
    """A scan whose header counts in microns (ANTs reads it in mm) was refused as a field of
    view 1000x the template's ('1.92e+04 mm'); in meters, 0.001x. A true 10x scale, in any
    unit, is still refused."""
    make_dataset(tmp_path)
    path = tmp_path / "bids" / ANAT
    img = nb.load(str(path))
    for unit, per_mm in (("micron", 1000.0), ("meter", 0.001)):
        out = nb.Nifti1Image(np.asarray(img.dataobj), np.diag([per_mm] * 3 + [1]) @ img.affine)
        out.header.set_xyzt_units(unit, "sec")
        nb.save(out, path)
        assert main(_argv(tmp_path, [])) == 0, capsys.readouterr().err
        capsys.readouterr()
    out = nb.Nifti1Image(np.asarray(img.dataobj), np.diag([10_000.0] * 3 + [1]) @ img.affine)
    out.header.set_xyzt_units("micron", "sec")
    nb.save(out, path)
    assert main(_argv(tmp_path, [])) == 1
    assert "its voxel sizes look scaled by 10" in capsys.readouterr().err


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "-R", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("existing", [True, False], ids=["existing", "to_create"])
def test_unwritable_output_folder(tmp_path, capsys, existing):
    """A read-only OUTPUT_DIR (or parent) fails up front, also for root (immutable folder)."""
    make_dataset(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked if existing else locked / "deriv"
    if os.geteuid() == 0:
        if not _chattr("+i", locked):
            pytest.skip("root ignores permissions and chattr +i is not supported here")
    else:
        locked.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        rc = main(_argv(tmp_path, [f"OUT={out.relative_to(tmp_path)}"]))
        err = capsys.readouterr().err
        assert snapshot(tmp_path) == before
    finally:
        _chattr("-i", locked) if os.geteuid() == 0 else locked.chmod(0o755)
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert ("not writable" in err) if existing else ("cannot create" in err)


@pytest.mark.parametrize("case", ["missing", "corrupt_template", "broken_header"])
def test_console_script_exit_code(case, tmp_path):
    """The installed ``samri_ml-register`` script returns the same codes (2 usage, 1 other);
    a broken header is one line, without nibabel's warning above it."""
    make_dataset(tmp_path)
    if case == "missing":
        argv, code = _argv(tmp_path, ["BIDS=nope"]), 2
    elif case == "broken_header":
        _broken_header_extension(tmp_path)
        argv, code = _argv(tmp_path, []), 1
    else:
        (tmp_path / TEMPLATE).write_bytes(b"\0" * 100)
        argv, code = _argv(tmp_path, []), 1
    script = Path(sys.executable).parent / "samri_ml-register"
    proc = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("samri_ml-register: error: ")
    assert "Traceback" not in proc.stderr
    if case == "broken_header":
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "_T2w.nii.gz: truncated or corrupt image (failed to read extension content)" \
            in proc.stderr


def test_output_lock_refuses_a_second_run(tmp_path, capsys):
    """While a run holds OUTPUT_DIR, another refuses at once (part 4; the real two-process case
    is in test_resume.py); once released, the folder is free again."""
    from samri_ml.lock import OutputLock

    make_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        assert main(_argv(tmp_path, ["OUT=out"])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {os.getpid()}" in err[0] and "is writing to" in err[0], err
    assert main(_argv(tmp_path, ["OUT=out"])) == 0, capsys.readouterr().err


@contextmanager
def _lock_held_elsewhere(*lock_args):
    """Another process holding ``OutputLock(*lock_args)`` for the ``with`` block (it has the
    lock when the block starts); yields that process, killed with SIGKILL at the end."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from samri_ml.lock import OutputLock\n"
         f"with OutputLock(*{tuple(str(a) for a in lock_args)!r}):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    """A run killed with SIGKILL never blocks the next one (the kernel drops flock locks)."""
    from samri_ml.lock import OutputLock

    with _lock_held_elsewhere(tmp_path):
        with pytest.raises(Exception, match="another samri_ml run"):
            with OutputLock(tmp_path):
                pass
    with OutputLock(tmp_path):
        pass


def test_a_lock_that_removes_its_file_leaves_none_and_is_taken_again(tmp_path):
    """``OutputLock(remove=True)`` (the folders of commands other than samri_ml-register):
    another run is refused while it is held, naming the folder's option; once released no
    file is left, and the next run takes it."""
    from samri_ml.lock import OutputLock

    with _lock_held_elsewhere(tmp_path, "--out-dir") as holder:
        with pytest.raises(Exception, match=re.escape(
                f"another samri_ml run (pid {holder.pid}) is writing to {tmp_path}; hint: "
                "wait for it, or use another --out-dir")):
            with OutputLock(tmp_path, "--out-dir", remove=True):
                pass
    for _ in range(2):
        with OutputLock(tmp_path, "--out-dir", remove=True) as lock:
            assert lock.path.read_text() == str(os.getpid())
        assert list(tmp_path.iterdir()) == []


def test_a_work_dir_in_use_refuses_a_second_run_before_anything_is_written(tmp_path, capsys):
    """Two runs with one -w and two OUTPUT_DIRs crashed each other's steps (a FileNotFoundError
    in Nipype's node folders, both exit 1): the work dir is locked like OUTPUT_DIR, and the
    second run, and its --dry-run, refuse at once."""
    make_dataset(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    with _lock_held_elsewhere(work, "-w") as holder:
        before = snapshot(tmp_path)
        argv = _argv(tmp_path, ["OUT=out2", "-w", str(work)])
        for run in ([a for a in argv if a != "--dry-run"], argv):
            assert main(run) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"another samri_ml run (pid {holder.pid}) is using the " \
                f"work dir {work}; hint: wait for it, or give another -w" in err[0], err
            assert snapshot(tmp_path) == before  # not even OUTPUT_DIR
    assert main(_argv(tmp_path, ["OUT=out2", "-w", str(work)])) == 0, capsys.readouterr().err


@pytest.mark.parametrize("work, refused", [("out3", True), ("out3/sub-01", True),
                                           ("out3/.mywork", False)])
def test_a_work_dir_among_the_derivatives_is_refused(tmp_path, capsys, work, refused):
    """-w OUTPUT_DIR/sub-01 (or OUTPUT_DIR itself) was accepted: Nipype's intermediate images
    (…_corrected.nii.gz) and a lock file landed in the subject's derivatives, which BIDS tools
    indexed as results. A dot folder inside OUTPUT_DIR, as the default's, is fine."""
    make_dataset(tmp_path)
    before = snapshot(tmp_path)
    code = main(_argv(tmp_path, ["OUT=out3", "-w", str(tmp_path / work)]))
    err = capsys.readouterr().err.strip().splitlines()
    if refused:
        assert code == 2 and f"--work-dir {tmp_path / work} is inside OUTPUT_DIR " \
            f"{tmp_path / 'out3'}, among the derivatives; hint: leave -w out" in err[-1], err
        assert snapshot(tmp_path) == before
    else:
        assert code == 0, err


def test_another_pipelines_derivatives_are_refused_samri_mls_own_reused(tmp_path, capsys):
    """An OUTPUT_DIR whose dataset_description.json another pipeline wrote (it was rewritten,
    and samri_ml's files mixed into its folders) is refused, also a description that names no
    generator; samri_ml's own folder, as a run leaves it, is taken again."""
    from samri_ml.bids import write_dataset_description

    make_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    desc = out / "dataset_description.json"
    for text, words in (('{"Name": "mine", "BIDSVersion": "1.8.0"}', "names 'mine', not samri_ml"),
                        ('{"GeneratedBy": [{"Name": "samri_ml-example"}]}',
                         "says it was generated by samri_ml-example"),
                        ("{nope", "is not readable JSON")):
        desc.write_text(text)
        assert main(_argv(tmp_path, ["OUT=out"])) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"OUTPUT_DIR {out} holds another dataset (its dataset_description.json " \
            f"{words}); hint: choose an empty folder or samri_ml's own" in err, err
        assert desc.read_text() == text
    write_dataset_description(out, tmp_path / "bids", "0.1", "samri_ml-register ...")
    assert main(_argv(tmp_path, ["OUT=out"])) == 0, capsys.readouterr().err
    # a dataset's own derivatives/ folder takes samri_ml's, in BIDS_DIR and elsewhere
    desc.write_text('{"Name": "mine", "BIDSVersion": "1.8.0"}')
    for folder in ("bids/derivatives/samri_ml", "out/derivatives/samri_ml"):
        assert main(_argv(tmp_path, [f"OUT={folder}"])) == 0, capsys.readouterr().err


# -- the other commands -----------------------------------------------------------------------
def _bad_images(folder: Path) -> dict[str, Path]:
    """One file per bad-input case, plus a good 3D image."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _blob((24, 24, 12))
    files = {"good": save(good, folder / "good.nii.gz")}
    files["2d"] = save(good[:, :, 6], folder / "2d.nii.gz")
    files["one_slice_3d"] = save(good[:, :, 6:7], folder / "one_slice_3d.nii.gz")
    files["5d"] = save(np.stack([np.stack([good, good], -1)] * 2, -1), folder / "5d.nii.gz")
    files["nan"] = save(np.where(good > 90, np.nan, good), folder / "nan.nii.gz")
    files["inf"] = save(np.where(good > 90, -np.inf, good), folder / "inf.nii.gz")
    files["zero"] = save(np.zeros_like(good), folder / "zero.nii.gz")
    # a 4D header of no volumes (an interrupted export) read as '1 dimension(s)'
    files["no_volumes"] = save(np.zeros((*good.shape, 0), np.float32),
                               folder / "no_volumes.nii.gz")
    files["one_voxel"] = save(good[:1, :1, :1], folder / "one_voxel.nii.gz")
    files["text"] = folder / "text.nii.gz"
    files["text"].write_text("not an image\n")
    files["truncated"] = folder / "truncated.nii.gz"
    raw = files["good"].read_bytes()
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["missing"] = folder / "missing.nii.gz"
    # a DataLad/git-annex file not fetched (said "no such file" for a file ls lists)
    files["annexed"] = folder / "annexed.nii.gz"
    files["annexed"].symlink_to("../.git/annex/objects/Xy/Zw/MD5E-s9--k.nii.gz/MD5E-s9--k.nii.gz")
    files["dangling"] = folder / "dangling.nii.gz"
    files["dangling"].symlink_to("/nonexistent/mount/scan.nii.gz")
    files["broken_header"] = _break_extension(save(good, folder / "broken_header.nii.gz"))
    return files


IMAGE_CASES = {  # case -> words of the message
    "missing": ["no such file"], "text": ["not a NIfTI", "hint"],
    "annexed": ["annexed.nii.gz: its content is not here (a DataLad/git-annex file not "
                "fetched); hint: fetch it, e.g. datalad get "],
    "dangling": ["dangling.nii.gz: a symbolic link to /nonexistent/mount/scan.nii.gz, which "
                 "does not exist; hint: fix or remove the link"],
    "truncated": ["truncated or corrupt"], "2d": ["2D image"], "one_slice_3d": ["2D image"],
    "broken_header": ["broken_header.nii.gz: truncated or corrupt image (failed to read "
                      "extension content)"],
    "5d": ["5 dimensions"],
    "nan": ["NaN or Inf", "hint"], "inf": ["NaN or Inf"], "zero": ["all zeros"],
    "no_volumes": ["no_volumes.nii.gz: holds no voxels (its header's shape (24, 24, 12, 0))",
                   "hint"],
    "one_voxel": ["one_voxel.nii.gz: is one voxel (1, 1, 1); a 3D volume is needed"],
}


def _command(name):
    import importlib

    module = importlib.import_module(f"samri_ml.cli.{name}")
    return module.main


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
@pytest.mark.parametrize("tool", ["mask", "qc_processed", "qc_raw"])
def test_other_commands_refuse_bad_images(tool, case, tmp_path, capsys):
    """samri_ml-mask and samri_ml-qc scan: the same one-line errors, nothing written."""
    files = _bad_images(tmp_path / "in")
    bad, good = str(files[case]), str(files["good"])
    if tool == "mask":
        name, argv, prog = "mask", [bad, str(tmp_path / "out" / "m.nii.gz")], "samri_ml-mask"
    elif tool == "qc_processed":
        name, prog = "qc", "samri_ml-qc"
        argv = ["scan", bad, good, "--json", str(tmp_path / "out" / "qc.json")]
    else:
        name, prog = "qc", "samri_ml-qc"
        argv = ["scan", good, bad, "--json", str(tmp_path / "out" / "qc.json")]
    before = snapshot(tmp_path)
    rc = _command(name)(argv)
    err = capsys.readouterr().err
    assert rc in (1, 2), err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    if rc == 1:
        assert len(lines) == 1, err
    for word in IMAGE_CASES[case]:
        assert word in lines[-1], lines[-1]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["missing", "text", "truncated_png"])
def test_identify_plate_refuses_bad_images(case, tmp_path, capsys):
    path = tmp_path / ("section.png" if case != "missing" else "nope.png")
    if case == "text":
        path.write_text("not an image\n")
    elif case == "truncated_png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(50)))
    before = snapshot(tmp_path)
    rc = _command("identify_plate")([str(path), "--json", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert rc in (1, 2), err
    last = err.strip().splitlines()[-1]
    assert last.startswith("samri_ml-identify-plate: error: ") and "Traceback" not in err
    assert str(path) in last
    assert {"missing": "no such file", "text": "not a readable image",
            "truncated_png": "truncated or corrupt PNG"}[case] in last
    assert snapshot(tmp_path) == before


@pytest.mark.slow  # samri_ml-mask runs the U-Net before it finds out it cannot write
def test_mask_unwritable_output(tmp_path, capsys):
    files = _bad_images(tmp_path / "in")
    (tmp_path / "file").write_text("x")
    rc = _command("mask")([str(files["good"]), str(tmp_path / "file" / "m.nii.gz")])
    err = capsys.readouterr().err
    assert rc in (1, 2) and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("samri_ml-mask: error: ")


def _noisy_offset(head: np.ndarray) -> np.ndarray:
    """``head`` with 3 times its 99th percentile added, and noise of 1 % of it: a background
    offset that no flat minimum gives away."""
    high = np.percentile(head, 99)
    return head + 3 * high + np.random.default_rng(0).normal(0, 0.01 * high, head.shape)


@pytest.mark.parametrize("case", ["constant", "offset_background", "tiny"])
def test_mask_refuses_images_it_would_mask_wrongly(case, tmp_path, capsys):
    """A constant image, a background offset far above zero (the seed's scaling keeps it bright:
    the network called the whole field of view brain) or a 5x5x5 crop: one line, nothing written
    (before, a mask of 94-100 % of the image was written and the exit code was 0). The offset
    is noisy: a flat one is subtracted (``test_a_constant_background_offset_is_subtracted``)."""
    import nibabel as nb

    from samri_ml.example import make_template

    head = np.asarray(make_template(0, contrasts=("t2",), supersample=1)["T2w"].dataobj)
    data = {"constant": np.full((24, 24, 12), 7.0), "tiny": _blob((5, 5, 5)),
            "offset_background": _noisy_offset(head)}[case]  # fmt: skip
    src = save(data.astype(np.float32), tmp_path / "in" / "scan.nii.gz")
    before = snapshot(tmp_path)
    rc = _command("mask")([str(src), str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("samri_ml-mask: error: "), err
    assert {"constant": "constant", "tiny": "too small", "offset_background": "fills"}[case] in last
    assert snapshot(tmp_path) == before
    assert nb.load(str(src)).shape == data.shape


def test_mask_never_overwrites_its_input_or_writes_half_its_outputs(tmp_path, capsys):
    files = _bad_images(tmp_path / "in")
    good, out = files["good"], tmp_path / "m.nii.gz"
    before = snapshot(tmp_path)
    for masked, words in [(good, "overwrite IN or OUT"), (out, "overwrite IN or OUT"),
                          (tmp_path / "b.txt", "must end in .nii"),
                          (tmp_path / "nodir" / "b.nii.gz", "output folder does not exist")]:  # fmt: skip
        rc = _command("mask")([str(good), str(out), "--masked", str(masked)])
        err = capsys.readouterr().err
        assert rc in (1, 2) and "Traceback" not in err, err
        assert words in err.strip().splitlines()[-1], err
        assert snapshot(tmp_path) == before, masked


def test_mask_error_after_the_network_ran_is_one_line_in_a_fresh_process(tmp_path):
    """TensorFlow prints C++ lines while it is imported (whatever TF_CPP_MIN_LOG_LEVEL says);
    a user of ``samri_ml-mask`` still sees exactly one line when it refuses a prediction."""
    from samri_ml.example import make_template

    head = np.asarray(make_template(0, contrasts=("t2",), supersample=1)["T2w"].dataobj)
    src = save(_noisy_offset(head).astype(np.float32), tmp_path / "scan.nii.gz")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "SAMRI_ML_TF"))}
    r = subprocess.run([sys.executable, "-m", "samri_ml.cli.mask", str(src),
                        str(tmp_path / "m.nii.gz")], capture_output=True, text=True, env=env,
                       timeout=300)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith(f"samri_ml-mask: error: {src}: the predicted mask fills")
    assert not (tmp_path / "m.nii.gz").exists()


def test_unknown_plugin_and_unreachable_slurm_are_one_line_errors(tmp_path, capsys, monkeypatch):
    """A misspelt --plugin is a usage error before anything is written; --plugin SLURM where
    squeue fails names SLURM's own message (not Nipype's IndexError after the first sbatch)."""
    make_dataset(tmp_path)
    argv = [a for a in _argv(tmp_path, []) if a != "--dry-run"]
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for tool in ("sbatch", "squeue"):
        (fake / tool).write_text("#!/bin/sh\necho 'squeue: fatal: Could not establish a "
                                 "configuration source' >&2\nexit 1\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    before = snapshot(tmp_path)
    assert main([*argv, "--plugin", "Slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown --plugin 'Slurm'" in err and "SLURM" in err
    assert main([*argv, "--plugin", "SLURM"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "squeue fails" in err
    assert "Could not establish a configuration source" in err
    assert main([*argv, "--plugin", "SLURMGraph"]) == 1
    assert "--plugin SLURMGraph: squeue fails" in capsys.readouterr().err
    # SGE, PBS, LSF...: their programs must be on PATH (Nipype's RuntimeError came after
    # OUTPUT_DIR and the work dir were made)
    monkeypatch.setenv("PATH", str(fake))
    for plugin, program in (("SGE", "qsub/qstat"), ("PBS", "qsub/qstat"), ("LSF", "bsub/bjobs")):
        assert main([*argv, "--plugin", plugin]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"--plugin {plugin}: {program} not found on PATH; hint:" in err, err
    # Debug (it takes a Python callable) and IPython without ipyparallel failed only after
    # OUTPUT_DIR, its lock and work dir were made
    assert main([*argv, "--plugin", "Debug"]) == 2
    assert "unknown --plugin 'Debug'" in capsys.readouterr().err
    if importlib.util.find_spec("ipyparallel") is None:
        assert main([*argv, "--plugin", "IPython"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "ipyparallel is not installed" in err, err
    assert snapshot(tmp_path) == before
    # SLURMGraph's script reads the ids its dependencies need from "Submitted batch job N",
    # which sbatch --parsable does not say (SLURM takes it: fe1b1c0)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.defpath}")
    (fake / "squeue").write_text("#!/bin/sh\nexit 0\n")
    assert main([*argv, "--plugin", "SLURMGraph", "--plugin-args",
                 "sbatch_args=-p short --parsable"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "--plugin SLURMGraph: --parsable in sbatch_args leaves the jobs without the ids their "
        "dependencies need; hint: leave it out")
    # the Graph plugins' job scripts run the environment's Python unquoted: an environment
    # in a folder with a space failed every job (SLURM's quotes it)
    monkeypatch.setattr(sys, "executable", "/home/me/Lab Projects/.venv/bin/python")
    assert main([*argv, "--plugin", "SLURMGraph"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "--plugin SLURMGraph: the Python of this environment, /home/me/Lab Projects/.venv/bin/"
        "python, is in a folder with a space, which SLURMGraph's job scripts do not quote; "
        "hint: use --plugin SLURM, or install samri_ml in a folder without spaces")


def test_a_step_asking_more_than_the_partition_has_is_refused_before_the_run(
        tmp_path, capsys, monkeypatch):
    """A step's own request (--omp-nthreads 2: antsRegistration's --cpus-per-task=2, its
    --mem) over the partition's limits passed --dry-run and sbatch --test-only of the run's
    sbatch_args; the run stopped at that step's submission, minutes in. Refused up front now,
    with sbatch's words and the step; a partition that takes it runs."""
    make_dataset(tmp_path)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "squeue").write_text("#!/bin/sh\nexit 0\n")
    # a partition of one CPU per task: sbatch refuses --cpus-per-task=2, as SLURM does
    (fake / "sbatch").write_text(
        "#!/bin/sh\ncase \"$*\" in *cpus-per-task=2*) echo 'sbatch: error: CPU count per "
        "node can not be satisfied' >&2; echo 'sbatch: error: Batch job submission failed: "
        "Requested node configuration is not available' >&2; exit 1;; esac\nexit 0\n")
    for tool in ("sbatch", "squeue"):
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    argv = [*_argv(tmp_path, []), "--plugin", "SLURM", "--plugin-args", "sbatch_args=-p short"]
    before = snapshot(tmp_path)
    assert main([*argv, "--omp-nthreads", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # a step of those asking for 2 CPUs (the first by name: anat_wf.s_biascorrect)
    assert err[-1].startswith("samri_ml-register: error: --plugin SLURM: sbatch refuses the job "
                              "of step anat_wf.s_biascorrect, "), err
    assert "which asks for --cpus-per-task=2" in err[-1] and "(sbatch: error: Batch job " \
        "submission failed: Requested node configuration is not available)" in err[-1], err
    assert snapshot(tmp_path) == before
    assert main([*argv, "--omp-nthreads", "1"]) == 0  # --dry-run: every check passes


def test_a_run_shorter_than_the_dummy_scans_is_named_up_front(tmp_path, capsys):
    """A 5-volume run with the default --dummy-scans 10 is cut to its last volume: one note
    before anything runs, not a Python warning inside a node's log."""
    make_dataset(tmp_path)
    argv = _argv(tmp_path, [])
    assert main([*argv, "--dummy-scans", "10"]) == 0  # --dry-run
    note = [ln for ln in capsys.readouterr().err.splitlines() if "note:" in ln]
    assert len(note) == 2 and "5 volumes, not more than --dummy-scans 10: 4 dropped, 1 kept" in note[0]
    assert "not slice-timing corrected" in note[1]  # and its one volume is not corrected
    assert main(argv) == 0  # --dummy-scans 2
    assert "note:" not in capsys.readouterr().err


def test_scans_whose_derivatives_share_a_name_are_refused_before_the_run(tmp_path, capsys):
    """Any two selected scans whose derivatives would have one name (a bold and a cbv run:
    the transform and QC files drop the suffix; one run as .nii and .nii.gz) are refused
    before anything is written, also where --dry-run is not given; options under which
    their derivatives stay apart pass."""
    make_dataset(tmp_path)
    _cbv_beside_bold(tmp_path)
    before = snapshot(tmp_path)
    argv = [a for a in _argv(tmp_path, ["OUT=out"]) if a not in ("--dry-run", "--no-qc")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "_bold.nii.gz and sub-01_ses-1_task-rest_cbv.nii.gz would write " \
        "the same transform and QC files; hint: register one suffix" in err[0], err
    assert snapshot(tmp_path) == before  # no OUTPUT_DIR, no work dir
    # no transform per run and no QC: nothing shared (the preprocessed runs keep the suffix)
    assert main([*argv, "--dry-run", "--registration-method", "structural", "--no-qc"]) == 0
    assert "_bold.nii.gz, sub-01_ses-1_task-rest_cbv.nii.gz" in capsys.readouterr().err
    # the one -f of the hint registers the bold run alone
    assert main([*argv, "--dry-run", "-f", '{"datatype": "func", "suffix": "bold"}']) == 0
    capsys.readouterr()
    bold = tmp_path / "bids" / BOLD
    for path in bold.parent.glob("*_cbv.*"):
        path.unlink()
    img = nb.load(str(bold))
    nb.save(img, str(bold).replace(".nii.gz", ".nii"))  # the same run, uncompressed
    assert main([*argv, "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert "sub-01_ses-1_task-rest_bold.nii and sub-01_ses-1_task-rest_bold.nii.gz would " \
        "write the same preprocessed image, transform and QC files; hint: the same scan " \
        "stored as .nii and .nii.gz?" not in err  # different extensions: images stay apart
    assert "would write the same transform and QC files; hint: the same scan stored as .nii " \
        "and .nii.gz? keep one" in err, err


@pytest.mark.parametrize("other", ["acq-fast_T2w", "T1w", "run-2_T2w"])
def test_a_second_structural_scan_is_named_not_silently_dropped(other, tmp_path, capsys):
    """The note's -s example is built from what the two scans' names differ in (it was always
    '"run": "2"', also where the dataset had no run entity), and selects the other scan."""
    import re

    make_dataset(tmp_path)
    anat = tmp_path / "bids" / ANAT
    shutil.copy(anat, anat.with_name(anat.name.replace("T2w", other)))
    assert main(_argv(tmp_path, [])) == 0  # --dry-run
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "note:" in ln]
    # the session's plain T2w, not (pybids' name order) an acq- or run- variant
    assert len(notes) == 1 and "sub-01 ses-1: 2 structural scans; using sub-01_ses-1_T2w." \
        "nii.gz" in notes[0], notes
    match = re.search(r"choose with -s, a whole filter, e.g. -s '(\{.*\})' for (\S+)$",
                      notes[0])
    assert match, notes[0]
    chosen = json.loads(match.group(1))
    assert chosen["datatype"] == "anat" and ("run" in chosen) == ("run" in other), chosen
    assert main([*_argv(tmp_path, []), "-s", match.group(1)]) == 0
    err = capsys.readouterr().err
    assert "note:" not in err and f"dry run: sub-01 ses-1: {match.group(2)}, " in err, err


def test_dry_run_writes_nothing_but_the_graph_asked_for(tmp_path, capsys):
    """``--dry-run`` checks everything a run checks and says what it would register, but
    creates no OUTPUT_DIR, work dir or dataset_description.json; ``--write-graph`` adds only
    the picture."""
    make_dataset(tmp_path)
    before = snapshot(tmp_path)
    assert main(_argv(tmp_path, ["OUT=out"])) == 0
    err = capsys.readouterr().err
    assert snapshot(tmp_path) == before
    plan = [ln for ln in err.splitlines() if "dry run:" in ln]
    assert any("sub-01 ses-1:" in ln and "_T2w.nii.gz" in ln and "_bold.nii.gz" in ln
               for ln in plan), err
    assert "nodes built, none run" in plan[-1] and str(tmp_path / "out") in plan[-1]
    assert main(_argv(tmp_path, ["OUT=out", "--write-graph", "--graph-format", "svg"])) == 0
    written = set(snapshot(tmp_path)) - set(before)
    graph = [w for w in written if w.endswith(".svg")]
    assert graph and all(w == "out" or w.startswith("out/figures") for w in written), written
    assert (tmp_path / graph[0]).stat().st_size > 1000


def test_one_process_runs_linear_unless_a_plugin_is_given(tmp_path, capsys):
    """MultiProc with one worker waits a poll per cached step (a cached rerun of the 3-subject
    example: 45.8 s, Linear 6.7 s), so --nprocs 1 picks Linear; --plugin still wins."""
    make_dataset(tmp_path)
    for extra, plugin in ((["--nprocs", "1"], "Linear"), (["--nprocs", "2"], "MultiProc"),
                          (["--nprocs", "1", "--plugin", "MultiProc"], "MultiProc")):
        assert main(_argv(tmp_path, extra)) == 0
        summary = [ln for ln in capsys.readouterr().err.splitlines() if "session(s)" in ln]
        assert f"plugin {plugin}, " in summary[0], (extra, summary)


def _flavour(tmp_path: Path, **phase) -> Path:
    """The fast flavour with settings of its first phase replaced."""
    from samri_ml.registration import load_flavour

    settings = load_flavour("fast")
    settings["phases"]["s_translation"].update(phase)
    path = tmp_path / "flavour.json"
    path.write_text(json.dumps(settings))
    return path


def test_a_flavour_setting_nipype_refuses_is_one_line_before_anything_is_written(tmp_path,
                                                                                    capsys):
    make_dataset(tmp_path)
    flavour = _flavour(tmp_path, sampling_percentage=7.5)  # a fraction, 0..1
    before = snapshot(tmp_path)
    argv = [a for a in _argv(tmp_path, ["OUT=out"]) if a not in ("--dry-run", "--fast")]
    assert main([*argv, "--registration-flavour", str(flavour)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a setting Nipype refuses" in err[0] and "hint:" in err[0], err
    assert snapshot(tmp_path) == before


def test_a_run_refused_by_the_lock_creates_no_work_dir(tmp_path, capsys):
    from samri_ml.lock import OutputLock

    make_dataset(tmp_path)
    (tmp_path / "out").mkdir()
    argv = [a for a in _argv(tmp_path, ["OUT=out", "-w", str(tmp_path / "w2")])
            if a != "--dry-run"]
    with OutputLock(tmp_path / "out"):
        assert main(argv) == 1
    assert "another samri_ml run (pid" in capsys.readouterr().err
    assert not (tmp_path / "w2").exists()


def test_crash_files_land_in_the_subjects_log_folder(tmp_path, capsys):
    """A step that fails at run time (ANTs refuses a pyramid whose smoothing and shrink lists
    differ in length) leaves its crash file in OUTPUT_DIR/sub-XX/log, as the message says."""
    make_dataset(tmp_path)
    flavour = _flavour(tmp_path, smoothing_sigmas=[2, 1])
    argv = [a for a in _argv(tmp_path, ["OUT=out", "-w", str(tmp_path / "w")])
            if a not in ("--dry-run", "--fast")]
    # the installed command, with its own stderr (in-process, Nipype's log handler writes
    # into the stream of whichever test imported it first)
    script = Path(sys.executable).parent / "samri_ml-register"
    proc = subprocess.run([str(script), *argv, "--registration-flavour", str(flavour),
                           "--nprocs", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert "1 step(s) failed (failed: sub-01); crash files are in" in err[-1], err[-3:]
    assert "sub-*/log" in err[-1], err[-3:]
    crashes = list((tmp_path / "out" / "sub-01" / "log").glob("crash-*.txt"))
    assert crashes and "s_register" in crashes[0].name, list((tmp_path / "out").rglob("crash*"))
    # the one line names the first crash file; Nipype's tracebacks are for -v; the steps
    # after the failed one are said not to have run; the report is written all the same
    assert crashes[0].name in err[-1] and not any("Traceback" in ln for ln in err), err
    assert any("not run (a step before it failed)" in ln for ln in err), err
    # nor Nipype's two warnings of each failed step, which came twice (on stdout too)
    assert not any("Storing result file" in ln or "[Node] Error on" in ln for ln in err), err
    assert "nipype" not in proc.stdout, proc.stdout[-2000:]
    assert not any(ln.endswith("done: samri_ml_wf.sub_01_ses_1.ds_anat") for ln in err), err
    report = (tmp_path / "out" / "sub-01.html").read_text()
    assert "sub-01_ses-1_T2w.nii.gz: no registered output (failed or not run)" in report
    # and it says what failed: the step, the crash file's last line, a link to the file
    assert "<h2>Failed steps</h2>" in report and "<b>s_register</b>" in report, report[:3000]
    assert f"href='sub-01/log/{crashes[0].name}'" in report


def _two_sessions_failed_once(tmp_path):
    """A dataset of sub-01 with two sessions, registered once with a flavour ANTs refuses at
    run time (every session fails): ``(bids, run, log, first, ses1)``, ``run(*extra)`` the
    command again (its exit code and stderr lines), ``log`` sub-01's log folder, ``first``
    the crash files there by name (their text), ``ses1`` the names of ses-1's."""
    bids = make_dataset(tmp_path)
    for rel in (ANAT, BOLD, BOLD.replace(".nii.gz", ".json")):
        dest = bids / rel.replace("ses-1", "ses-2")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bids / rel, dest)
    flavour = _flavour(tmp_path, smoothing_sigmas=[2, 1])  # ANTs refuses it at run time
    argv = [a for a in _argv(tmp_path, ["OUT=out", "-w", str(tmp_path / "w")])
            if a not in ("--dry-run", "--fast")]

    def run(*extra):
        proc = subprocess.run([sys.executable, "-m", "samri_ml.cli.register", *argv,
                               "--nprocs", "1", *extra],
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stderr.strip().splitlines()

    rc, err = run("--registration-flavour", str(flavour))
    assert rc == 1 and "step(s) failed (failed: sub-01)" in err[-1], err[-3:]
    log = tmp_path / "out" / "sub-01" / "log"
    first = {p.name: p.read_text() for p in log.glob("crash-*.txt")}
    ses1 = {n for n, text in first.items() if ".sub_01_ses_1." in text}
    assert ses1 and len(ses1) < len(first), list(first)
    return bids, run, log, first, ses1


def _assert_ses1_crashes_set_aside(err, log, first, ses1) -> None:
    """The rerun's note says ses-1's earlier crash files (``ses1`` of ``first``, from
    :func:`_two_sessions_failed_once`) were moved to ``log/earlier``, and they are there,
    unchanged."""
    notes = [ln for ln in err if "crash file(s) of earlier runs" in ln]
    assert notes == [f"samri_ml-register: note: {len(ses1)} crash file(s) of earlier runs, of "
                     "steps that have now run through, moved (kept) to "
                     f"sub-01/log/earlier ({len(ses1)})"], err[-4:]
    assert {p.name: p.read_text() for p in (log / "earlier").iterdir()} == \
        {n: first[n] for n in ses1}


def test_a_rerun_that_succeeds_moves_the_earlier_crash_files_aside(tmp_path):
    """Crash files of a failed run stayed in OUTPUT_DIR/sub-XX/log after a rerun that
    succeeded, and a lab seeing them took the subject for failed. A rerun that runs a
    session through moves that session's earlier crash files into sub-XX/log/earlier/ (kept,
    said in one note); those of a session the rerun did not process stay in log/."""
    _, run, log, first, ses1 = _two_sessions_failed_once(tmp_path)

    rc, err = run("--fast", "--session-label", "1")
    assert rc == 0 and err[-1].endswith("finished; derivatives in " + str(tmp_path / "out")), \
        err[-3:]
    # nothing lost: ses-1's files, unchanged, in log/earlier; ses-2's (not rerun) in log/
    _assert_ses1_crashes_set_aside(err, log, first, ses1)
    assert {p.name for p in log.glob("crash-*")} == set(first) - ses1


def test_a_rerun_stopped_at_its_first_crash_moves_aside_only_the_finished_sessions_crashes(
        tmp_path):
    """After a --stop-on-first-crash rerun, the earlier crash files of a session that ran
    through stayed in sub-XX/log (a normal run moves them to log/earlier/). Now they are moved
    too, and only those: the earlier crash files of the session that failed again stay.
    Linear runs the steps of both sessions in turns, ses-1's before ses-2's; ses-2's last
    step (the sink of its registered BOLD) fails, so ses-1 has run through."""
    from samri_ml.report import registered_output

    bids, run, log, first, ses1 = _two_sessions_failed_once(tmp_path)
    # ses-2's registered BOLD cannot be written: a folder in its place
    registered_output(tmp_path / "out", bids / BOLD.replace("ses-1", "ses-2"),
                      "Tiny").mkdir(parents=True)

    rc, err = run("--fast", "--plugin", "Linear", "--stop-on-first-crash")
    assert rc == 1 and "1 step(s) failed (failed: sub-01)" in err[-1], err[-3:]
    assert "FAILED: samri_ml_wf.sub_01_ses_2.ds_func0" in "\n".join(err), err[-6:]
    _assert_ses1_crashes_set_aside(err, log, first, ses1)
    left = {p.name for p in log.glob("crash-*")}
    assert left - set(first) and left & set(first) == set(first) - ses1, sorted(left)


def test_samri_mls_own_output_as_bids_dir_is_refused(tmp_path, capsys):
    """A previous samri_ml output folder given as BIDS_DIR was read as raw data: its
    registered scans were registered again, into a derivatives/samri_ml inside it. It is
    refused in one line naming the raw dataset it was made from; nothing is written."""
    bids = make_dataset(tmp_path)
    argv = [a for a in _argv(tmp_path, ["OUT=out", "-w", str(tmp_path / "w")])
            if a != "--dry-run"]
    proc = subprocess.run([sys.executable, "-m", "samri_ml.cli.register", *argv,
                           "--nprocs", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    assert list(out.rglob("*_space-Tiny_desc-preproc_T2w.nii.gz")), list(out.rglob("*"))
    before = snapshot(tmp_path)
    assert main(_argv(tmp_path, ["BIDS=out"])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"samri_ml-register: error: BIDS_DIR {out} is samri_ml's own output (a "
                   "derivatives dataset): its registered scans would be registered again; "
                   f"hint: give the raw dataset it was made from, {bids}"], err
    assert snapshot(tmp_path) == before


def test_another_pipelines_derivatives_as_bids_dir_are_said(tmp_path, capsys):
    """A derivatives dataset of another pipeline (``DatasetType: derivative``) given as
    BIDS_DIR was registered without a word; it is still registered (a lab may mean it), with
    one note that names the pipeline and the dataset it was made from."""
    bids = make_dataset(tmp_path)
    (bids / "dataset_description.json").write_text(json.dumps({
        "Name": "denoised", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep"}],
        "SourceDatasets": [{"URL": "https://doi.org/10.18112/openneuro.ds000001"}]}))
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err.strip().splitlines()
    notes = [ln for ln in err if "is a derivatives dataset" in ln]
    assert notes == [f"samri_ml-register: note: BIDS_DIR {bids} is a derivatives dataset "
                     "(generated by fMRIPrep), not raw data: its scans are registered as they "
                     "are, already processed; hint: give the raw dataset it was made from, "
                     "https://doi.org/10.18112/openneuro.ds000001, unless registering these "
                     "is meant"], err
    assert any("dry run: sub-01 ses-1: sub-01_ses-1_T2w.nii.gz" in ln for ln in err), err
    # a SourceDatasets that is no list (a number): 'error: TypeError: 'int' object is not
    # iterable'; now the note without a source
    (bids / "dataset_description.json").write_text(json.dumps({
        "Name": "denoised", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "SourceDatasets": 1}))
    assert main(_argv(tmp_path, [])) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln for ln in err if "is a derivatives dataset" in ln] == [
        f"samri_ml-register: note: BIDS_DIR {bids} is a derivatives dataset, not raw data: its "
        "scans are registered as they are, already processed; hint: give the raw dataset it "
        "was made from, unless registering these is meant"], err


FORKED_TF_SCRIPT = r"""
import json, sys
from pathlib import Path
import cv2, nibabel as nb, numpy as np
from nipype.pipeline import engine as pe
from samri_ml.example import make_template
from samri_ml.interfaces import IdentifyPlate, MaskBrain
from samri_ml.masking.predict import predict_mask
from samri_ml.plates.identify import default_model_dir

tmp = Path(sys.argv[1])
head = make_template(0, contrasts=("t2",), supersample=1)["T2w"]
nb.save(head, tmp / "head.nii.gz")
section = tmp / "section.png"
with np.load(default_model_dir() / "plates_index.npz") as z:
    thumbs = dict(zip(z["plates"].tolist(), z["thumbnails"]))
cv2.imwrite(str(section), thumbs[100])
direct = np.asarray(predict_mask(head).dataobj)  # TensorFlow now runs in this process
wf = pe.Workflow("w", base_dir=str(tmp / "work"))
wf.add_nodes([pe.Node(MaskBrain(in_file=str(tmp / "head.nii.gz")), name="mask"),
              pe.Node(IdentifyPlate(in_file=str(section)), name="plate")])
graph = wf.run(plugin="MultiProc", plugin_args={"n_procs": 2})
res = {n.name: n.result.outputs for n in graph.nodes()}
same = bool(np.array_equal(np.asarray(nb.load(res["mask"].out_mask).dataobj), direct))
print(json.dumps({"same_mask": same, "top5": res["plate"].ranking[:5]}))
"""


@pytest.mark.slow
def test_interfaces_run_in_workers_forked_after_tensorflow_ran(tmp_path):
    """A session that masked an image, then ran a workflow with MaskBrain and IdentifyPlate
    under MultiProc: the workers are forked from a process whose TensorFlow had started its
    thread pools, and a network run there hung for ever. They now run in a new interpreter."""
    r = subprocess.run([sys.executable, "-c", FORKED_TF_SCRIPT, str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["same_mask"] and 100 in out["top5"], out


def test_a_run_whose_vcf_says_it_failed_is_named(tmp_path):
    """A rat head registered to DSURQE (VCF 0.046) or a 10x scan (0.002) ended with "finished"
    and exit 0, the failure visible only in the report's pictures."""
    from samri_ml.cli.register import implausible_qc_notes

    paths = []
    for name, vcf in (("sub-01_ses-1_T2w", 0.046), ("sub-02_ses-1_T2w", 0.93),
                      ("sub-03_ses-1_T2w", None)):
        path = tmp_path / f"{name.rsplit('_', 1)[0]}_space-X_desc-qc_metrics.json"
        path.write_text(json.dumps({"scan": name, "vcf": vcf}))
        paths.append(str(path))
    notes = implausible_qc_notes([*paths, str(tmp_path / "sub-01_T2w.nii.gz")], tmp_path)
    assert len(notes) == 1 and notes[0].startswith("sub-01_ses-1_T2w: VCF 0.046")
    assert str(tmp_path / "sub-01.html") in notes[0]


def test_a_wide_head_scan_is_not_said_to_have_failed_by_its_vcf(tmp_path):
    """The nirodents T2w head (256x24x256, 29 x 24 x 29 mm, skull, neck and eyes) to the
    DSURQE 200 um grid (41x67x58: 1274 mm^3), well registered (the report's pictures), has
    6762 mm^3 above its threshold: VCF 0.153, where at most 0.188 fits on the grid. The run
    said "the registration probably failed" (note and red banner). Now both say that the VCF
    cannot tell; a VCF far below its ceiling, or one without the grid, is still a failure."""
    from samri_ml.cli.register import implausible_qc_notes
    from samri_ml.qc.volume import grid_volume, vcf_verdict
    from samri_ml.report import report_warnings

    template = save(np.ones((41, 67, 58), np.float32), tmp_path / "tpl.nii.gz",
                    zooms=(0.2, 0.2, 0.2))
    grid_mm3 = grid_volume(nb.load(template))
    assert grid_mm3 == pytest.approx(1274.6, abs=0.1)
    wide = {"scan": "sub-01_T2w", "vcf": 0.153, "volume_raw": 6762.1}
    diverged = {"scan": "sub-02_T2w", "vcf": 0.002, "volume_raw": 6762.1}
    narrow = {"scan": "sub-03_T2w", "vcf": 0.1, "volume_raw": 900.0}  # ceiling 1.4
    assert vcf_verdict(wide, grid_mm3) == "uninformative"
    assert vcf_verdict(wide) == "implausible"  # no grid known: as before
    assert vcf_verdict(narrow, grid_mm3) == "implausible"
    assert vcf_verdict({"vcf": 0.9, "volume_raw": 9e9}, grid_mm3) is None
    assert vcf_verdict({"vcf": 9.0, "volume_raw": 9e9}, grid_mm3) == "implausible"
    paths = []
    for record in (wide, narrow):
        path = tmp_path / f"{record['scan'][:6]}_space-X_desc-qc_metrics.json"
        path.write_text(json.dumps(record))
        paths.append(str(path))
    first, second = implausible_qc_notes(paths, tmp_path, grid_mm3)
    assert first == ("sub-01_T2w: VCF 0.153 is below 0.25 but could not be above 0.19: the "
                     "template's grid (1275 mm^3) is smaller than the scan's volume above "
                     "threshold (6762 mm^3; a field of view wider than the template's), so the "
                     "VCF cannot tell whether the registration failed; hint: judge it by the "
                     f"pictures in {tmp_path / 'sub-01.html'}"), first
    assert "probably failed" not in first
    assert second.startswith("sub-03_T2w: VCF 0.1 (the registered scan holds") and \
        "probably failed" in second
    banner = report_warnings([wide, narrow], grid_mm3=grid_mm3)
    assert banner[0].startswith("sub-01_T2w: VCF 0.153 is below 0.25 but could not be above")
    assert banner[0].endswith("judge it by the pictures")
    assert "probably failed" in banner[1]
    # the report's QC table: that VCF marked and explained, not red
    from samri_ml.report import _qc_table

    table = _qc_table([wide, narrow], 0.25, 4.0, grid_mm3)
    assert "<td>0.153 &sect;</td>" in table and "<td class='bad'>0.1</td>" in table, table
    assert "its VCF stays low however it is registered" in table
    # a wide scan moved off the grid (it fills 1 % of what the grid holds) still failed
    assert vcf_verdict(diverged, grid_mm3) == "implausible"


def test_a_structural_scan_registered_off_the_template_is_not_a_partial_field_of_view(tmp_path):
    """The nirodents head, registered unmasked with the fast flavour, covered 40 % of the
    DSURQE brain: the run said only that its VCF "cannot tell", and the report called it a
    partial field of view, "not by itself a failed registration". A structural scan holds the
    whole brain or most of it as a rule: coverage under 0.6 is named as a probable failure now
    (note, banner, red cell); a functional run of a few slices, and a structural scan cut at
    both ends (0.8), stay a partial field of view."""
    from samri_ml.cli.register import implausible_qc_notes
    from samri_ml.report import _qc_table, report_warnings

    grid_mm3 = 1274.6
    head = {"scan": "sub-15_T2w", "modality": "anat", "vcf": 0.153, "volume_raw": 6762.1,
            "brain_coverage": 0.40}
    slab = {"scan": "sub-15_task-rest_bold", "modality": "func", "vcf": 0.6,
            "volume_raw": 600.0, "brain_coverage": 0.40}
    # a head cut at the olfactory bulb and the cerebellum (the emory template: 0.80)
    whole = {"scan": "sub-16_T2w", "modality": "anat", "vcf": 0.95, "volume_raw": 600.0,
             "brain_coverage": 0.80}
    paths = []
    for record in (head, slab, whole):
        path = tmp_path / f"{record['scan']}_space-X_desc-qc_metrics.json"
        path.write_text(json.dumps(record))
        paths.append(str(path))
    (note,) = implausible_qc_notes(paths, tmp_path, grid_mm3)
    assert note == ("sub-15_T2w: the registered structural scan covers only 40% of the "
                    "template's brain: the registration probably failed, unless the scan is a "
                    f"slab of part of the brain; hint: look at {tmp_path / 'sub-15.html'}")
    (line,) = report_warnings([head, slab, whole], grid_mm3=grid_mm3)
    assert line.startswith("sub-15_T2w: the registered structural scan covers only 40%")
    table = _qc_table([{**r, "_coverage": r["brain_coverage"]} for r in (head, slab, whole)],
                      0.25, 4.0, grid_mm3)
    assert "<td class='bad'>40% &dagger;</td>" in table  # the head
    assert "<td>40% &dagger;</td>" in table and "<td>80% &dagger;</td>" in table
    assert "a structural scan holds the whole brain, or most of it, as a rule" in table


def test_a_scan_with_two_disagreeing_orientations_is_named(tmp_path, capsys):
    """sform and qform mirrored against each other: ANTs read one, the checks and pictures the
    other, and the result came out mirrored without a word."""
    from samri_ml.cli._inputs import check_scans, collect_sessions
    from samri_ml.cli.register import get_parser, validate

    make_dataset(tmp_path)
    path = tmp_path / "bids" / ANAT
    img = nb.load(str(path))
    mirrored = img.affine.copy()
    mirrored[0, 0] *= -1
    mirrored[0, 3] = img.shape[0] * img.affine[0, 0]
    img.set_sform(img.affine, code=2)
    img.set_qform(mirrored, code=1)
    nb.save(img, str(path))
    parser = get_parser()
    args = parser.parse_args(_argv(tmp_path, []))
    validate(args, parser)
    sessions = collect_sessions(args)
    check_scans(args, sessions)
    assert any("1 scan(s) whose header holds two different orientations (sform and qform)"
               in n and "sub-01_ses-1_T2w.nii.gz" in n for n in args.scan_notes), args.scan_notes
    img.set_qform(img.affine, code=1)  # agreeing: no note
    nb.save(img, str(path))
    args = parser.parse_args(_argv(tmp_path, []))
    validate(args, parser)
    check_scans(args, collect_sessions(args))
    assert not any("two different orientations" in n for n in args.scan_notes)


@pytest.mark.parametrize("plugin, nprocs, threads", [("PBS", "4", 1), ("MultiProc", "3", 3)])
def test_a_cluster_run_uses_one_thread_per_ants_step_by_default(tmp_path, capsys, monkeypatch,
                                                                plugin, nprocs, threads):
    """Without --omp-nthreads, a cluster run gave every ANTs job as many threads as the login
    node has cores (--nprocs' default), while a job gets one CPU unless asked for more; the
    summary line now says how many threads each ANTs step uses. --nprocs given with a cluster
    plugin, where nothing reads it, is noted (it was accepted without a word)."""
    from samri_ml.testing.pbs import FakePBS

    make_dataset(tmp_path)
    monkeypatch.setenv("PATH", FakePBS(tmp_path / "pbs").env["PATH"])  # qsub, qstat
    assert main([*_argv(tmp_path, []), "--plugin", plugin, "--nprocs", nprocs]) == 0
    err = capsys.readouterr().err
    summary = next(line for line in err.splitlines() if "thread(s) per ANTs step" in line)
    assert f"plugin {plugin}, {threads} thread(s) per ANTs step;" in summary, err
    note = f"note: --nprocs is not used with --plugin {plugin} (each step is a job"
    assert (note in err) == (plugin == "PBS"), err
    assert main([*_argv(tmp_path, []), "--plugin", plugin]) == 0  # not given: no note
    assert "--nprocs is not used" not in capsys.readouterr().err


@pytest.mark.parametrize("plugin, noted", [("PBS", True), ("Linear", True), ("MultiProc", False)])
def test_mem_gb_without_multiproc_is_noted(tmp_path, capsys, monkeypatch, plugin, noted):
    """--mem-gb limits MultiProc only: with a cluster plugin (or Linear) it was dropped in
    silence, the jobs getting what the scheduler gives by default."""
    from samri_ml.testing.pbs import FakePBS

    make_dataset(tmp_path)
    monkeypatch.setenv("PATH", FakePBS(tmp_path / "pbs").env["PATH"])  # qsub, qstat
    assert main([*_argv(tmp_path, []), "--plugin", plugin, "--mem-gb", "8"]) == 0
    err = capsys.readouterr().err
    note = f"note: --mem-gb is not used with --plugin {plugin}; hint: "
    assert (note in err) == noted, err
    if plugin == "PBS":
        assert "ask the scheduler for it in --plugin-args" in err, err


def test_a_run_stopped_at_its_first_crash_calls_no_earlier_runs_subject_finished(tmp_path,
                                                                                   capsys):
    """--stop-on-first-crash: the run's one line said 'finished' of a subject whose
    registered scans an earlier run had left in OUTPUT_DIR, although this run stopped before
    it. Only the subjects this run ran through are said finished; the other is 'not
    finished'. Both subjects have such leftovers (either may fail first)."""
    from samri_ml.report import registered_output

    bids = make_dataset(tmp_path)
    for rel in (ANAT, BOLD, BOLD.replace(".nii.gz", ".json")):
        dest = bids / rel.replace("sub-01", "sub-02")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bids / rel, dest)
    out = tmp_path / "out"
    for sub in ("sub-01", "sub-02"):  # an earlier run's registered scans
        for rel in (ANAT, BOLD):
            raw = bids / rel.replace("sub-01", sub)
            left = registered_output(out, raw, "Tiny")
            left.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, left)
    flavour = _flavour(tmp_path, smoothing_sigmas=[2, 1])  # ANTs refuses it at run time
    argv = [a for a in _argv(tmp_path, ["OUT=out", "-w", str(tmp_path / "w")])
            if a not in ("--dry-run", "--fast")]
    assert main([*argv, "--registration-flavour", str(flavour), "--nprocs", "1",
                 "--stop-on-first-crash"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    said = re.search(r"1 step\(s\) failed \((.*?)\); crash files are in", last)
    assert said and said.group(1) in ("failed: sub-01; not finished: sub-02",
                                      "failed: sub-02; not finished: sub-01"), last


def test_a_run_where_one_subject_fails_says_who_failed_and_who_finished(tmp_path):
    """Two subjects, one of whose T2w is constant: it passes the checks before the run, and
    its U-Net mask step fails. The run's one line named only the first crash file; it now
    says which subjects failed, finished or (after --stop-on-first-crash) did not finish.
    The finished subject keeps its derivatives, and a rerun after fixing the scan redoes the
    failed subject only (the other's derivatives untouched, mtime included). The finished
    subject's scan, 3x the template's width, has a VCF that cannot tell: its note, said at
    the end of a run that finished, was not said beside a failure (only in the report)."""
    bids = make_dataset(tmp_path)
    for rel in (ANAT, BOLD, BOLD.replace(".nii.gz", ".json")):
        dest = bids / rel.replace("sub-01", "sub-02")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bids / rel, dest)
    wide = bids / ANAT.replace("sub-01", "sub-02")
    save(np.asarray(nb.load(str(wide)).dataobj), wide, zooms=(0.6, 0.6, 1.2))
    bad = bids / ANAT
    good = bad.read_bytes()
    save(np.ones((24, 24, 12), np.float32), bad)  # constant: "nothing to mask"

    def run(out, *extra):
        argv = [a for a in _argv(tmp_path, [f"OUT={out}", "-w", str(tmp_path / f"w_{out}")])
                if a not in ("--dry-run", "--no-qc")]
        proc = subprocess.run([sys.executable, "-m", "samri_ml.cli.register", *argv,
                               "--masking", "unet", *extra],
                              capture_output=True, text=True, timeout=600)
        return proc.returncode, proc.stderr.strip().splitlines()

    rc, err = run("out_stop", "--nprocs", "1", "--stop-on-first-crash")
    assert rc == 1, err[-3:]
    assert "1 step(s) failed (failed: sub-01; not finished: sub-02); crash files are in" \
        in err[-1], err[-3:]
    # the scan named (since 2026-12-05), the middle of its path cut to keep the line short
    assert "says: samri_ml.errors.SamriMLError: " in err[-1] and \
        ".nii.gz: the image is constant" in err[-1], err[-1]
    assert err[-1].endswith("only what failed or did not run is redone"), err[-1]

    rc, err = run("out", "--nprocs", "2")
    assert rc == 1, err[-3:]
    assert "1 step(s) failed (failed: sub-01; finished: sub-02); crash files are in" \
        in err[-1], err[-3:]
    notes = [ln for ln in err if ln.startswith("samri_ml-register: note: sub-02_ses-1_T2w: ")]
    assert len(notes) == 1 and "sub-02.html" in notes[0], err[-4:]
    out = tmp_path / "out"
    done = {p: p.stat().st_mtime_ns for p in (out / "sub-02").rglob("*")
            if p.is_file() and "figures" not in p.parts}
    assert any(p.name.endswith("_space-Tiny_desc-preproc_bold.nii.gz") for p in done), done
    assert any(p.name.endswith("_to-Tiny_mode-image_xfm.h5") for p in done), done
    # with --no-qc the QC record there is the run's before: its VCF was said as this run's
    rc, err = run("out", "--nprocs", "2", "--no-qc")
    assert rc == 1 and "(failed: sub-01; finished: sub-02)" in err[-1], err[-3:]
    assert not [ln for ln in err if ln.startswith("samri_ml-register: note: sub-02_")], err[-4:]

    bad.write_bytes(good)
    rc, err = run("out", "--nprocs", "2")
    assert rc == 0 and err[-1].endswith(f"finished; derivatives in {out}"), err[-3:]
    assert [ln for ln in err if ln.startswith("samri_ml-register: note: sub-02_ses-1_T2w: ")] \
        == notes, err[-4:]
    assert (out / "sub-01/ses-1/anat/sub-01_ses-1_space-Tiny_desc-preproc_T2w.nii.gz").exists()
    assert {p: p.stat().st_mtime_ns for p in done} == done
    assert any("done: samri_ml_wf.sub_01_ses_1.anat_wf.s_mask" in ln for ln in err), err
    assert not any(ln.endswith("done: samri_ml_wf.sub_02_ses_1.anat_wf.s_mask") for ln in err)
    # the failed run's crash file of sub-01 is set aside (kept) now that it has run through
    log = out / "sub-01" / "log"
    assert not list(log.glob("crash-*")) and list((log / "earlier").glob("crash-*s_mask*")), \
        list(log.rglob("*"))
    assert any("moved (kept) to sub-01/log/earlier" in ln for ln in err), err[-4:]


def test_the_scan_checks_hold_one_scans_data_at_a_time(tmp_path):
    """check_scans reads every run's data to check them; since load_nifti's image holds its
    data, the image of the run before stayed alive while the next was read (a peak of 3.0
    runs' memory here: the run before, the next one and its decompressed bytes). Now 2.0, as
    reading one run takes."""
    import tracemalloc

    from samri_ml.cli._inputs import check_scans, collect_sessions
    from samri_ml.cli.register import get_parser, validate

    make_dataset(tmp_path)
    run = np.stack([_blob((40, 40, 20), seed=i) for i in range(60)], axis=-1)  # 7.7 MB
    func = tmp_path / "bids" / Path(BOLD).parent
    (tmp_path / "bids" / BOLD.replace(".nii.gz", ".json")).unlink()  # its 6 slice times
    for task in ("rest", "other"):
        save(run, func / Path(BOLD).name.replace("rest", task), zooms=(0.12, 0.12, 0.24))
    args = get_parser().parse_args([a for a in _argv(tmp_path, []) if a != "--dry-run"])
    validate(args, get_parser())
    sessions = collect_sessions(args)
    assert len(sessions[0]["bold"]) == 2
    tracemalloc.start()
    try:
        check_scans(args, sessions)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * run.nbytes, f"peak {peak / run.nbytes:.2f} runs"


# --- a QA pass of the BIDS App (2026-12-04) ---------------------------------------------------


def _foreign(folder: Path, name: str = "gt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_description.json").write_text(json.dumps(
        {"Name": name, "BIDSVersion": "1.8.0", "DatasetType": "derivative"}))
    return folder


@pytest.mark.parametrize("work, said", [
    ("bids/derivatives", "is the derivatives folder itself"),
    ("bids/derivatives/gt", "is inside another dataset (" ),
    ("bids/derivatives/gt/sub-01", "is inside another dataset ("),
])
def test_the_work_dir_is_refused_where_another_pipeline_keeps_its_files(tmp_path, capsys,
                                                                         work, said):
    """``-w BIDS_DIR/derivatives`` and ``-w`` inside another pipeline's derivatives passed (a
    run wrote its work folders and a lock among that dataset's files), as OUTPUT_DIR does not."""
    make_dataset(tmp_path)
    _foreign(tmp_path / "bids" / "derivatives" / "gt")
    before = snapshot(tmp_path / "bids")
    assert main(_argv(tmp_path, [f"WORK={work}"])) == 2
    assert said in capsys.readouterr().err.strip().splitlines()[-1]
    assert snapshot(tmp_path / "bids") == before


def test_an_output_dir_of_another_dataset_is_refused_and_a_moved_one_noted(tmp_path, capsys):
    """A second dataset run into an OUTPUT_DIR re-pointed its description's source at itself,
    without a word: the first dataset's sidecars (Sources: bids:raw:sub-01/...) then named
    another dataset's files. Refused where that dataset is still there; where it is gone
    (moved), noted."""
    make_dataset(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "bids", other)
    out = tmp_path / "out"
    out.mkdir()
    desc = {"Name": "samri_ml registration", "BIDSVersion": "1.8.0",
            "DatasetType": "derivative", "GeneratedBy": [{"Name": "samri_ml"}],
            "DatasetLinks": {"raw": other.resolve().as_uri()}}
    (out / "dataset_description.json").write_text(json.dumps(desc))
    assert main(_argv(tmp_path, ["OUT=out"])) == 2
    assert f"holds the derivatives of another dataset ({other.resolve()})" in \
        capsys.readouterr().err.strip().splitlines()[-1]
    shutil.rmtree(other)  # moved away: a note, and the run goes on
    assert main(_argv(tmp_path, ["OUT=out"])) == 0
    assert f"was made from {other.resolve()}, which is gone" in capsys.readouterr().err
    desc["DatasetLinks"]["raw"] = (tmp_path / "bids").resolve().as_uri()  # its own: silent
    (out / "dataset_description.json").write_text(json.dumps(desc))
    assert main(_argv(tmp_path, ["OUT=out"])) == 0
    assert "note" not in capsys.readouterr().err


def test_a_functional_filter_that_matches_no_run_is_noted(tmp_path, capsys):
    """A misspelt task in -f dropped every functional run: the structural scan alone was
    registered, exit 0, without a word."""
    make_dataset(tmp_path)
    assert main(_argv(tmp_path, ["-f", '{"suffix": "bold", "task": "rset"}'])) == 0
    err = capsys.readouterr().err
    assert 'note: no functional run matches -f {"suffix": "bold", "task": "rset"}, of the 1 ' \
        "in the selected participants' func/ folders (e.g. sub-01_ses-1_task-rest_bold" in err
    assert main(_argv(tmp_path, [])) == 0
    assert "no functional run matches" not in capsys.readouterr().err


def test_sessions_left_out_of_a_report_are_named(tmp_path, capsys):
    """A rerun of one session rewrote the subject's report without the others, whose
    derivatives stay in OUTPUT_DIR, without a word."""
    from samri_ml.cli.register import _note_sessions_not_reported

    for ses in ("1", "2"):
        anat = tmp_path / "sub-01" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-01_ses-{ses}_space-T_T2w.nii.gz").write_bytes(b"")
    (tmp_path / "sub-01" / "ses-3").mkdir()  # nothing in it: nothing to report
    _note_sessions_not_reported(tmp_path, [{"subject": "01", "session": "2"}])
    assert capsys.readouterr().err == (
        "samri_ml-register: note: sub-01.html shows this run's session(s) only; the derivatives "
        f"of ses-1 in {tmp_path / 'sub-01'} are not in it; hint: rerun without --session-label "
        "(finished steps are reused) for a report of them all\n")
    _note_sessions_not_reported(tmp_path, [{"subject": "01", "session": s} for s in "12"])
    assert capsys.readouterr().err == ""


def test_a_label_with_spaces_around_it_is_found(tmp_path, capsys):
    """``--participant-label "01 "`` (from a spreadsheet or a quoted list) said "participant(s)
    01 not found ...; available: 01"."""
    make_dataset(tmp_path)
    assert main(_argv(tmp_path, ["--participant-label", " 01 ", "--session-label", "1 "])) == 0
    assert "dry run: sub-01 ses-1" in capsys.readouterr().err


def test_a_label_given_as_its_folder_is_found(tmp_path, capsys):
    """``--participant-label sub-01/`` (the folder's name as the shell completes it) was
    refused with the hint to give BIDS_DIR [OUTPUT_DIR] participant first, which was done;
    it is the label sub-01. A label without its prefix and with a slash stays refused."""
    make_dataset(tmp_path)
    argv = _argv(tmp_path, ["--participant-label", "sub-01/", "--session-label", "ses-1/"])
    assert main(argv) == 0
    assert "dry run: sub-01 ses-1" in capsys.readouterr().err
    assert main(_argv(tmp_path, ["--participant-label", "out/"])) == 2
    assert "took 'out/' as a label" in capsys.readouterr().err


def test_an_interrupted_rerun_that_rewrote_part_of_a_subject_says_so(tmp_path, capsys):
    """A rerun with another --masking, interrupted after it wrote the new registered scan,
    left it beside the earlier run's QC record and under a report that said "masking none",
    nothing telling them apart. The subject is now named in a note, and its earlier report
    gets a banner (once); a subject whose files are all of one run is not named."""
    import argparse
    import os
    import time

    from samri_ml.cli.register import _note_mixed_outputs

    out = tmp_path / "out"
    anat = out / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    old = time.time() - 3600
    files = {n: anat / n for n in ("sub-01_ses-1_space-P_desc-preproc_T2w.nii.gz",
                                   "sub-01_ses-1_space-P_desc-qc_metrics.json")}
    for path in files.values():
        path.write_text("x")
        os.utime(path, (old, old))
    only_old = out / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz"
    only_old.parent.mkdir(parents=True)
    only_old.write_text("x")
    report = out / "sub-01.html"
    report.write_text("<!DOCTYPE html><html><head></head><body><h1>masking none</h1>"
                      "</body></html>\n")
    os.utime(report, (old, old))
    started = time.time() - 10
    files["sub-01_ses-1_space-P_desc-preproc_T2w.nii.gz"].write_text("new")
    args = argparse.Namespace(output_dir=out)
    sessions = [{"subject": "01"}, {"subject": "02"}]
    _note_mixed_outputs(args, sessions, started)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["samri_ml-register: note: sub-01: this run rewrote 1 of its derivatives "
                   "before the interrupt, beside 1 of an earlier run (marked in sub-01.html); "
                   "hint: rerun the same command to finish (finished steps are reused)"], err
    page = report.read_text()
    assert page.index("A later run (started") < page.index("masking none")
    assert "rewriting 1 of this subject's files (sub-01_ses-1_space-P_desc-preproc_T2w" in page
    _note_mixed_outputs(args, sessions, started)  # a second interrupt: one banner
    assert report.read_text().count("class='banner interrupted'") == 1


def test_a_rerun_removes_the_temporary_files_a_killed_run_left(tmp_path, capsys):
    """A run killed (SIGKILL) during a write leaves its hidden temporary file
    (.NAME.xxxxxxxx) among the derivatives; a rerun left it there, unnamed. The next run that
    finishes removes such files from before it started, and says so; other hidden files
    stay."""
    import os
    import time

    make_dataset(tmp_path)
    argv = [a for a in _argv(tmp_path, ["OUT=out", "-w", str(tmp_path / "w")])
            if a != "--dry-run"]
    assert main([*argv, "--nprocs", "1"]) == 0
    anat = tmp_path / "out" / "sub-01" / "ses-1" / "anat"
    left = anat / ".sub-01_ses-1_space-Tiny_desc-preproc_T2w.nii.gz.k2j3h4g5.nii.gz"
    left.write_bytes(b"half a file")
    keep = [anat / n for n in (".keep", ".backup.original.nii.gz", ".notes.markdown")]
    for path in keep:  # a user's hidden files, however their names look
        path.write_text("")
    old = time.time() - 60
    for path in (left, *keep):
        os.utime(path, (old, old))
    capsys.readouterr()
    assert main([*argv, "--nprocs", "1"]) == 0
    err = capsys.readouterr().err
    assert ("note: removed 1 temporary file(s) a killed run left (e.g. sub-01/ses-1/anat/"
            f"{left.name})") in err, err
    assert not left.exists() and all(path.exists() for path in keep)


def test_cancelling_says_only_the_jobs_that_may_still_run(tmp_path, monkeypatch, capsys):
    """A job that ended after the plugin's last poll made qdel (bkill) refuse the whole call
    ('denied: job "1004" does not exist', exit 1), and the note said every job of the run may
    still be queued or running. Each is now tried on its own, and one that is gone counts as
    ended; one the scheduler keeps is named."""
    from types import SimpleNamespace

    from samri_ml.cluster import cancel_jobs

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "qdel").write_text(
        "#!/bin/sh\nrc=0\nfor j in \"$@\"; do case $j in\n"
        "  1004) echo \"denied: job \\\"1004\\\" does not exist\" >&2; rc=1;;\n"
        "  1005) echo \"qdel: cannot reach qmaster\" >&2; rc=1;;\nesac; done\nexit $rc\n")
    (fake / "qdel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    cancel_jobs("SGE", SimpleNamespace(_pending={1003: "a", 1004: "b"}), "prog")
    assert capsys.readouterr().err.strip() == (
        "prog: note: cancelled the 2 job(s) of this run still queued or running "
        "(qdel 1003 1004)")
    cancel_jobs("SGE", SimpleNamespace(_pending={1003: "a", 1004: "b", 1005: "c"}), "prog")
    assert capsys.readouterr().err.strip() == (
        "prog: note: 1 job(s) of this run may still be queued or running; hint: qdel 1005, "
        "before a rerun with the same -w")
    # HTCondor's condor_rm of a job that has just ended (the note said both may still run)
    (fake / "condor_rm").write_text(
        "#!/bin/sh\nrc=0\nfor j in \"$@\"; do case $j in\n"
        "  8) echo \"Couldn't find/remove all jobs in cluster 8.\" >&2; rc=1;;\n"
        "  *) echo \"All jobs in cluster $j have been marked for removal\";;\nesac; done\n"
        "exit $rc\n")
    (fake / "condor_rm").chmod(0o755)
    cancel_jobs("Condor", SimpleNamespace(_pending={7: "a", 8: "b"}), "prog")
    assert capsys.readouterr().err.strip() == (
        "prog: note: cancelled the 2 job(s) of this run still queued or running "
        "(condor_rm 7 8)")


def _slow(x):
    import time

    time.sleep(3)
    return x


def test_condor_jobs_are_followed_with_todays_condor_q(tmp_path, monkeypatch):
    """HTCondor 8.5.6 and later list batches in condor_q's answer, not one line per job, and
    Nipype's Condor plugin (which looks for a line starting with the job's id) took each job
    for ended at once: its step failed job_finished_timeout seconds after submission, the job
    running on (the run ended with 'TypeError: can only concatenate str (not "list") to
    str'). samri_ml.cluster.follow_jobs asks condor_q -af ClusterId ID."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe
    from nipype.pipeline import plugins

    from samri_ml.cluster import check_scheduler, follow_jobs
    from samri_ml.errors import SamriMLError

    fake, state = tmp_path / "bin", tmp_path / "state"
    fake.mkdir()
    state.mkdir()
    # condor_qsub (HTCondor's qsub emulation, what Nipype's plugin calls) runs the job here
    (fake / "condor_qsub").write_text(
        f"#!/bin/sh\nfor a; do script=$a; done\nn=$(ls {state} | wc -l)\n"
        f"touch {state}/$n\n(sh \"$script\"; rm {state}/$n) >/dev/null 2>&1 </dev/null &\n"
        "echo \"Your job $n (\\\"x\\\") has been submitted\"\n")
    (fake / "condor_q").write_text(
        "#!/bin/sh\nfor a; do case $a in [0-9]*) id=$a;; esac; done\n"
        f"[ -e {state}/$id ] || exit 0\n"
        "case \" $* \" in *\" -af \"*) echo $id; exit 0;; esac\n"
        "echo 'OWNER BATCH_NAME    SUBMITTED   DONE   RUN    IDLE  TOTAL JOB_IDS'\n"
        "echo \"$LOGNAME ID: $id     12/5 10:26      _      1      _      1 $id.0\"\n")
    for program in ("condor_qsub", "condor_q"):
        (fake / program).chmod(0o755)
    # the plugin submits with condor_qsub: a set-up without it passed the check for
    # condor_submit, then failed at the first step
    (fake / "condor_qsub").rename(fake / "condor_submit")
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(fake))
    with pytest.raises(SamriMLError, match="^--plugin Condor: condor_qsub not found on PATH"):
        check_scheduler("Condor")
    (fake / "condor_submit").rename(fake / "condor_qsub")
    monkeypatch.setenv("PATH", f"{fake}:{path}")
    check_scheduler("Condor")
    wf = pe.Workflow("w", base_dir=str(tmp_path / "work"))
    wf.add_nodes([pe.Node(niu.Function(function=_slow, input_names=["x"],
                                       output_names=["y"]), name="a")])
    wf.get_node("a").inputs.x = 1
    wf.config["execution"].update({"poll_sleep_duration": 0.2, "job_finished_timeout": 0.5})
    runner = plugins.CondorPlugin()
    follow_jobs(runner)
    graph = wf.run(plugin=runner)
    assert next(iter(graph.nodes())).result.outputs.y == 1


def _one(x):
    return x


#: a stand-in submit program's first lines: the calls are counted in ``calls``, and the first
#: ``$FAILS`` refused with ``$SAID`` on stderr, as a busy controller does
_REFUSE_FIRST = ("#!/bin/sh\necho \"$*\" >> {state}/calls\nn=$(wc -l < {state}/calls)\n"
                 "if [ \"$n\" -le \"$FAILS\" ]; then echo \"$SAID\" >&2; exit 1; fi\n"
                 "for a; do script=$a; done\nn=$((n + 100))\ntouch {state}/job$n\n"
                 "(sh \"$script\"; touch {state}/done$n; rm {state}/job$n) >/dev/null 2>&1 "
                 "</dev/null &\n")


def _one_step_run(tmp_path, runner, prog="prog", function=_one):
    """Run a workflow of one step (``function`` of 1) with the cluster plugin ``runner`` as
    samri_ml-register does (:func:`samri_ml.cluster.submit_whole`); the step's output."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from samri_ml.cluster import ensure_logname, follow_jobs, submit_whole

    ensure_logname()
    wf = pe.Workflow("w", base_dir=str(tmp_path / "work"))
    wf.add_nodes([pe.Node(niu.Function(function=function, input_names=["x"],
                                       output_names=["y"]), name="a")])
    wf.get_node("a").inputs.x = 1
    wf.config["execution"].update({"poll_sleep_duration": 0.2, "job_finished_timeout": 1})
    submit_whole(runner, prog)
    follow_jobs(runner)
    graph = wf.run(plugin=runner)
    return next(iter(graph.nodes())).result.outputs.y


@pytest.mark.parametrize("plugin", ["SLURM", "SGE"])
def test_a_submission_refused_for_a_moment_is_tried_again(tmp_path, monkeypatch, capsys,
                                                          plugin):
    """A controller that is busy or restarting refuses a submission for a moment ('Socket
    timed out on send/recv', SGE's 'unable to contact qmaster'): the run ended at the first
    refusal, max_tries and retry_timeout of --plugin-args accepted and not in effect (Nipype's
    retry never saw sbatch's or qsub's exit status). The job is submitted again, each retry a
    note; a job still refused after the last is one line naming the step and the scheduler's
    words."""
    from nipype.pipeline import plugins

    from samri_ml.errors import SamriMLError

    fake, state = tmp_path / "bin", tmp_path / "state"
    fake.mkdir()
    state.mkdir()
    if plugin == "SLURM":
        said = ("sbatch: error: Batch job submission failed: Socket timed out on send/recv "
                "operation")
        (fake / "sbatch").write_text(_REFUSE_FIRST.format(state=state)
                                     + "echo \"Submitted batch job $n\"\n")
        # squeue -j ID lists the job while it runs
        (fake / "squeue").write_text(
            f"#!/bin/sh\nfor a; do id=$a; done\n[ -e {state}/job$id ] && echo \" $id x\"\n"
            "exit 0\n")
        programs = ("sbatch", "squeue")
    else:
        said = ("error: commlib error: got select error (Connection refused)\nUnable to run "
                "job: unable to send message to qmaster using port 6444 on host \"master\"")
        (fake / "qsub").write_text(_REFUSE_FIRST.format(state=state)
                                   + "echo \"Your job $n (\\\"a\\\") has been submitted\"\n")
        # qstat -xml -s psrz lists the jobs running, and those ended as zombies (Nipype's
        # plugin takes only these for ended)
        (fake / "qstat").write_text(
            "#!/bin/sh\necho '<?xml version=\"1.0\"?><job_info><queue_info>'\n"
            f"cd {state}; for n in $(seq 101 199); do [ -e job$n ] && echo \"<job_list "
            f"state='running'><JB_job_number>$n</JB_job_number></job_list>\"; [ -e done$n ] "
            "&& echo \"<job_list state='zombie'><JB_job_number>$n</JB_job_number></job_list>\"; "
            "done\necho '</queue_info><job_info></job_info></job_info>'\n")
        programs = ("qsub", "qstat")
    for program in programs:
        (fake / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("SAID", said)
    plugin_class = getattr(plugins, f"{plugin}Plugin")
    calls = state / "calls"

    # refused twice, taken at the third try
    monkeypatch.setenv("FAILS", "2")
    runner = plugin_class(plugin_args={"max_tries": 2, "retry_timeout": 0.1})
    assert _one_step_run(tmp_path / "twice", runner) == 1
    assert len(calls.read_text().splitlines()) == 3
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("prog: note:")]
    program = programs[0]
    first = said.splitlines()[-1]
    assert [n.split("; trying again in 0.1 s ")[1] for n in notes] == [
        "(retry 1 of 2)", "(retry 2 of 2)"], notes
    assert notes[0].startswith(f"prog: note: {program} refused the job of step w.a: "), notes
    assert first in notes[0], notes

    # refused every time: one line after the last try, the step and the scheduler's words
    calls.unlink()
    monkeypatch.setenv("FAILS", "99")
    runner = plugin_class(plugin_args={"max_tries": 1, "retry_timeout": 0})
    with pytest.raises(SamriMLError) as refused:
        _one_step_run(tmp_path / "always", runner)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(
        f"{program} refused the job of step w.a: "), message
    assert first in message and message.endswith(
        "(tried 2 times, 0 s apart: max_tries, retry_timeout)"), message
    assert len(calls.read_text().splitlines()) == 2
    assert len([ln for ln in capsys.readouterr().err.splitlines() if "trying again" in ln]) == 1

    # max_tries=0: no retry
    calls.unlink()
    runner = plugin_class(plugin_args={"max_tries": 0})
    with pytest.raises(SamriMLError, match=r"_args$"):
        _one_step_run(tmp_path / "never", runner)
    assert len(calls.read_text().splitlines()) == 1


def test_a_squeue_that_fails_for_a_moment_does_not_end_a_running_job(tmp_path, monkeypatch):
    """squeue timing out once while a job ran ('slurm_load_jobs error: Socket timed out on
    send/recv operation', a busy controller) made Nipype's SLURM plugin take the job for ended:
    its step failed with 'job N ended without the step's result (killed or removed by the
    scheduler ...)', the job running on. It is asked again at the next poll; a job SLURM says
    it does not know ('Invalid job id specified') has ended."""
    from nipype.pipeline import plugins

    fake, state = tmp_path / "bin", tmp_path / "state"
    fake.mkdir()
    state.mkdir()
    (fake / "sbatch").write_text(_REFUSE_FIRST.format(state=state)
                                 + "echo \"Submitted batch job $n\"\n")
    (fake / "squeue").write_text(
        f"#!/bin/sh\necho \"$*\" >> {state}/polls\nfor a; do id=$a; done\n"
        f"if [ $(wc -l < {state}/polls) -eq 2 ]; then echo 'slurm_load_jobs error: Socket timed "
        "out on send/recv operation' >&2; exit 1; fi\n"
        f"[ -e {state}/job$id ] && echo $id && exit 0\n"
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
    for program in ("sbatch", "squeue"):
        (fake / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("FAILS", "0")
    runner = plugins.SLURMPlugin(plugin_args={"poll_sleep_duration": 0.2})
    assert _one_step_run(tmp_path, runner, function=_slow) == 1
    assert len((state / "polls").read_text().splitlines()) > 2


def test_sbatch_parsable_runs_and_an_answer_without_a_job_id_is_one_line(tmp_path,
                                                                        monkeypatch):
    """sbatch_args with --parsable (sbatch answers '123;cluster', not 'Submitted batch job
    123') stopped the run with "AttributeError: 'NoneType' object has no attribute 'groups'";
    the id is read from either answer. A submit program whose answer holds no id Nipype reads
    (a site's wrapper adding a line) is one line naming the step and what it said."""
    from nipype.pipeline import plugins

    from samri_ml.errors import SamriMLError

    fake, state = tmp_path / "bin", tmp_path / "state"
    fake.mkdir()
    state.mkdir()
    (fake / "sbatch").write_text(
        _REFUSE_FIRST.format(state=state) + "case \"$*\" in *--parsable*) echo \"$n;cluster1\""
        ";; *) echo \"Submitted batch job $n\"; echo 'Remember: quota 90% full';; esac\n")
    (fake / "squeue").write_text(
        f"#!/bin/sh\nfor a; do id=$a; done\n[ -e {state}/job$id ] && echo $id\nexit 0\n")
    for program in ("sbatch", "squeue"):
        (fake / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("FAILS", "0")
    runner = plugins.SLURMPlugin(plugin_args={"sbatch_args": "--parsable"})
    assert _one_step_run(tmp_path / "parsable", runner) == 1
    runner = plugins.SLURMPlugin(plugin_args={})
    with pytest.raises(SamriMLError) as said:
        _one_step_run(tmp_path / "wrapped", runner)
    assert str(said.value).startswith(
        "sbatch answered no job id for step w.a (it said: Submitted batch job 102 Remember: "
        "quota 90% full); hint: a job may be queued"), said.value


@pytest.mark.timeout(120)
def test_an_sge_job_that_ended_unseen_by_qstat_ends_its_step(tmp_path, monkeypatch):
    """Nipype's SGE plugin asks qacct whether a job qstat no longer lists has ended, and
    compared qacct's answer (bytes) with a string: a TypeError taken for 'not ended', so on a
    cluster whose qstat lists no ended jobs (finished_jobs 0) every step's job counted as
    running for ever, the run hanging with the step's result written. qacct is read now."""
    from nipype.pipeline import plugins

    fake, state = tmp_path / "bin", tmp_path / "state"
    fake.mkdir()
    state.mkdir()
    (fake / "qsub").write_text(_REFUSE_FIRST.format(state=state)
                               + "echo \"Your job $n (\\\"a\\\") has been submitted\"\n")
    # qstat -xml lists the running jobs only; qacct -j ID knows the ended ones
    (fake / "qstat").write_text(
        "#!/bin/sh\necho '<?xml version=\"1.0\"?><job_info><queue_info>'\n"
        f"cd {state}; for n in $(seq 101 199); do [ -e job$n ] && echo \"<job_list "
        "state='running'><JB_job_number>$n</JB_job_number></job_list>\"; done\n"
        "echo '</queue_info><job_info></job_info></job_info>'\n")
    (fake / "qacct").write_text(
        f"#!/bin/sh\nfor a; do id=$a; done\n[ -e {state}/done$id ] || "
        "{ echo \"error: job id $id not found\" >&2; exit 1; }\n"
        "printf 'qname        all.q\\njobnumber    %s\\nexit_status  0\\n' $id\n")
    for program in ("qsub", "qstat", "qacct"):
        (fake / program).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("FAILS", "0")
    runner = plugins.SGEPlugin(plugin_args={"poll_sleep_duration": 0.2})
    assert _one_step_run(tmp_path, runner, function=_slow) == 1


def test_a_graph_plugins_refused_submissions_are_said(tmp_path, monkeypatch, capsys):
    """A Graph plugin submits every job from one script, which goes on past a refusal: the
    run said 'submitted', exit 0, with every qsub refused and the scheduler's words unseen.
    What the submit programs wrote to stderr is now a note."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe
    from nipype.pipeline import plugins

    from samri_ml.cluster import submit_whole

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "qsub").write_text("#!/bin/sh\necho 'Unable to run job: Job was rejected because "
                               "job requests unknown queue \"nope\".' >&2\nexit 1\n")
    (fake / "qsub").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    wf = pe.Workflow("w", base_dir=str(tmp_path / "work"))
    wf.add_nodes([pe.Node(niu.Function(function=_one, input_names=["x"],
                                       output_names=["y"]), name="a")])
    wf.get_node("a").inputs.x = 1
    runner = plugins.SGEGraphPlugin(plugin_args={"qsub_args": "-q nope"})
    submit_whole(runner, "prog")
    wf.run(plugin=runner)
    err = capsys.readouterr().err
    assert "prog: note: submitting the jobs said: Unable to run job: Job was rejected because " \
           "job requests unknown queue \"nope\"." in err, err


@pytest.mark.parametrize("cause, hint", [
    ("OSError: [Errno 28] No space left on device: '/w/samri_ml_wf/sub_01/f_dummy/x.nii.gz'",
     "free some space"),
    ("OSError: [Errno 122] Disk quota exceeded", "free some space"),
    ("OSError: [Errno 27] File too large", "free some space"),
    ("samri_ml.errors.SamriMLError: /b/sub-01_T2w.nii.gz: the image is constant",
     "fix the cause"),
])
def test_a_failed_run_on_a_full_disk_says_to_free_space(tmp_path, cause, hint):
    """A step that found the disk full (or a quota, a file size limit) ended the run's line
    in "hint: fix the cause", which sent users to look for a bug: the line the run prints
    from its first crash file now says to free some space."""
    from samri_ml.cli.register import _crash_summary, _fix_hint

    crash = tmp_path / "crash-20261205-120000-root-f_dummy-1.txt"
    crash.write_text("Node: samri_ml_wf.f_dummy\nTraceback (most recent call last):\n"
                     f'  File "x.py", line 1, in <module>\n{cause}\n')
    summary = _crash_summary([crash])
    assert cause.split(": ", 1)[1][:20] in summary, summary
    assert _fix_hint([crash]).startswith(hint)


#: a folder deep enough that a path of it fills the run's quoted cause
DEEP = "/w" + "/a_rather_long_folder_name" * 10 + "/work/samri_ml_wf/sub_01_ses_1/func0_wf/f_stc"


@pytest.mark.parametrize("tail", [
    # MultiProc's worker: the result file Nipype could not write, then not read back
    "OSError: [Errno 28] No space left on device\n\nDuring handling of the above exception, "
    "another exception occurred:\n\nTraceback (most recent call last):\n  File \"x.py\", "
    f"line 2, in <module>\nFileNotFoundError: {DEEP}/result_f_stc.pklz\n",
    # the words behind a long path, the end a long hint: the quoted cause is cut between
    f"samri_ml.errors.SamriMLError: {DEEP}/x.nii.gz: cannot write (No space left on device); "
    "hint: " + "check the folder and its permissions, " * 3 + "then rerun\n",
], ids=["chained", "long_path"])
def test_a_full_disk_is_told_from_the_steps_exception_not_the_quoted_cause(tmp_path, tail):
    """The full-disk hint looked for "No space left on device" in the run's line, whose cause
    is cut at 200 characters: a long path before the words, or a chained error after them (a
    result file that could not be written, then read), lost it ("hint: fix the cause")."""
    from samri_ml.cli.register import _crash_summary, _fix_hint

    crash = tmp_path / "crash-20261205-120000-root-f_stc-1.txt"
    crash.write_text("Node: samri_ml_wf.f_stc\nTraceback (most recent call last):\n"
                     f'  File "x.py", line 1, in <module>\n{tail}')
    assert "No space left" not in _crash_summary([crash])
    assert _fix_hint([crash]).startswith("free some space")


def test_a_full_disk_outside_the_steps_gets_the_free_space_hint(tmp_path):
    """A write of the scheduler process itself that found no room (Nipype's d3.js in the work
    dir, the first file of a run over 100 KB here, under a file size limit: EFBIG, as a full
    disk) ended the run in "error: OSError: [Errno 27] File too large: '…/d3.js' -> '…' (rerun
    with -v for the traceback)": a one-line cause naming the file, with the hint to free
    space."""
    from samri_ml.testing import file_size_limit

    make_dataset(tmp_path)
    argv = [arg for arg in _argv(tmp_path, ["WORK=work", "OUT=out"]) if arg != "--dry-run"]
    proc = subprocess.run([sys.executable, "-m", "samri_ml.cli.register", *argv,
                           "--nprocs", "1"], capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(100_000))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == (
        f"samri_ml-register: error: cannot write {tmp_path}/work/samri_ml_wf/d3.js (File too "
        "large); hint: free some space (see df -h on the work and output folders) and rerun the "
        "same command (with the same -w): only what failed or did not run is redone"), \
        proc.stderr[-2000:]


def test_a_write_that_must_not_replace_keeps_a_file_made_meanwhile(tmp_path):
    """``atomic_target(..., replace=False)``: a file another process gave the name since the
    caller looked is kept, FileExistsError raised and no temporary file left; where no file
    has the name, the write lands as with ``replace=True``."""
    from samri_ml.bids import atomic_target

    dst = tmp_path / "head_mask.nii.gz"
    with atomic_target(dst, ".nii.gz", replace=False) as tmp:
        tmp.write_bytes(b"first")
    assert dst.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        with atomic_target(dst, ".nii.gz", replace=False) as tmp:
            tmp.write_bytes(b"second")
    assert dst.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["head_mask.nii.gz"]


def test_a_negative_voxel_size_is_said_once_by_samri_ml_alone(tmp_path):
    """A scan whose header's pixdim is negative: samri_ml-register said its note (before the
    run) and again from each QC step of the scan, and nibabel's own log line ("pixdim[1,2,3]
    should be positive; setting to abs of pixdim values", twice: raw and through the root
    logger) leaked from the workflow's build (its headers read again) and from the bias
    correction step (Nipype's copy_header): only samri_ml's note, once."""
    make_dataset(tmp_path)
    bids = tmp_path / "bids"
    for run in (bids / BOLD, bids / BOLD.replace(".nii.gz", ".json")):
        run.unlink()  # the structural scan alone: a shorter run
    path = bids / ANAT
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:84] = np.array([-0.2], "<f4").tobytes()  # pixdim[1] of the NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(raw)))
    argv = [arg for arg in _argv(tmp_path, ["WORK=work", "OUT=out"])
            if arg not in ("--no-qc", "--dry-run")]  # the QC steps read the scan again
    # a process of its own: nibabel's handler writes to the stderr of its import
    proc = subprocess.run([sys.executable, "-m", "samri_ml.cli.register", *argv,
                           "--nprocs", "2"],  # MultiProc: the steps in forked workers
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 0, err[-2000:]
    assert "setting to abs" not in err and "nibabel.global" not in err, err
    notes = [line for line in err.splitlines() if "voxel size (pixdim) is negative" in line]
    assert notes == [f"samri_ml-register: note: {path}: the header's voxel size (pixdim) is "
                     "negative, which NIfTI does not allow: taken as positive (nibabel's "
                     "reading, and the outputs' headers), where ANTs and ITK-SNAP mirror that "
                     "axis, so outputs on the scan's grid lie mirrored on the scan there; hint: "
                     "check which way that axis runs, and make the header's pixdim positive"], err


#: a MultiProc run of one step whose worker finds no room for the step's result file (a file
#: size limit set in the worker: EFBIG, as a full work dir); ``follow`` mends the plugin
_FULL_WORKER = """
import sys
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe, plugins
from samri_ml.cluster import follow_jobs

def _fill(x):
    import os, resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    return os.urandom(50_000)  # the result file: over the limit, gzipped too

wf = pe.Workflow("w", base_dir=sys.argv[1])
wf.add_nodes([pe.Node(niu.Function(function=_fill, input_names=["x"], output_names=["y"]),
                      name="a")])
wf.get_node("a").inputs.x = 1
wf.config["execution"].update(poll_sleep_duration=0.2, crashdump_dir=sys.argv[2],
                              crashfile_format="txt")
runner = plugins.MultiProcPlugin(plugin_args={"n_procs": 2})
if sys.argv[3] == "follow":
    follow_jobs(runner)
try:
    wf.run(plugin=runner)
except RuntimeError:
    sys.exit(3)
"""


def test_a_multiproc_step_without_room_for_its_result_fails_not_hangs(tmp_path):
    """A step whose result file could not be written (a full work dir: seen on the example
    data with -w on a 3 MB tmpfs) hung samri_ml-register for ever under MultiProc, after one
    "exception calling callback for <Future ...>" traceback: the worker read the missing file
    back for its crash report, and Nipype's callback never recorded the step as ended. The
    step fails with a crash file of the worker's errors, and the run's hint says to free
    space (its quoted cause is the FileNotFoundError of the result file)."""
    from samri_ml.cli.register import _fix_hint

    crashes, script = tmp_path / "log", tmp_path / "full_worker.py"
    script.write_text(_FULL_WORKER)  # (Nipype's Function reads its function's source)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "work"), str(crashes),
                           "follow"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]  # the run failed, and ended
    crash = list(crashes.glob("crash-*.txt"))
    assert len(crash) == 1, proc.stderr[-2000:]
    assert "[Errno 27] File too large" in crash[0].read_text()
    assert _fix_hint(crash).startswith("free some space")
