"""``samri_ml-example``: write the example BIDS dataset (mouse-head phantom) with its ground truth.

samri_ml-example OUT_DIR [--subjects N] [--volumes V] [--seed S] [--force]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from samri_ml import __version__
from samri_ml.cli._common import (
    HelpFormatter,
    check_output_dir,
    print_line,
    run_cli,
    terminate_as_interrupt,
)

PROG = "samri_ml-example"
#: the fewest BOLD volumes per run: samri_ml-register refuses a run of one volume (it needs a
#: time series)
MIN_VOLUMES = 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write a small, deterministic BIDS dataset made from a mouse-head phantom: "
        "template/ (T2w, EPI-contrast template, brain mask, label map; RAS+, 0.2 mm), "
        "sub-*/ses-1/anat (T2w) and func (4D BOLD with slice timing), and "
        "derivatives/groundtruth (brain masks and labels on each subject's grids, and the known "
        "pose). Rerunning on an up-to-date dataset changes nothing.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write (created)")
    p.add_argument("--subjects", type=_positive, default=3, metavar="N", help="number of subjects")
    p.add_argument("--volumes", type=_positive, default=20, metavar="V",
                   help=f"BOLD volumes per run, at least {MIN_VOLUMES} (samri_ml-register needs "
                   "a time series; it drops its --dummy-scans, 10 by default, from the start of "
                   "each run, keeping at least the last volume)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--force", action="store_true",
                   help="rewrite even an up-to-date example dataset, or write into a non-empty "
                   "folder that is not one (same-named files are overwritten)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _main(argv=None) -> int:
    from samri_ml.example import is_current_example, write_example_dataset

    parser = get_parser()
    args = parser.parse_args(argv)
    if args.subjects > 99:
        parser.error("--subjects: at most 99")
    if args.volumes < MIN_VOLUMES:
        # it wrote a data set that samri_ml-register refused ("functional run is one volume")
        parser.error(f"--volumes {args.volumes}: samri_ml-register refuses a functional run of "
                     f"one volume (it needs a time series); give --volumes {MIN_VOLUMES} or more")
    t0 = time.perf_counter()
    if not args.force and is_current_example(args.out_dir, args.subjects, args.volumes, args.seed):
        print_line(f"Example dataset in {args.out_dir} is up to date (use --force to rewrite it)")
        return 0
    # a folder protected with chmod a-w was written into by root, as every other command refuses
    check_output_dir(parser, f"OUT_DIR {args.out_dir}", args.out_dir)
    with terminate_as_interrupt():  # SIGTERM as Ctrl-C: what was written is removed
        out = write_example_dataset(
            args.out_dir, n_subjects=args.subjects, n_volumes=args.volumes, seed=args.seed,
            force=args.force,
        )  # fmt: skip
    print_line(
        f"Example dataset in {out} ({args.subjects} subjects, {args.volumes} volumes, seed "
        f"{args.seed}; {time.perf_counter() - t0:.1f} s). Template: {out / 'template'}; ground "
        f"truth: {out / 'derivatives' / 'groundtruth'}"
    )
    return 0


def main(argv=None) -> int:
    """Entry point of ``samri_ml-example``: returns the exit code."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
