"""The plate networks in float32 and in bfloat16, side by side: rankings and time.

Usage::

    python benchmarks/plates_precision.py [--threads 2] [--passes 5]

Two identifiers of the shipped default variant, one per precision
(:func:`samri_ml.models.inference.mark_for_inference`), rank the labelled sections of
../shared/data/plates (train, val_1, val_2). Printed per split: MAE and Top-5 of each, and how
many sections keep the same top-10 plates. Then the time of the network and the ranking alone
(the sections preprocessed once, outside the timing), interleaved passes, the best of
``--passes`` per section: one section per call (val_2) and whole folders in one call (val_2,
train). The preprocessing and the modality router are the same for both precisions, so they
are left out. ``$SAMRI_ML_PRECISION`` (default ``auto``) says which one the commands use.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PRECISIONS = ("float32", "bfloat16")


def identifiers() -> dict:
    """``{precision: PlateIdentifier}`` for :data:`PRECISIONS`, each with a model of its own.

    Two ``PlateIdentifier()`` of one precision share one loaded model: marking it float32
    then bfloat16 ran both identifiers in bfloat16, so the table compared bfloat16 with
    itself."""
    from samri_ml.plates.identify import PlateIdentifier

    return {precision: PlateIdentifier(precision=precision) for precision in PRECISIONS}


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    from samri_ml.models.inference import (
        PLATE_PARALLEL_OPS,
        inference_precision,
        set_thread_environment,
    )

    set_thread_environment(args.threads, PLATE_PARALLEL_OPS)
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.data import load_sections
    from samri_ml.plates.metrics import ranking_metrics

    idents = identifiers()
    print(f"this CPU's default precision: {inference_precision()}")
    splits = {}
    for split in ("train", "val_1", "val_2"):
        _, labels, imgs = load_sections(existing_data_dir(option=None) / "plates" / split)
        prepped = np.stack([idents["float32"].prep(im) for im in imgs])
        splits[split] = (labels, imgs, prepped)
        rankings = {p: [r["ranking"] for r in ident.rank(imgs, prepped=prepped)]
                    for p, ident in idents.items()}
        cells = []
        for p in PRECISIONS:
            m = ranking_metrics(rankings[p], labels, 0.0)
            cells.append(f"{p} MAE {m['mae']:.2f} Top-5 {100 * m['top5']:.0f} %")
        same = sum(a[:10] == b[:10] for a, b in zip(*rankings.values(), strict=True))
        print(f"{split:6s} n={len(imgs):2d}  " + "  ".join(cells)
              + f"  same top-10: {same}/{len(imgs)}")
    times = {p: {"call": [], "val_2": [], "train": []} for p in PRECISIONS}
    for _ in range(args.passes):  # interleaved: the shared machine is noisy
        for p, ident in idents.items():
            _, imgs, prepped = splits["val_2"]
            per = []
            for i, im in enumerate(imgs):
                t0 = time.perf_counter()
                ident.rank([im], prepped=prepped[i : i + 1])
                per.append(time.perf_counter() - t0)
            times[p]["call"].append(per)
            for split in ("val_2", "train"):
                _, imgs, prepped = splits[split]
                t0 = time.perf_counter()
                ident.rank(imgs, prepped=prepped)
                times[p][split].append((time.perf_counter() - t0) / len(imgs))
    print("network and ranking, ms per section (best of the passes):")
    for p in PRECISIONS:
        t = times[p]
        print(f"  {p:9s} one per call {1e3 * np.mean(np.min(t['call'], axis=0)):.2f}   "
              f"val_2 in one call {1e3 * min(t['val_2']):.2f}   "
              f"train in one call {1e3 * min(t['train']):.2f}")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_precision.py", main))
