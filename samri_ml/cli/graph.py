"""``samri_ml-graph``: draw any samri_ml workflow's graph (without running it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samri_ml.cli._common import (
    HelpFormatter,
    add_version_option,
    print_line,
    run_cli,
    setup_logging,
)

PROG = "samri_ml-graph"


def get_parser():
    p = argparse.ArgumentParser(prog=PROG, description="Draw any samri_ml workflow's graph "
                                "(without running it).", formatter_class=HelpFormatter)
    p.add_argument("workflow", choices=["generic", "structural", "functional"],
                   help="which workflow factory to draw")
    p.add_argument("out", type=Path, help="output path without extension (an existing "
                   "folder: WORKFLOW_graph.png in it)")
    p.add_argument("--type", dest="graph2use", default="colored",
                   choices=["hierarchical", "flat", "colored", "orig", "exec"],
                   help="Nipype's graph types")
    p.add_argument("--format", default="png", choices=["png", "svg"], help="picture format")
    p.add_argument("--method", default="composite",
                   choices=["composite", "structural", "functional"],
                   help="registration method (as samri_ml-register --registration-method)")
    p.add_argument("--masking", default="none", choices=["none", "unet", "input"],
                   help="brain masking (as samri_ml-register --masking; input: a given mask)")
    p.add_argument("--flavour", default="default",
                   help="registration flavour (default, fast, samri or a JSON path)")
    p.add_argument("--pure-python", action="store_true",
                   help="draw with networkx/matplotlib even where Graphviz is installed")
    p.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")
    add_version_option(p)
    return p


def _main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.workflow == "generic" and args.masking == "input":
        # it used to draw the unmasked workflow without a word
        parser.error("--masking input: the generic workflow (samri_ml-register) masks with "
                     "none or unet; a given mask is for the structural and functional ones")
    if args.out.is_dir():  # a folder: the picture goes into it (it went beside it, as
        args.out = args.out / f"{args.workflow}_graph"  # folder.png)
    args.out = _check_out(parser, args.out, args.format)
    # stdout is the picture's path alone (Nipype's own handler printed its "Generated workflow
    # graph" there first, in two lines, and $(samri_ml-graph ...) took that for the path)
    setup_logging(args.verbose)
    from samri_ml.graph import write_workflow_graph
    from samri_ml.workflows import init_functional_wf, init_generic_wf, init_structural_wf

    if args.workflow == "structural":
        wf = init_structural_wf(flavour=args.flavour, masking=args.masking)
    elif args.workflow == "functional":
        wf = init_functional_wf(flavour=args.flavour, method=args.method, masking=args.masking,
                                slice_timing=[0.0, 0.5], repetition_time=1.0)
    else:
        import tempfile

        # the QC nodes take the raw scans, and the exec graph (identity nodes removed, their
        # values set on the nodes) the template too, as File(exists=True) inputs: empty
        # stand-ins, only while the workflow is built and drawn (--type exec was a TraitError)
        tmp = tempfile.TemporaryDirectory(prefix="samri_ml-graph-")
        anat, bold, template, mask = (Path(tmp.name, name) for name in (
            "sub-01_T2w.nii.gz", "sub-01_task-rest_bold.nii.gz", "template.nii.gz",
            "mask.nii.gz"))
        for stand_in in (anat, bold, template, mask):
            stand_in.touch()
        wf = init_generic_wf(template=str(template), template_mask=str(mask),
                             anat_file=str(anat), bold_files=[str(bold)],
                             bold_metadata=[{"RepetitionTime": 1.0, "SliceTiming": [0.0, 0.5]}],
                             output_dir="derivatives", method=args.method, flavour=args.flavour,
                             masking=args.masking, qc=True)
    path, how = write_workflow_graph(wf, args.out, graph2use=args.graph2use, fmt=args.format,
                                     force_fallback=args.pure_python)
    print_line(f"{path} ({how})")
    return 0


def _check_out(parser, out: Path, fmt: str) -> Path:
    """OUT without its picture's extension (``graph.png`` became ``graph.png.png``), checked
    before anything is drawn: a file among its parent folders, or a folder where the picture
    would go, was a bare FileExistsError / IsADirectoryError."""
    from samri_ml.cli._common import nearest_existing, probe_writable

    if not out.name or out.name in (".", ".."):
        parser.error(f"OUT {str(out)!r}: no file name; hint: give a path without extension, "
                     "e.g. figures/graph")
    if out.suffix.lower() in (".png", ".svg"):
        if out.suffix.lower() != f".{fmt}":
            parser.error(f"OUT {out}: a .{out.suffix[1:].lower()} name with --format {fmt}; "
                         f"hint: give OUT without extension, or --format {out.suffix[1:].lower()}")
        out = out.with_suffix("")
    picture = out.with_name(out.name + f".{fmt}")
    if picture.is_dir():
        parser.error(f"OUT {out}: {picture} is a folder; hint: give another name")
    above = nearest_existing(picture.parent)
    if not above.is_dir():
        parser.error(f"OUT {out}: {above} is a file, not a folder; hint: give another path")
    try:  # a folder protected with chmod a-w was written into by root
        probe_writable(above)
    except OSError as err:
        parser.error(f"OUT {out}: {above} is not writable ({err.strerror}); hint: choose a "
                     "writable folder")
    return out


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
