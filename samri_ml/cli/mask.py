"""``samri_ml-mask``: brain mask of a mouse MRI volume with the U-Net.

samri_ml-mask IN.nii[.gz] OUT_MASK.nii.gz [--model PATH] [--masked OUT.nii.gz] [--png QC.png]
    [--views ...] [--flip | --no-flip] [-v]
samri_ml-mask IN [IN ...] --out-dir DIR [--figures] [...]: many scans, the model loaded once
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from samri_ml import __version__
from samri_ml.cli._common import (
    HelpFormatter,
    add_flip_option,
    add_threads_option,
    add_views_option,
    probe_writable,
    refuse_missing_inputs,
    refuse_missing_options,
    run_cli,
    set_tf_threads,
    terminate_as_interrupt,
)
from samri_ml.errors import SamriMLError, SamriMLNote
from samri_ml.masking.predict import MIN_MAX_SLICES  # numpy only, no TensorFlow

PROG = "samri_ml-mask"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Predict a binary (uint8) brain mask on IN's grid with the slice-wise "
        "U-Net (by default the shipped masker, two U-Nets averaged). IN is a 3D volume or a 4D "
        "series (its temporal mean is masked), in any orientation; T1, T2 and EPI, with or "
        "without skull.",
        formatter_class=HelpFormatter,
    )
    p.usage = (f"{PROG} [options] IN OUT\n       {PROG} [options] IN [IN ...] --out-dir DIR "
               "[--figures]")
    p.add_argument("files", type=Path, nargs="+", metavar="IN OUT",
                   help="NIfTI image (.nii or .nii.gz) and the mask to write (.nii or .nii.gz); "
                   "with --out-dir, the images only")
    p.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                   help="mask every IN, the model loaded once (a loop of this command loads it "
                   "for each scan, 5-20 s), into DIR/<IN's name>_mask.nii.gz (DIR is created "
                   "where missing); a scan that cannot be masked is said and the others are "
                   "masked (exit 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --out-dir: replace masks there of the names it writes (refused "
                   "otherwise: a lab's own <scan>_mask.nii.gz may be there)")
    p.add_argument("--skip-existing", action="store_true",
                   help="with --out-dir: keep the masks there of the names it writes (each a "
                   "readable image of 0 and 1, with its picture where --figures is given) and mask "
                   "the other scans: an interrupted batch resumed")
    p.add_argument("--figures", action="store_true",
                   help="with --out-dir: a picture of each mask on its scan, "
                   "DIR/<IN's name>_mask.png")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="Keras model file (default: the shipped unet_brainmask.keras)",
    )
    p.add_argument(
        "--masked",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write IN multiplied by the mask here",
    )
    p.add_argument(
        "--png",
        type=Path,
        default=None,
        metavar="PATH",
        help="also draw the mask's outline on coronal slices of IN into this PNG (a 4D IN: "
        "its temporal mean), to check it at a glance",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="brain probability threshold")
    add_views_option(p)
    add_flip_option(p)
    from samri_ml.hardware import available_cpus

    add_threads_option(p, default=available_cpus(),
                       help="CPU threads for TensorFlow (default: the cores this job may use)")
    p.add_argument(
        "--max-slices", type=int, default=None, metavar="N",
        help="predict at most N slices per view, evenly spaced, and interpolate between them: "
        "faster on large volumes (e.g. 128 for a 0.1 mm head), slightly different masks; at "
        f"least {MIN_MAX_SLICES} (default: every slice)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="print timings; tracebacks on errors"
    )
    return p  # fmt: skip


def _main(argv=None) -> int:
    """Parse, then run; SIGTERM (``kill``, ``timeout``, a cluster's time limit) is taken as
    Ctrl-C (:func:`~samri_ml.cli._common.terminate_as_interrupt`): the temporary files are
    removed and the command says so, exit 143 (they were left, hidden, without a word)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    with terminate_as_interrupt():
        return _run(parser, args)


def _run(parser, args) -> int:
    if args.out_dir is not None:
        return _run_batch(parser, args)
    batch_only = [o for o, given in (("--figures", args.figures), ("--overwrite",
                  args.overwrite), ("--skip-existing", args.skip_existing)) if given]
    if batch_only:
        parser.error(f"{batch_only[0]} is for --out-dir; hint: with IN OUT, give --png QC.png "
                     "for a picture; OUT is replaced")
    if len(args.files) != 2:
        parser.error(f"give IN and OUT (got {len(args.files)} path(s)); hint: for many scans, "
                     "IN [IN ...] --out-dir DIR")
    args.in_file, args.out_file = args.files
    _check_options(parser, args)
    refuse_missing_inputs(parser, [args.in_file])
    if not _is_nifti_name(args.out_file):
        parser.error(f"OUT must end in .nii or .nii.gz: {args.out_file}")
    if args.out_file.resolve() == args.in_file.resolve():
        parser.error("OUT would overwrite IN")
    if args.masked is not None:
        if not _is_nifti_name(args.masked):
            parser.error(f"--masked must end in .nii or .nii.gz: {args.masked}")
        if args.masked.resolve() in (args.in_file.resolve(), args.out_file.resolve()):
            parser.error("--masked would overwrite IN or OUT")
    if args.png is not None and args.png.suffix.lower() != ".png":  # IN and OUT are no .png
        parser.error(f"--png must end in .png: {args.png}")
    t0 = time.perf_counter()
    set_tf_threads(args.threads)
    times = _mask_one(args, args.in_file, args.out_file, args.masked, args.png, _ModelOnce(args))
    if args.verbose:
        print(f"{PROG}: load {times[0] - t0:.2f} s, predict {times[1] - times[0]:.2f} s",
              file=sys.stderr)
    return 0


def _check_options(parser, args) -> None:
    """The options both forms share."""
    # a missing model is a missing input (it exited 1, the first scan read)
    refuse_missing_options(parser, args, ("--model",))
    if not 0 < args.threshold < 1:
        parser.error("--threshold must be between 0 and 1")
    if args.max_slices is not None and args.max_slices < MIN_MAX_SLICES:
        # fewer slices than the network's 64 px frame resolves lose the brain's shape (sammba
        # T2, 28-68 slices a view: Dice with the full mask 0.76 at 3, 0.94 at 8, 0.96 at 16)
        parser.error(f"--max-slices must be at least {MIN_MAX_SLICES}")


class _ModelError(SamriMLError):
    """The model could not be loaded: no scan can be masked (``--out-dir`` stops there)."""


class _ModelOnce:
    """The network, loaded at the first call (after the first scan's checks: a refused image
    costs no model load, 8 s with TensorFlow's start) and kept for the next scans."""

    def __init__(self, args):
        self.args, self.model = args, None

    def __call__(self):
        if self.model is None:
            from samri_ml.masking.predict import load_model, model_record_notes

            try:
                self.model = load_model(self.args.model)
            except SamriMLError as err:
                raise _ModelError(str(err)) from err
            model_record_notes(self.args.model, self.args.views)
        return self.model


class _WrittenMeanwhile(SamriMLError):
    """A batch's mask that another run wrote into ``--out-dir`` while this one masked it."""


def _mask_one(args, in_file, out_file, masked, png, model) -> tuple[float, float]:
    """Mask ``in_file`` into ``out_file`` (and ``masked``, ``png`` where given) with
    ``model()``; returns the times (perf_counter) the model was ready and the mask predicted."""
    from samri_ml.io import load_nifti
    from samri_ml.masking.predict import (
        apply_mask,
        check_maskable,
        predict_mask,
        temporal_mean_image,
    )

    # --masked keeps IN's shape; a scaled run is read as float32, never as a float64 array
    img = load_nifti(in_file, allow_4d=True, squeeze=False, float32=True)
    _note_binary_input(img, in_file)
    # what the network masks: a 4D run's temporal mean (its mask is the run's, bit for bit),
    # computed once; the run itself is held only where --masked or --png need its volumes
    mean = temporal_mean_image(img)
    if masked is None and png is None:
        img = mean
    check_maskable(mean)  # before the model's load: a refused image cost 8 s of it
    # before the network runs: no prediction lost
    _check_outputs(out_file, masked, png, batch=args.out_dir is not None)
    network = model()
    t1 = time.perf_counter()
    mask = predict_mask(mean, network, threshold=args.threshold, views=args.views,
                        flip=args.flip, max_slices=args.max_slices)
    t2 = time.perf_counter()
    outputs = [(mask, out_file)]
    if masked is not None:
        outputs.append((apply_mask(img, mask), masked))
    try:
        # a batch without --overwrite: a mask another run wrote into DIR since this one looked
        # (two cluster jobs given the same scan name) is kept; it was replaced, both saying
        # they wrote it
        _save_all(outputs, replace=args.out_dir is None or out_file in args.found_there)
    except FileExistsError as err:
        raise _WrittenMeanwhile(f"{out_file} was written by another run while this one "
                                "masked it; kept, this run's mask not written; hint: "
                                "--overwrite to replace it, or mask into another "
                                "--out-dir") from err
    print(summary(mask, out_file, masked), file=sys.stderr)
    if png is not None:
        _draw(img, mask, png, in_file)
    return t1, t2


def batch_name(in_file) -> str:
    """The name of IN's mask in ``--out-dir``: IN's name without its image extension
    (.nii, .nii.gz; an Analyze or NIfTI pair's .hdr/.img, gzipped or not), ``_mask``."""
    from samri_ml.io import image_stem

    return image_stem(Path(in_file).name) + "_mask"


def _scan_key(path) -> Path:
    """What names IN's scan: its resolved path, where an Analyze or NIfTI pair's .hdr and .img
    are one scan (a glob of a folder of pairs, ``scans/*``, gives both: they were refused as
    two scans of one name, with a hint to rename one)."""
    from samri_ml.io import PAIR_EXTENSIONS, image_extension

    real = Path(path).resolve()
    ext = image_extension(real.name, PAIR_EXTENSIONS)
    if not ext:
        return real
    return real.with_name(real.name[: -len(ext)] + ext.replace("hdr", "img"))


def _run_batch(parser, args) -> int:
    """``IN [IN ...] --out-dir DIR``: each scan masked in turn with one model; a scan that
    cannot be masked is said in one line and the others are masked; exit 1 where any failed.
    Outputs that two scans would share, or that would replace a scan, are refused first."""
    if args.masked is not None or args.png is not None:
        parser.error("--masked and --png name one file: with --out-dir, give --figures for "
                     "a picture of each mask")
    _check_options(parser, args)
    refuse_missing_inputs(parser, args.files)
    if args.overwrite and args.skip_existing:
        parser.error("--overwrite and --skip-existing: give one (replace the masks there, or "
                     "keep them)")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        parser.error(f"--out-dir {args.out_dir}: a file, not a folder")
    names: dict[str, Path] = {}
    for path in args.files:
        name = batch_name(path)
        if name in names and _scan_key(names[name]) != _scan_key(path):
            parser.error(f"{names[name]} and {path} would both be masked into {name}.nii.gz; "
                         "hint: mask them into two folders, or rename one")
        names[name] = path
    targets = {name: args.out_dir / f"{name}.nii.gz" for name in names}
    inputs = {p.resolve() for p in args.files}
    if args.skip_existing:
        # the same command again (`scans/*.nii.gz --out-dir scans`), as the interrupted run's
        # note says: its glob takes the masks that run wrote, outputs of it, not scans
        outputs = {target.resolve() for target in targets.values()}
        names = {name: path for name, path in names.items() if path.resolve() not in outputs}
        targets = {name: targets[name] for name in names}
        inputs -= outputs
    for target in targets.values():
        if target.resolve() in inputs:
            # `samri_ml-mask scans/*.nii.gz --out-dir scans` run again: the glob takes the
            # first run's masks (said without a hint of why)
            parser.error(f"--out-dir: {target} is one of the inputs; it would be overwritten; "
                         "hint: an earlier run's mask? leave the *_mask.nii.gz out of IN, or give "
                         "--skip-existing to keep them")
    there = [target for target in targets.values() if target.exists()]
    # what this run may replace: those there now (--overwrite; --skip-existing makes again a
    # mask without its --figures picture), not one another run writes meanwhile
    args.found_there = set(there)
    if there and not (args.overwrite or args.skip_existing):
        # names the command made up: a lab's own <scan>_mask.nii.gz beside its scans (manual,
        # --out-dir the data folder) was replaced without a word
        parser.error(f"--out-dir: {len(there)} of the masks exist already ({there[0]}"
                     f"{', ...' if len(there) > 1 else ''}); hint: --skip-existing to keep "
                     "them and mask the others (an interrupted batch), --overwrite to replace "
                     "them, or give another --out-dir")
    total = len(names)
    if args.skip_existing and there:
        # an interrupted batch could only be run again whole (--overwrite); a file there that
        # is no mask is not kept: the scan's turn refuses it, as without --skip-existing; nor
        # is a mask without its --figures picture (stopped while drawing it): masked again
        kept = [name for name, target in targets.items() if _is_mask(target) and not (
            args.figures and not (args.out_dir / f"{name}.png").is_file())]
        if kept:
            print(f"{PROG}: note: {len(kept)} of the {total} masks are in {args.out_dir} "
                  f"already, kept: {', '.join(f'{name}.nii.gz' for name in kept)}",
                  file=sys.stderr)
        names = {name: path for name, path in names.items() if name not in kept}
        if not names:
            print(f"{PROG}: {total} masks in {args.out_dir}, none left to mask",
                  file=sys.stderr)
            return 0
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SamriMLError(f"--out-dir {args.out_dir}: cannot create it "
                           f"({err.strerror or err})") from err
    set_tf_threads(args.threads)
    model = _ModelOnce(args)
    failed, i, path = [], 1, args.files[0]
    try:
        for i, (name, path) in enumerate(names.items(), 1):
            print(f"{PROG}: [{i}/{len(names)}] {path}", file=sys.stderr)
            png = args.out_dir / f"{name}.png" if args.figures else None
            try:
                _mask_one(args, path, targets[name], None, png, model)
            except _ModelError:  # not the scan's fault: every scan would fail, each loading it
                raise
            except _WrittenMeanwhile as err:
                if not args.skip_existing:  # --skip-existing keeps a mask found there
                    print(f"{PROG}: error: {err}", file=sys.stderr)
                    failed.append(str(path))
                    continue
                print(f"{PROG}: note: {targets[name]} was written by another run meanwhile; "
                      "kept", file=sys.stderr)
            except SamriMLError as err:  # one line, and on to the next scan
                print(f"{PROG}: error: {err}", file=sys.stderr)
                failed.append(str(path))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (a time limit): 'terminated' said no more
        done = (f"of the {i - 1} scans before it, {len(failed)} could not be masked "
                f"({', '.join(failed)}), the others' masks are in {args.out_dir}" if failed
                else f"the {i - 1} scans before it are masked into {args.out_dir}")
        after = f" and the {len(names) - i} after it" if len(names) > i else ""
        # with --overwrite, the two options together are refused
        option = "--skip-existing" + (" instead of --overwrite" if args.overwrite else "")
        print(f"{PROG}: note: interrupted at [{i}/{len(names)}] {path}: {done}; hint: the "
              f"same command with {option} masks {path}{after}", file=sys.stderr)
        raise
    if failed:
        raise SamriMLError(f"{len(failed)} of {len(names)} scans could not be masked: "
                           + ", ".join(failed))
    print(f"{PROG}: {total} masks in {args.out_dir}"
          f"{f' ({total - len(names)} kept)' if total > len(names) else ''}", file=sys.stderr)
    return 0


def _is_nifti_name(path) -> bool:
    """Whether ``path`` ends in .nii or .nii.gz, in any case (as IN is read)."""
    return str(path).lower().endswith((".nii", ".nii.gz"))


def summary(mask, out_file, masked=None) -> str:
    """The line said when a mask is written: its volume, its share of the image, where the
    files went; and a note where no mouse brain has that volume
    (:func:`samri_ml.masks.brain_volume_note`: a rat, the whole head masked, a few slices, the
    header's voxel size off by a factor of ten, a common quirk of rodent scans). Sizes are in
    mm whatever the header's spatial unit (micron, meter; :func:`samri_ml.masks.mask_volume`)."""
    import numpy as np

    from samri_ml.masks import mask_volume

    n, mm3, note = mask_volume(mask)
    line = (f"{PROG}: {out_file}: brain mask of {n} voxels, {mm3:.0f} mm^3, "
            f"{100 * n / np.prod(mask.shape):.1f} % of the image")
    line += f"; masked image {masked}" if masked is not None else ""
    return line + (f"\n{PROG}: note: {note}" if note else "")


def _note_binary_input(img, in_file) -> None:
    """IN holding only 0 and one other value (0/1, 0/255) is a mask, likely given for the scan
    (``samri_ml-mask mask.nii.gz scan.nii.gz``, the arguments' order slipped): it gets a
    believable mask, and OUT, the scan, is overwritten by it (:func:`_check_outputs` refuses
    that much). A 0/255 mask was called a label map (an atlas' regions)."""
    import warnings

    import numpy as np

    data = np.asanyarray(img.dataobj)
    top = data.max()
    if top != 0 and np.all((data == 0) | (data == top)) and not np.all(data == top):
        warnings.warn(f"{in_file} holds only the values 0 and {top:g}: a mask, not a scan? "
                      "hint: give the scan first (samri_ml-mask IN OUT)", SamriMLNote,
                      stacklevel=2)


def _holds_a_mask(path) -> bool | None:
    """Whether the file ``path`` is an image holding only 0 and 1 (a mask) or other values (a
    scan); None where it is no file or no image nibabel reads."""
    import nibabel as nb

    from samri_ml.io import quiet_stderr
    from samri_ml.masks import is_binary

    if not path.is_file():
        return None
    try:
        with quiet_stderr():
            return is_binary(nb.load(str(path)).dataobj)
    except Exception:  # noqa: BLE001 - not an image nibabel reads
        return None


def _is_mask(path) -> bool:
    """Whether ``path`` is a readable mask (``--skip-existing`` keeps it)."""
    return _holds_a_mask(path) is True


def _existing_not_a_mask(path) -> bool:
    """Whether ``path`` is a readable image holding values other than 0 and 1 (a scan): OUT
    is then no earlier mask, and writing the mask would lose it (a file that is no image
    holds nothing of value to keep)."""
    return _holds_a_mask(path) is False


def _check_outputs(out_file, masked=None, png=None, batch: bool = False) -> None:
    """Refuse OUT (and --masked, --png) where no file can be written, and OUT where it is an
    image that is no mask (a scan: ``samri_ml-mask mask.nii.gz scan.nii.gz`` replaced the scan
    by a mask of the mask, exit 0), before anything is written. ``batch``: OUT is the name
    ``--out-dir`` gave (no order of arguments to check)."""
    if _existing_not_a_mask(out_file):
        fix = ("remove it first, or give another --out-dir" if batch else
               "check the order (samri_ml-mask IN OUT), or remove it first")
        raise SamriMLError(f"{out_file} exists and is no mask (values other than 0 and 1: "
                           f"a scan?); it would be overwritten; hint: {fix}")
    for path in [out_file] + [p for p in (masked, png) if p is not None]:
        if path.is_dir():
            ending = ".png" if path is png else ".nii.gz"
            raise SamriMLError(f"{path}: is a folder; hint: give a file name ending in {ending}")
        if path.parent.exists() and not path.parent.is_dir():
            raise SamriMLError(f"{path.parent}: is a file, not a folder; hint: choose another "
                               "output folder")
        if not path.parent.is_dir():
            raise SamriMLError(f"{path.parent}: output folder does not exist; hint: create it "
                               "first")  # fmt: skip
        try:
            probe_writable(path.parent)
        except OSError as err:
            raise SamriMLError(f"{path.parent}: output folder is not writable ({err.strerror}); "
                               "hint: choose a writable folder") from err


def _draw(img, mask, png, in_file) -> bool:
    """:func:`samri_ml.report.mask_figure` into ``png``, written beside it and renamed. The
    masks are written by then: a figure that fails, whatever the cause (a full disk, a header
    matplotlib cannot draw), is said in a note and loses nothing; the command still succeeds.
    Returns whether the figure was written."""
    import warnings

    from samri_ml.bids import atomic_target
    from samri_ml.report import mask_figure

    try:
        with atomic_target(png, ".png") as tmp:
            mask_figure(img, mask, tmp, title=f"{Path(in_file).name}: predicted brain mask")
    except Exception as err:  # noqa: BLE001 - a picture is never worth the mask's exit code
        cause = err.strerror if isinstance(err, OSError) and err.strerror else (
            f"{type(err).__name__}: {' '.join(str(err).split())}")
        warnings.warn(f"the figure {png} could not be drawn ({cause}); the mask is written",
                      SamriMLNote, stacklevel=2)
        return False
    print(f"{PROG}: figure {png}", file=sys.stderr)
    return True


def _save_all(outputs, replace: bool = True) -> None:
    """Write every ``(image, path)`` to a temporary file beside its path, then rename them
    all (:func:`samri_ml.bids.atomic_target`, nested; Ctrl-C deferred during the renames): a
    failure leaves none of the outputs (not the mask without the masked image). With
    ``replace=False`` a path that another process wrote meanwhile is kept
    (``FileExistsError``)."""
    from contextlib import ExitStack

    import nibabel as nb

    from samri_ml.bids import atomic_target, deferred_sigint

    path = outputs[0][1]
    try:
        with ExitStack() as stack:
            for image, path in outputs:
                suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
                nb.save(image, str(stack.enter_context(
                    atomic_target(path, suffix, replace=replace))))
            renames = stack.pop_all()
        with deferred_sigint():  # Ctrl-C between two renames left --masked without OUT
            renames.close()
    except FileExistsError:  # replace=False: the caller says what to do
        raise
    except OSError as err:
        raise SamriMLError(f"cannot write {path} ({err.strerror}); nothing written") from err

#: what to try where the prediction runs out of memory (:func:`run_cli`'s hint). No option
#: of this command lowers the peak: 408 x 408 x 392 voxels (261 MB in float32) took 2.9 GB
#: (RSS) with --threads 2, --threads 1 and --max-slices 128 alike (2026-12-03); 1.9 GB since
#: 2026-12-03's seventeenth session (one view's probabilities summed at a time; the same
#: masks, bit for bit), of which about 0.9 GB is TensorFlow and the model. Measured again
#: with /usr/bin/time -v (2026-12-05): 2.41 GB for those voxels, 5.24 GB for 612 x 612 x 504:
#: about six times IN's size in float32 besides the 0.9 GB, not the four the hint said
MEMORY_HINT = ("masking takes about 0.9 GB plus six times IN's size in float32 (2.4 GB for "
               "408x408x392 voxels); free memory, or crop IN to the head first")


def main(argv=None) -> int:
    return run_cli(PROG, _main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
