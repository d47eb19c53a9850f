"""Time per section of ``rank`` and ``rank_read`` on the same read sections, side by side.

Usage::

    python benchmarks/plates_made_once.py [--split val_1] [--rounds 5] [--threads 2]

What the plate CLIs, the ``IdentifyPlate`` interface and the export do with a file:
``read_image`` then rank. They called ``rank``, which made each section again
(``as_sections``: checks, frame and brightfield tests, other sections); they now call
``rank_read``, which takes the sections as ``read_image`` made them. Both are timed here on
the same images in one warm process, alternating (old, new, old, new...: the machine is shared
and noisy), one section per call (a user ranking one image, the Nipype interface) and the
whole split in one call (the CLIs with many images); printed: the best of ``--rounds`` per
section, and whether every ranking, distance, region and tilt is identical.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--split", default="val_1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default="auto", help="auto (the CLIs' default), default, "
                    "multimodal")
    args = ap.parse_args()
    from samri_ml.models.inference import PLATE_PARALLEL_OPS, set_thread_environment

    set_thread_environment(args.threads, PLATE_PARALLEL_OPS)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.data import load_sections
    from samri_ml.plates.identify import make_identifier

    _, _, imgs = load_sections(existing_data_dir(option=None) / "plates" / args.split)
    ident = make_identifier(variant=args.variant)
    ways = {"rank (made again)": ident.rank, "rank_read (made once)": ident.rank_read}
    for rank in ways.values():  # load, trace and warm both paths first
        rank(imgs)
        for im in imgs:
            rank([im])
    one = {name: [] for name in ways}
    batch = {name: [] for name in ways}
    results = {name: None for name in ways}
    for _ in range(args.rounds):
        for name, rank in ways.items():  # alternating: old, new, old, new...
            times = []
            for im in imgs:
                t0 = time.perf_counter()
                rank([im])
                times.append(time.perf_counter() - t0)
            one[name].append(times)
            t0 = time.perf_counter()
            results[name] = rank(imgs)
            batch[name].append((time.perf_counter() - t0) / len(imgs))
    print(f"{args.split}: {len(imgs)} sections, --variant {args.variant}, best of "
          f"{args.rounds} rounds, ms per section")
    for name in ways:
        per = 1e3 * np.min(one[name], axis=0).mean()
        print(f"  {name:24s} one per call {per:6.1f}   all in one call "
              f"{1e3 * min(batch[name]):6.1f}")
    old, new = results.values()
    print(f"  identical results: {old == new}")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_made_once.py", main))
