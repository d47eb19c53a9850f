"""Skull-stripped brains on a faint background: measured on the validation subjects only.

Usage::

    python benchmarks/masking_background.py [--model A.keras [B.keras ...]] [--all-dama]
        [--json rows.json]

A skull-stripped brain is usually black around it, and the training set's stripped brains all
were. Where the background is not zeroed (noise, or a ramp, left by a tool that stripped the
skull by darkening it, or by a resampling), the masker trained on black backgrounds masked
only part of the brain (2026-12-02, fifteenth session: Dice 0.6-0.9 with the manual mask).

Each dama validation subject (the two the shipped model never trained on, their stripped rim
filled as in ``samri_ml-evaluate-masker``; ``--all-dama``: all 20, most of them trained on) gets
a background in its black voxels: a linear ramp from one side of the grid to the other, the
magnitude of Gaussian noise, that noise smoothed (1.5 voxels), or ramp and noise, at 1, 3, 6
and 10 % of the brain's 99th percentile (fixed seed), and is masked by each model. Prints the
Dice with the manual mask per volume and model, and each model's mean and min over the
volumes with a background (the scans as they are: row ``none``). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

VALIDATION = ("dama/tg4510_tp3_11_20130523_UT", "dama/tg4510_tp3_7_20130522_WT")
KINDS = ("ramp", "noise", "smooth noise", "ramp + noise")
LEVELS = (0.01, 0.03, 0.06, 0.10)


def with_background(image: np.ndarray, kind: str, level: float, rng) -> np.ndarray:
    """``image`` with its black (exactly 0) voxels set to a ``kind`` of background at
    ``level`` times the 99th percentile of its other voxels."""
    from scipy import ndimage

    black = image == 0
    p99 = float(np.percentile(image[~black], 99))
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, image.shape[0])[:, None, None], image.shape)
    noise = np.abs(rng.normal(0.0, 1.0, image.shape))
    if kind == "smooth noise":
        noise = ndimage.gaussian_filter(noise, 1.5)
        noise /= np.percentile(noise, 99)
    background = {"ramp": ramp, "noise": noise, "smooth noise": noise,
                  "ramp + noise": 0.5 * (ramp + noise)}[kind]
    return np.where(black, level * p99 * background, image).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", nargs="+", default=[None],
                    help="masking models (default: the shipped one)")
    ap.add_argument("--all-dama", action="store_true",
                    help="all 20 dama subjects, not only the two validation ones")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    import nibabel as nb

    from samri_ml.errors import SamriMLError, SamriMLNote
    from samri_ml.masking.data import real_scans
    from samri_ml.masking.predict import default_model_path, load_model, predict_mask
    from samri_ml.metrics import dice
    from samri_ml.paths import existing_data_dir

    warnings.simplefilter("ignore", SamriMLNote)  # the background note, on every volume
    data = existing_data_dir(option=None)  # none: one line naming where it looked, exit 1
    scans = [s for s in real_scans(data, register=False, skip=("sammba", "emory", "templates"))
             if args.all_dama or s.name in VALIDATION]
    if not scans:
        raise SystemExit(f"no dama scans found in {data}")
    names = [str(m or default_model_path()) for m in args.model]
    models = [load_model(m) for m in args.model]
    rng = np.random.default_rng(0)
    rows = []
    for scan in scans:
        affine = np.diag([*scan.zooms, 1.0])
        ref = scan.mask > 0
        for kind, level in [("none", 0.0)] + [(k, v) for k in KINDS for v in LEVELS]:
            image = scan.image if kind == "none" else with_background(scan.image, kind, level,
                                                                      rng)
            row = {"scan": scan.name, "background": kind, "level": level}
            for name, model in zip(names, models, strict=True):
                try:
                    pred = np.asarray(predict_mask(nb.Nifti1Image(image, affine), model)
                                      .dataobj) > 0
                    row[name] = dice(pred, ref)
                except SamriMLError:  # refused (e.g. a mask filling the image): an empty mask
                    row[name] = 0.0
            rows.append(row)
            print(f"{scan.name:32s} {kind:13s} {level:4.2f}  "
                  + "  ".join(f"{row[n]:.3f}" for n in names), flush=True)
    print()
    for name in names:
        plain = [r[name] for r in rows if r["background"] == "none"]
        faint = [r[name] for r in rows if r["background"] != "none"]
        print(f"{os.path.basename(name):28s} as they are: mean {np.mean(plain):.4f}; "
              f"with a background: mean {np.mean(faint):.4f}, min {np.min(faint):.4f} "
              f"({len(faint)} volumes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"models": names, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/masking_background.py", main))
