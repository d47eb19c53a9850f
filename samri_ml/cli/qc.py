"""``samri_ml-qc``: registration QC (VCF, SCF) for one scan, and comparing workflows.

samri_ml-qc scan PROCESSED RAW [--json OUT]
samri_ml-qc compare DERIV_A DERIV_B [...] [--labels A B ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samri_ml import __version__
from samri_ml.cli._common import (
    HelpFormatter,
    print_line,
    run_cli,
    terminate_as_interrupt,
    write_output_text,
)
from samri_ml.errors import SamriMLError

PROG = "samri_ml-qc"


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser whose errors begin ``samri_ml-qc: error:``, as the command's
    other errors do (argparse named the subcommand: ``samri_ml-qc compare: error:``)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def get_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Registration QC as in SAMRI: Volume Conservation Factor (VCF) and Smoothness "
        "Conservation Factor (SCF) of a processed scan against its raw source, and statistical "
        "comparison of workflows from their per-scan QC files.",
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{scan,compare}", required=True,
                           parser_class=_SubcommandParser)

    s = sub.add_parser(
        "scan",
        help="VCF and SCF of one processed image against its raw source",
        description="Print (and optionally write) the QC JSON of one scan: vcf, scf, "
        "scf_normalised, volume_processed, volume_raw (mm^3), fwhm_processed, fwhm_raw (mm), "
        "raw_dummy_scans (the volumes of RAW left out, see --dummy-scans), "
        "scf_axes_left_out (world axes without a FWHM in one image, a single slice, left out "
        "of both FWHMs so that the SCF compares the same axes), brain_coverage (with "
        "--template-mask). The "
        "two images may be on different grids (e.g. processed in template space). Its modality "
        "is func where either image is a time series (a run's registered temporal mean too), "
        "else anat.",
        formatter_class=fmt,
    )
    s.add_argument("processed", type=Path, help="processed (e.g. registered) image, 3D or 4D")
    s.add_argument("raw", type=Path, help="the unprocessed source image, 3D or 4D")
    s.add_argument("--json", type=Path, default=None, metavar="OUT",
                   help="also write the JSON here")  # fmt: skip
    s.add_argument(
        "--mask",
        type=Path,
        default=None,
        help="mask on the processed image's grid for its FWHM (default: automask)",
    )
    s.add_argument(
        "--raw-mask",
        type=Path,
        default=None,
        help="mask on the raw image's grid for its FWHM (default: automask); give both masks "
        "(the same brain) so that the two FWHMs are measured over the same tissue",
    )
    s.add_argument(
        "--template-mask",
        type=Path,
        default=None,
        metavar="MASK",
        help="the brain mask of the template PROCESSED was registered to (any grid): the "
        "record's brain_coverage, the fraction of it PROCESSED covers (below 0.9 a partial "
        "field of view, whose VCF is not expected to be 1; samri_ml-qc compare says so)",
    )
    s.add_argument("--dummy-scans", type=int, default=0, metavar="N",
                   help="volumes at the start of a 4D RAW that the processing dropped, left out "
                   "of RAW too, as samri_ml-register's QC does with its --dummy-scans "
                   "(default: 0)")
    s.add_argument("--workflow", default="", help="workflow label stored in the JSON")
    s.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")

    c = sub.add_parser(
        "compare",
        help="compare workflows from their *_desc-qc_metrics.json files",
        description="Read every *_desc-qc_metrics.json under each derivatives folder (one folder "
        "per workflow), print a table per workflow (mean and bootstrapped 95% CI of |1-VCF|, "
        "|1-SCF| and SCF/VCF^(1/3)), a one-way ANOVA F-test across workflows and a repeated-measures "
        "one on the scans they share, pairwise two-tailed Welch (and paired) t-tests with Holm "
        "adjustment, and RMSE ratios; with --out, write TSVs, a markdown summary "
        "and violin plots (PNG, SVG).",
        formatter_class=fmt,
    )
    c.add_argument("folders", type=Path, nargs="+", metavar="DERIV_DIR",
                   help="derivatives folders, one per workflow")  # fmt: skip
    c.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                   help="workflow labels (default: dataset_description.json Name, else the "
                   "folder name; the folder names where two Names are the same)")  # fmt: skip
    c.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write qc_metrics.tsv, qc_summary.tsv, qc_anova.tsv, qc_pairwise.tsv "
                   "(each with a .json describing its columns), qc_stats.md, "
                   "qc_violin.png/.svg here")  # fmt: skip
    c.add_argument("--modality", choices=("anat", "func"), default=None,
                   help="only compare scans of this modality (default: all)")  # fmt: skip
    c.add_argument("--space", default=None, metavar="LABEL[,LABEL...]",
                   help="only compare scans registered to this template (space-LABEL); needed "
                   "where a folder holds runs to several templates; one label per DERIV_DIR, "
                   "comma-separated, where the workflows registered to different templates")
    c.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")
    return p


def _scan(args, parser) -> int:
    import numpy as np

    from samri_ml.cli._common import refuse_missing_inputs, refuse_missing_options
    from samri_ml.io import check_same_grid, load_nifti
    from samri_ml.masks import mask_inside
    from samri_ml.qc.metrics import AXES_KEY, modality_of, qc_from_arrays, qc_record, scan_name
    from samri_ml.qc.volume import EMPTY_PROCESSED_HINT, affine_mm, image_mm

    refuse_missing_inputs(parser, [args.processed, args.raw])
    refuse_missing_options(parser, args, ("--mask", "--raw-mask", "--template-mask"))
    if args.json is not None:  # before the work: never over an input, never an image name
        from samri_ml.cli._common import check_output_file

        check_output_file(parser, "--json", args.json,
                          [p for p in (args.processed, args.raw, args.mask, args.raw_mask,
                                       args.template_mask) if p],
                          (".nii", ".nii.gz"), "sub-X_..._desc-qc_metrics.json",
                          make_folder=True)
    proc_img = load_nifti(args.processed, allow_4d=True, zero_hint=EMPTY_PROCESSED_HINT)
    raw_img = load_nifti(args.raw, allow_4d=True)
    proc = np.asanyarray(proc_img.dataobj)
    raw = np.asanyarray(raw_img.dataobj)
    left_out = 0
    if raw.ndim == 4 and args.dummy_scans:
        from samri_ml.func import n_dummy_to_drop, too_few_volumes_note

        left_out = n_dummy_to_drop(raw.shape[3], args.dummy_scans)
        note = too_few_volumes_note(raw.shape[3], args.dummy_scans)
        if note:  # as samri_ml-register says of such a run
            print(f"{PROG}: note: {args.raw}: {note}", file=sys.stderr)
        raw = raw[..., left_out:]
    masks = {}
    for key, path, image, img in (("processed_mask", args.mask, args.processed, proc_img),
                                  ("raw_mask", args.raw_mask, args.raw, raw_img)):
        if path is None:
            continue
        mask_img = load_nifti(path, allow_4d=False)
        masks[key] = mask_inside(np.asanyarray(mask_img.dataobj))
        if masks[key].shape != img.shape[:3]:
            raise SamriMLError(
                f"{path}: mask shape {masks[key].shape} differs from {image}'s "
                f"{img.shape[:3]}; hint: give a mask on that image's grid"
            )
        # the same shape is not the same grid: another scan's mask measured the FWHM of
        # whatever it covered here (SCF 3.9 for 1.1)
        check_same_grid(image_mm(img), image_mm(mask_img), str(image), str(path))
    try:
        values = qc_from_arrays(proc, affine_mm(proc_img), raw, affine_mm(raw_img), **masks,
                                names=(str(args.processed), str(args.raw)))
    except SamriMLError:  # its cause and hint, naming the image: one line as it is
        raise
    except ValueError as err:  # numpy's or scipy's: at least one line
        raise SamriMLError(f"cannot compute QC: {err}") from err
    if not values["volume_raw"]:
        raise SamriMLError(
            f"{args.raw}: no voxel is above the 66th percentile (a flat image?); VCF is undefined"
        )
    if values[AXES_KEY]:  # the SCF is over fewer axes than the reader may think: say which
        import warnings

        from samri_ml.errors import SamriMLNote

        axes = values[AXES_KEY]
        warnings.warn(f"the FWHMs and SCF leave out the {', '.join(axes)} "
                      f"{'axis' if len(axes) == 1 else 'axes'}, without a neighbour correlation "
                      f"in one image or both (a single slice?), on both sides; {AXES_KEY} in the "
                      "record says so", SamriMLNote, stacklevel=2)
    coverage = None
    if args.template_mask is not None:
        from samri_ml.report import brain_coverage

        coverage = brain_coverage(proc_img, load_nifti(args.template_mask, allow_4d=False))
    # a functional run where either image is a time series, as the workflow says of its runs:
    # a run's registered temporal mean (or a run cut to one volume) was "anat", and compare
    # paired it with no workflow's record of the run
    kinds = {modality_of(a.ndim, a.shape[3] if a.ndim == 4 else 1) for a in (proc, raw)}
    record = qc_record(
        values,
        # named after its source, as the workflow names it: compare pairs the two
        scan=scan_name(args.raw),
        modality="func" if "func" in kinds else "anat",
        workflow=args.workflow,
        raw_dummy_scans=left_out,
        scf_axes_left_out=values[AXES_KEY],
        brain_coverage=coverage,
    )
    text = json.dumps(record, indent=2)
    print_line(text)  # a closed stdout (| head) must not cost the --json file
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_output_text(text + "\n", args.json)  # never half-written
        except OSError as err:
            raise SamriMLError(f"{args.json}: cannot write ({err.strerror or err})") from err
    return 0


def _compare(args, parser) -> int:
    from samri_ml.qc.compare import compare_workflows

    if args.labels is not None and len(args.labels) != len(args.folders):
        parser.error(f"--labels: {len(args.labels)} labels for {len(args.folders)} folders")
    space = None if args.space is None else args.space.split(",")
    if space is not None and (len(space) not in (1, len(args.folders)) or "" in space):
        parser.error(f"--space {args.space}: {len(space)} labels for {len(args.folders)} "
                     "folders; hint: give one for all folders, or one per folder, "
                     "comma-separated")
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"{folder}: no such folder")
    if args.out is not None:  # before the work, not a FileExistsError after it
        from samri_ml.cli._common import check_output_dir

        if args.out.exists() and not args.out.is_dir():
            parser.error(f"--out {args.out}: a file, not a folder; hint: give a folder for "
                         "the tables and plots (it is created where missing)")
        check_output_dir(parser, f"--out {args.out}", args.out)
    if space is not None and len(space) == 1:
        space = space[0]
    res = compare_workflows(args.folders, args.labels, args.out, modality=args.modality,
                            space=space)
    print_line(res["markdown"])
    if res["files"]:
        print_line(f"\nWritten to {args.out}: " + ", ".join(p.name for p in res["files"]))
    return 0


def _main(argv=None) -> int:
    """Parse, then run; SIGTERM (``kill``, a cluster's time limit) is taken as Ctrl-C
    (:func:`~samri_ml.cli._common.terminate_as_interrupt`): the temporary files are removed
    and the command says so, exit 143 (they were left, hidden, without a word)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # for parser.error
    with terminate_as_interrupt():
        if args.command == "scan":
            if args.dummy_scans < 0:
                sub.error(f"--dummy-scans {args.dummy_scans}: must be 0 or more")
            return _scan(args, sub)
        return _compare(args, sub)


def main(argv=None) -> int:
    """Entry point of ``samri_ml-qc``: returns the exit code."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
