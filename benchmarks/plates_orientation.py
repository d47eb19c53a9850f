"""Sections turned by quarter turns: are they found and ranked as upright?

Usage::

    python benchmarks/plates_orientation.py [--splits val_1 val_2 train] [--pieces]

Every section of each split is turned counterclockwise by 0, 90, 180 and 270 degrees and
ranked by the default model with ``any_orientation=True``. Printed per split and turn: the
share of sections whose turn was found, MAE and Top-5 (upright, without the option, for
comparison), and seconds per section.

``--pieces``: the default ranking instead, which turns back only a section that comes out
``uncertain`` upright (:meth:`~samri_ml.plates.identify.PlateIdentifier.turn_back_uncertain`),
against ``--upright`` (``turn_uncertain=False``), on whole sections and pieces cut from their
tissue box, each upright and turned: how many were turned back rightly and wrongly, and MAE /
Top-5 with and without the turning back.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--splits", nargs="+", default=["val_1", "val_2", "train"])
    ap.add_argument("--pieces", action="store_true",
                    help="the default turning back of uncertain sections, on pieces too")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.pieces:
        return pieces(args.splits)
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.data import load_sections
    from samri_ml.plates.identify import PlateIdentifier
    from samri_ml.plates.metrics import ranking_metrics

    ident = PlateIdentifier()
    for split in args.splits:
        _, labels, imgs = load_sections(existing_data_dir(option=None) / "plates" / split)
        ident.rank(imgs[:1])  # warm
        t0 = time.perf_counter()
        m = ranking_metrics([r["ranking"] for r in ident.rank(imgs, regions=False)], labels)
        plain = (time.perf_counter() - t0) / len(imgs)
        print(f"{split} upright, without the option: MAE {m['mae']:.2f}, Top-5 "
              f"{100 * m['top5']:.0f} %, {1e3 * plain:.0f} ms/section")
        for k in range(4):
            turned = [np.ascontiguousarray(np.rot90(im, k)) for im in imgs]
            t0 = time.perf_counter()
            res = ident.rank(turned, regions=False, any_orientation=True)
            sec = (time.perf_counter() - t0) / len(imgs)
            m = ranking_metrics([r["ranking"] for r in res], labels)
            found = np.mean([r["turned_degrees"] == 90 * k for r in res])
            print(f"{split} turned {90 * k:3d}: turn found {100 * found:.0f} %, MAE {m['mae']:.2f}, "
                  f"Top-5 {100 * m['top5']:.0f} %, {1e3 * sec:.0f} ms/section", flush=True)


def pieces(splits) -> None:
    from plates_parts import PIECES as ALL_PIECES  # this folder, beside this script

    # benchmarks/plates_parts.py's pieces of a tissue box; one half of each kind will do
    PIECES = {k: cut for k, cut in ALL_PIECES.items() if k != "right half"}
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.data import load_sections, tissue_bbox
    from samri_ml.plates.identify import PlateIdentifier
    from samri_ml.plates.metrics import ranking_metrics

    ident = PlateIdentifier()
    for split in splits:
        _, labels, imgs = load_sections(existing_data_dir(option=None) / "plates" / split)
        boxes = [tissue_bbox(im) for im in imgs]
        print(f"\n{split} (n = {len(labels)}): turned back right / wrong; MAE / Top-5 % with "
              "--upright -> by default")
        totals = {"upright pieces turned": 0, "upright pieces": 0,
                  "turned whole sections turned back": 0, "turned whole sections": 0}
        for name, cut in PIECES.items():
            base = [np.ascontiguousarray(cut(im[y0:y1, x0:x1]))
                    for im, (y0, y1, x0, x1) in zip(imgs, boxes, strict=True)]
            for k in range(4):
                turned = [np.ascontiguousarray(np.rot90(p, k)) for p in base]
                row = []
                for on in (False, True):
                    ident.turn_uncertain = on
                    res = ident.rank(turned, regions=False)
                    row.append(ranking_metrics([r["ranking"] for r in res], labels))
                came = [r.get("turned_degrees", 0) // 90 for r in res]
                right = sum(c == k for c in came if c)
                wrong = sum(c != k for c in came if c)
                if k == 0:
                    totals["upright pieces turned"] += wrong
                    totals["upright pieces"] += len(turned)
                elif name == "whole":
                    totals["turned whole sections turned back"] += right
                    totals["turned whole sections"] += len(turned)
                (a, b) = row
                print(f"{name:28s} {90 * k:3d} deg: {right:2d} / {wrong:2d}; "
                      f"{a['mae']:5.1f} / {100 * a['top5']:3.0f} -> "
                      f"{b['mae']:5.1f} / {100 * b['top5']:3.0f}", flush=True)
        print(", ".join(f"{key}: {v}" for key, v in totals.items()))
        ident.turn_uncertain = True


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_orientation.py", main))
