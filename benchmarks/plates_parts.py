"""Pieces of sections ranked as parts of a section (``samri_ml.plates.identify.PARTS``).

Usage::

    python benchmarks/plates_parts.py [--splits train val_1 val_2]

Each real section of a split is cut to its tissue box and then to a piece: the whole box, its
dorsal or ventral half, its left or right half, the box without its dorsal 30 % (no cortex),
its dorsal two thirds, its central 60 %. Every piece is ranked three ways, side by side:
``before`` (as a whole section only, the ranking until 2026-12-02), ``default`` (pieces over
:data:`~samri_ml.plates.identify.WIDE_ASPECT` times as wide as high also ranked as a dorsal
and a ventral part) and ``--hemisections`` (also every piece as a left and a right half).
Prints MAE / Top-5 per piece and setting. The training sections were trained on (whole), so
their rows are optimistic; the rules were set on them and val_1, val_2 is reported.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

PIECES = {
    "whole": lambda t: t,
    "dorsal half": lambda t: t[: t.shape[0] // 2],
    "ventral half": lambda t: t[t.shape[0] // 2 :],
    "left half": lambda t: t[:, : t.shape[1] // 2],
    "right half": lambda t: t[:, t.shape[1] // 2 :],
    "no cortex (dorsal 30 % off)": lambda t: t[int(0.3 * t.shape[0]) :],
    "dorsal 2/3": lambda t: t[: int(2 * t.shape[0] / 3)],
    "central 60 %": lambda t: t[int(0.2 * t.shape[0]) : int(0.8 * t.shape[0]),
                                int(0.2 * t.shape[1]) : int(0.8 * t.shape[1])],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", nargs="+", default=["train", "val_1", "val_2"])
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates import identify
    from samri_ml.plates.data import load_sections, tissue_bbox
    from samri_ml.plates.metrics import ranking_metrics

    ident = identify.make_identifier()
    wide = ident.wide_aspect
    settings = {"before": (np.inf, False), "default": (wide, False),
                "--hemisections": (wide, True)}
    for split in args.splits:
        _, labels, imgs = load_sections(existing_data_dir(option=None) / "plates" / split)
        boxes = [tissue_bbox(im) for im in imgs]
        print(f"\n{split} (n = {len(labels)}): MAE / Top-5 %")
        print(f"{'piece':30s}" + "".join(f"{s:>18s}" for s in settings))
        for name, cut in PIECES.items():
            pieces = [cut(im[y0:y1, x0:x1])
                      for im, (y0, y1, x0, x1) in zip(imgs, boxes, strict=True)]
            row = []
            for aspect, hemi in settings.values():
                ident.wide_aspect, ident.hemisections = aspect, hemi
                m = ranking_metrics([r["ranking"] for r in ident.rank(pieces)], list(labels))
                row.append(f"{m['mae']:6.2f} / {100 * m['top5']:3.0f}")
            print(f"{name:30s}" + "".join(f"{c:>18s}" for c in row), flush=True)
        ident.wide_aspect, ident.hemisections = wide, False


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_parts.py", main))
