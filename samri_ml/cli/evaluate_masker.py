"""``samri_ml-evaluate-masker``: Dice and correlation tables of a masking model on real scans.

samri_ml-evaluate-masker [--model PATH] [--data-dir DIR | --scans DIR] [--sources ...]
                         [--held-out ...] [--json OUT.json] [--rst OUT.rst]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from samri_ml import __version__
from samri_ml.cli._common import (
    MASKER_DATA_OPTIONS,
    HelpFormatter,
    add_flip_option,
    add_masker_data_options,
    add_views_option,
    check_output_dir,
    check_output_file,
    options_given,
    print_line,
    refuse_missing_options,
    run_cli,
    terminate_as_interrupt,
    write_output_text,
)
from samri_ml.errors import SamriMLError

PROG = "samri_ml-evaluate-masker"
#: the sources of ../shared/data/mri that have reference masks (:func:`real_scans`)
SOURCES = ("dama", "sammba", "emory", "templates")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Score a masking model on the real scans of the data folder's mri/ "
        "(--data-dir) that have a "
        "reference mask (or on your own, --scans DIR): Dice per scan, median per source and over "
        "the sources the model was not trained on, and the seed's correlation table (image vs "
        "reference vs predicted mask).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", type=Path, default=None, help="model (default: the shipped one)")
    add_masker_data_options(p)
    p.add_argument(
        "--scans", type=Path, default=None, metavar="DIR",
        help="score your own scans instead of the shared data: each "
        "<entities>_desc-brain_mask.nii.gz under DIR beside its image <entities>_<suffix>.nii.gz "
        "(e.g. sub-01_T2w.nii.gz), or an image's own <name>_mask.nii.gz beside it (as "
        "samri_ml-mask --out-dir names them), as samri_ml-train-masker --scans reads them; an "
        "image without a mask is left out, named in a note",
    )
    p.add_argument(
        "--masks", type=Path, default=None, metavar="DIR",
        help="with --scans: the images' masks are also looked for in DIR, as samri_ml-mask IN "
        "[IN ...] --out-dir DIR wrote them (DIR/<image's name>_mask.nii.gz, one folder for a "
        "whole BIDS tree), e.g. corrected there",
    )
    p.add_argument(
        "--sources",
        nargs="+",  # none given ran every source
        default=None,
        choices=SOURCES,
        help="only these sources",
    )
    p.add_argument(
        "--held-out",
        nargs="*",
        default=None,
        choices=SOURCES,  # "bogus" was taken, and sammba then called seen in training
        help="sources the model was not trained on (default: read from the model's "
        "_training.json beside it)",
    )
    p.add_argument(
        "--phantom",
        action="store_true",
        help="also score the skull-on T2/T1/EPI phantom of samri_ml.example (seed 0)",
    )
    add_views_option(p)
    add_flip_option(p)
    p.add_argument("--json", type=Path, default=None, help="write per-scan rows here")
    p.add_argument("--rst", type=Path, default=None, help="write the tables here")
    p.add_argument("--figures", type=Path, default=None, metavar="DIR",
                   help="draw each scan's predicted and reference masks into "
                   "DIR/<source>_<scan>.png, e.g. dama_tg4510_tp3_1_20130520_WT.png (with "
                   "--scans, the scan's path under it, / as _, without .nii.gz: "
                   "sub-01_anat_sub-01_T2w.png; DIR made if missing), to see where they differ")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")
    return p  # fmt: skip


def _held_out(model_path: Path, _seen: frozenset = frozenset()) -> list[str] | None:
    """The sources the model was not trained on, from its ``_training.json``; None where there
    is none (what it was trained on is unknown), or where it was fine-tuned on a lab's scans
    from an ``--init`` model whose record is not found from here (a relative path of another
    folder) or leads back to itself (a fine-tuned model renamed to its ``--init``'s name: it
    recursed until Python's RecursionError), said in a note. An average (``--average-of``)
    or ensemble (``--ensemble-of``) of such models: what none of its members saw."""
    from samri_ml.masking.predict import training_record_path

    info = training_record_path(model_path)
    if not info.is_file():
        return None
    try:
        record = json.loads(info.read_text())
        config = record["config"]
        holdout = list(config["holdout"])
    except (OSError, ValueError, KeyError, TypeError) as err:  # a bare KeyError: 'config'
        raise SamriMLError(f"{info}: not a training record samri_ml-train-masker wrote (no "
                           f"config.holdout: {err!r}); hint: give the sources the model never "
                           "saw with --held-out") from None
    if config.get("scans"):
        # trained on a lab's own scans (--scans), where --holdout does not apply: the shared
        # sources were all unseen, unless its weights came from models that saw them (its
        # --init, or an average's members: a soup of models fine-tuned from the shipped one
        # was said to have seen none of the shared data)
        kind = next((k for k in ("average", "ensemble") if record.get(f"{k}_of")), None)
        members = record[f"{kind}_of"] if kind else None
        init = config.get("init_model")
        parents = [(f"{kind}s --{kind}-of {m}", m) for m in members] if members else \
            [(f"was fine-tuned from --init {init}", init)] if init else []
        seen = _seen | {model_path.resolve()}
        unseen = list(SOURCES)
        for how, parent in parents:
            looped = Path(parent).resolve() in seen
            if looped or not training_record_path(parent).is_file():
                why = ("its training record leads back to this model" if looped else
                       "it has no _training.json here (a path relative to another folder?)")
                print(f"{PROG}: note: {model_path} {how}, but {why}: which shared sources it "
                      "saw is unknown; hint: give the sources it never saw with --held-out",
                      file=sys.stderr)
                return None
            theirs = _held_out(Path(parent), seen)
            if theirs is None:
                return None
            unseen = [s for s in unseen if s in theirs]
        return unseen
    return holdout


def _training_scans(model_path: Path) -> str | None:
    """The ``--scans`` folder the model's ``_training.json`` names (``config.scans``), or None
    (trained on the shared data, or no readable record)."""
    from samri_ml.masking.predict import training_record_path

    try:
        return json.loads(training_record_path(model_path).read_text())["config"]["scans"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trained_on(model_path: Path, folder: Path) -> bool:
    """Whether the model's ``_training.json`` names ``folder`` as its ``--scans`` (then its
    scans are no test of it)."""
    scans = _training_scans(model_path)
    return bool(scans) and Path(scans).resolve() == folder.resolve()


def linked_sources(model_path: Path, scans) -> list[str]:
    """The sources of ``scans`` whose image files the model's ``--scans`` folder (its
    ``_training.json``'s ``config.scans``) holds, through links (a file's or a folder's): a
    lab that linked shared scans into its own folder trained on them, and they were counted
    as never seen. Copies are not recognised; a folder no longer there gives none."""
    from samri_ml.masking.data import files_under

    folder = _training_scans(model_path)
    if not folder or not Path(folder).is_dir():
        return []
    held = {path.resolve() for path in files_under(Path(folder))}
    return sorted({s.source for s in scans if s.path and Path(s.path).resolve() in held})


def phantom_scans(seed: int = 0):
    """The example phantom's T2w, T1w and EPI heads as :class:`~samri_ml.masking.data.Scan`."""
    import numpy as np

    from samri_ml.example import make_template
    from samri_ml.masking import preprocess as pp
    from samri_ml.masking.data import Scan

    tpl = make_template(seed, contrasts=("t2", "t1", "epi"))
    mask = np.asarray(tpl["mask"].dataobj) > 0
    out = []
    for key in ("T2w", "T1w", "bold"):
        img = tpl[key]
        data, _ = pp.to_ras(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        out.append(Scan(f"phantom/{key}", "phantom", data, pp.to_ras(mask, img.affine)[0],
                        zooms, "phantom truth"))  # fmt: skip
    return out


def _main(argv=None) -> int:
    """Parse, then evaluate; SIGTERM (``kill``, a cluster's time limit) is taken as Ctrl-C
    (:func:`~samri_ml.cli._common.terminate_as_interrupt`): the temporary files are removed
    and the command says so, exit 143 (a figure's was left, hidden, without a word)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    with terminate_as_interrupt():
        return _evaluate(parser, args)


def _evaluate(parser, args) -> int:
    from samri_ml.masking.predict import default_model_path, training_record_path

    refuse_missing_options(parser, args, ("--model",))  # it exited 1
    # the model and its record are inputs: --json on either replaced it with the rows (the
    # record is what --held-out is read from)
    model_path = args.model or default_model_path()
    inputs = (model_path, training_record_path(model_path))
    for option, path, example in (("--json", args.json, "rows.json"),
                                  ("--rst", args.rst, "tables.rst")):
        if path is not None:  # up front: the evaluation takes minutes
            check_output_file(parser, option, path, inputs,
                              refused_suffixes=(".nii", ".nii.gz", ".keras"), example=example,
                              inputs_are="the model's files (its .keras and _training.json)")
    if args.json and args.rst and Path(args.json).resolve() == Path(args.rst).resolve():
        parser.error("--json and --rst name the same file; one would overwrite the other")
    if args.figures is not None:
        check_output_dir(parser, f"--figures {args.figures}", args.figures)
    if args.scans is not None and not args.scans.is_dir():
        parser.error(f"--scans {args.scans}: not a folder; hint: give the folder that holds "
                     "the scans and their *_desc-brain_mask.nii.gz")
    if args.masks is not None and args.scans is None:
        parser.error("--masks is for --scans (a lab's own scans; the shared data's masks are "
                     "read from its layout)")
    if args.masks is not None and not args.masks.is_dir():
        parser.error(f"--masks {args.masks}: not a folder; hint: give the --out-dir of "
                     "samri_ml-mask that holds the masks")
    if args.scans is not None and (args.sources or args.held_out is not None):
        parser.error("--sources and --held-out name shared sources; with --scans only your "
                     "scans are scored")
    unused = options_given(parser, args, MASKER_DATA_OPTIONS) if args.scans is not None else []
    if unused:  # the shared data's: given with --scans they did nothing, unsaid
        print(f"{PROG}: note: {', '.join(unused)} left out: with --scans only your scans are "
              "scored (no shared data)", file=sys.stderr)
    from samri_ml.io import json_dumps
    from samri_ml.masking.data import real_scans
    from samri_ml.masking.evaluate import by_source, evaluate, figure_name, figure_names, report
    from samri_ml.masking.predict import load_model, model_record_notes
    from samri_ml.paths import existing_data_dir

    if args.scans is not None:  # the pairs by name and header, before TensorFlow starts
        from samri_ml.masking.data import lab_pairs

        # an image without a mask is left out, named (it stopped the whole evaluation)
        pairs = lab_pairs(args.scans, min_subjects=1, skip_unmasked=True,
                          masks_dir=args.masks)
        held_out = [] if _trained_on(model_path, args.scans) else ["scans"]
    else:
        data_dir = existing_data_dir(args.data_dir)
        held_out = args.held_out if args.held_out is not None else _held_out(model_path)
    model = load_model(model_path)  # before the scans (minutes): a wrong --model at once
    model_record_notes(args.model, args.views)
    known = held_out is not None  # else nothing is known of what the model was trained on
    held_out = list(held_out or [])
    if args.scans is not None:
        from samri_ml.masking.data import lab_scans

        # an empty reference is scored (Dice 0) and named (it stopped the whole evaluation)
        scans = lab_scans(args.scans, pairs=pairs, empty_masks=True)
    else:
        skip = tuple(s for s in SOURCES if args.sources and s not in args.sources)
        scans = real_scans(data_dir, args.cache_dir, skip=skip, stripped_rim=args.stripped_rim)
    if args.phantom:
        scans += phantom_scans()
        held_out = [*held_out, "phantom"]  # made here: never trained on
    if not scans:
        raise SamriMLError(f"no scans with masks found under {data_dir}")
    # (--scans of the model's own folder: seen already, said in the table)
    linked = (linked_sources(model_path, scans) if args.held_out is None and known
              and held_out else [])
    if linked:
        held_out = [s for s in held_out if s not in linked]
        # a lab's folder is no source to name ('links to scans of scans')
        what = (f"links to scans of {', '.join(linked)}" if args.scans is None
                else f"holds scans of {args.scans} (the same files)")
        print(f"{PROG}: note: {model_path}'s --scans folder {what}: trained on, so not "
              "counted among the sources never seen",
              file=sys.stderr)
    if not known and not training_record_path(model_path).is_file():  # (else said above)
        print(f"{PROG}: note: {model_path} has no _training.json beside it and --held-out was "
              "not given: which sources it was trained on is unknown", file=sys.stderr)
    rows = evaluate(scans, model, tuple(args.views), flip=args.flip,
                    figures=args.figures)
    for r in rows:
        if r["error"]:  # scored Dice 0 (no prediction, or an empty reference): say why
            print(f"{PROG}: note: {r['scan']}: {r['error']}", file=sys.stderr)
    text = report(rows, held_out, known)
    print_line(text)  # a closed stdout (| head) must not cost --json
    if args.json:
        rows_json = {"rows": rows, "by_source": by_source(rows, held_out, known),
                     "held_out": held_out if known else None}
        write_output_text(json_dumps(rows_json, indent=1), args.json)
    if args.rst:
        write_output_text(text, args.rst)
    if args.figures is not None:
        for scan, name in zip(scans, figure_names([s.name for s in scans]), strict=True):
            if name != figure_name(scan.name):
                print(f"{PROG}: note: {scan.name}: figure {name} (a scan before it has the "
                      "same picture name)", file=sys.stderr)
        print(f"{PROG}: {len(rows)} figures in {args.figures}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
