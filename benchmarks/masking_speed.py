"""Side-by-side masking speed on large volumes: the network's precision, and ``max_slices``.

Usage::

    python benchmarks/masking_speed.py [--threads 2] [--repeats 3] [--max-slices 128 96]
        [--models OTHER.keras ...]
        [--precisions float32 bfloat16] [--old-fill]

Volumes (the largest at hand and real scans resampled finer, where the 1 s target is hardest):
the nirodents T2w head (256 x 24 x 256, real, no reference mask), the two dama validation
subjects upsampled x2 (224 x 256 x 160, their manual masks likewise) and the samri_ml.example
phantom heads rendered at 0.1 mm (126 x 192 x 96, T2w/T1w/EPI, their truth). Each volume is
masked, in one warm process and interleaved repeats (the best of ``--repeats``):

* ``float32`` / ``bfloat16``: the U-Net's arithmetic (``$SAMRI_ML_PRECISION``; the default,
  ``auto``, is bfloat16 where the CPU has native bfloat16), every slice predicted;
* ``old fill`` (``--old-fill``): the clean-up as before 2026-12-01's fifth session
  (``binary_fill_holes`` in 3D, then once per coronal slice), in this CPU's default precision;
* ``max N``: this CPU's default precision with ``max_slices=N`` (not the default);
* ``--models``: other masking models (e.g. a wider U-Net), this CPU's default precision, every
  slice, named by their file's stem.

Printed: seconds per volume, the Dice of each mask with the one of this CPU's default precision, and with the reference
where there is one. Needs ../shared/data (the phantom rows run without it).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def _old_clean_mask(mask):
    from scipy import ndimage

    from samri_ml.masking import preprocess as pp
    from samri_ml.masking.predict import drop_far_islands
    from samri_ml.masks import largest_component

    mask = ndimage.binary_fill_holes(largest_component(mask))
    for j in range(mask.shape[pp.CORONAL_AXIS]):
        mask[:, j, :] = ndimage.binary_fill_holes(mask[:, j, :])
    return drop_far_islands(mask)


def precisions_to_run(given: list[str], default: str) -> list[str]:
    """The precisions given, and this CPU's ``default``: its masks are the reference of the
    ``a=`` Dice (``--precisions float32`` on a bfloat16 CPU loaded it but never ran it: a
    KeyError)."""
    return list(dict.fromkeys([*given, default]))


def _volumes(data: Path):
    import nibabel as nb
    from scipy import ndimage

    from samri_ml.example import make_template

    out = []
    scans = data / "mri" / "scans"
    niro = scans / "nirodents" / "sub-15_T2w.nii.gz"
    if niro.is_file():
        out.append(("nirodents T2w 256x24x256", nb.load(niro), None))
    for subject in ("tg4510_tp3_11_20130523_UT", "tg4510_tp3_7_20130522_WT"):
        image = next((scans / "dama" / "image").glob(f"{subject}*"), None)
        mask = next((scans / "dama" / "mask").glob(f"{subject}*"), None)
        if image is None or mask is None:
            continue
        img = nb.load(image)
        affine = img.affine.copy()
        affine[:3, :3] /= 2
        up = ndimage.zoom(np.asarray(img.dataobj, np.float32), 2, order=1)
        ref = ndimage.zoom((np.asarray(nb.load(mask).dataobj) > 0).astype(np.float32), 2,
                           order=1) > 0.5
        out.append((f"dama {subject[11:13].strip('_')} x2 224x256x160", nb.Nifti1Image(up, affine),
                    ref))
    ph = make_template(0, contrasts=("t2", "t1", "epi"), shape=(126, 192, 96), zoom=0.1,
                       supersample=1)
    for c in ("T2w", "T1w", "bold"):
        out.append((f"phantom {c} 126x192x96", ph[c], np.asarray(ph["mask"].dataobj) > 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-slices", type=int, nargs="*", default=[128, 96])
    ap.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"], help="the network's arithmetic, side by side")
    ap.add_argument("--old-fill", action="store_true",
                    help="also the clean-up before 2026-12-01's fifth session")
    ap.add_argument("--models", type=Path, nargs="*", default=[],
                    help="other masking models, timed beside the shipped one")
    ap.add_argument("--data", type=Path, default=None,
                    help="the shared data folder (default: $SAMRI_ML_SHARED_DATA, else "
                    "../shared/data beside the repository, as the other benchmarks)")
    args = ap.parse_args()
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from samri_ml.masking import predict as P
    from samri_ml.masking import preprocess as pp
    from samri_ml.metrics import dice
    from samri_ml.models.inference import import_keras, inference_precision, mark_for_inference
    from samri_ml.models.unet import CUSTOM_OBJECTS
    from samri_ml.paths import shared_data_dir

    keras = import_keras()
    shipped = inference_precision()
    def load(path, precision):  # one model object each: the precision is per model
        m = keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
        return mark_for_inference(m, precision)

    precisions = precisions_to_run(args.precisions, shipped)
    models = {precision: load(P.default_model_path(), precision) for precision in precisions}
    for path in args.models:
        models[path.stem] = load(path, shipped)
    setups = [(precision, precision, None, P.clean_mask) for precision in precisions]
    setups += [(path.stem, path.stem, None, P.clean_mask) for path in args.models]
    if args.old_fill:
        setups.insert(0, ("old fill", shipped, None, _old_clean_mask))
    setups += [(f"max {n}", shipped, n, P.clean_mask) for n in args.max_slices]
    print(f"this CPU's default precision: {shipped}")
    print(f"{'volume':32s} " + " ".join(f"{name:>22s}" for name, *_ in setups))
    for name, img, ref in _volumes(args.data or shared_data_dir()):
        # predict_mask's own steps (its input checks and the NIfTI output left out, the same
        # for every setup), with the clean-up as an argument
        ras, ornt = pp.to_ras(np.asarray(img.dataobj, np.float32), img.affine)
        for model in models.values():
            P.predict_volume(model, ras)  # warm (the traced function, the caches)
        best = {s: np.inf for s, *_ in setups}
        masks = {}
        for _ in range(args.repeats):
            for label, precision, max_slices, clean in setups:
                t0 = time.perf_counter()
                prob = P.predict_volume(models[precision], ras, max_slices=max_slices)
                mask = pp.from_ras(clean(prob > 0.5).astype(np.uint8), ornt)
                best[label] = min(best[label], time.perf_counter() - t0)
                masks[label] = mask
        cells = []
        for label, *_ in setups:
            cell = f"{best[label]:.2f}s a={dice(masks[label], masks[shipped]):.4f}"
            if ref is not None:
                cell += f" D={dice(masks[label], ref):.4f}"
            cells.append(f"{cell:>22s}")
        print(f"{name:32s} " + " ".join(cells), flush=True)
    print(f"a = Dice with the mask of this CPU's default ({shipped}); D = Dice with the reference (manual / phantom truth)")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/masking_speed.py", main))
