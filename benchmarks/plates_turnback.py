"""How often the default turn-back (``PlateIdentifier.turn_uncertain``) fires, rightly and wrongly.

Usage::

    python benchmarks/plates_turnback.py [--splits train val_1 val_2]

Every real section of a split is cut to its tissue box and to the pieces of
``benchmarks/plates_parts.py`` (whole, halves, no cortex, dorsal two thirds, central 60 %),
and each piece is ranked upright and turned by 90, 180 and 270 degrees (``np.rot90``) with the
shipped identifier (``--variant auto``, the default settings). Printed per split: the upright
pieces that were turned back (each a wrong turn: label, piece, degrees, the true plate's
0-based rank after it), how many of the turned pieces and of the turned whole sections were
turned back, and the Top-5 of the turned whole sections.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", nargs="+", default=["train", "val_1", "val_2"])
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).parent))
    from plates_parts import PIECES

    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.data import load_sections, tissue_bbox
    from samri_ml.plates.identify import make_identifier

    root = existing_data_dir(option=None) / "plates"
    ident = make_identifier(variant="auto")
    for split in args.splits:
        with warnings.catch_warnings():  # the notes of reading (none for these files)
            warnings.simplefilter("ignore")
            _, labels, imgs = load_sections(root / split)
        rows = []
        for label, img in zip(labels, imgs, strict=True):
            y0, y1, x0, x1 = tissue_bbox(img)
            for name, cut in PIECES.items():
                piece = cut(img[y0:y1, x0:x1])
                for k in range(4):
                    turned = np.ascontiguousarray(np.rot90(piece, k))
                    r = ident.rank([turned])[0]
                    rows.append((name, k, int(r.get("turned_degrees", 0)),
                                 r["ranking"].index(int(label)), int(label)))
        wrong = [r for r in rows if r[1] == 0 and r[2]]
        turned = [r for r in rows if r[1] > 0]
        whole = [r for r in turned if r[0] == "whole"]
        print(f"{split}: {len(rows) // 4} upright pieces, {len(wrong)} turned back (wrongly): "
              + (", ".join(f"{lab} {name} {deg} deg -> rank {rank}"
                           for name, _, deg, rank, lab in wrong) or "none"))
        print(f"{split}: {len(turned)} turned pieces, {sum(r[2] > 0 for r in turned)} turned "
              f"back; turned whole sections: {sum(r[2] > 0 for r in whole)} of {len(whole)} "
              f"turned back, Top-5 {100 * np.mean([r[3] < 5 for r in whole]):.0f} %")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_turnback.py", main))
