"""``samri_ml-train-plates``: train the Siamese plate embedding on ../shared/data/plates."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: the smallest ``--size``: every backbone halves its input 5 times
MIN_SIZE = 32


def build_parser() -> argparse.ArgumentParser:
    from samri_ml.cli._common import (
        HelpFormatter,
        add_threads_option,
        add_version_option,
        number_in,
    )
    from samri_ml.paths import DATA_DIR_DEFAULT
    from samri_ml.plates.train import TrainConfig

    whole = number_in(int, 1)  # steps, images, channels: at least one

    p = argparse.ArgumentParser(
        prog="samri_ml-train-plates",
        description="Train the plate embedding (early stopping on val_1 MAE, best model kept). "
        "--export DIR writes the shipped files (model, plate index, metrics) into DIR.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--data",
        default=None,
        help="folder with atlas/, train/, val_1/, val_2/ (default: plates/ in the real-data "
        f"folder: {DATA_DIR_DEFAULT})",
    )
    p.add_argument("--out", help="output folder (checkpoints, history.json and its curves "
                   "history.png); required but with --fit-router")
    p.add_argument("--size", type=number_in(int, MIN_SIZE), default=128,
                   help=f"input side in px (at least {MIN_SIZE}: the networks halve it 5 times)")
    p.add_argument("--backbone", choices=["small", "resnet50v2", "resnet101v2"],
                   help="network (default: small; with --init, the init model's)")
    p.add_argument("--width", type=whole,
                   help="first-stage channels of the small CNN (default: 16; with --init, "
                   "the init model's)")
    p.add_argument(
        "--loss",
        default="ordinal",
        choices=["ordinal", "contrastive", "triplet-semihard", "triplet-hard"],
        help="training loss (default: ordinal)",
    )
    p.add_argument("--margin", type=number_in(float, 0, low_open=True),
                   help="margin of the contrastive and triplet losses (default: 1.0 for "
                   "contrastive, 0.2 for the triplets; ordinal has none)")
    p.add_argument("--backbone-weights", metavar="FILE",
                   help="weights of the ResNet backbone (.h5 / .weights.h5, e.g. ImageNet's "
                   "saved where they can be downloaded; never downloaded here): then only its "
                   "conv5 layers train, as in the seed")
    p.add_argument("--batch-size", type=number_in(int, 3), default=48,
                   help="images per step (at least 3: an anchor, its plate and another)")
    p.add_argument("--iterations", type=whole, default=10000,
                   help="training steps at most (early stopping may end the run before)")
    p.add_argument("--patience", type=whole, default=2000,
                   help="early-stopping patience (steps)")
    p.add_argument("--max-minutes", type=number_in(float, 0, low_open=True),
                   help="end the run at its first evaluation after this many minutes (the "
                   "best model so far kept; default: no limit)")
    p.add_argument("--eval-every", type=whole, default=250,
                   help="steps between evaluations on val_1 (the best model is kept)")
    p.add_argument("--lr", type=number_in(float, 0, low_open=True), default=1e-4,
                   help="Adam learning rate")
    p.add_argument(
        "--schedule",
        default="constant",
        choices=["constant", "cosine"],
        help="learning rate: constant, or cosine decay to 1 %% of --lr over --iterations",
    )
    p.add_argument(
        "--ema",
        type=number_in(float, 0, 1, high_open=True),
        default=0.0,
        help="momentum of a moving average of the weights, evaluated and saved instead of the "
        "raw weights (e.g. 0.998; 0: off)",
    )
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the weights, the batches and the augmentation (and "
                   "of the sections --fit-router draws)")
    p.add_argument(
        "--crop-threshold",
        default="otsu",
        choices=["otsu", "triangle"],
        help="threshold of the tissue box every image is cut to: otsu (the shipped models; "
        "cuts the dim brainstem off plates 100-131) or triangle (keeps all the tissue); the "
        "exported index records it",
    )
    p.add_argument(
        "--synth-fraction",
        type=number_in(float, 0, 1 - TrainConfig.real_fraction),
        default=0.0,
        help="share of anchors cut at random angles from the CCF annotation and painted with "
        f"random contrasts (needs ccf/ in {DATA_DIR_DEFAULT}; at most {1 - TrainConfig.real_fraction:g}: "
        f"{TrainConfig.real_fraction:g} of the anchors are real sections)",
    )
    p.add_argument("--synth-max-tilt", type=number_in(float, 0, 45), default=6.0,
                   help="degrees (pitch and yaw) of the cut of --synth-fraction's sections")
    p.add_argument("--init", metavar="MODEL", help="start from this .keras model (fine-tuning)")
    add_threads_option(p)
    p.add_argument(
        "--export",
        metavar="DIR",
        help="after training, write DIR/plates_embedding.keras and plates_index.npz",
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="skip training: export OUT/best.keras to --export",
    )
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="MODEL",
        help="ship the ensemble of these .keras models (mean squared distance) instead of "
        "training; OUT receives the ensemble model; use with --export",
    )
    p.add_argument(
        "--smooth",
        type=number_in(float, 0, 1),
        default=0.0,
        help="export: smoothing of distances along the plate axis (0..1)",
    )
    p.add_argument(
        "--region-weight",
        type=number_in(float, 0),
        default=0.0,
        help="export: weight of the region distances in the overall ranking",
    )
    p.add_argument(
        "--fit-router",
        metavar="DIR",
        help="instead of training: fit the modality router of --variant auto (confocal/Nissl "
        "vs other modalities; train sections and atlas plates vs synthetic CCF sections, needs "
        f"ccf/ in {DATA_DIR_DEFAULT}) and write DIR/plates_router.json",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    add_version_option(p)
    return p


def _fit_router(args) -> int:
    from samri_ml.cli._common import print_line
    from samri_ml.plates.identify import PlateIdentifier
    from samri_ml.plates.modality import ROUTER_NAME, fit_router, training_sections

    ident = PlateIdentifier()
    inside, other = training_sections(args.data, seed=args.seed)
    router = fit_router(inside, other, ident.prep, size=ident.size,
                        notes={"in_domain": len(inside), "other": len(other), "seed": args.seed,
                               "command": "samri_ml-train-plates --fit-router DIR"})
    Path(args.fit_router).mkdir(parents=True, exist_ok=True)
    out = router.save(Path(args.fit_router) / ROUTER_NAME)
    print_line(f"router written to {out} ({len(inside)} confocal/Nissl, {len(other)} synthetic)")
    return 0


def _check_outputs(parser, args, cfg) -> None:
    """Usage errors before any work: options that do nothing together, a run to export that
    is not there, output folders that cannot be written, an --out that holds another run
    (``cfg``: this one's settings)."""
    from samri_ml.cli._common import check_output_dir
    from samri_ml.plates.train import other_run, run_files

    if args.fit_router:
        check_output_dir(parser, f"--fit-router {args.fit_router}", args.fit_router)
        return
    if not args.out:
        parser.error("--out is required (but with --fit-router)")
    if args.margin is not None and cfg.loss == "ordinal":
        parser.error("--margin: the ordinal loss has no margin; hint: --loss contrastive, "
                     "triplet-semihard or triplet-hard")
    if args.backbone_weights:
        if args.init:
            parser.error("--backbone-weights with --init: the --init model's weights are used; "
                         "hint: leave one out")
        if cfg.backbone == "small":
            parser.error("--backbone-weights: the small CNN has no pretrained weights; hint: "
                         "--backbone resnet50v2 or resnet101v2")
        if not Path(args.backbone_weights).is_file():
            parser.error(f"--backbone-weights {args.backbone_weights}: no such file")
    if args.export_only and not args.export:
        parser.error("--export-only needs --export DIR (where to write the model and index)")
    if args.export_only and not args.ensemble:
        for name in ("best.keras", "config.json"):
            if not (Path(args.out) / name).is_file():
                parser.error(f"--export-only: {Path(args.out) / name} not found; hint: --out "
                             "must be the folder of a finished training run")
    else:
        check_output_dir(parser, f"--out {args.out}", args.out)
        if args.ensemble:  # writes best.keras and config.json: not beside a training run's
            trained = [p.name for p in run_files(args.out)
                       if p.name not in ("config.json", "best.keras")]
            why = f"it holds a training run ({', '.join(trained)})" if trained else None
        else:
            why = other_run(args.out, cfg)
        if why:
            parser.error(f"--out {args.out}: {why}; a new run there would mix the two; hint: "
                         "choose another --out, or remove that one")
    if args.export:
        check_output_dir(parser, f"--export {args.export}", args.export)


def _network_settings(parser, args) -> dict:
    """``backbone``, ``width`` and ``embedding_dim`` of the network the run trains: with
    ``--init``, the init model's (config.json recorded the defaults, small and 16, whatever
    the model was); a ``--backbone`` / ``--width`` that contradicts it is a usage error."""
    from samri_ml.plates.train import TrainConfig, init_settings

    found = init_settings(args.init) if args.init else {}
    settings = {"embedding_dim": found.get("embedding_dim", TrainConfig.embedding_dim)}
    for key in ("backbone", "width"):
        given = getattr(args, key)
        if given is not None and key in found and given != found[key]:
            parser.error(f"--{key} {given}: --init {args.init} is a network of {key} "
                         f"{found[key]} (fine-tuning keeps it); hint: leave --{key} out")
        settings[key] = given if given is not None else found.get(key, getattr(TrainConfig, key))
    return settings


def _earlier_export(folder) -> str | None:
    """What an earlier ``--export`` into ``folder`` held (its val_1 MAE), said when a new one
    replaces it: it was replaced without a word (a 0.75 model by a 62.08 one)."""
    metrics = Path(folder) / "plates_index_metrics.json"
    if not (Path(folder) / "plates_embedding.keras").is_file():
        return None
    try:
        mae = json.loads(metrics.read_text())["val_1"]["mae"]
        return f"an export of val_1 MAE {float(mae):.2f}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an earlier export"


def _main(argv=None) -> int:
    """Parse, then run; SIGTERM (``kill``, a cluster's time limit) is taken as Ctrl-C
    (:func:`~samri_ml.cli._common.terminate_as_interrupt`): the note says which checkpoint
    is kept, exit 143 (the process ended at once, without a word)."""
    from samri_ml.cli._common import terminate_as_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    with terminate_as_interrupt():
        return _run(parser, args)


def _run(parser, args) -> int:
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.train import TrainConfig, train

    if args.data is None:  # from an installed package, ../shared/data is beside site-packages
        args.data = str(existing_data_dir(None, "--data") / "plates")

    # data_dir, out_dir and init resolved: config.json read from another folder still names
    # the data, the run and the model it started from (no --out: --fit-router, or a usage
    # error _check_outputs says)
    cfg = TrainConfig(
        data_dir=str(Path(args.data).resolve()),
        out_dir=str(Path(args.out).resolve()) if args.out else args.out,
        size=args.size,
        **_network_settings(parser, args),
        loss=args.loss,
        margin=args.margin,
        backbone_weights=(str(Path(args.backbone_weights).resolve())
                          if args.backbone_weights else None),
        batch_size=args.batch_size,
        iterations=args.iterations,
        patience=args.patience,
        max_minutes=args.max_minutes,
        eval_every=args.eval_every,
        learning_rate=args.lr,
        schedule=args.schedule,
        ema=args.ema,
        seed=args.seed,
        init=str(Path(args.init).resolve()) if args.init else None,
        synth_fraction=args.synth_fraction,
        synth_max_tilt=args.synth_max_tilt,
        crop_threshold=args.crop_threshold,
    )
    _check_outputs(parser, args, cfg)
    if args.fit_router:
        return _fit_router(args)
    from samri_ml.cli._common import print_line, set_tf_threads

    set_tf_threads(args.threads)
    from samri_ml.models.inference import import_keras

    import_keras()  # TensorFlow without its C++ start-up lines above a one-line error
    if args.export_only:
        return _export(args)
    from samri_ml.lock import holding

    # two runs into one --out, of other seeds, both found it empty and both exit 0: one
    # config.json beside checkpoints of both (or the second failed on the first one's
    # config.json, after its start); one run at a time, refused at once
    with holding(args.out, "--out"):
        if args.ensemble:
            from samri_ml.plates.train import make_ensemble_run

            make_ensemble_run(args.ensemble, args.out)
        else:
            best = train(cfg)
            print_line(f"best val_1 MAE {best['mae']:.2f} at step {best['step']}")
        return _export(args)


def _export(args) -> int:
    """``--export DIR``: the run in ``--out`` shipped into DIR, where given."""
    from samri_ml.cli._common import print_line

    if args.export:
        from samri_ml.plates.metrics import format_metrics
        from samri_ml.plates.train import export_and_measure

        replaced = _earlier_export(args.export)
        m = export_and_measure(
            args.out, args.export, args.data, smooth=args.smooth, region_weight=args.region_weight
        )
        print_line(f"exported to {args.export}" + (f" (replacing {replaced})" if replaced else ""))
        for split in ("val_1", "val_2"):
            print_line(format_metrics(m[split], split))
    return 0


def main(argv=None) -> int:
    """Entry point: exit 0 on success, 2 on usage errors, 1 with a one-line cause otherwise."""
    from samri_ml.cli._common import run_cli

    return run_cli("samri_ml-train-plates", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
