"""Masked against unmasked registration of a real skull-on head: the sammba T2 scan to DSURQE.

Usage::

    python benchmarks/registration_sammba.py [--flavours fast default] [--work DIR]

The example data (``benchmarks/example_accuracy.py``) are phantoms that unmasked registration
handles well; the seed's case for the mask is a real head, whose skull, muscle and neck pull
the registration. This runs ``samri_ml-register`` on the sammba anatomical scan (a T2 head with
the skull on, 0.3 mm; linked into a one-subject BIDS folder, not copied) against the DSURQE
average and its mask, with ``--masking none`` and ``--masking unet``, and prints for each the
Dice of the scan's own brain mask (sammba's algorithmic mask) warped with the written transform
against the template mask, the VCF, and the wall time. One thread per ANTs call by default, so
that two runs agree (ANTs sums multithreaded metrics in a varying order, and on this head the
unmasked default flavour diverged in one of five two-thread runs). ``--flavours`` also takes
flavour JSON files. ``--dama N`` registers the first N dama mice instead (in-vivo T2, already
skull-stripped, with manual masks; the U-Net was trained on dama, so its masks there are
better than on a new source) and prints each mouse's Dice and their mean. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def link_dataset(bids: Path, scans, name: str) -> None:
    """``bids``: one ``sub-<sub>/anat/sub-<sub>_T2w.nii.gz`` link per ``(sub, scan, mask)`` of
    ``scans``; on every run, a link missing or pointing elsewhere is made again."""
    for sub, scan, _ in scans:
        link = bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T2w.nii.gz"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.readlink() != Path(scan):
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(scan)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.8.0"}))


def main() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--flavours", nargs="+", default=["fast", "default"])
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--omp-nthreads", type=int, default=1,
                    help="threads per ANTs call; 1 makes runs reproducible (with 2 the unmasked "
                    "default flavour gave Dice 0.04-0.82 over five runs of this head)")
    ap.add_argument("--dama", type=int, default=0, metavar="N",
                    help="register the first N dama mice instead of the sammba head")
    args = ap.parse_args()
    from samri_ml.cli.register import main as register
    from samri_ml.errors import SamriMLError
    from samri_ml.evaluation import warped_mask_dice
    from samri_ml.paths import existing_data_dir

    data = existing_data_dir(option=None) / "mri"
    sammba, templates = data / "scans" / "sammba", data / "templates"
    tpl = templates / "DSURQE_CCFv3_average_200um.nii.gz"
    tpl_mask = templates / "DSURQE_CCFv3_mask_200um.nii.gz"
    root = Path(args.work or tempfile.mkdtemp(prefix="samri_ml_sammba_"))
    # a folder per data set: a --work of a sammba run, given to --dama 2, kept its one-subject
    # BIDS folder and outputs (the sammba head scored against a dama mouse's mask)
    kind = f"dama{args.dama}" if args.dama else "sammba"
    bids = root / f"bids_{kind}"
    if args.dama:  # (subject, scan, its brain mask), linked, not copied
        dama = data / "scans" / "dama"
        scans = [(f"{i + 1:02d}", p, dama / "mask" / p.name)
                 for i, p in enumerate(sorted((dama / "image").glob("*.nii*"))[: args.dama])]
    else:
        scans = [("01", sammba / "anat.nii.gz", sammba / "mask.nii.gz")]
    link_dataset(bids, scans, "dama" if args.dama else "sammba")
    rows = []
    for flavour in args.flavours:
        for masking in ("none", "unet"):
            tag = Path(flavour).stem
            out = root / f"out_{kind}_{tag}_{masking}"
            t0 = time.monotonic()
            argv = [str(bids), str(out), "participant", "--masking", masking,
                    "--nprocs", str(args.nprocs), "--omp-nthreads", str(args.omp_nthreads),
                    "-w", str(root / f"work_{kind}_{tag}_{masking}"),
                    "--template", str(tpl), "--template-mask", str(tpl_mask)]
            argv += ["--registration-flavour", flavour]
            if register(argv) != 0:  # its error line is above
                raise SamriMLError(f"samri_ml-register failed (--registration-flavour "
                                   f"{flavour} --masking {masking})")
            seconds = time.monotonic() - t0
            dice, vcf = [], []
            for sub, _, mask in scans:
                a = out / f"sub-{sub}" / "anat"
                xfm = next(a.glob("*_from-native_to-*_mode-image_xfm.h5"))
                vcf.append(json.loads(next(a.glob("*_desc-qc_metrics.json")).read_text())["vcf"])
                dice.append(warped_mask_dice(mask, tpl_mask, xfm))
            d, v = sum(dice) / len(dice), sum(vcf) / len(vcf)
            rows.append((tag, masking, d, v, seconds))
            each = f" (each: {' '.join(f'{x:.4f}' for x in dice)})" if len(dice) > 1 else ""
            print(f"{tag:8s} {masking:5s} warped-mask Dice {d:.4f}{each}  VCF {v:.3f}  "
                  f"{seconds:.0f} s", flush=True)
    print("\nflavour  masking  Dice    VCF    s")
    for f, m, d, v, s in rows:
        print(f"{f:8s} {m:7s}  {d:.4f}  {v:.3f}  {s:.0f}")


if __name__ == "__main__":
    from samri_ml.cli._common import run_script

    raise SystemExit(run_script("benchmarks/registration_sammba.py", main))
