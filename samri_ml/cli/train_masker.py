"""``samri_ml-train-masker``: train the U-Net brain masker (seed preprocessing, two-phase schedule).

samri_ml-train-masker OUT.keras [--data-dir DIR] [--holdout sammba emory] [--width 8] ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from samri_ml import __version__
from samri_ml.cli._common import (
    MASKER_DATA_OPTIONS,
    HelpFormatter,
    add_masker_data_options,
    add_threads_option,
    add_views_option,
    check_output_dir,
    number_in,
    options_given,
    print_line,
    run_cli,
    terminate_as_interrupt,
)
from samri_ml.cli.evaluate_masker import SOURCES
from samri_ml.errors import SamriMLError

PROG = "samri_ml-train-masker"


def get_parser() -> argparse.ArgumentParser:
    from samri_ml.masking.train import TrainConfig

    d = TrainConfig()
    count, whole = number_in(int, 0), number_in(int, 1)
    fraction, rate = number_in(float, 0, 1), number_in(float, 0, low_open=True)
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train the slice-wise U-Net brain masker on the real scans of "
        "the data folder's mri/ (--data-dir; dama, sammba, emory, templates; sources in --holdout are left out for an "
        "honest leave-source-out test) plus synthetic skull-on T1/T2/EPI heads built around "
        "their brains. Writes OUT (.keras), OUT_loss.png and OUT_training.json.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("out", type=Path, help="model file to write (.keras)")
    add_masker_data_options(p)
    p.add_argument(
        "--scans",
        type=Path,
        default=None,
        metavar="DIR",
        help="train on your own scans instead of the shared data: each "
        "<entities>_desc-brain_mask.nii.gz under DIR beside its image <entities>_<suffix>.nii.gz "
        "(e.g. sub-01_T2w.nii.gz), or an image's own <name>_mask.nii.gz beside it (as "
        "samri_ml-mask --out-dir names them); an animal's scans (sub-<label>) stay on one side of the "
        "validation split; --holdout and the synthetic heads do not apply",
    )
    p.add_argument(
        "--holdout",
        nargs="*",
        default=list(d.holdout),
        choices=SOURCES,
        help="sources not used for training (evaluated with samri_ml-evaluate-masker); not "
        "dama: the validation subjects are drawn from it",
    )
    p.add_argument("--width", type=whole, default=d.width,
                   help="filters of the first U-Net level")
    p.add_argument(
        "--synth-per-dama",
        type=count,
        default=d.synth_per_dama,
        help="synthetic heads per dama brain",
    )
    p.add_argument(
        "--synth-per-template",
        type=count,
        default=d.synth_per_template,
        help="synthetic heads per 0.2 mm template",
    )
    p.add_argument(
        "--snout-neck",
        action="store_true",
        help="synthetic heads with a snout and a neck (slices with head but no brain); the "
        "shipped model was trained with them (see its model card)",
    )
    add_views_option(p, "train on")
    p.add_argument(
        "--intensity-augment",
        type=fraction,
        default=0.0,
        metavar="P",
        help="probability that a slice of the augmented phase goes through a random intensity "
        "curve (background kept dark), for contrasts the training set lacks",
    )
    p.add_argument(
        "--background-augment",
        type=fraction,
        default=0.0,
        metavar="P",
        help="probability that a slice of the augmented phase with a black background (a "
        "skull-stripped brain) gets a faint one (noise, a ramp), for brains stripped without "
        "zeroing the background",
    )
    p.add_argument(
        "--background-min-brain",
        type=fraction,
        default=0.0,
        metavar="F",
        help="--background-augment only slices whose brain fills at least this share of the "
        "slice (not the ends of the brain, which look like a neck or a snout)",
    )
    p.add_argument(
        "--crops-per-scan",
        type=count,
        default=d.crops_per_scan,
        help="copies of each real scan cropped close around the brain (brain-only templates "
        "and small fields of view, where the brain fills the image)",
    )
    p.add_argument(
        "--crop-fraction",
        type=fraction,
        default=d.crop_fraction,
        help="fraction of the synthetic heads cropped close around the brain",
    )
    p.add_argument(
        "--epochs-plain", type=count, default=d.epochs_plain, help="phase 1 epochs (no augmentation)"
    )
    p.add_argument(
        "--epochs-augmented",
        type=count,
        default=d.epochs_augmented,
        help="phase 2 epochs (seed augmentation)",
    )
    p.add_argument("--steps-per-epoch", type=whole, default=d.steps_per_epoch,
                   help="batches per epoch (an epoch is this many steps, not the whole data set)")
    p.add_argument("--batch-size", type=whole, default=d.batch_size, help="slices per batch")
    p.add_argument("--learning-rate", type=rate, default=d.learning_rate,
                   help="Adam's initial learning rate (lowered on plateaus of the validation "
                   "loss)")
    p.add_argument("--patience", type=whole, default=d.patience,
                   help="epochs without a lower validation loss before a phase stops "
                   "(EarlyStopping; its best epoch's weights are kept)")
    p.add_argument(
        "--max-minutes",
        type=number_in(float, 0, low_open=True),
        default=d.max_minutes,
        help="stop after the epoch that passes this wall time",
    )
    add_threads_option(p, default=d.threads, help="TensorFlow intra-op threads")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the data set (synthetic heads) and of its validation split")
    p.add_argument("--train-seed", type=int, default=None,
                   help="seed of the initial weights, batch order and augmentation (default: "
                   "--seed); another value trains on the same data with the same validation "
                   "subjects")  # fmt: skip
    p.add_argument("--init", type=Path, default=None, help="start from this model's weights")
    p.add_argument(
        "--dataset-cache",
        type=Path,
        default=None,
        help=("store/reuse the assembled slices here (.npz); reused only with the same data "
              "settings and scans (else rebuilt)"),
    )
    combined = p.add_mutually_exclusive_group()
    combined.add_argument(
        "--average-of",
        type=Path,
        nargs="+",
        default=None,
        metavar="MODEL",
        help="do not train: write OUT as the weight average of these models (runs fine-tuned "
        "from one model; the data options select the validation subjects)",
    )
    combined.add_argument(
        "--ensemble-of",
        type=Path,
        nargs="+",
        default=None,
        metavar="MODEL",
        help="do not train: write OUT as one model giving the mean of these models' "
        "predictions (an ensemble: each member's time; not mirrored by default, the members' "
        "mean replaces the mirror; the data options select the validation subjects)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks on errors")
    return p  # fmt: skip


def _main(argv=None) -> int:
    """Parse, then run; SIGTERM (``kill``, a cluster's time limit) is taken as Ctrl-C
    (:func:`~samri_ml.cli._common.terminate_as_interrupt`): the finished epochs are saved,
    exit 143 (the process ended at once, nothing saved, without a word)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    with terminate_as_interrupt():
        return _run(parser, args)


def _run(parser, args) -> int:
    from samri_ml.masking.train import COMBINE_KINDS, TrainConfig, combine, train
    from samri_ml.paths import existing_data_dir

    members = args.average_of or args.ensemble_of
    kind = "average" if args.average_of else "ensemble"
    if members is not None and len(members) < 2:
        parser.error(f"{COMBINE_KINDS[kind]}: give two or more models")
    if args.epochs_plain == 0 and args.epochs_augmented == 0 and not members:
        parser.error("--epochs-plain and --epochs-augmented are both 0: nothing to train")
    if args.scans is not None and not args.scans.is_dir():
        parser.error(f"--scans {args.scans}: not a folder; hint: give the folder that holds "
                     "the scans and their *_desc-brain_mask.nii.gz")
    if args.scans is not None:
        # options of the shared data's sources: given with --scans they did nothing, unsaid
        unused = options_given(parser, args, (("--holdout", "holdout"),
                                              ("--synth-per-dama", "synth_per_dama"),
                                              ("--synth-per-template", "synth_per_template"),
                                              ("--snout-neck", "snout_neck"),
                                              *MASKER_DATA_OPTIONS))
        if unused:
            print(f"{PROG}: note: {', '.join(unused)} left out: with --scans the data set is "
                  f"your scans alone (no shared data, no synthetic heads)", file=sys.stderr)
    if "dama" in args.holdout and args.scans is None:
        # sammba's two scans are one brain, emory's two one template: without dama the split
        # is empty (scikit-learn's ValueError after the data set) or puts a brain on both sides
        parser.error("--holdout dama: the validation subjects are drawn from dama (sammba's "
                     "and emory's scans are one brain each); hint: hold out sammba, emory or "
                     "templates, and measure dama with samri_ml-evaluate-masker")
    for option, models in ((COMBINE_KINDS[kind], members or []),
                           ("--init", [args.init] if args.init else [])):
        for model in models:
            if _same_file(model, args.out):
                parser.error(f"OUT {args.out} is {option} {model}: it would be overwritten "
                             "(its _training.json too); hint: name another OUT")
    if args.out.is_dir():
        parser.error(f"OUT {args.out} is a folder; hint: name a file, e.g. "
                     f"{args.out / 'masker.keras'}")
    # up front, not after the training (OUT's folder is created where missing)
    check_output_dir(parser, f"OUT {args.out}", args.out.parent)
    if args.dataset_cache:
        # and the data set's: it was written after the data set had been built (minutes of
        # registrations), a bare PermissionError that lost it
        from samri_ml.masking.train import dataset_cache_path

        check_output_dir(parser, f"--dataset-cache {args.dataset_cache}",
                         dataset_cache_path(args.dataset_cache).parent)
    # a lab's own scans need no shared data
    data_dir = existing_data_dir(args.data_dir) if args.scans is None else args.data_dir
    if args.out.suffix != ".keras":
        raise SamriMLError(f"{args.out}: the model file must end in .keras")
    if args.scans is not None:  # the pairs by name and header, before TensorFlow starts
        from samri_ml.masking.data import lab_pairs

        lab_pairs(args.scans)
    if args.init and not args.init.is_file():  # before the data set is built
        raise SamriMLError(f"--init {args.init}: model file not found; hint: give the path "
                           "of a .keras file")
    config = TrainConfig(
        width=args.width, holdout=tuple(args.holdout), synth_per_dama=args.synth_per_dama,
        synth_per_template=args.synth_per_template, batch_size=args.batch_size,
        learning_rate=args.learning_rate, epochs_plain=args.epochs_plain,
        epochs_augmented=args.epochs_augmented, steps_per_epoch=args.steps_per_epoch,
        patience=args.patience, max_minutes=args.max_minutes, seed=args.seed,
        train_seed=args.train_seed,
        threads=args.threads,
        # resolved, as scans: a record read from another folder still names the model
        # (evaluate-masker follows it to what that model saw)
        init_model=str(args.init.resolve()) if args.init else "",
        dataset_cache=str(args.dataset_cache or ""),
        snout_neck=args.snout_neck, views=tuple(args.views),
        crops_per_scan=args.crops_per_scan, crop_fraction=args.crop_fraction,
        stripped_rim=args.stripped_rim, intensity_augment=args.intensity_augment,
        background_augment=args.background_augment,
        background_min_brain=args.background_min_brain,
        scans=str(args.scans.resolve()) if args.scans else "",
    )  # fmt: skip
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if not members:
        # TensorFlow started here, with the training's threads, without its C++ start-up lines
        # (train() imports keras plainly: four lines above a one-line error); combine() loads
        # its members through import_keras already
        from samri_ml.cli._common import set_tf_threads
        from samri_ml.models.inference import import_keras

        set_tf_threads(args.threads)
        import_keras()
    if members:
        summary = combine(config, members, args.out, data_dir, args.cache_dir, log=log,
                          kind=kind)
    else:
        summary = train(config, args.out, data_dir, args.cache_dir, log=log)
    vd = summary["validation_dice"]
    print_line(json.dumps({"model": str(args.out), "validation_dice": vd,
                      "minutes": round(summary["minutes"], 1)}, indent=1))  # fmt: skip
    return 0


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through a link or another relative path too)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
