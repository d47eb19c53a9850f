"""Cross-modality check: coronal slices of the Allen CCFv3 two-photon average template.

Usage::

    python benchmarks/plates_twophoton.py [--step 4] [--model-dir DIR] [--hemisections] [--upright]

The template (../shared/data/mri/templates/average_template_200um.nii.gz, axes S, A, R, 200 um)
is cut at the position of plate N (100 um apart from the anterior end: A index
``66 - (N - 1) / 2``, rounded), upsampled, and ranked by the shipped model, whole and after
simulated partial cuts (missing cortex, hemisection). The true plate of a 200 um slice is only
known to +-1 plate, so the table gives the rank of the nearest of N-1, N, N+1 as well.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", type=int, default=4)
    ap.add_argument("--first", type=int, default=10)
    ap.add_argument("--last", type=int, default=128)
    ap.add_argument("--model-dir", help="folder with plates_embedding.keras + plates_index.npz "
                    "(default: the shipped model)")
    ap.add_argument("--variant", default="auto", help="shipped variant: auto, default, multimodal")
    ap.add_argument("--hemisections", action="store_true",
                    help="also rank every slice as a hemisphere (samri_ml-identify-plate's option)")
    ap.add_argument("--upright", action="store_true",
                    help="never turn a slice back (samri_ml-identify-plate's option)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import nibabel as nb

    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.augment import hemisection, missing_cortex
    from samri_ml.plates.data import pad_square
    from samri_ml.plates.identify import PlateIdentifier, make_identifier
    from samri_ml.plates.synth import template_slice

    vol = nb.load(existing_data_dir(option=None) / "mri/templates"
                  / "average_template_200um.nii.gz").get_fdata()
    if args.model_dir:
        ident = PlateIdentifier(f"{args.model_dir}/plates_embedding.keras",
                                f"{args.model_dir}/plates_index.npz",
                                hemisections=args.hemisections, turn_uncertain=not args.upright)
    else:
        ident = make_identifier(variant=args.variant, hemisections=args.hemisections,
                                turn_uncertain=not args.upright)
    rng = np.random.default_rng(0)
    rows = {"whole": [], "missing cortex": [], "hemisection": []}
    routed = {k: [] for k in rows}
    turned = {k: [] for k in rows}
    truths = list(range(args.first, args.last + 1, args.step))
    for n in truths:
        sl = template_slice(vol, n)
        f = pad_square(sl).astype(np.float32) / 255  # the augmentations work on squares
        variants = {
            "whole": sl,
            "missing cortex": (missing_cortex(f, rng) * 255).astype(np.uint8),
            "hemisection": (hemisection(f, rng) * 255).astype(np.uint8),
        }
        for name, img in variants.items():
            res = ident.rank([img], regions=False)[0]
            r = res["ranking"]
            routed[name].append(res.get("model") == "multimodal" if "model" in res else np.nan)
            turned[name].append(bool(res.get("turned_degrees")))
            exact = r.index(n)
            near = min(r.index(m) for m in (n - 1, n, n + 1) if m in r)
            rows[name].append((exact, near))
    print(f"{len(truths)} slices, plates {args.first}..{args.last} every {args.step}")
    print("variant           MAE   Top-5  | nearest of N+-1: MAE  Top-5 | sent to multimodal"
          " | turned back")
    for name, v in rows.items():
        e = np.array([x[0] for x in v])
        nn = np.array([x[1] for x in v])
        print(
            f"{name:16s} {e.mean():5.1f}  {100 * np.mean(e < 5):5.1f}% |"
            f"                  {nn.mean():5.1f} {100 * np.mean(nn < 5):5.1f}% |"
            f" {100 * np.mean(routed[name]):5.1f}%"  # nan: not --variant auto
            f"             | {sum(turned[name])}"
        )


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_twophoton.py", main))
