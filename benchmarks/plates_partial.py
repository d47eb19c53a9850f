"""Robustness to missing tissue: real sections of a split with simulated partial cuts.

Usage::

    python benchmarks/plates_partial.py [--split val_2] [--repeats 5]

Each section is ranked whole, after removing a dorsal cap (missing cortex), a dorsal lobe
(missing cerebellum) and one hemisphere (hemisection), each ``--repeats`` times with different
random cuts; prints MAE and Top-5 per variant, for the whole-section ranking and for the
region-mixed ranking (region_weight 0.3).
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="val_2")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates import augment
    from samri_ml.plates.data import load_sections, pad_square
    from samri_ml.plates.identify import PlateIdentifier
    from samri_ml.plates.metrics import ranking_metrics

    _, labels, imgs = load_sections(existing_data_dir(option=None) / "plates" / args.split)
    ident = PlateIdentifier()
    rng = np.random.default_rng(0)
    cuts = {
        "whole": None,
        "missing cortex": augment.missing_cortex,
        "missing cerebellum": augment.missing_cerebellum,
        "hemisection": augment.hemisection,
    }
    print(f"{args.split}: n={len(labels)} x {args.repeats} cuts")
    print("variant              whole-section MAE / Top-5    region-mixed (w=0.3) MAE / Top-5")
    for name, fn in cuts.items():
        sets = []
        for _ in range(1 if fn is None else args.repeats):
            batch = []
            for im in imgs:
                if fn is None:
                    batch.append(im)
                else:
                    f = pad_square(im).astype(np.float32) / 255
                    batch.append((fn(f, rng) * 255).astype(np.uint8))
            sets.append(batch)
        out = []
        for w in (0.0, 0.3):
            ident.region_weight = w
            ranks = [r["ranking"] for b in sets for r in ident.rank(b)]
            m = ranking_metrics(ranks, list(labels) * len(sets))
            out.append(f"{m['mae']:5.2f} / {100 * m['top5']:5.1f}%")
        print(f"{name:20s} {out[0]:>22s}        {out[1]:>22s}")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_partial.py", main))
