"""Accuracy of a registration where the truth is known: warp a subject's mask, compare."""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np

from samri_ml.errors import SamriMLError
from samri_ml.metrics import dice


def warp_mask(mask_file, reference, transforms, out_file=None, interpolation="NearestNeighbor"):
    """Warp a (native-space) mask or label map onto ``reference`` with antsApplyTransforms.

    ``transforms``: a path or a list of them (``"identity"`` too), applied as
    antsApplyTransforms applies them (the last first). A missing file raises
    :class:`SamriMLError` naming it."""
    from nipype.interfaces.ants import ApplyTransforms

    from samri_ml.ants import ensure_ants_on_path

    ensure_ants_on_path()
    if isinstance(transforms, str | Path):
        transforms = [str(transforms)]
    named = [("mask_file", mask_file), ("reference", reference)]
    for what, path in named + [(f"transforms[{i}]", t) for i, t in enumerate(transforms)]:
        if str(path) != "identity" and not Path(path).is_file():  # it was Nipype's TraitError
            raise SamriMLError(f"{what} {str(path)!r}: no such file; hint: check the path")
    with tempfile.TemporaryDirectory() as tmp:
        # absolute paths: ANTs runs in the output's folder, where relative ones do not resolve
        out = Path(out_file or Path(tmp) / "warped.nii.gz").resolve()
        at = ApplyTransforms(input_image=str(Path(mask_file).resolve()),
                             reference_image=str(Path(reference).resolve()),
                             transforms=[str(t) if str(t) == "identity" else
                                         str(Path(t).resolve()) for t in transforms],
                             interpolation=interpolation, output_image=str(out), float=True)
        at.terminal_output = "none"
        at.run(cwd=str(out.parent))
        return np.asanyarray(nb.load(str(out)).dataobj).copy()


def warped_mask_dice(mask_file, template_mask, transforms) -> float:
    """Dice of a subject's brain mask, warped to the template, with the template's mask, each
    taken above 0.5 (:func:`samri_ml.masks.mask_inside`, as the registration and the QC take a
    soft mask; the template's was taken above 0, its faint halo counted)."""
    from samri_ml.masks import mask_inside

    warped = mask_inside(warp_mask(mask_file, template_mask, transforms))
    return dice(warped, mask_inside(np.asanyarray(nb.load(str(template_mask)).dataobj)))
