"""``samri_ml-evaluate-plates``: MAE, Top-N and time of a plate-ranking method on labelled
sections (file names start with the true plate number)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from samri_ml.cli._common import (
    HelpFormatter,
    add_plate_model_options,
    add_threads_option,
    add_version_option,
    check_output_file,
    number_in,
    print_line,
    refuse_empty_paths,
    refuse_missing_options,
    set_tf_threads,
    write_output_text,
)
from samri_ml.cli.identify_plate import _read_chunks
from samri_ml.io import json_dumps
from samri_ml.plates.data import IMAGE_SUFFIXES, MIN_SIDE

PROG = "samri_ml-evaluate-plates"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate plate identification on labelled sections: MAE (mean 0-based rank "
        "of the true plate), Top-1/3/5/10 accuracy, total and per-section time.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--images", required=True, metavar="DIR", help="folder of sections named <plate>[_n].png"
    )
    p.add_argument("--method", default="siamese", choices=["siamese", "mi-affine"],
                   help="siamese: the plate embedding (the shipped model, or --model/--index); "
                   "mi-affine: the brute-force baseline, each section registered affinely to "
                   "every plate by mutual information (seconds per section)")
    p.add_argument(
        "--atlas",
        metavar="DIR",
        help="atlas plates N.jpg|png|tif (required for mi-affine unless the shared "
        "data is present; for siamese: re-index this atlas)",
    )
    add_plate_model_options(p)
    p.add_argument(
        "--regions",
        action="store_true",
        help="siamese: also run the per-region (cutting-angle) analysis, timed with the "
        "ranking; it changes the ranking only where the index mixes the regions in "
        "(region_weight > 0; the shipped indexes: 0, so the metrics stay the same)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N sections")
    p.add_argument("--size", type=number_in(int, MIN_SIDE), default=None,
                   help=f"mi-affine: image side in px (at least {MIN_SIDE}; default 128); the "
                   "siamese method takes its model's")
    p.add_argument("--json", metavar="OUT", help="write metrics and rankings as JSON")
    add_threads_option(p, help="CPU threads: TensorFlow's (siamese), registrations at once, "
                       "one thread each (mi-affine; 0: one per available core)")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    add_version_option(p)
    return p


def run(args) -> int:
    from samri_ml.models.inference import PLATE_PARALLEL_OPS

    set_tf_threads(args.threads, PLATE_PARALLEL_OPS)
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.data import check_labels, load_atlas, read_image, section_files
    from samri_ml.plates.metrics import format_metrics, ranking_metrics

    paths, labels = section_files(args.images, limit=args.limit or None)
    if args.method == "siamese":
        from samri_ml.plates.identify import make_identifier

        ident = make_identifier(args.model, args.index, args.atlas, variant=args.variant,
                                hemisections=args.hemisections,
                                turn_uncertain=not args.upright)
        check_labels(paths, labels, ident.plates)
        results, seconds = [], 0.0
        # a chunk held at a time, as identify-plate reads them (every section read first:
        # 24 slide scans held 4.3 GB)
        for _, imgs in _read_chunks(paths):
            # an untimed pass first: loads and traces every model the sections will need
            # (with --variant auto, the multimodal one only where a section is sent to it);
            # read_image made the sections: rank_read does not make them again
            ident.rank_read(imgs, regions=args.regions or None,
                            any_orientation=args.any_orientation)
            t0 = time.perf_counter()
            results += ident.rank_read(imgs, regions=args.regions or None,
                                       any_orientation=args.any_orientation)
            seconds += time.perf_counter() - t0
        rankings = [r["ranking"] for r in results]
        _note_readings(results, args.any_orientation)
    else:
        from samri_ml.plates.baseline import rank_mi_affine
        from samri_ml.plates.data import preprocess

        # from an installed package the default was "…/lib/python3.11/shared/data/plates/atlas:
        # not a directory", without a hint
        atlas = (Path(args.atlas) if args.atlas
                 else existing_data_dir(option="--atlas") / "plates" / "atlas")
        plates, pimgs = load_atlas(atlas)
        check_labels(paths, labels, plates)
        pp = [preprocess(p, args.size) for p in pimgs]
        t0 = time.perf_counter()
        rankings, reading = [], 0.0
        for i, path in enumerate(paths):
            r0 = time.perf_counter()
            im = read_image(path)  # one at a time, untimed, as the network's sections are
            t1 = time.perf_counter()
            reading += t1 - r0
            r, _ = rank_mi_affine(im, plates, pp, size=args.size, preprocessed=True,
                                  workers=args.threads or None)
            rankings.append(r.tolist())
            now = time.perf_counter()
            print(
                f"  [{i + 1}/{len(paths)}] {paths[i].name}: true {labels[i]}, rank "
                f"{r.tolist().index(labels[i])}, {now - t1:.0f} s ({now - t0:.0f} s in all)",
                file=sys.stderr,
            )
        seconds = time.perf_counter() - t0 - reading
    m = ranking_metrics(rankings, labels, seconds)
    print_line(format_metrics(m, f"{args.method} on {args.images}"))
    if args.json:
        m["rankings"] = {str(p): r for p, r in zip(paths, rankings, strict=True)}
        write_output_text(json_dumps(m, indent=1), args.json)  # never half-written
    return 0


def _note_readings(results: list[dict], any_orientation: bool) -> None:
    """Say how many sections were turned back, read as parts of a section or flagged
    uncertain: a summary should not hide that the ranking took liberties."""
    n = len(results)
    turned = sum(bool(r.get("turned_degrees")) for r in results)
    if turned and not any_orientation:
        print(f"{PROG}: note: {turned} of {n} sections were far from every plate upright and "
              "were turned back by quarter turns (--upright: none)", file=sys.stderr)
    parts = sum("read_as" in r for r in results)
    if parts:
        print(f"{PROG}: note: {parts} of {n} sections were read as a part of a section "
              "(a dorsal or ventral half, or a hemisphere, matched at a whole section's scale; "
              "samri_ml-identify-plate --json names the part: read_as)", file=sys.stderr)
    uncertain = sum(bool(r.get("uncertain")) for r in results)
    if uncertain:
        print(f"{PROG}: note: {uncertain} of {n} sections are uncertain (farther from every "
              "plate than any validation section)", file=sys.stderr)


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_empty_paths(parser, args, ("--images", "--json", "--atlas", "--model", "--index"))
    if not Path(args.images).is_dir():
        parser.error(f"--images {args.images}: not a directory")
    refuse_missing_options(parser, args, ("--model", "--index"))  # they exited 1
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.json:
        inputs = [p for p in Path(args.images).iterdir() if p.is_file()]
        check_output_file(parser, "--json", args.json, inputs, IMAGE_SUFFIXES, "OUT.json")
    if args.method == "mi-affine":
        given = [opt for opt, on in (("--any-orientation", args.any_orientation),
                                     ("--upright", args.upright),
                                     ("--hemisections", args.hemisections),
                                     ("--model", args.model), ("--index", args.index),
                                     ("--regions", args.regions)) if on]
        if given:
            parser.error(f"{', '.join(given)}: for --method siamese only")
        if args.size is None:
            args.size = 128
    elif args.size is not None:  # it was taken and ignored, the network at its own 224 px
        parser.error("--size: for --method mi-affine only (the siamese method takes its "
                     "model's input size)")
    return run(args)


def main(argv=None) -> int:
    """Entry point: exit 0 on success, 2 on usage errors, 1 with a one-line cause otherwise."""
    from samri_ml.cli._common import run_cli

    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
