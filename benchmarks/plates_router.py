"""Where ``--variant auto`` sends sections: the modality router's probability on data it was
not fitted on.

Usage::

    python benchmarks/plates_router.py [--synth 150]

Rows: val_1 and val_2 (confocal, never used to fit the router), each section whole and with
three simulated cuts (missing cortex, hemisection, missing cerebellum), which should all stay
with the default model; the CCFv3 two-photon average template cut at 30 plate positions, whole,
missing cortex and hemisected (benchmarks/plates_twophoton.py), which should go to the
multimodal model; and fresh synthetic CCF sections (another seed than the router's). Printed:
the share sent to the multimodal model (probability >= the router's threshold) and the
smallest/largest probability.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--synth", type=int, default=150, help="fresh synthetic sections")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import nibabel as nb

    from samri_ml.paths import existing_data_dir
    from samri_ml.plates.augment import hemisection, missing_cerebellum, missing_cortex, on_uint8
    from samri_ml.plates.data import load_sections
    from samri_ml.plates.identify import RoutedIdentifier
    from samri_ml.plates.synth import Annotation, SectionSynth, template_slice

    rng = np.random.default_rng(1)
    ident = RoutedIdentifier()
    router, prep = ident.router, ident.default.prep

    def cut(img, fn):
        return on_uint8(fn, img, rng)

    groups = {}
    for split in ("val_1", "val_2"):
        _, _, imgs = load_sections(existing_data_dir(option=None) / "plates" / split)
        groups[f"{split} whole"] = imgs
        groups[f"{split} cut (3 kinds)"] = [cut(im, fn) for im in imgs for fn in
                                            (missing_cortex, hemisection, missing_cerebellum)]
    vol = nb.load(existing_data_dir(option=None) / "mri/templates"
                  / "average_template_200um.nii.gz").get_fdata()
    slices = [template_slice(vol, n) for n in range(10, 129, 4)]
    groups["two-photon whole"] = slices
    groups["two-photon cut (2 kinds)"] = [cut(s, fn) for s in slices
                                          for fn in (missing_cortex, hemisection)]
    synth = SectionSynth(Annotation.load(), max_tilt_deg=6.0)
    groups["synthetic CCF (fresh)"] = [synth(int(rng.integers(8, 129)), rng)
                                       for _ in range(args.synth)]
    print(f"threshold {router.threshold}")
    print(f"{'sections':28s} {'n':>4s} {'to multimodal':>14s} {'min p':>7s} {'max p':>7s}")
    for name, imgs in groups.items():
        p = router.other_modality(np.stack([prep(im) for im in imgs]))
        print(f"{name:28s} {len(imgs):4d} {100 * np.mean(p >= router.threshold):13.1f}% "
              f"{p.min():7.3f} {p.max():7.3f}")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/plates_router.py", main))
