"""``samri_ml-register``: SAMRI's generic registration of a BIDS dataset, as a BIDS App.

    samri_ml-register BIDS_DIR [OUTPUT_DIR] [participant] --template T.nii.gz --template-mask M.nii.gz
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from samri_ml import __version__
from samri_ml.bids import PYBIDS_NAMES, is_label
from samri_ml.cli._common import (
    HelpFormatter,
    nearest_existing,
    number_in,
    probe_writable,
    quiet_interrupts,
    run_cli,
    setup_logging,
)
from samri_ml.cli._inputs import (
    PROG,
    check_scans,
    collect_sessions,
    field_of_view,
    session_scans,
    some_names,
    subject_folders,
)
from samri_ml.cli._notes import NOTES_LOG, keeping_notes, note
from samri_ml.cluster import (
    GRAPH_PLUGINS,
    MIN_MEMORY_GB,
    PLUGINS,
    SCHEDULER_PROGRAMS,
    cancel_jobs,
    check_scheduler,
    ensure_logname,
    follow_jobs,
    parse_plugin_args,
    submit_whole,
)
from samri_ml.errors import (
    FULL_DISK_CAUSES,
    FULL_DISK_ERRNOS,
    MaskVolumeNote,
    SamriMLError,
)
from samri_ml.hardware import available_cpus

DEFAULT_STRUCTURAL = {"datatype": "anat", "suffix": ["T2w", "T1w"]}
DEFAULT_FUNCTIONAL = {"datatype": "func", "suffix": ["bold", "cbv"]}
#: seconds between Nipype's scheduler loops in a local run (``MultiProc``, ``Linear``)
LOCAL_POLL_SECONDS = 0.5


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} ({err.msg})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"suffix\": [\"T2w\"]}}', got {text!r}")
    # BIDS' keys (acq, rec, ...) taken as pybids names them (acquisition, ...)
    value = {PYBIDS_NAMES.get(key, key): item for key, item in value.items()}
    chosen = [f"the {key} with {option}" for key, option in (
        ("subject", "--participant-label"), ("session", "--session-label")) if key in value]
    if chosen:
        # a subject ended in a TypeError; a session was overridden by each session's own
        # query (ses-1's runs registered for -f '{"session": "2"}'), unsaid
        raise argparse.ArgumentTypeError(f"{text!r}: choose {' and '.join(chosen)}, not in "
                                         "-s/-f")
    return value


def _plugin_args(text: str) -> dict:
    """``--plugin-args``: :func:`samri_ml.cluster.parse_plugin_args`, its refusal argparse's."""
    try:
        return parse_plugin_args(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


#: what to do where a label option took the positional arguments after it
LABELS_FIRST_HINT = ("hint: give BIDS_DIR [OUTPUT_DIR] participant before --participant-label "
                     "or --session-label, whose labels run up to the next option")


class _Parser(argparse.ArgumentParser):
    """argparse, where a missing BIDS_DIR after a label option says that the option took it
    (``--participant-label 01 /data/bids`` said only "the following arguments are required:
    bids_dir")."""

    def parse_known_args(self, args=None, namespace=None):
        tokens = sys.argv[1:] if args is None else list(args)
        self.labels_given = any(str(t).startswith(("--participant", "--session"))
                                for t in tokens)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        if message.startswith("the following arguments are required: bids_dir") and \
                getattr(self, "labels_given", False):
            message = f"{message}; {LABELS_FIRST_HINT}"
        super().error(message)


class _Default(int):
    """An option's default number, told apart from the same number given (``--nprocs``: noted
    where a cluster plugin does not use it)."""


def get_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Register the structural and functional scans of a BIDS dataset to a "
        "template with SAMRI's generic workflow (antsRegistration), optionally with U-Net brain "
        "masking, and write BIDS-Derivatives with QC (VCF, SCF).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset")
    p.add_argument("output_dir", type=Path, nargs="?", default=None,
                   help="derivatives folder (default: BIDS_DIR/derivatives/samri_ml; "
                   "'BIDS_DIR participant' uses the default)")
    p.add_argument("analysis_level", nargs="?", default="participant",
                   choices=["participant", "group"],
                   help="BIDS-App analysis level (only participant: there is no group level)")
    g = p.add_argument_group("selecting data")
    g.add_argument("--participant-label", "--participant_label", nargs="+", default=None,
                   help="subjects to process (with or without 'sub-'); default: all")
    g.add_argument("--session-label", nargs="+", default=None,
                   help="sessions to process (with or without 'ses-'); default: all")
    g.add_argument("-s", "--structural-match", type=_json_dict, default=DEFAULT_STRUCTURAL,
                   help="pybids filters (JSON) selecting the structural scans; the first "
                   "matching suffix in the list is used per session, and of its scans the "
                   "plainest name (sub-01_T2w before sub-01_acq-lowres_T2w)")
    g.add_argument("-f", "--functional-match", type=_json_dict, default=DEFAULT_FUNCTIONAL,
                   help="pybids filters (JSON) selecting the functional scans")
    g = p.add_argument_group("registration")
    g.add_argument("--template", type=Path, required=True, help="template image (NIfTI)")
    g.add_argument("--template-mask", type=Path, required=True,
                   help="brain mask of the template (a template without one: samri_ml-mask "
                   "TEMPLATE MASK predicts it; on the DSURQE average, Dice 0.96 with its own)")
    g.add_argument("--template-name", default=None,
                   help="the space- entity of the outputs (default: from the template file name)")
    g.add_argument("--registration-method", choices=["composite", "structural", "functional"],
                   default="composite", help="how functional runs reach the template (SAMRI's)")
    g.add_argument("--registration-flavour", default="default",
                   help="default (fast, accurate), samri (SAMRI's exact phases, slow), fast, or "
                   "a JSON file of phases")
    g.add_argument("--fast", action="store_true",
                   help="shorthand for --registration-flavour fast (tests, demos)")
    g.add_argument("--masking", choices=["none", "unet"], default="none",
                   help="unet: predict brain masks and use them in antsRegistration (default "
                   "and fast: linear phases brain to brain, then SyN on the whole images with "
                   "the mask grown; samri: the mask in every stage and in N4)")
    g.add_argument("--mask-model", type=Path, default=None, metavar="MODEL",
                   help="the U-Net of --masking unet (a .keras file, e.g. one fine-tuned on "
                   "your scans with samri_ml-train-masker --scans; default: the shipped one)")
    g.add_argument("--dummy-scans", type=int, default=10,
                   help="volumes dropped at the start of each functional run; its VCF/SCF "
                   "leave them out of the raw run too (raw_dummy_scans in the QC record)")
    g.add_argument("--no-slice-timing", action="store_true",
                   help="skip slice timing correction even where SliceTiming is known")
    g.add_argument("--no-qc", action="store_true",
                   help="skip the VCF/SCF QC nodes (the HTML reports are still written, "
                   "without the QC table)")
    g.add_argument("--no-fov-check", action="store_true",
                   help="register scans whose field of view differs from the template's by more "
                   "than 4x (normally refused: their voxel sizes are probably scaled)")
    g = p.add_argument_group("execution")
    g.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="Nipype's working folder; rerunning with the same one reuses finished "
                   "nodes (default: OUTPUT_DIR/.samri_ml_work)")
    g.add_argument("--nprocs", "--n-cpus", type=int, default=_Default(available_cpus()),
                   help="processes for MultiProc; 1 runs Linear (default: the cores this job "
                   "may use)")
    g.add_argument("--omp-nthreads", type=number_in(int, 1), default=None,
                   help="threads per ANTs call (default: --nprocs; 1 with a cluster "
                   "plugin, whose jobs get one CPU unless asked for more)")
    # below 0.01 GB Nipype's MultiProc never starts a step: the run hung, printing nothing
    g.add_argument("--mem-gb", type=number_in(float, MIN_MEMORY_GB), default=None,
                   help="memory limit for MultiProc (GB); a cluster job's memory is asked "
                   "for in --plugin-args (sbatch_args --mem=...)")
    g.add_argument("--plugin", default=None,
                   help=f"Nipype execution plugin ({', '.join(PLUGINS)}; default: MultiProc, "
                   "Linear with --nprocs 1, which runs finished steps of a rerun without "
                   "waiting for a worker: a cached rerun of 3 example subjects took 6.7 s "
                   "instead of 45.8 s)")
    g.add_argument("--plugin-args", type=_plugin_args, default={},
                   help="plugin arguments: JSON or key=value,key=value "
                   "(e.g. '{\"sbatch_args\": \"-p short --mem=4G\"}'); "
                   "poll_sleep_duration (default 0.5 s for MultiProc/Linear, Nipype's 2 s for "
                   "cluster plugins) and job_finished_timeout (seconds) go to Nipype's "
                   "execution config")
    g.add_argument("--write-graph", nargs="?", const="colored", default=None,
                   choices=["hierarchical", "flat", "colored", "orig", "exec"],
                   help="write a picture of the workflow graph to OUTPUT_DIR/figures (the "
                   "type given, colored without one): workflow_graph.png, or for a run of "
                   "--participant-label or --session-label one of its own, "
                   "workflow_graph_sub-02.png; of --dry-run, workflow_graph_dry-run.png)")
    g.add_argument("--graph-format", choices=["png", "svg"], default="png",
                   help="picture format of --write-graph")
    g.add_argument("--stop-on-first-crash", action="store_true",
                   help="stop the run at the first failed step (Nipype's stop_on_first_crash; "
                   "by default the other steps go on and the failures are listed at the end)")
    g.add_argument("--dry-run", action="store_true",
                   help="make every check of a run (the inputs, the scheduler's programs, "
                   "that OUTPUT_DIR and the work dir can be written, the lock), build the "
                   "workflow and list what a run would register; run and write nothing (but "
                   "the graph of --write-graph)")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="tracebacks on errors and Nipype's log of the steps (-vv: debug)")
    g.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def template_label(path: Path) -> str:
    """``tpl-Phantom_T2w.nii.gz`` -> ``Phantom``; else the file stem without non-alphanumerics."""
    name = path.name
    match = re.search(r"tpl-([a-zA-Z0-9]+)", name)
    if match:
        return match.group(1)
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    return re.sub(r"[^a-zA-Z0-9]", "", stem) or "template"


