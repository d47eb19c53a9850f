"""Does a section scanned larger than the training sections rank as at its own size?

Usage::

    python benchmarks/plates_scale.py [--factors 3 8] [--splits val_1 val_2] [--labelled]
                                      [--json OUT]

Every real section of the splits (1024 px, as the plates) is blown up by each factor
(``INTER_CUBIC``) and also put, at 800 px, on a 4000 x 3000 slide ("fifth"), and ranked
with the shipped identifier (``--variant auto``, regions off). With ``--labelled``, also as
it is on a dark 1500 x 2300 slide with a label written on far from it ("label x1"), that
slide blown up by each factor ("label x3", ...). Printed: for each pair of readings (the
section as shared, each factor, the slides), how many of the sections keep their top plate,
their top-5 plates, and their top 5 in order, and each reading's MAE. docs/plates.rst,
"Sections scanned larger than the training sections", has the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np


def labelled_slide(img: np.ndarray) -> np.ndarray:
    """The section at (100, 100) of a slide at its darkest hundredth's level, 1500 x 2300,
    with a white label written on at the bottom right (left out of the tissue box)."""
    import cv2

    slide = np.full((1500, 2300), int(np.percentile(img, 1)), np.uint8)
    slide[100:100 + img.shape[0], 100:100 + img.shape[1]] = img
    slide[1300:1450, 1800:2250] = 240
    cv2.putText(slide, "M12 s34", (1820, 1400), cv2.FONT_HERSHEY_SIMPLEX, 2.5, 20, 6)
    return slide


def readings(img: np.ndarray, factors: list[float],
             labelled: bool = False) -> dict[str, np.ndarray]:
    """The section as it is, blown up by each factor, and at 800 px on a 4000 x 3000 slide;
    with ``labelled``, on a slide with a label (:func:`labelled_slide`), as it is and blown
    up by each factor."""
    import cv2

    out = {"shared": img}
    for f in factors:
        out[f"x{f:g}"] = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
    g = 800 / max(img.shape)
    piece = cv2.resize(img, None, fx=g, fy=g, interpolation=cv2.INTER_AREA)
    slide = np.zeros((3000, 4000), np.uint8)
    slide[900:900 + piece.shape[0], 1700:1700 + piece.shape[1]] = piece
    out["fifth"] = slide
    if labelled:
        out["label x1"] = slide = labelled_slide(img)
        for f in factors:
            out[f"label x{f:g}"] = cv2.resize(slide, None, fx=f, fy=f,
                                              interpolation=cv2.INTER_CUBIC)
    return out


def main() -> None:
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.data import read_image, section_files
    from samri_ml.plates.identify import make_identifier

    ap = argparse.ArgumentParser()
    ap.add_argument("--factors", nargs="+", type=float, default=[3, 8])
    ap.add_argument("--splits", nargs="+", default=["val_1", "val_2"])
    ap.add_argument("--labelled", action="store_true",
                    help="also on a slide with a label, as it is and blown up by each factor")
    ap.add_argument("--json", help="write every reading's top 5 and true rank here")
    args = ap.parse_args()
    ident = make_identifier(variant="auto")
    tops, ranks = {}, {}
    for split in args.splits:
        paths, labels = section_files(existing_data_dir(option=None) / "plates" / split)
        for path, label in zip(paths, labels.tolist(), strict=True):
            for name, im in readings(read_image(path), args.factors,
                                         args.labelled).items():
                ranking = ident.rank_read([im], regions=False)[0]["ranking"]
                tops.setdefault(name, []).append(ranking[:5])
                ranks.setdefault(name, []).append(ranking.index(label))
            print(f"{split}/{path.name}: true plate's rank "
                  + ", ".join(f"{k} {v[-1]}" for k, v in ranks.items()), flush=True)
    n = len(ranks["shared"])
    for a, b in itertools.combinations(tops, 2):
        pairs = list(zip(tops[a], tops[b], strict=True))
        print(f"{a} against {b}: same top plate {sum(x[0] == y[0] for x, y in pairs)}/{n}, "
              f"same top-5 plates {sum(set(x) == set(y) for x, y in pairs)}/{n}, "
              f"same top 5 in order {sum(x == y for x, y in pairs)}/{n}")
    print("MAE: " + ", ".join(f"{k} {np.mean(v):.2f}" for k, v in ranks.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"top5": tops, "ranks": ranks}, fh, indent=1)


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_scale.py", main))
