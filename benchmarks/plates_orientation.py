"""``--any-orientation``: are sections turned by quarter turns found and ranked as upright?

Usage::

    python benchmarks/plates_orientation.py [--splits val_1 val_2 train]

Every section of each split is turned counterclockwise by 0, 90, 180 and 270 degrees and
ranked by the default model with ``any_orientation=True``. Printed per split and turn: the
share of sections whose turn was found, MAE and Top-5 (upright, without the option, for
comparison), and seconds per section.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--splits", nargs="+", default=["val_1", "val_2", "train"])
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.plates.data import load_sections, shared_data_dir
    from samri_ml.plates.identify import PlateIdentifier
    from samri_ml.plates.metrics import ranking_metrics

    ident = PlateIdentifier()
    for split in args.splits:
        _, labels, imgs = load_sections(shared_data_dir() / "plates" / split)
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


if __name__ == "__main__":
    main()