def validate(args, parser) -> None:
    """Check paths before building anything; usage problems go through ``parser.error`` (exit 2)."""
    from samri_ml.io import content_missing, load_nifti

    seps = os.sep + (os.altsep or "")
    for attr, option, prefix in (("participant_label", "--participant-label", "sub-"),
                                 ("session_label", "--session-label", "ses-")):
        # sub-01/, a folder's name as the shell completes it, is its label (it was refused
        # with the hint to give BIDS_DIR ... first, which the user had)
        labels = [label.strip().rstrip(seps)
                  if re.fullmatch(rf"{prefix}[a-zA-Z0-9]+[{re.escape(seps)}]+", label.strip())
                  else label for label in getattr(args, attr) or ()] or getattr(args, attr)
        setattr(args, attr, labels)
        if any(not label.strip().removeprefix(prefix) for label in labels or ()):
            # '' matched no subject: "participant(s)  not found", a blank in the message
            parser.error(f"{option}: an empty label; hint: give labels such as 01 or "
                         f"{prefix}01")
        for label in labels or ():
            if label in ("participant", "group") or os.sep in label or (
                    os.altsep and os.altsep in label):
                # `BIDS OUT --participant-label 01 participant` said "participant(s)
                # participant not found"; a path there, "participant(s) /data/out not found"
                parser.error(f"{option} took {label!r} as a label; {LABELS_FIRST_HINT}")
            bare = label.strip().removeprefix(prefix)
            if not is_label(bare):
                # '01,02' was "participant(s) 01,02 not found; available: 01, 02"
                parts = [p.strip().removeprefix(prefix) for p in bare.split(",")]
                hint = (f"separate labels with spaces: {option} {' '.join(parts)}"
                        if "," in bare and all(map(is_label, parts))
                        else f"give labels such as 01 or {prefix}01")
                parser.error(f"{option}: {label!r} is not a BIDS label (letters and digits "
                             f"only); hint: {hint}")
    bids_dir = args.bids_dir
    if not bids_dir.exists():
        parser.error(f"BIDS_DIR {bids_dir} does not exist")
    if not bids_dir.is_dir():
        parser.error(f"BIDS_DIR {bids_dir} is not a folder")
    missing = content_missing(bids_dir / "dataset_description.json")
    if missing:  # a DataLad dataset not fetched: it said "no dataset_description.json"
        raise SamriMLError(f"{bids_dir / 'dataset_description.json'}: {missing}")
    if not (bids_dir / "dataset_description.json").is_file():
        if subject_folders(bids_dir):
            # the root it is, only without its description: "point to the root" misled
            from shlex import quote

            desc = json.dumps({"Name": bids_dir.resolve().name, "BIDSVersion": "1.8.0"})
            raise SamriMLError(
                f"{bids_dir} has sub-* folders but no dataset_description.json; hint: add one, "
                f"e.g. echo {quote(desc)} > {quote(str(bids_dir / 'dataset_description.json'))}")
        raise SamriMLError(f"{bids_dir} is not a BIDS dataset (no dataset_description.json); "
                           "hint: point to the dataset's root folder")
    args.bids_dir = bids_dir = bids_dir.resolve()
    problem = description_problem(bids_dir / "dataset_description.json")
    if problem:
        # pybids reads the dataset without it (validate=False): say so, not nothing
        note(PROG, f"{bids_dir / 'dataset_description.json'}: {problem}; the dataset "
             "is read anyway; hint: fix it (the BIDS validator refuses such a dataset)")
    _check_raw_dataset(bids_dir)
    out = (args.output_dir or bids_dir / "derivatives" / "samri_ml").resolve()
    if out == bids_dir:
        parser.error("OUTPUT_DIR must not be BIDS_DIR itself; use BIDS_DIR/derivatives/samri_ml")
    if out.is_relative_to(bids_dir) and not out.is_relative_to(bids_dir / "derivatives"):
        parser.error(f"OUTPUT_DIR {out} would write among the source data; put it under "
                     f"{bids_dir / 'derivatives'} or outside BIDS_DIR")
    if out == bids_dir / "derivatives":
        parser.error(f"OUTPUT_DIR {out} is the derivatives folder itself (shared by every "
                     f"pipeline); use {out / 'samri_ml'}")
    enclosing = enclosing_dataset(out, bids_dir)
    if enclosing is not None:
        # its sub-* folders would get a second dataset (description, sub-*, work dir) mixed in
        parser.error(f"OUTPUT_DIR {out} is inside the dataset {enclosing}; hint: give a folder "
                     f"of its own, e.g. {bids_dir / 'derivatives' / 'samri_ml'}")
    other = foreign_dataset(out)
    if other is not None:
        # its description would be rewritten and samri_ml's files mixed into its sub-* folders
        parser.error(f"OUTPUT_DIR {out} holds another dataset ({other}); hint: choose an empty "
                     f"folder or samri_ml's own, e.g. {bids_dir / 'derivatives' / 'samri_ml'}")
    recorded = recorded_source(out)
    if recorded is not None and _same_folder(recorded, bids_dir):
        recorded = None  # (the same folder under another path: a bind mount, a link)
    if recorded is not None and (recorded / "dataset_description.json").is_file():
        # its description was re-pointed at this dataset: the earlier subjects' sidecars
        # (Sources: bids:raw:sub-01/...) then named files of a dataset they were not made from
        parser.error(f"OUTPUT_DIR {out} holds the derivatives of another dataset ({recorded}); "
                     f"hint: give {bids_dir.name} an OUTPUT_DIR of its own, e.g. "
                     f"{bids_dir / 'derivatives' / 'samri_ml'}")
    if recorded is not None:
        note(PROG, f"OUTPUT_DIR {out} was made from {recorded}, which is gone (moved "
             f"to {bids_dir}?); this run records {bids_dir} as its source")
    args.output_dir = out
    check_writable(out, "OUTPUT_DIR")
    work = (args.work_dir or out / ".samri_ml_work").resolve()
    if work.is_relative_to(bids_dir) and not work.is_relative_to(bids_dir / "derivatives"):
        parser.error(f"--work-dir {work} would write among the source data")
    if work == bids_dir / "derivatives":
        parser.error(f"--work-dir {work} is the derivatives folder itself (shared by every "
                     f"pipeline); hint: give a folder of its own, e.g. {out / '.samri_ml_work'}")
    below = work.relative_to(out).parts if work.is_relative_to(out) else None
    if below is not None and not (below and below[0].startswith(".")):
        # Nipype's intermediate images (…_corrected.nii.gz) among the derivatives, where BIDS
        # tools took them for results (a dot folder, the default's, they leave alone)
        parser.error(f"--work-dir {work} is inside OUTPUT_DIR {out}, among the derivatives; "
                     f"hint: leave -w out (the default is {out / '.samri_ml_work'}) or give a "
                     "folder outside OUTPUT_DIR")
    inside = enclosing_dataset(work, bids_dir)
    for dataset in {d for d in (inside, work) if d is not None and d != out}:
        other = foreign_dataset(dataset)
        if other is not None:
            # its work folders and lock would be mixed into that pipeline's dataset
            parser.error(f"--work-dir {work} is inside another dataset ({dataset}: {other}); "
                         f"hint: give a folder of its own, e.g. {out / '.samri_ml_work'}")
    args.work_dir = work
    if re.search(r"\s", str(work)):
        # Nipype runs the ANTs programs through a shell with unquoted paths: every step
        # writing in such a folder would fail, and a rerun could not fix it
        parser.error(f"the work dir {str(work)!r} has a space in its path, which the ANTs "
                     "steps cannot take; hint: give -w /a/path/without/spaces")
    check_writable(work, "--work-dir")
    for what, path in (("--template", args.template), ("--template-mask", args.template_mask)):
        if re.search(r"\s", str(Path(path).resolve())):
            parser.error(f"{what} {str(path)!r} has a space in its path, which the ANTs steps "
                         "cannot take; hint: copy or link it to a path without spaces")
    template = load_nifti(args.template, allow_4d=False)
    mask = load_nifti(args.template_mask, allow_4d=False)
    from samri_ml.masks import check_template_mask
    from samri_ml.qc.volume import grid_volume

    check_template_mask(args.template, args.template_mask, template, mask)
    args.template_extent = field_of_view(template)
    args.template_grid_mm3 = grid_volume(template)  # what a registered scan can fill at most
    args.template = args.template.resolve()
    args.template_mask = args.template_mask.resolve()
    if args.template_name is None:
        args.template_name = template_label(args.template)
    elif not is_label(args.template_name):
        parser.error(f"--template-name {args.template_name!r}: a BIDS label is letters and "
                     "digits only (it becomes space-<label> in every file name)")
    if args.fast:
        if args.registration_flavour not in ("default", "fast"):
            parser.error(f"--fast conflicts with --registration-flavour "
                         f"{args.registration_flavour}; give one of them")  # fmt: skip
        args.registration_flavour = "fast"
    from samri_ml.registration import load_flavour

    load_flavour(args.registration_flavour)
    from nipype.pipeline import plugins

    nprocs_given = not isinstance(args.nprocs, _Default)
    if args.nprocs < 1:
        parser.error("--nprocs must be at least 1")
    if args.plugin is None:
        args.plugin = "Linear" if args.nprocs == 1 else "MultiProc"
    if args.plugin == "Debug" or not hasattr(plugins, f"{args.plugin}Plugin"):
        parser.error(f"unknown --plugin {args.plugin!r}; one of {', '.join(PLUGINS)}")
    # in a dry run too: a cluster run checked on the login node must pass or fail there as
    # the real run would
    check_scheduler(args.plugin, args.plugin_args)
    if nprocs_given and args.plugin in SCHEDULER_PROGRAMS:
        # each step is a job of its own: nothing reads it (it was accepted without a word)
        note(PROG, f"--nprocs is not used with --plugin {args.plugin} (each step is "
             "a job of its own); hint: the scheduler decides how many run at once, and "
             "--omp-nthreads sets the threads of each ANTs job")
    if args.mem_gb and args.plugin != "MultiProc":
        # nothing else reads it: a cluster job's memory is the scheduler's to give
        where = ("ask the scheduler for it in --plugin-args, e.g. sbatch_args with --mem"
                 if args.plugin in SCHEDULER_PROGRAMS else "it limits MultiProc's steps")
        note(PROG, f"--mem-gb is not used with --plugin {args.plugin}; hint: {where}")
    if args.omp_nthreads is None:
        # a cluster job gets one CPU unless its sbatch_args/qsub_args ask for more: not as many
        # threads as the login node has cores (--nprocs' default), every ANTs step
        # oversubscribing its CPU and no two runs alike (threads change ANTs' sums)
        args.omp_nthreads = 1 if args.plugin in SCHEDULER_PROGRAMS else args.nprocs
    sbatch_args = str(args.plugin_args.get("sbatch_args") or "")
    from samri_ml.workflows.resources import CPU_OPTION

    cpus = CPU_OPTION.search(sbatch_args)
    if args.plugin in ("SLURM", "SLURMGraph") and cpus and cpus.group(1) and \
            int(cpus.group(1)) < args.omp_nthreads:
        # every job gets the run's CPU count (each step's own is asked for only where the
        # run's sbatch_args give none: request_slurm_resources)
        note(PROG, f"--omp-nthreads {args.omp_nthreads}: each ANTs job runs "
             f"{args.omp_nthreads} threads, but sbatch_args asks for {cpus.group(1)} CPU(s) "
             f"per job; hint: leave --cpus-per-task out of sbatch_args (each step then asks "
             "for its own), or give as many as --omp-nthreads")
    if args.dummy_scans < 0:
        parser.error("--dummy-scans must be >= 0")
    if args.mask_model is not None:
        if args.masking != "unet":  # it would be left unused without a word
            parser.error(f"--mask-model {args.mask_model} needs --masking unet (it is the "
                         f"U-Net that predicts the masks; --masking is {args.masking})")
        if not args.mask_model.is_file():
            parser.error(f"--mask-model {args.mask_model}: model file not found; hint: give "
                         "the path of a .keras file (samri_ml-train-masker writes one)")
        from samri_ml.masking.predict import masker_file_problem

        # before any folder is made: a plate model failed the run in its masking steps
        why = masker_file_problem(args.mask_model)
        if why:
            parser.error(f"--mask-model {args.mask_model}: {why}")


