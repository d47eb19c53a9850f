"""Side-by-side speed and accuracy: Siamese embedding vs MI-affine registration.

Usage::

    python benchmarks/plates_speed.py [--split val_2] [--mi-sections 3] [--threads 2]

Both methods rank all 132 plates for the same sections of ../shared/data/plates/<split>; the
MI-affine baseline (SimpleITK, 132 affine registrations per section) is run on the first
``--mi-sections`` sections only, and the speed-up is computed per section on those.
TensorFlow runs as the plate CLIs run it (``--threads`` split over ``--parallel-ops`` ops at
once); the baseline registers ``--threads`` plates at once, each on one thread (since
2026-12-01's seventh session; before, one plate at a time on ITK's ``--threads`` threads,
2-2.6x slower and not reproducible); ``--parallel-ops 1`` is the setting before 2026-12-01's sixth session, for a side-by-side
comparison in two interleaved runs (TensorFlow reads its thread settings once per process).

The Siamese time per section is measured two ways, in a warm process (one untimed pass first),
the best of three passes: one section per call (a user ranking one image, or the Nipype
interface), and the whole split in one call divided by its size (what
``samri_ml-identify-plate`` and ``samri_ml-evaluate-plates`` do with many images: one batch
through the network). Both include reading nothing (images are in memory for both methods,
read by ``read_image``), the preprocessing (tissue box, CLAHE, resize) and the flip test-time
augmentation; each is timed for ``rank_read`` (how the CLIs and ``IdentifyPlate`` rank read
files since 2026-12-03's nineteenth session: the speed-up the script reports first) and for
``rank`` (arrays given in a notebook, made sections by ``as_section`` first: the reading's
checks again, about 3-4 ms a section). It also prints where a call of one section goes
(:func:`call_breakdown`: the preprocessing, the modality router, the network): the floor of a
call, which the 1000x target has to get under.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--split", default="val_2")
    ap.add_argument("--mi-sections", type=int, default=3,
                    help="sections the MI-affine baseline ranks (the speed-up is theirs)")
    ap.add_argument("--mi-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel-ops", type=int, default=None,
                    help="TensorFlow ops at once (default: the plate CLIs' setting, "
                    "PLATE_PARALLEL_OPS; 1 gives the setting before 2026-12-01's sixth session)")
    ap.add_argument("--variant", default="auto", help="shipped variant: auto (the default "
                    "of the CLIs), default, multimodal")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    if args.mi_sections < 1:  # 0: a ValueError traceback after the Siamese timings
        ap.error("--mi-sections must be at least 1: the speed-up is measured on those sections")
    if args.parallel_ops is None:
        from samri_ml.models.inference import PLATE_PARALLEL_OPS

        args.parallel_ops = PLATE_PARALLEL_OPS
    from samri_ml.models.inference import set_thread_environment

    set_thread_environment(args.threads, args.parallel_ops)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.baseline import rank_mi_affine
    from samri_ml.plates.data import load_atlas, load_sections, preprocess
    from samri_ml.plates.identify import make_identifier
    from samri_ml.plates.metrics import format_metrics, ranking_metrics

    root = existing_data_dir(option=None) / "plates"
    _, labels, imgs = load_sections(root / args.split)
    ident = make_identifier(variant=args.variant)
    from samri_ml.models.inference import inference_precision

    precision = inference_precision()  # $SAMRI_ML_PRECISION, or this CPU's default
    print(f"networks in {precision}")
    # "once the model is loaded": load, trace, and one untimed pass over the sections (the
    # first pass of a process runs 20-40 % slower: allocator and kernel caches warming up)
    for im in imgs:
        ident.rank([im])
    ident.rank(imgs)
    # the sections as read_image reads a file (checks, bright border, brightfield, other
    # sections: part of reading, as the baseline's images are read and not timed either);
    # rank_read ranks them as samri_ml-identify-plate and IdentifyPlate do since 2026-12-03's
    # nineteenth session; ``rank`` makes arrays given in a notebook such sections first
    ranked_as = {"rank_read (the CLIs, IdentifyPlate)": ident.rank_read,
                 "rank (arrays, as_section first)": ident.rank}
    per_call, batched, ranked = {}, {}, {}
    for name, fn in ranked_as.items():
        passes = []
        for _ in range(3):  # per section, the best of three passes: the machine is noisy
            rankings, times = [], []
            for im in imgs:
                t0 = time.perf_counter()
                rankings.append(fn([im])[0]["ranking"])
                times.append(time.perf_counter() - t0)
            passes.append(times)
        per_call[name], ranked[name] = list(np.min(passes, axis=0)), rankings
        m = ranking_metrics(rankings, labels, sum(per_call[name]))
        print(format_metrics(m, f"siamese {args.split}, one section per call, {name}"))
        whole = []
        for _ in range(3):  # best of three: the shared machine is noisy
            t0 = time.perf_counter()
            batch_rank = [r["ranking"] for r in fn(imgs)]
            whole.append((time.perf_counter() - t0) / len(imgs))
        same = sum(a[0] == b[0] for a, b in zip(batch_rank, rankings, strict=True))
        if same < len(imgs):  # float round-off of another batch size can swap near ties
            print(f"  note: the top plate differs for {len(imgs) - same} section(s) in one "
                  "batch")
        batched[name] = min(whole)
        print(f"siamese {args.split}, all {len(imgs)} in one call, {name}: "
              f"{1e3 * batched[name]:.1f} ms/section")
    breakdown = call_breakdown(ident, imgs)
    print("one section per call, ms (best of three passes, mean over the sections): " +
          ", ".join(f"{k} {v:.2f}" for k, v in breakdown.items()))
    first = next(iter(ranked_as))
    per, per_batched, rankings = per_call[first], batched[first], ranked[first]
    m_s = ranking_metrics(rankings, labels, sum(per))
    n = min(args.mi_sections, len(imgs))
    plates, pimgs = load_atlas(root / "atlas")
    pp = [preprocess(p, args.mi_size) for p in pimgs]
    mi_rank, mi_t = [], []
    for im in imgs[:n]:
        t0 = time.perf_counter()
        r, _ = rank_mi_affine(im, plates, pp, size=args.mi_size, preprocessed=True,
                              workers=args.threads)
        mi_t.append(time.perf_counter() - t0)
        mi_rank.append(r.tolist())
        print(f"  mi-affine section {len(mi_t)}/{n}: {mi_t[-1]:.1f} s", flush=True)
    m_mi = ranking_metrics(mi_rank, labels[:n], sum(mi_t))
    m_s_sub = ranking_metrics(rankings[:n], labels[:n], sum(per[:n]))
    print(format_metrics(m_mi, f"mi-affine first {n}"))
    print(format_metrics(m_s_sub, f"siamese first {n}"))
    speedup = (sum(mi_t) / n) / (sum(per[:n]) / n)
    speedup_batched = (sum(mi_t) / n) / per_batched
    for name in ranked_as:
        print(f"speed-up on the same {n} sections, {name}: "
              f"{(sum(mi_t) / n) / (sum(per_call[name][:n]) / n):.0f}x one section per call, "
              f"{(sum(mi_t) / n) / batched[name]:.0f}x with the split ranked in one call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "siamese": m_s,
                    "siamese_subset": m_s_sub,
                    "mi_affine": m_mi,
                    "speedup": speedup,
                    "siamese_batched_seconds_per_section": per_batched,
                    "speedup_batched": speedup_batched,
                    "arrays_seconds_per_call": per_call[list(ranked_as)[1]][:n],
                    "arrays_seconds_per_section_batched": batched[list(ranked_as)[1]],
                    "mi_size": args.mi_size,
                    "threads": args.threads,
                    "parallel_ops": args.parallel_ops,
                    "precision": precision,
                    "breakdown_ms_per_call": breakdown,
                },
                f,
                indent=1,
            )


def call_breakdown(ident, imgs: list) -> dict[str, float]:
    """Where a call of one section goes, ms (the mean over ``imgs`` of the best of three
    passes): the preprocessing (tissue box, CLAHE, resize to the network's input), the
    modality router (``--variant auto`` only), and the network (the ensemble on the section
    and its mirror) with the distances to the plates; the rest of a call is Python between
    them."""
    single = getattr(ident, "default", ident)  # auto: the default variant ranks these
    router = getattr(ident, "router", None)
    prepped = [single.prepare([im]) for im in imgs]
    steps = {"preprocessing": lambda i: single.prepare([imgs[i]]),
             "router": lambda i: router.other_modality(prepped[i][0]),
             "network": lambda i: single.distances([imgs[i]], False, prepped[i][0],
                                                   boxes=prepped[i][1])}
    if router is None:
        del steps["router"]
    times = {}
    for name, step in steps.items():
        passes = []
        for _ in range(3):
            row = []
            for i in range(len(imgs)):
                t0 = time.perf_counter()
                step(i)
                row.append(time.perf_counter() - t0)
            passes.append(row)
        times[name] = round(1e3 * float(np.mean(np.min(passes, axis=0))), 2)
    return times

if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_speed.py", main))
