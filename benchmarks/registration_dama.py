"""Registration accuracy and speed on real in-vivo mouse T2 scans with manual labels.

Registers N moving subjects of ../shared/data/mri/scans/dama to one fixed subject with each
registration flavour (the same settings the workflow uses, through Nipype's real
antsRegistration interface), warps the manual label maps (GenericLabel) and brain masks
(NearestNeighbor) and reports the mean label Dice and the mask Dice before (identity) and after,
and the seconds per registration, side by side in one run.

    python benchmarks/registration_dama.py --flavours fast default --n-moving 5 --nprocs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

from samri_ml.ants import ensure_ants_on_path
from samri_ml.errors import SamriMLError
from samri_ml.metrics import dice, label_dice
from samri_ml.paths import existing_data_dir, shared_data_dir
from samri_ml.registration import n_stages, registration_inputs

DAMA = shared_data_dir() / "mri" / "scans" / "dama"


def register_pair(fixed, moving, fixed_mask, flavour, workdir, nprocs=2, zoom=1):
    from nipype.interfaces.ants import Registration

    reg = Registration(**registration_inputs(flavour, "structural"))
    reg.inputs.fixed_image = str(fixed)
    reg.inputs.moving_image = str(moving)
    reg.inputs.fixed_image_masks = [str(fixed_mask)] * n_stages(flavour, "structural")
    reg.inputs.output_transform_prefix = str(Path(workdir) / "xfm_")
    reg.inputs.num_threads = nprocs
    reg.terminal_output = "none"
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        t0, c0 = time.perf_counter(), _child_cpu()
        res = reg.run()
        seconds, cpu = time.perf_counter() - t0, _child_cpu() - c0
    finally:
        os.chdir(cwd)
    return res.outputs.composite_transform, seconds, cpu


def _child_cpu() -> float:
    """CPU seconds used by finished child processes: robust where the machine is shared."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def warp(in_file, reference, transform, interpolation, out_file):
    from nipype.interfaces.ants import ApplyTransforms

    at = ApplyTransforms(input_image=str(in_file), reference_image=str(reference),
                         transforms=[str(transform)] if transform else ["identity"],
                         interpolation=interpolation, output_image=str(out_file),
                         float=True)
    at.terminal_output = "none"
    at.run()
    return np.asanyarray(nb.load(str(out_file)).dataobj)


def upsample(path, out, factor):
    """Resample an image to ``factor`` times finer voxels (for the cost-vs-size measurement)."""
    from scipy import ndimage

    img = nb.load(str(path))
    order = 0 if "label" in str(path) or "mask" in str(path) else 1
    data = ndimage.zoom(np.asanyarray(img.dataobj).astype(np.float32), factor, order=order)
    aff = img.affine.copy()
    aff[:3, :3] /= factor
    nb.Nifti1Image(data, aff).to_filename(str(out))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flavours", nargs="+", default=["fast", "default"])
    p.add_argument("--n-moving", type=int, default=5)
    p.add_argument("--fixed-index", type=int, default=0)
    p.add_argument("--skip-moving", type=int, default=0,
                   help="skip the first N moving subjects (to spread slow runs over sessions)")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--zoom", type=float, default=1.0, help="resample all images by this factor first")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not DAMA.is_dir():  # exit 1: it said 'skipped' and exited 0, as a benchmark that ran
        existing_data_dir(option=None)  # no data folder at all: says where it was looked for
        raise SamriMLError(f"{DAMA}: not a directory")
    ensure_ants_on_path()
    subjects = sorted(f.name for f in (DAMA / "image").glob("*.nii.gz"))
    fixed_name = subjects[args.fixed_index]
    movings = [s for s in subjects if s != fixed_name][args.skip_moving :][: args.n_moving]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def path(kind, name):
            src = DAMA / kind / name
            if args.zoom == 1:
                return src
            return upsample(src, tmp / f"{kind}_{name}", args.zoom)

        fixed = path("image", fixed_name)
        fixed_mask = path("mask", fixed_name)
        fixed_label = np.asanyarray(nb.load(str(path("label", fixed_name))).dataobj)
        fixed_mask_data = np.asanyarray(nb.load(str(fixed_mask)).dataobj) > 0
        labels = [int(v) for v in np.unique(fixed_label) if v != 0]
        for name in movings:
            moving, mlabel, mmask = path("image", name), path("label", name), path("mask", name)
            before = warp(mlabel, fixed, None, "NearestNeighbor", tmp / "b.nii.gz")
            before_mask = warp(mmask, fixed, None, "NearestNeighbor", tmp / "bm.nii.gz") > 0
            row = {"moving": name, "fixed": fixed_name,
                   "label_dice_before": float(np.mean(list(label_dice(fixed_label, before, labels).values()))),
                   "mask_dice_before": dice(fixed_mask_data, before_mask)}
            for flavour in args.flavours:
                wd = tmp / f"{flavour}_{name}"
                wd.mkdir()
                xfm, secs, cpu = register_pair(fixed, moving, fixed_mask, flavour, wd, args.nprocs)
                after = warp(mlabel, fixed, xfm, "GenericLabel", wd / "l.nii.gz")
                after_mask = warp(mmask, fixed, xfm, "NearestNeighbor", wd / "m.nii.gz") > 0
                row[f"{flavour}_label_dice"] = float(np.mean(list(label_dice(fixed_label, after, labels).values())))
                row[f"{flavour}_mask_dice"] = dice(fixed_mask_data, after_mask)
                row[f"{flavour}_seconds"] = secs
                row[f"{flavour}_cpu_seconds"] = cpu
                print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print(f"fixed: {fixed_name}; {len(rows)} moving subjects; zoom {args.zoom}; nprocs {args.nprocs}")
    print("| flavour | mean label Dice | brain-mask Dice | s / registration | CPU s |")
    print("|---|---|---|---|---|")
    print(f"| none (identity) | {np.mean([r['label_dice_before'] for r in rows]):.3f} | "
          f"{np.mean([r['mask_dice_before'] for r in rows]):.3f} | 0 | 0 |")
    for flavour in args.flavours:
        print(f"| {flavour} | {np.mean([r[f'{flavour}_label_dice'] for r in rows]):.3f} | "
              f"{np.mean([r[f'{flavour}_mask_dice'] for r in rows]):.3f} | "
              f"{np.mean([r[f'{flavour}_seconds'] for r in rows]):.0f} | "
              f"{np.mean([r[f'{flavour}_cpu_seconds'] for r in rows]):.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    sys.exit(run_script("benchmarks/registration_dama.py", main))