def description_problem(path: Path) -> str | None:
    """What is wrong with a raw dataset's ``dataset_description.json`` (not JSON, not an
    object, no ``Name`` or ``BIDSVersion``, which BIDS requires), or None."""
    try:
        desc = json.loads(path.read_text(errors="replace"))
    except OSError as err:
        return f"not readable ({err.strerror})"
    except ValueError as err:
        return f"not valid JSON ({str(err).splitlines()[0]})"
    if not isinstance(desc, dict):
        return "not a JSON object"
    missing = [key for key in ("Name", "BIDSVersion") if not desc.get(key)]
    return f"no {' and no '.join(missing)}" if missing else None


def _generated_by(desc) -> list[str]:
    """The ``Name`` of each ``GeneratedBy`` entry of a ``dataset_description.json`` (its
    parsed ``desc``); [] where there is none or it is not a list of objects."""
    generated = desc.get("GeneratedBy") if isinstance(desc, dict) else None
    return [str(g.get("Name")) for g in generated if isinstance(g, dict)] \
        if isinstance(generated, list) else []


def _check_raw_dataset(bids_dir: Path) -> None:
    """Refuse samri_ml's own output as BIDS_DIR, and say where BIDS_DIR is another
    pipeline's derivatives (``DatasetType: derivative``, or BIDS 1.2's
    ``PipelineDescription``): either was read as raw data without a word, and its processed
    scans were registered again (samri_ml's own ``space-<template>`` scans into a second
    ``derivatives/samri_ml`` inside it). The hint names the dataset it was made from (its
    ``SourceDatasets``), where given."""
    try:
        desc = json.loads((bids_dir / "dataset_description.json").read_text(errors="replace"))
    except (OSError, ValueError):  # said by description_problem
        return
    if not isinstance(desc, dict) or desc.get("DatasetType") == "raw":
        # (samri_ml-example's dataset is raw, generated by samri_ml-example)
        return
    names = _generated_by(desc)
    ours = "samri_ml" in names
    if not ours and desc.get("DatasetType") != "derivative" and \
            "PipelineDescription" not in desc:
        return
    listed = desc.get("SourceDatasets")  # BIDS: a list of objects; anything else is no source
    sources = [s.get("URL") for s in (listed if isinstance(listed, list) else [])
               if isinstance(s, dict) and isinstance(s.get("URL"), str)]
    source = sources[0] if sources else ""
    if source:
        from urllib.parse import unquote, urlparse

        scheme = urlparse(source).scheme
        if scheme == "file":  # samri_ml writes the raw dataset's file URI
            source = unquote(urlparse(source).path)
        elif not scheme:  # a path relative to the dataset (BIDS allows it: "../../")
            source = str((bids_dir / source).resolve())
        source = f", {source}"
    if ours:
        raise SamriMLError(f"BIDS_DIR {bids_dir} is samri_ml's own output (a derivatives "
                           "dataset): its registered scans would be registered again; hint: "
                           f"give the raw dataset it was made from{source}")
    pipeline = desc.get("PipelineDescription")
    if not names and isinstance(pipeline, dict) and pipeline.get("Name"):
        names = [str(pipeline["Name"])]
    by = f" (generated by {', '.join(names)})" if names else ""
    note(PROG, f"BIDS_DIR {bids_dir} is a derivatives dataset{by}, not raw data: "
         "its scans are registered as they are, already processed; hint: give the raw "
         f"dataset it was made from{source}, unless registering these is meant")


