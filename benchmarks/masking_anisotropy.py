"""Which views to average on volumes with thick slices? Measured on the validation subjects only.

Usage::

    python benchmarks/masking_anisotropy.py [--heads 14] [--json rows.json]

The shipped masker averages its sagittal, coronal and axial predictions with equal weights. A
view cut across thick slices sees the brain squashed along them, so weighting the views by
their in-plane voxel shape was tried (2026-12-01, seventh session; docs/masking.rst,
"Anisotropic voxels"): for each volume the three single-view probabilities (with the mirror)
are combined with

* ``limit L``: only the views whose in-plane voxel aspect ratio is at most L (all when none is);
* ``None``: every view, equal weights (as shipped);
* ``inv`` / ``inv2``: every view, weight 1 / aspect (squared);
* ``veto``: every view, equal weights, but a voxel to which the view with the finest in-plane
  voxels gives under :data:`VIEW_VETO` is not brain (volumes with anisotropic voxels only;
  2026-12-02, fifteenth session; not shipped: the real sammba EPI lost its end slices).

Volumes, from the two dama validation subjects (never trained on): the real brain resliced
thick along anterior-posterior (x3: 0.45 mm, x6: 0.9 mm; their manual masks likewise) and
``--heads`` synthetic skull-on heads per subject (``samri_ml.masking.synth``, as in training:
about a third with thick slices). Prints the Dice of every rule per volume and their means over
the anisotropic volumes (aspect > 1.5) and over all. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

VALIDATION = ("dama/tg4510_tp3_11_20130523_UT", "dama/tg4510_tp3_7_20130522_WT")
RULES = (1.5, 2, 3, 4, 6, None, "inv", "inv2", "veto")
#: the ``veto`` rule (tried 2026-12-02, fifteenth session; not shipped, docs/masking.rst)
VIEW_VETO, VETO_ASPECT = 0.2, 1.5


def _aspect(zooms, axis: int) -> float:
    a, b = (zooms[i] for i in range(3) if i != axis)
    return max(a, b) / min(a, b)


def _volumes(n_heads: int, seed: int = 2026):
    from samri_ml.masking import synth
    from samri_ml.masking.data import real_scans
    from samri_ml.masking.train import _resample_to
    from samri_ml.paths import existing_data_dir

    data = existing_data_dir(option=None)  # none: one line naming where it looked, exit 1
    scans = [s for s in real_scans(data, skip=("sammba", "emory", "templates"))
             if s.name in VALIDATION]
    if len(scans) != len(VALIDATION):
        raise SystemExit(f"the dama validation subjects are not in {data}")
    rng = np.random.default_rng(seed)
    for s in scans:
        for k in (3, 6):
            n = s.image.shape[1] // k * k
            img = s.image[:, :n].reshape(s.image.shape[0], n // k, k, -1).mean(2)
            msk = s.mask[:, :n].reshape(s.mask.shape[0], n // k, k, -1).mean(2) > 0.5
            yield f"{s.name} thick x{k}", img, msk, (s.zooms[0], s.zooms[1] * k, s.zooms[2])
        src = _resample_to(synth.BrainSource(s.mask, s.zooms, s.labels, s.image, s.name))
        for i in range(n_heads):
            img, msk, z = synth.synth_volume(src, rng, snout_neck=True)
            yield f"{s.name} synth {i}", img, msk, tuple(float(x) for x in z)


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--heads", type=int, default=14, help="synthetic heads per subject")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the per-volume Dice here")
    args = ap.parse_args()
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(args.threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from samri_ml.masking import preprocess as pp
    from samri_ml.masking.predict import clean_mask, load_model, predict_volume
    from samri_ml.metrics import dice

    model = load_model()
    rows, t0 = [], time.time()
    for name, img, msk, z in _volumes(args.heads):
        probs = {a: predict_volume(model, img, (v,)) for v, a in pp.VIEW_AXES.items()}
        aspect = {a: _aspect(z, a) for a in probs}
        row = {"name": name, "zooms": [round(x, 3) for x in z],
               "max_aspect": round(max(aspect.values()), 2)}
        for rule in RULES:
            if rule in ("inv", "inv2"):
                w = {a: aspect[a] ** (-1 if rule == "inv" else -2) for a in probs}
            else:  # a limit, None (every view) or the veto (every view, then the veto)
                w = {a: float(rule in (None, "veto") or aspect[a] <= rule) for a in probs}
                if not any(w.values()):
                    w = dict.fromkeys(probs, 1.0)
            m = sum(probs[a] * w[a] for a in probs) / sum(w.values()) > 0.5
            if rule == "veto" and max(aspect.values()) > VETO_ASPECT:
                m &= probs[min(aspect, key=aspect.get)] >= VIEW_VETO
            row[str(rule)] = round(float(dice(clean_mask(m), msk)), 4) if m.any() else 0.0
        rows.append(row)
        print(json.dumps(row), f"({time.time() - t0:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    for rule in map(str, RULES):
        aniso = [r[rule] for r in rows if r["max_aspect"] > 1.5]
        every = [r[rule] for r in rows]
        print(f"{rule:>5}: anisotropic n={len(aniso)} mean {np.mean(aniso):.4f} min "
              f"{np.min(aniso):.4f} | all n={len(every)} mean {np.mean(every):.4f}")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/masking_anisotropy.py", main))
