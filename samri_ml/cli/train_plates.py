"""``samri_ml-train-plates``: train the Siamese plate embedding on ../shared/data/plates."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from samri_ml.cli._common import HelpFormatter, add_threads_option, add_version_option
    from samri_ml.plates.data import shared_data_dir

    p = argparse.ArgumentParser(
        prog="samri_ml-train-plates",
        description="Train the plate embedding (early stopping on val_1 MAE, best model kept). "
        "--export DIR writes the shipped files (model, plate index, metrics) into DIR.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--data",
        default=str(shared_data_dir() / "plates"),
        help="folder with atlas/, train/, val_1/, val_2/",
    )
    p.add_argument("--out", help="output folder (checkpoints, history); required but with "
                   "--fit-router")
    p.add_argument("--size", type=int, default=128, help="input side in px")
    p.add_argument("--backbone", default="small", choices=["small", "resnet50v2", "resnet101v2"])
    p.add_argument("--width", type=int, default=16, help="first-stage channels (small CNN)")
    p.add_argument(
        "--loss",
        default="ordinal",
        choices=["ordinal", "contrastive", "triplet-semihard", "triplet-hard"],
    )
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--iterations", type=int, default=10000)
    p.add_argument("--patience", type=int, default=2000, help="early-stopping patience (steps)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument(
        "--schedule",
        default="constant",
        choices=["constant", "cosine"],
        help="learning rate: constant, or cosine decay to 1 %% of --lr over --iterations",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="momentum of a moving average of the weights, evaluated and saved instead of the "
        "raw weights (e.g. 0.998; 0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--synth-fraction",
        type=float,
        default=0.0,
        help="share of anchors cut at random angles from the CCF annotation and painted with "
        "random contrasts (needs ../shared/data/ccf)",
    )
    p.add_argument("--synth-max-tilt", type=float, default=6.0, help="degrees (pitch and yaw)")
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
        type=float,
        default=0.0,
        help="export: smoothing of distances along the plate axis (0..1)",
    )
    p.add_argument(
        "--region-weight",
        type=float,
        default=0.0,
        help="export: weight of the region distances in the overall ranking",
    )
    p.add_argument(
        "--fit-router",
        metavar="DIR",
        help="instead of training: fit the modality router of --variant auto (confocal/Nissl "
        "vs other modalities; train sections and atlas plates vs synthetic CCF sections, needs "
        "../shared/data/ccf) and write DIR/plates_router.json",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    add_version_option(p)
    return p


def _fit_router(args) -> int:
    from pathlib import Path

    from samri_ml.plates.identify import PlateIdentifier
    from samri_ml.plates.modality import ROUTER_NAME, fit_router, training_sections

    ident = PlateIdentifier()
    inside, other = training_sections(args.data, seed=args.seed)
    router = fit_router(inside, other, ident.prep, size=ident.size,
                        notes={"in_domain": len(inside), "other": len(other), "seed": args.seed,
                               "command": "samri_ml-train-plates --fit-router DIR"})
    out = router.save(Path(args.fit_router) / ROUTER_NAME)
    print(f"router written to {out} ({len(inside)} confocal/Nissl, {len(other)} synthetic)")
    return 0


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fit_router:
        return _fit_router(args)
    if not args.out:
        parser.error("--out is required (but with --fit-router)")
    from samri_ml.cli._common import set_tf_threads

    set_tf_threads(args.threads)
    from samri_ml.plates.train import TrainConfig, train

    cfg = TrainConfig(
        data_dir=args.data,
        out_dir=args.out,
        size=args.size,
        backbone=args.backbone,
        width=args.width,
        loss=args.loss,
        batch_size=args.batch_size,
        iterations=args.iterations,
        patience=args.patience,
        eval_every=args.eval_every,
        learning_rate=args.lr,
        schedule=args.schedule,
        ema=args.ema,
        seed=args.seed,
        init=args.init,
        synth_fraction=args.synth_fraction,
        synth_max_tilt=args.synth_max_tilt,
    )
    if args.ensemble:
        from samri_ml.plates.train import make_ensemble_run

        make_ensemble_run(args.ensemble, args.out)
    elif not args.export_only:
        best = train(cfg)
        print(f"best val_1 MAE {best['mae']:.2f} at step {best['step']}")
    if args.export:
        from samri_ml.plates.metrics import format_metrics
        from samri_ml.plates.train import export_and_measure

        m = export_and_measure(
            args.out, args.export, args.data, smooth=args.smooth, region_weight=args.region_weight
        )
        print(f"exported to {args.export}")
        for split in ("val_1", "val_2"):
            print(format_metrics(m[split], split))
    return 0


def main(argv=None) -> int:
    """Entry point: exit 0 on success, 2 on usage errors, 1 with a one-line cause otherwise."""
    from samri_ml.cli._common import run_cli

    return run_cli("samri_ml-train-plates", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