def recorded_source(out: Path) -> Path | None:
    """The raw dataset OUTPUT_DIR's ``dataset_description.json`` says its derivatives were
    made from (``DatasetLinks.raw``, a ``file://`` URL); None where it names none."""
    from urllib.parse import unquote, urlparse

    try:
        raw = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]["raw"]
        url = urlparse(raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return Path(unquote(url.path)) if url.scheme == "file" else None


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def enclosing_dataset(folder: Path, bids_dir: Path) -> Path | None:
    """The dataset that ``folder`` lies inside, not in its ``derivatives/``: the nearest
    folder above it that has a ``dataset_description.json``, looking up to a folder named
    ``derivatives`` or ``bids_dir`` (``BIDS_DIR/derivatives/groundtruth/sub-01`` ->
    ``BIDS_DIR/derivatives/groundtruth``); None where there is none (``BIDS_DIR/derivatives/
    samri_ml``, ``/data/out``)."""
    for parent in folder.parents:
        if parent == bids_dir or parent.name == "derivatives":
            return None
        try:
            if (parent / "dataset_description.json").is_file():
                return parent
        except OSError:  # a folder we may not look into: not ours to judge
            continue
    return None


def foreign_dataset(folder: Path) -> str | None:
    """What ``folder``'s ``dataset_description.json`` says it is, where it is not samri_ml's
    (none of its ``GeneratedBy`` entries is named ``samri_ml``, as
    :func:`samri_ml.bids.write_dataset_description` names every run); None where there is no
    description or it is samri_ml's."""
    path = folder / "dataset_description.json"
    if not path.is_file():
        return None
    try:
        desc = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"its {path.name} is not readable JSON"
    names = _generated_by(desc)
    if "samri_ml" in names:
        return None
    if names:
        return f"its {path.name} says it was generated by {', '.join(map(str, names))}"
    name = desc.get("Name") if isinstance(desc, dict) else None
    return f"its {path.name} names {name!r}, not samri_ml" if name else \
        f"its {path.name} is not samri_ml's"



def recorded_command(tokens) -> str:
    """The command line as ``GeneratedBy`` and the reports record it, each relative path made
    absolute (``samri_ml-register bids rel_out participant``, as typed, could not be run again
    from another folder). Recorded once OUTPUT_DIR and the work dir exist: a token (or an
    ``--option=value``'s value) that names an existing file or folder is a path, but the
    analysis level and the labels."""
    import shlex

    labels = ("--participant-label", "--participant_label", "--session-label")
    out, in_labels = [], False
    for token in map(str, tokens):
        prefix, value = token.split("=", 1) if token.startswith("--") and "=" in token else \
            ("", token)
        if token.startswith("-") and not prefix:
            in_labels = token in labels
        elif not in_labels and value not in ("participant", "group") and \
                not os.path.isabs(value) and os.path.exists(value):
            value = os.path.abspath(value)
        out.append(f"{prefix}={value}" if prefix else value)
    return " ".join([PROG, *map(shlex.quote, out)])


def check_writable(folder: Path, what: str) -> None:
    """Refuse a folder we could not write into, without creating anything yet.

    An existing folder is probed by creating (and removing) a temporary file in it, which also
    catches what ``os.access`` misses (root on a read-only mount or an immutable folder). A
    folder still to be created is probed the same way at its nearest existing parent (an
    unnamed ``O_TMPFILE`` where the file system has it, so not even the parent's modification
    time changes; ``os.access`` let root through to a ``mkdir`` that failed, e.g. in /proc);
    :func:`make_dir` creates it once all inputs have been checked.
    """
    if folder.exists():
        if not folder.is_dir():
            raise SamriMLError(f"{what} {folder} exists and is not a folder; hint: choose "
                               "another path")
        try:
            probe_writable(folder)
        except OSError as err:
            raise SamriMLError(f"{what} {folder} is not writable ({err.strerror}); hint: choose "
                               "a writable folder") from err
        return
    parent = nearest_existing(folder.parent)
    why = "" if parent.is_dir() else " (not a folder)"
    if not why:
        try:
            probe_writable(parent)
        except OSError as err:
            why = f" ({err.strerror})"
    if why:
        raise SamriMLError(f"cannot create {what} {folder}: {parent} is not a writable "
                           f"folder{why}; hint: choose a writable folder")


def make_dir(folder: Path, what: str) -> None:
    """Create OUTPUT_DIR or the work dir (after every check passed, so that a refused run
    leaves nothing behind: the work dir only once the OUTPUT_DIR lock is held)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SamriMLError(f"cannot create {what} {folder} ({err.strerror}); hint: choose a "
                           "writable folder") from err
    check_writable(folder, what)


def build_workflow(args, sessions):
    import warnings

    from nipype.pipeline import engine as pe
    from traits.api import TraitError

    from samri_ml.errors import SamriMLNote
    from samri_ml.interfaces.bids import SharedDerivativeNames
    from samri_ml.workflows import init_generic_wf

    wf = pe.Workflow(name="samri_ml_wf", base_dir=str(args.work_dir))
    for item in sessions:
        try:
            with warnings.catch_warnings():
                # check_scans said it, in the command's words (--dummy-scans): not twice
                warnings.filterwarnings("ignore", r"bold_files\[\d+\] .*not more than "
                                        "dummy_scans", SamriMLNote)
                # validate() said it of --template-mask, once
                warnings.filterwarnings("ignore", r"template mask .* is not binary", SamriMLNote)
                sub_wf = init_generic_wf(
                    template=str(args.template), template_mask=str(args.template_mask),
                    anat_file=item["anat"], bold_files=item["bold"],
                    bold_metadata=item["bold_metadata"], output_dir=str(args.output_dir),
                    template_name=args.template_name,
                    # a session without a structural scan: check_scans said it goes functional
                    method=args.registration_method if item["anat"] else "functional",
                    flavour=args.registration_flavour, masking=args.masking,
                    mask_model=args.mask_model, dummy_scans=args.dummy_scans,
                    slice_timing=not args.no_slice_timing,
                    qc=not args.no_qc, omp_nthreads=args.omp_nthreads,
                    name=_session_wf_name(item))
        except SharedDerivativeNames as err:  # in the command's words (its options)
            check_derivative_names(err.clashes)
            raise
        except TraitError as err:  # a flavour setting of a type or range Nipype refuses
            first = str(err).strip().splitlines()[0]
            raise SamriMLError(
                f"registration flavour {args.registration_flavour!r}: a setting Nipype refuses "
                f"({first}); hint: compare with samri_ml/data/registration/default.json"
            ) from err
        log_dir = args.output_dir / f"sub-{item['subject']}" / "log"
        # Nipype reads crashdump_dir from each node's config (merged over the top workflow's),
        # not from a sub-workflow's: set it on every node, so a subject's crash files land in
        # its own log folder
        for node in sub_wf._get_all_nodes():
            node.config = {"execution": {"crashdump_dir": str(log_dir),
                                         "crashfile_format": "txt"}}
        wf.add_nodes([sub_wf])
    wf.config["execution"] = {
        "crashdump_dir": str(args.output_dir / "log"),
        "crashfile_format": "txt",
        "stop_on_first_crash": args.stop_on_first_crash,
        "remove_unnecessary_outputs": False,
        "hash_method": "content",
    }
    return wf


def _session_wf_name(item: dict) -> str:
    """The name of a session's workflow (``sub_01_ses_1``), the second part of its steps'
    full names (``samri_ml_wf.sub_01_ses_1.anat_wf.s_register``)."""
    name = f"sub_{item['subject']}" + (f"_ses_{item['session']}" if item["session"] else "")
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


#: where a log folder's crash files of earlier runs go once the sessions they are of have run
#: through (relative to that ``log``: ``sub-XX/log``, or OUTPUT_DIR's own ``log``)
EARLIER_CRASHES = "earlier"


def _set_aside_earlier_crashes(args, sessions, started: float,
                               crashes: list[Path] = ()) -> None:
    """Move the crash files of earlier runs out of ``sub-XX/log`` and OUTPUT_DIR's ``log``
    into that folder's ``earlier/`` where the session they are of (their ``Node:`` line) ran
    through in this run: its scans all registered, none of its steps failed (``crashes``:
    this run's crash files). They stayed in ``log/``, and a lab seeing them there took a rerun
    that succeeded for a failed one (the report no longer listed them). Moved, not deleted,
    and said in one note; crash files of sessions this run did not process, and in OUTPUT_DIR's
    ``log`` (the top workflow's crash folder, where an older samri_ml wrote every step's)
    those that name no session, stay."""
    from samri_ml.report import crash_node, registered_output

    failed_now = set()  # session workflows, and subjects of crash files without a Node line
    for crash in crashes:
        try:
            parts = crash_node(crash.read_text(errors="replace")).split(".")
        except OSError:
            parts = []
        failed_now.add(parts[1] if len(parts) > 1 else crash.parent.parent.name)
    through = {_session_wf_name(item): item["subject"] for item in sessions
               if not {_session_wf_name(item), f"sub-{item['subject']}"} & failed_now
               and all(registered_output(args.output_dir, scan, args.template_name).exists()
                       for scan in session_scans(item))}
    if not through:
        return
    logs = [f"sub-{subject}/log" for subject in dict.fromkeys(through.values())] + ["log"]
    moved: dict[str, int] = {}
    for name in logs:
        log = args.output_dir / name
        for path in sorted(log.glob("crash-*")):
            try:
                if path.stat().st_mtime >= started:
                    continue
                parts = crash_node(path.read_text(errors="replace")).split(".")
            except OSError:
                continue
            if len(parts) < 2 or parts[1] not in through:
                continue
            target = log / EARLIER_CRASHES / path.name
            if target.exists():  # (a uuid in every name: never, but nothing is overwritten)
                continue
            try:
                target.parent.mkdir(exist_ok=True)
                path.rename(target)
            except OSError:  # a log folder we may not write: the file stays where it was
                continue
            moved[name] = moved.get(name, 0) + 1
    if moved:
        where = ", ".join(f"{name}/{EARLIER_CRASHES} ({n})" for name, n in moved.items())
        note(PROG, f"{sum(moved.values())} crash file(s) of earlier runs, of steps "
             f"that have now run through, moved (kept) to {where}")


def check_derivative_names(clashes) -> None:
    """Refuse, before anything is written, two selected scans whose derivatives would have
    the same name (``clashes``: :func:`samri_ml.interfaces.bids.shared_derivatives` of a
    session, which ``init_generic_wf`` refuses): the transform and QC files drop the
    source's suffix, so a ``bold`` and a ``cbv`` run with the same entities overwrote each
    other's, in silence. The hint names the command's options."""
    from samri_ml.bids import parse_entities

    if not clashes:
        return
    first, second, what, _ = clashes[0]
    a, b = parse_entities(first), parse_entities(second)
    where = f"sub-{a['sub']}" + (f" ses-{a['ses']}" if "ses" in a else "")
    option = "-s" if a["datatype"] == "anat" else "-f"
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    if differ == {"suffix"}:
        hint = (f"register one suffix per OUTPUT_DIR, e.g. {option} "
                f"'{json.dumps({'datatype': a['datatype'] or 'func', 'suffix': a['suffix']})}'")
    elif differ == {"extension"}:
        hint = (f"the same scan stored as {a['extension']} and {b['extension']}? keep one, or "
                f"select one with {option} "
                f"'{json.dumps({'datatype': a['datatype'] or 'func', 'extension': a['extension']})}'")
    else:
        hint = f"select one of them with {option}"
    more = f" (and {len(clashes) - 1} more such pair(s))" if len(clashes) > 1 else ""
    raise SamriMLError(f"{where}: {Path(first).name} and {Path(second).name} would write the "
                       f"same {what} files{more}; hint: {hint}")


class _NoNodeErrors(logging.Filter):
    """Drop Nipype's error records (the tracebacks of failed steps) and its two warnings of
    each failed step ("Storing result file without outputs", "[Node] Error on ..."): the
    step's FAILED line and the run's last line (its crash file) say it; other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return False
        message = str(record.msg)
        return not (message == "Storing result file without outputs"
                    or message.startswith("[Node] Error on "))


class Progress:
    """Nipype status callback: one line per finished node, so long runs show progress.

    Nipype reports some nodes as ended that it never reported as started: under ``Linear``
    the dependents of a failed step (they do not run: ``linear`` says so), under the other
    plugins the steps run in the main process (data sinks, small utilities: done) and those
    whose results an earlier run left complete in the work dir (reused). ``Linear`` starts
    the nodes it reuses like the others: whether it will reuse one is asked at its start.
    """

    def __init__(self, total: int, stream=None, stop=None, linear: bool = False):
        # sys.stderr when called, not when defined (a redirected or captured stderr)
        stream = sys.stderr if stream is None else stream
        self.total, self.done, self.stream, self.start = total, 0, stream, time.monotonic()
        self.stop = stop  # a quiet_interrupts() state: raise at the next node once interrupted
        self.linear = linear
        self.started: set[int] = set()
        self.reused: set[int] = set()
        #: the full names of the steps said done (run or reused) in this run
        self.through: set[str] = set()

    def __call__(self, node, status):
        if self.stop is not None and self.stop.interrupted:
            raise self.stop.exc
        if status == "start":
            self.started.add(id(node))
            if self.linear and _reusable(node):  # Linear starts the nodes it reuses too
                self.reused.add(id(node))
            return
        self.done += 1
        elapsed = time.monotonic() - self.start
        if status == "exception":
            what = "FAILED"
        elif id(node) in self.reused:
            what = "done (result of an earlier run reused)"
        elif id(node) in self.started:
            what = "done"
        elif self.linear:  # Linear reports the dependents of a failed step as ended, only
            what = "not run (a step before it failed)"
        elif getattr(node, "run_without_submitting", False):  # run in the main process
            what = "done"
        else:  # found complete in the work dir
            what = "done (result of an earlier run reused)"
        if what.startswith("done"):
            self.through.add(node.fullname)
        print(f"[{self.done}/{self.total} {elapsed:6.0f}s] {what}: {node.fullname}",
              file=self.stream, flush=True)


def _reusable(node) -> bool:
    """Whether Nipype will reuse ``node``'s result from the work dir instead of running it
    (its cache up to date, and neither the node nor its interface always run); False where
    that cannot be told."""
    try:
        cached, updated = node.is_cached()
        return bool(cached and updated and not node.overwrite
                    and not getattr(node.interface, "always_run", False))
    except Exception:  # noqa: BLE001 -- a progress line must never fail a run
        return False


def _main(argv=None) -> int:
    import warnings

    # the run's notes, for its reports and OUTPUT_DIR/log/notes*.txt (_write_notes); the
    # warning filters a run sets (notes said once, before or after the steps) are its own: run
    # in-process (tests, a notebook), they hid MaskBrain's notes from later pipelines
    with keeping_notes(), warnings.catch_warnings():
        return _register(argv)


def _register(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.output_dir is not None and str(args.output_dir) == "participant":
        # ``BIDS_DIR participant``: the analysis level with the default OUTPUT_DIR (argparse
        # fills the optional positionals from the left); a folder of that name is ./participant
        args.output_dir = None
    if args.analysis_level == "group" or (args.output_dir is not None
                                           and str(args.output_dir) == "group"):
        # the BIDS-App group level (``BIDS_DIR OUT group``, or ``BIDS_DIR group``: not a
        # folder to create; a folder of that name is ./group)
        parser.error("there is no group level: samri_ml-register works per participant; "
                     "compare workflows with `samri_ml-qc compare DERIV_DIR DERIV_DIR`")
    setup_logging(args.verbose)
    # pybids' in-memory database: Ctrl-C while the dataset is indexed logged sqlalchemy's
    # 30-line "Error closing cursor" traceback above the one 'interrupted' line
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    from samri_ml.io import _nibabel_log

    # what nibabel fixes in a header (a negative pixdim: "setting to abs of pixdim values")
    # load_nifti says in a note of each scan and of the template before the run; nibabel's
    # raw line leaked (twice, raw and through the root logger) where the workflow's build
    # reads the headers again and from a step (Nipype's N4 copy_header; forked workers
    # inherit its logger as held here)
    with _nibabel_log():
        try:
            return _run(args, parser, argv)
        except OSError as err:
            # a write the scheduler process makes (Nipype's d3.js and graph files in the work
            # dir, the reports): a full disk was "error: OSError: [Errno 28] No space left on
            # device: '…/d3.js' -> '…/work/samri_ml_wf/d3.js' (rerun with -v for the
            # traceback)", without the failed steps' hint to free space
            if err.errno not in FULL_DISK_ERRNOS:
                raise
            written = err.filename2 or err.filename  # shutil's copy: (source, target)
            raise SamriMLError(f"cannot write{f' {written}' if written else ''} "
                               f"({err.strerror}); hint: {FULL_DISK_HINT}") from err


def _run(args, parser, argv) -> int:
    """:func:`_main` once the command line is parsed and logging set up."""
    validate(args, parser)
    from samri_ml.ants import ensure_ants_on_path

    ants = ensure_ants_on_path()
    sessions = collect_sessions(args)
    check_scans(args, sessions)
    from samri_ml.lock import OutputLock

    # built before anything is written: a flavour whose settings Nipype refuses fails here,
    # and scans whose derivatives would share a name
    wf = build_workflow(args, sessions)
    if args.plugin in ("SLURM", "SLURMGraph"):
        # each heavy step's CPUs and memory (Nipype's SLURM plugins submit every step with
        # the run's sbatch_args alone: antsRegistration on --omp-nthreads threads got one CPU)
        from samri_ml.cluster import check_step_requests
        from samri_ml.workflows import request_slurm_resources

        run_args = str(args.plugin_args.get("sbatch_args") or "")
        # a step's request over the partition's limits was refused only at its submission
        check_step_requests(args.plugin, run_args, request_slurm_resources(wf, run_args))
    # another run on OUTPUT_DIR, or on the work dir (two runs in one -w crashed each other's
    # steps), refuses this one before anything is written
    OutputLock.check(args.output_dir)
    OutputLock.check(args.work_dir, "-w")
    if args.dry_run:
        # every check of a real run (the scheduler's programs and the output folders were
        # checked in validate()), nothing written (but the graph, where asked for)
        _dry_run(args, sessions, wf, ants)
        return 0
    make_dir(args.output_dir, "OUTPUT_DIR")
    with OutputLock(args.output_dir), contextlib.ExitStack() as held:
        make_dir(args.work_dir, "--work-dir")
        held.enter_context(OutputLock(args.work_dir, "-w"))
        from samri_ml.bids import output_bidsignore, write_bidsignore, write_dataset_description

        args.command = recorded_command(sys.argv[1:] if argv is None else argv)
        # however the run ends (finished, failed, interrupted), while OUTPUT_DIR is locked
        args.notes_log = notes_log_path(sessions, args.participant_label, args.session_label)
        held.push(functools.partial(_write_notes, args, time.time()))
        write_dataset_description(args.output_dir, args.bids_dir, __version__, args.command)
        if not args.no_qc:  # the columns of every scan's QC table, which BIDS wants described
            from samri_ml.qc.metrics import write_qc_table_dictionary

            write_qc_table_dictionary(args.output_dir)
        # the validator's errors on our files BIDS does not describe (a QC record was "a
        # sidecar without a data file"); a lab's own lines are kept
        write_bidsignore(args.output_dir, output_bidsignore())
        _announce(args, sessions, wf, ants)
        _forget_unreadable_results(Path(args.work_dir) / wf.name)
        plugin_args = dict(args.plugin_args)
        # Nipype reads these from its execution config, not from the plugin's arguments;
        # accepting them in --plugin-args lets cluster users poll the scheduler less (or more)
        for key in ("poll_sleep_duration", "job_finished_timeout"):
            if key in plugin_args:
                wf.config["execution"][key] = plugin_args.pop(key)
        if args.plugin in ("MultiProc", "Linear"):
            # a local run polls its workers every 0.5 s, not Nipype's 2 s: with ~25 short
            # nodes per subject the waits were most of a cached rerun's time (cluster plugins
            # keep 2 s, which spares the scheduler)
            wf.config["execution"].setdefault("poll_sleep_duration", LOCAL_POLL_SECONDS)
        if args.plugin == "MultiProc":
            plugin_args.setdefault("n_procs", args.nprocs)
            if args.mem_gb:
                plugin_args.setdefault("memory_gb", args.mem_gb)
            plugin_args.setdefault("raise_insufficient", False)
        quiet_failures = _NoNodeErrors()
        if args.verbose == 0:
            from nipype import logging as nlogging

            workflow_log = nlogging.getLogger("nipype.workflow")
            workflow_log.setLevel("WARNING")
            # a failed step is one FAILED progress line and the run's last line names its
            # crash file: Nipype's tracebacks of it (~100 lines each, twice) are for -v
            workflow_log.addFilter(quiet_failures)
            # in-process plugins (Linear) would echo every ANTs stderr line (e.g. its notes
            # on the NULL masks of unmasked stages); -v shows them
            nlogging.getLogger("nipype.interface").setLevel("WARNING")
        from nipype.interfaces.utility import IdentityInterface

        # the steps the run reports (Nipype drops the IdentityInterface nodes)
        steps = [n.fullname for n in wf._create_flat_graph().nodes()
                 if not isinstance(n.interface, IdentityInterface)]
        total = len(steps)
        ensure_logname()  # Nipype's SLURM/SGE plugins name jobs after it
        started = time.time()  # crash files and the reports' "since" are this run's after it
        from samri_ml.report import DRAWN

        DRAWN.clear()  # the pictures this run draws (an earlier run in this process drew others)
        import warnings

        # check_scans said it before the run, with a hint: not again from each step (forked
        # workers inherit the filter)
        warnings.filterwarnings("ignore", message=r"only \d+ volumes: dropping",
                                category=UserWarning)
        # the MaskBrain nodes' note on a mask's volume: said once, kept, after the run
        # (_note_mask_volumes)
        warnings.filterwarnings("ignore", category=MaskVolumeNote)
        template = plugin_args.get("template")
        if isinstance(template, str) and os.path.isfile(template):  # read in the work dir
            plugin_args["template"] = os.path.abspath(template)
        runner = None
        try:
            # from the work dir: Nipype's PBS plugin writes its qstat output (stdout.nipype,
            # stderr.nipype) into the current folder, which may be BIDS_DIR
            with quiet_interrupts() as state, contextlib.chdir(args.work_dir):
                if args.plugin not in GRAPH_PLUGINS:  # they print a warning of Nipype's
                    plugin_args["status_callback"] = Progress(total, stop=state,
                                                             linear=args.plugin == "Linear")
                from nipype.pipeline import plugins

                # the plugin itself, not its name: its queue of submitted jobs is needed
                # after Ctrl-C
                runner = getattr(plugins, f"{args.plugin}Plugin")(plugin_args=plugin_args)
                submit_whole(runner, PROG)  # Ctrl-C waits for a submission: its job is cancelled
                # a job killed by the scheduler, a MultiProc step whose result file could
                # not be written: its step fails, the run neither stops nor hangs
                follow_jobs(runner)
                graph = wf.run(plugin=runner)
        except KeyboardInterrupt:
            _drop_interrupt_crash_files(args.output_dir, started)
            if runner is not None:
                cancel_jobs(args.plugin, runner, PROG)
            try:  # after the jobs are cancelled: nothing writes while the files are counted
                _note_mixed_outputs(args, sessions, started)
            except Exception:  # noqa: BLE001 - a full disk must not turn Ctrl-C into its error
                pass
            raise
        except Exception as err:
            if runner is not None and getattr(runner, "_pending", None):
                # the plugin stopped with jobs queued (a later submission refused): Nipype
                # leaves them running, as after Ctrl-C
                cancel_jobs(args.plugin, runner, PROG)
            # a failed step: Nipype re-raises the step's exception (Linear, one failure), a
            # RuntimeError with its traceback (MultiProc) or "N raised. Re-raising first."
            text = str(err)
            crashes = sorted(args.output_dir.glob("**/log/crash-*"), key=os.path.getmtime)
            crashes = [c for c in crashes if os.path.getmtime(c) >= started]
            if not (crashes or "Workflow did not execute cleanly" in text or "Traceback" in text
                    or re.fullmatch(r"\d+ raised\. Re-raising first\.", text)):
                raise
            # graph plugins submit every job at once and never call the status callback:
            # there the registered outputs alone tell
            through = (None if args.plugin in GRAPH_PLUGINS
                       else getattr(plugin_args.get("status_callback"), "through", None))
            # the sessions that finished still get their report (the failed scans marked)
            off_template = []
            try:
                off_template = _write_reports(args, sessions, started,
                                              confirmed=_confirmed_outputs(args, sessions,
                                                                           through))
            except Exception as report_err:  # noqa: BLE001 - the run's own error comes first
                note(PROG, f"the reports could not be written ({report_err})")
            outcomes = _outcomes(args, sessions, crashes, steps, through)
            if not args.stop_on_first_crash:
                # the sessions beside the failed ones ran through
                _set_aside_earlier_crashes(args, sessions, started, crashes)
            elif through is not None:
                # after a first crash the others may not have run (their outputs an earlier
                # run's): only those whose every step this run ran through (or reused)
                not_run = _sessions_not_run(steps, through)
                _set_aside_earlier_crashes(
                    args, [item for item in sessions if _session_wf_name(item) not in not_run],
                    started, crashes)
            from samri_ml.bids import derivative_path

            # a subject that finished beside the failed one had its implausible VCF said
            # only by its report: the notes of a run that finished were never printed;
            # with --no-qc a record there is an earlier run's (its VCF said as this run's)
            finished = set(outcomes.get("finished", []))
            records = [] if args.no_qc else [
                derivative_path(args.output_dir, scan, space=args.template_name,
                                desc="qc", suffix="metrics", extension=".json")
                for item in sessions if f"sub-{item['subject']}" in finished
                for scan in session_scans(item)]
            _note_implausible_qc(args, records + [
                record for record in off_template
                if record["scan"].split("_")[0] in finished])
            n = f"{len(crashes)} step(s) failed" if crashes else "some steps failed"
            said = "; ".join(f"{what}: {some_names(names, 5)}" for what, names in outcomes.items())
            summary = _crash_summary(crashes)
            raise SamriMLError(
                f"{n}{f' ({said})' if said else ''}; crash files are in "
                f"{args.output_dir}/sub-*/log{summary}; hint: {_fix_hint(crashes)}") from err
        finally:  # in-process callers (tests, the API) get Nipype's logging back as it was
            logging.getLogger("nipype.workflow").removeFilter(quiet_failures)
        if args.plugin in GRAPH_PLUGINS:
            args.outcome = "submitted (the reports come with the rerun under --plugin Linear)"
            print(f"{PROG}: submitted; the jobs run under the scheduler and write the "
                  f"derivatives into {args.output_dir}; once they have finished, run the same "
                  "command with --plugin Linear (and the same -w) for the reports: every step "
                  "is reused", file=sys.stderr)
            return 0
        # the report's registration overviews do not need QC; without it there is no table
        off_template = _write_reports(args, sessions, started)
        _set_aside_earlier_crashes(args, sessions, started)
        _note_stale(args, sessions, graph)
        _remove_leftover_temporaries(args, sessions, started)
        from samri_ml.interfaces.bids import sink_outputs

        # with --no-qc, the structural scans off the template have no QC record: the
        # reports' own coverage names them (they were in the reports only)
        _note_implausible_qc(args, [*sink_outputs(graph), *off_template])
    print(f"{PROG}: finished; derivatives in {args.output_dir}", file=sys.stderr)
    return 0


def _write_notes(args, started: float, exc_type=None, exc=None, tb=None) -> None:
    """Write the run's notes (:func:`samri_ml.cli._notes.write_notes_log`) into
    ``OUTPUT_DIR/log/notes.txt`` (a selection's: :func:`notes_log_path`), replacing the last
    such run's, with how the run ended (an
    ``ExitStack`` callback: ``exc`` is what ended it, None where it finished). A file that
    cannot be written is said, and the run's own outcome stands."""
    from samri_ml.cli._common import Terminated, _one_line
    from samri_ml.cli._notes import kept_notes, write_notes_log

    if exc is None:
        end = getattr(args, "outcome", "finished")
    elif isinstance(exc, Terminated):
        end = "terminated"
    elif isinstance(exc, KeyboardInterrupt):
        end = "interrupted"
    elif isinstance(exc, SamriMLError):
        end = f"error: {_one_line(exc)}"
    else:
        end = f"error: {type(exc).__name__}: {_one_line(exc)}"
    where = getattr(args, "notes_log", NOTES_LOG)
    try:
        write_notes_log(args.output_dir, PROG, kept_notes(), started=started,
                        command=getattr(args, "command", None), end=end, where=where)
    except OSError as err:
        print(f"{PROG}: could not write {args.output_dir / where} ({err.strerror})",
              file=sys.stderr)


def _outcomes(args, sessions, crashes: list[Path], steps=None,
              through=None) -> dict[str, list[str]]:
    """Which subjects of a run that failed somewhere ``failed`` (a crash file of this run in
    their ``sub-XX/log``), ``finished`` (every selected scan registered, none failed, and each
    of its sessions' ``steps``, the full names of the run's steps, among those the run ran
    through, ``through``) and are ``not finished`` (a scan without its registered output, or
    a step not run: after --stop-on-first-crash, or behind a failed step), for the run's
    one-line error: it named only the first crash file, so with one subject of many failing
    the user could not tell what was done. Empty groups are left out. (The registered
    outputs alone called a subject finished that the run had stopped before, where an
    earlier run had left them.)"""
    from samri_ml.report import registered_output

    failed = {crash.relative_to(args.output_dir).parts[0] for crash in crashes
              if crash.is_relative_to(args.output_dir)}
    subjects = list(dict.fromkeys(f"sub-{item['subject']}" for item in sessions))
    unfinished = {f"sub-{item['subject']}" for item in sessions for scan in session_scans(item)
                  if not registered_output(args.output_dir, scan, args.template_name).exists()}
    if steps is not None and through is not None:
        not_run = _sessions_not_run(steps, through)
        unfinished |= {f"sub-{item['subject']}" for item in sessions
                       if _session_wf_name(item) in not_run}
    groups = [("failed", [s for s in subjects if s in failed]),
              ("not finished", [s for s in subjects if s in unfinished - failed]),
              ("finished", [s for s in subjects if s not in failed | unfinished])]
    return {what: names for what, names in groups if names}


def _sessions_not_run(steps, through) -> set[str]:
    """The session workflows (:func:`_session_wf_name`) with a step of ``steps`` (the run's
    steps, full names) that is not among ``through`` (those the run ran through or reused:
    :attr:`Progress.through`)."""
    return {step.split(".")[1] for step in steps if step not in through and step.count(".") > 1}


def _crash_summary(crashes: list[Path]) -> str:
    """``", the first <file> says: <its last line>"`` of the first crash file, for the run's
    one-line error ("" without one)."""
    if not crashes:
        return ""
    from samri_ml.report import crash_cause, shorten_middle

    try:
        cause = crash_cause(crashes[0].read_text(errors="replace")) or "unreadable"
    except OSError:
        cause = "unreadable"
    # the start and the end (the hint) of a long cause, as the reports keep them
    cause = shorten_middle(cause, 200)
    return f", the first {crashes[0].name} says: {cause}"


#: the hint of a run that found no room to write (:data:`~samri_ml.errors.FULL_DISK_ERRNOS`)
FULL_DISK_HINT = ("free some space (see df -h on the work and output folders) and rerun the "
                  "same command (with the same -w): only what failed or did not run is redone")


def _fix_hint(crashes: list[Path]) -> str:
    """The failed run's hint: "free some space" where the first of its ``crashes`` (the one
    :func:`_crash_summary` quotes) is of a step that found the disk full (it said "fix the
    cause", which sent users to look for a bug), else "fix the cause"; then rerun."""
    if crashes and _full_disk_crash(crashes[0]):
        return FULL_DISK_HINT
    return ("fix the cause and rerun the same command (with the same -w): only what failed or "
            "did not run is redone")


def _full_disk_crash(crash: Path) -> bool:
    """Whether the Nipype crash file ``crash`` is of a write that found no room: an exception
    of its traceback, chained ones too, is an ``OSError`` of
    :data:`~samri_ml.errors.FULL_DISK_ERRNOS` (``[Errno 28] No space left on device``), or
    its cause (:func:`~samri_ml.report.crash_cause`) says one's words. The cause as the run's
    line quotes it, cut to 200 characters, lost them behind a long path, and a chained error
    (the result file Nipype could then not write, or read back) has none."""
    from samri_ml.report import crash_cause

    try:
        text = crash.read_text(errors="replace")
    except OSError:
        return False
    cause = crash_cause(text)
    return any(f"[Errno {code}] {os.strerror(code)}" in text for code in FULL_DISK_ERRNOS) or \
        any(words in cause for words in FULL_DISK_CAUSES)


def _drop_interrupt_crash_files(output_dir: Path, started: float) -> None:
    """Remove the crash files of this run that only record Ctrl-C: an in-process plugin
    (Linear) turns the interrupt into the running node's failure, and its crash file would
    send the user looking for a bug that is not there. Crash files of real failures (they
    name another exception) and of earlier runs stay."""
    from samri_ml.report import crash_cause

    for path in Path(output_dir).glob("**/log/crash-*"):
        try:
            if path.stat().st_mtime < started:
                continue
            text = path.read_text(errors="replace")
        except OSError:
            continue
        # Ctrl-C, or SIGTERM (samri_ml.cli._common.Terminated)
        if crash_cause(text).split(":")[0].rsplit(".", 1)[-1] in ("KeyboardInterrupt",
                                                                  "Terminated"):
            path.unlink(missing_ok=True)


def _note_mixed_outputs(args, sessions, started: float) -> None:
    """After an interrupt: each subject whose derivatives this run rewrote in part, beside
    an earlier run's, is named, and its earlier report gets a banner (:func:`mark_interrupted`).
    An interrupted rerun with another option left the new registered scan beside the old
    QC record and report, nothing telling them apart."""
    try:
        from samri_ml.report import mark_interrupted
    except ImportError:
        return
    for subject in dict.fromkeys(item["subject"] for item in sessions):
        folder = args.output_dir / f"sub-{subject}"
        new, old = [], 0
        try:
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder).parts
                if not path.is_file() or rel[0] in ("log", "figures") or \
                        path.name.startswith("."):
                    continue
                if path.stat().st_mtime >= started:
                    new.append(path.name)
                else:
                    old += 1
        except OSError:
            continue
        if not (new and old):
            continue
        report = args.output_dir / f"sub-{subject}.html"
        marked = report.is_file() and report.stat().st_mtime < started and \
            mark_interrupted(report, new, started)
        note(PROG, f"sub-{subject}: this run rewrote {len(new)} of its derivatives "
             f"before the interrupt, beside {old} of an earlier run"
             + (f" (marked in {report.name})" if marked else "")
             + "; hint: rerun the same command to finish (finished steps are reused)")


def _announce(args, sessions, wf, ants) -> None:
    """The run's one-line summary, and its graph where ``--write-graph`` asks for it."""
    n_scans = sum(len(session_scans(item)) for item in sessions)
    print(f"{PROG}: {len(sessions)} session(s), {n_scans} scan(s); template "
          f"{args.template_name}; flavour {args.registration_flavour}; masking "
          f"{args.masking}; plugin {args.plugin}, {args.omp_nthreads} thread(s) per ANTs step; "
          f"{ants}; work dir {args.work_dir}",
          file=sys.stderr)
    for item in getattr(args, "scan_notes", []):
        note(PROG, item)
    if args.write_graph:
        from samri_ml.graph import write_workflow_graph

        stem = graph_stem(sessions, args.participant_label, args.session_label)
        # a dry run's is a preview: it replaced the graph the reports of the run before link
        # (a dry run with --masking unet: theirs, masking none, showed the U-Net's steps)
        path, how = write_workflow_graph(
            wf, args.output_dir / "figures" / (stem + ("_dry-run" if args.dry_run else "")),
            graph2use=args.write_graph, fmt=args.graph_format)
        args.graph_path = path  # the reports show this run's graph, not an earlier one's
        print(f"{PROG}: workflow graph written to {path} ({how})", file=sys.stderr)


#: the longest graph name of subjects' and sessions' labels (:func:`graph_stem`; 30 subjects
#: would take 225 characters, near the file system's limit)
GRAPH_STEM_MAX = 100


def graph_stem(sessions, participant_label=None, session_label=None) -> str:
    """The file name (no extension) of a run's workflow graph in ``OUTPUT_DIR/figures``:
    ``workflow_graph`` for a run of the whole dataset, else one per selection of subjects
    and sessions (``--participant-label 02``: ``workflow_graph_sub-02``; with
    ``--session-label 2`` too: ``workflow_graph_sub-02_ses-2``), their number and a digest
    where the labels are many. A rerun of one subject replaced the graph that the other
    subjects' reports link, which then showed a graph without them."""
    return selection_stem("workflow_graph", sessions, participant_label, session_label)


def selection_stem(prefix: str, sessions, participant_label=None, session_label=None) -> str:
    """``prefix`` for a run of the whole dataset, else ``prefix`` and the run's selection of
    subjects and sessions (:func:`graph_stem`, :func:`notes_log_path`)."""
    if not (participant_label or session_label):
        return prefix
    tags = [f"sub-{s}" for s in sorted({item["subject"] for item in sessions})]
    if session_label:
        tags += [f"ses-{s}" for s in sorted({item["session"] for item in sessions
                                             if item["session"]})]
    stem = "_".join([prefix, *tags])
    if len(stem) > GRAPH_STEM_MAX:
        digest = hashlib.sha1(stem.encode()).hexdigest()[:8]
        stem = f"{prefix}_{len(sessions)}-sessions_{digest}"
    return stem


def notes_log_path(sessions, participant_label=None, session_label=None) -> Path:
    """Where a run's notes go, relative to OUTPUT_DIR: ``log/notes.txt`` for a run of the whole
    dataset, else one per selection (``--participant-label 02``: ``log/notes_sub-02.txt``), as
    the workflow graph (:func:`graph_stem`). A rerun of one subject replaced the log that held
    the other subjects' notes."""
    stem = selection_stem(NOTES_LOG.stem, sessions, participant_label, session_label)
    return NOTES_LOG.with_name(stem + NOTES_LOG.suffix)


def _dry_run(args, sessions, wf, ants) -> None:
    """``--dry-run``: say what a run would register and where it would write; create nothing
    (no OUTPUT_DIR, no work dir, no dataset_description.json) but the graph asked for."""
    _announce(args, sessions, wf, ants)
    for item in sessions:
        where = f"sub-{item['subject']}" + (f" ses-{item['session']}" if item["session"] else "")
        names = [Path(scan).name for scan in session_scans(item)]
        if not item["anat"]:
            names.insert(0, "no structural scan")
        print(f"{PROG}: dry run: {where}: {', '.join(names)}", file=sys.stderr)
    nodes = sum(1 for _ in wf._create_flat_graph().nodes())
    print(f"{PROG}: dry run: {nodes} nodes built, none run; a run writes into "
          f"{args.output_dir}", file=sys.stderr)


def _forget_unreadable_results(folder: Path) -> None:
    """Make the steps of an earlier run whose result Nipype can no longer read back (an output
    file of theirs deleted from the work dir, e.g. to free space) run again, and say so:
    MultiProc and the cluster plugins took such a step for done, by its hash alone, and the
    next step failed reading its result ('TraitError: The 'out_json' trait ... must be ... an
    existing file', after a page of Nipype's traceback); Linear ran it again. Its hash file is
    removed, so that every plugin runs it."""
    from nipype import logging as nlogging
    from nipype.pipeline.engine.utils import load_resultfile

    forgotten = []
    quiet = nlogging.getLogger("nipype.utils")  # "No metadata was found in the pkl file"
    level = quiet.level
    quiet.setLevel("ERROR")
    try:
        for result in sorted(folder.rglob("result_*.pklz")) if folder.is_dir() else []:
            hashes = [h for h in result.parent.glob("_0x*.json")
                      if not h.name.endswith("_unfinished.json")]
            if not hashes:  # not cached: it runs anyway
                continue
            try:
                load_resultfile(result)
            except Exception:  # noqa: BLE001 - whatever stops Nipype reading it back
                for h in hashes:
                    h.unlink(missing_ok=True)
                forgotten.append(result.parent)
    finally:
        quiet.setLevel(level)
    if forgotten:
        note(PROG, f"{len(forgotten)} step(s) of an earlier run whose results are "
             f"gone from the work dir are run again (e.g. {forgotten[0].relative_to(folder)})")


def _remove_leftover_temporaries(args, sessions, started: float) -> None:
    """Remove the temporary files a killed run left among the derivatives (hidden
    ``.NAME.xxxxxxxx`` files: a SIGKILL during a write), and say so. This run holds OUTPUT_DIR's
    lock, and they predate it: no run writes them any more."""
    from samri_ml.bids import leftover_temporaries

    sources = [scan for item in sessions for scan in session_scans(item)]
    removed = []
    for path in leftover_temporaries(args.output_dir, sources, started):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    if removed:
        note(PROG, f"removed {len(removed)} temporary file(s) a killed run left "
             f"(e.g. {removed[0].relative_to(args.output_dir)})")


def _note_stale(args, sessions, graph) -> None:
    """Name the derivatives an earlier run with other options left beside this run's (another
    ``-f``, ``--masking none`` after ``unet``, ``--no-qc``), the report pictures of its
    sessions this run did not draw (report.DRAWN) and the workflow graphs no report links
    any more (report.unlinked_graphs), and after a run of the whole dataset the notes logs of
    earlier runs of some subjects (``log/notes_sub-02.txt``): they are kept, not deleted."""
    from samri_ml.bids import old_figure_name, old_qc_table_name, stale_files
    from samri_ml.interfaces.bids import sink_outputs

    sources = [scan for item in sessions for scan in session_scans(item)]
    from samri_ml.report import DRAWN, unlinked_graphs

    stale = stale_files(args.output_dir, sink_outputs(graph), sources, figures_drawn=DRAWN)
    stale += unlinked_graphs(args.output_dir)
    if getattr(args, "notes_log", NOTES_LOG) == NOTES_LOG:  # a run of the whole dataset
        # the notes of earlier runs of some subjects (log/notes_sub-02.txt), now in its own
        stale += sorted((args.output_dir / NOTES_LOG.parent).glob(f"{NOTES_LOG.stem}_*.txt"))
    # an upgrade's rerun: the pictures the first release named otherwise came first (sorted,
    # figures/ before ses-*/) and a stale mask of another --masking was one of "and 9 more"
    renamed = [p for p in stale if old_figure_name(p)]
    # and the QC tables an earlier samri_ml named as their records: said to be "an earlier
    # run with other options?" (BIDS tools take the record beside one for its sidecar)
    old_tables = [p for p in stale if old_qc_table_name(p)]
    # the derivatives first: a stale mask is the one to see, before pictures of it
    stale = sorted((p for p in stale if p not in renamed and p not in old_tables),
                   key=lambda p: p.parent.name == "figures")

    def kept(files):
        shown = ", ".join(str(p.relative_to(args.output_dir)) for p in files[:3])
        return shown + (f" and {len(files) - 3} more" if len(files) > 3 else "")

    if stale:
        note(PROG, f"{len(stale)} file(s) in OUTPUT_DIR are not from this run (an "
             f"earlier run with other options?), kept: {kept(stale)}; hint: delete them if "
             "they are stale, or use another OUTPUT_DIR per configuration")
    if renamed:
        note(PROG, f"{len(renamed)} report picture(s) in OUTPUT_DIR are named as an "
             "earlier samri_ml named them (the scan's suffix before desc-; the reports no "
             f"longer show them), kept: {kept(renamed)}; hint: delete them")
    if old_tables:
        note(PROG, f"{len(old_tables)} QC table(s) in OUTPUT_DIR are named as an "
             "earlier samri_ml named them (*_desc-qc_metrics.tsv, now *_desc-qctable_metrics"
             ".tsv: BIDS tools take the QC record beside one for its sidecar), kept: "
             f"{kept(old_tables)}; hint: delete them")




def _note_implausible_qc(args, paths) -> None:
    """Name each scan of this run (its QC records among ``paths``, or the reports' records of
    scans without one) whose VCF or coverage says the registration failed (such runs ended
    with "finished" and exit 0, the failure visible only in the report's pictures)."""
    for line in implausible_qc_notes(paths, args.output_dir, args.template_grid_mm3):
        note(PROG, line)


def implausible_qc_notes(paths, output_dir, grid_mm3: float | None = None) -> list[str]:
    """One line per QC record among ``paths`` (``*_desc-qc_metrics.json`` files, or records:
    the reports' of scans without one, ``write_subject_reports``'s ``off_template``) whose
    VCF is outside :data:`PLAUSIBLE_VCF`:
    the registration probably failed, or (:func:`samri_ml.qc.volume.vcf_verdict`, with the
    template's ``grid_mm3``) the VCF cannot tell, the scan's field of view being wider than
    the template's; and one per structural scan covering less than
    :data:`~samri_ml.qc.metrics.STRUCTURAL_MIN_COVERAGE` of the template's brain (a head scan
    holds the whole brain: its registration probably failed)."""
    import json

    from samri_ml.qc.metrics import off_template_text, structural_off_template
    from samri_ml.qc.volume import uninformative_vcf_text, vcf_verdict

    notes = []
    for path in paths:
        if isinstance(path, dict):
            record = path
        elif not str(path).endswith("_desc-qc_metrics.json"):
            continue
        else:
            try:
                record = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                continue
        if not isinstance(record, dict):
            continue
        verdict = vcf_verdict(record, grid_mm3)
        # a whole head registered off the template (40 % of its brain covered) got only
        # "the VCF cannot tell"
        off = structural_off_template(record)
        if verdict is None and off is None:
            continue
        name = str(record["scan"]) if isinstance(path, dict) else Path(path).name
        scan = record.get("scan", name)
        report = Path(output_dir) / (name.split("_")[0] + ".html")
        if off is not None and verdict != "implausible":
            notes.append(f"{scan}: {off_template_text(off)}; hint: look at {report}")
        elif verdict == "uninformative":
            # a wide head scan, well registered, was said to have failed
            notes.append(f"{scan}: {uninformative_vcf_text(record, grid_mm3)}; hint: judge "
                         f"it by the pictures in {report}")
        else:
            notes.append(f"{scan}: VCF {record['vcf']:.3g} (the registered scan holds that "
                         "fraction of its source's volume): the registration probably failed; "
                         f"hint: look at {report}")
    return notes


def _confirmed_outputs(args, sessions, through) -> set[Path] | None:
    """The registered scans whose sink step this run ran through (or reused), although they
    may predate it: a sink leaves a file of the same bytes as it was, its time included, so
    the time alone called them an earlier run's. ``None`` where the run cannot tell
    (``through`` is None: a graph plugin)."""
    if through is None:
        return None
    from samri_ml.report import registered_output

    out = set()
    for item in sessions:
        prefix = f"samri_ml_wf.{_session_wf_name(item)}."
        sinks = ([("ds_anat", item["anat"])] if item["anat"] else []) + [
            (f"ds_func{i}", bold) for i, bold in enumerate(item["bold"])]
        out |= {registered_output(args.output_dir, raw, args.template_name).resolve()
                for node, raw in sinks if prefix + node in through}
    return out


def _write_reports(args, sessions, started: float | None = None,
                   confirmed: set[Path] | None = None) -> list[dict]:
    """Per-subject HTML reports, where the report module is available; the crash files
    written since ``started`` are listed in them; ``confirmed``: the registered scans this
    run wrote or found as it would have written them (:func:`_confirmed_outputs`). Returns
    the reports' records of the structural scans off the template without a QC record
    (``--no-qc``), for :func:`_note_implausible_qc`."""
    _note_mask_volumes(args, sessions)  # before the notes are shared out among the reports
    try:
        from samri_ml.report import INDEX, write_subject_reports
    except ImportError:
        return []
    from samri_ml.cli._notes import kept_notes, notes_of

    off_template: list[dict] = []
    by_subject, dataset_notes = notes_of(kept_notes(), [item["subject"] for item in sessions],
                                         roots=(args.bids_dir, args.output_dir, args.work_dir))
    for path in write_subject_reports(args.output_dir, sessions, template=args.template,
                                      template_mask=args.template_mask,
                                      template_name=args.template_name,
                                      masking=args.masking, qc=not args.no_qc,
                                      # the flavour that ran: read from the command line,
                                      # a repeated option or an abbreviated one misled it
                                      flavour=args.registration_flavour,
                                      crashes_since=started, confirmed=confirmed,
                                      workflow_graph=getattr(args, "graph_path", False),
                                      off_template=off_template, notes=by_subject,
                                      dataset_notes=dataset_notes,
                                      notes_log=getattr(args, "notes_log", NOTES_LOG)):
        print(f"{PROG}: report {path}", file=sys.stderr)
    print(f"{PROG}: every subject's report: {args.output_dir / INDEX}", file=sys.stderr)
    _note_sessions_not_reported(args.output_dir, sessions)
    return off_template


def _note_mask_volumes(args, sessions) -> None:
    """With ``--masking unet``, a note for each scan whose predicted brain mask (its
    ``desc-brain_mask`` derivative, as the report shows it) has a volume no mouse brain has
    (:func:`samri_ml.masks.mask_volume`: a rat, a header's voxel size off by ten), as
    ``samri_ml-mask`` says it. The masks are made by MaskBrain nodes in worker processes,
    whose warnings reach no note: a rat dataset registered without a word on it. Said here,
    in the run's own process, so that the note is kept with the others (the subject's report,
    ``log/notes.txt``); also where every step is reused."""
    if args.masking != "unet":
        return
    import nibabel as nb

    from samri_ml.masks import mask_volume
    from samri_ml.report import _derivative

    for item in sessions:
        for raw in session_scans(item):
            path = _derivative(args.output_dir, raw, desc="brain", suffix="mask")
            try:
                said = mask_volume(nb.load(path))[2] if path.is_file() else None
            except Exception:  # noqa: BLE001 -- an unreadable mask is the report's to show
                continue
            if said:
                note(PROG, f"{path} (the predicted mask of {Path(raw).name}): {said}")


def _note_sessions_not_reported(output_dir: Path, sessions) -> None:
    """A subject's report shows the sessions of this run: a rerun of one session
    (``--session-label 2``) rewrote ``sub-01.html`` without ses-1, whose derivatives stay in
    OUTPUT_DIR, without a word. Names them."""
    for subject in dict.fromkeys(item["subject"] for item in sessions):
        ran = {item["session"] for item in sessions if item["subject"] == subject}
        folder = output_dir / f"sub-{subject}"
        try:
            earlier = sorted(d.name[4:] for d in folder.glob("ses-*") if d.is_dir()
                             and d.name[4:] not in ran and any(d.rglob("*.nii*")))
        except OSError:
            continue
        if earlier:
            note(PROG, f"sub-{subject}.html shows this run's session(s) only; the "
                 f"derivatives of {', '.join(f'ses-{s}' for s in earlier)} in {folder} are not "
                 "in it; hint: rerun without --session-label (finished steps are reused) for "
                 "a report of them all")


def main(argv=None) -> int:
    """Entry point of ``samri_ml-register``: returns the exit code."""
    return run_cli(PROG, _main, argv, memory_hint="use fewer --nprocs (or set --mem-gb)")


if __name__ == "__main__":
    sys.exit(main())
