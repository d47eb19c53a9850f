"""Binary-mask operations shared by the masker, the QC and the reports (pure numpy/scipy)."""

from __future__ import annotations

import numpy as np

#: a mask's voxels above this value are inside it: a binary mask's ones (or 255s, or labels),
#: and of a soft mask (probabilities, a mask resampled with linear interpolation) the voxels
#: more likely in than out
MASK_LEVEL = 0.5


def mask_inside(data) -> np.ndarray:
    """The voxels inside a mask given as data, :math:`m > 0.5` (:data:`MASK_LEVEL`): the one
    rule of the QC's masks. Above 0, a soft mask's faint halo counted: the SCF of a
    brain mask blurred into probabilities measured the FWHM over 4x the brain, while the
    brain coverage of the same mask took its voxels above 0.5."""
    return np.asarray(data) > MASK_LEVEL


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a binary array (the array itself, as bool, when
    it has at most one)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask)
    if n < 2:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray, within_axis: int | None = None) -> np.ndarray:
    """Fill the holes of a binary array: the background not face-connected to the array's
    border becomes foreground (``scipy.ndimage.binary_fill_holes``, same result).

    With ``within_axis``, each slice across that axis is filled on its own (as
    ``binary_fill_holes`` of every 2D slice), in one labelling instead of a call per slice. A
    hole in 3D is a hole in every slice through it, so this fills the 3D holes too. Only the
    foreground's bounding box (and a one-voxel ring) is labelled: what lies outside it is
    connected to the border anyway.
    """
    from scipy import ndimage

    mask = np.array(mask, dtype=bool)  # a copy: the caller's array is never returned
    if within_axis is not None:
        within_axis %= mask.ndim
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box:
        return mask
    box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box[0])
    window = mask[box]
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    if within_axis is not None:  # no connection across slices
        index = [slice(None)] * mask.ndim
        for side in (0, 2):
            index[within_axis] = side
            structure[tuple(index)] = False
    labels, n = ndimage.label(~window, structure=structure)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(mask.ndim):
        if axis != within_axis:
            outside[np.take(labels, 0, axis=axis)] = True
            outside[np.take(labels, -1, axis=axis)] = True
    outside[0] = True  # the foreground keeps label 0 and stays as it is
    mask[box] = window | ~outside[labels]
    return mask


def grown_extent(inside: np.ndarray, axis: int, margin: float,
                 min_pad: int = 0) -> tuple[int, int]:
    """``(lo, hi)`` of the voxels of ``inside`` (a boolean array with at least one True)
    along ``axis``, grown by ``margin`` of that extent each side (at least ``min_pad``) and
    clipped to the grid: the box :func:`samri_ml.masking.predict.padding_box` and
    :func:`samri_ml.report.head_box` cut."""
    hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
    lo, hi = int(hit[0]), int(hit[-1]) + 1
    pad = max(min_pad, int(margin * (hi - lo)))
    return max(0, lo - pad), min(inside.shape[axis], hi + pad)


def is_binary(data) -> bool:
    """Whether a mask's values are 0 and 1 alone (what every program takes alike); False for
    data of no voxels."""
    data = np.asarray(data)
    return bool(data.size) and bool(np.all((data == 0) | (data == 1)))


def binary_mask_file(in_file, out_dir) -> str:
    """``in_file`` itself where its values are 0 and 1 alone, else its voxels inside
    (:func:`mask_inside`, above 0.5) as a 0/1 uint8 mask on its grid, written into
    ``out_dir``; returns the path.

    antsRegistration reads a mask as 8-bit integers, so a soft mask's values below 1 were
    outside (a probabilistic template mask of 0.99 at most was an empty fixed-image mask: the
    registration did nothing, exit 0) and 256 was 0, while the QC took the voxels above 0.5.
    """
    from pathlib import Path

    import nibabel as nb

    img = nb.load(str(in_file))
    data = np.asanyarray(img.dataobj)
    if is_binary(data):
        return str(in_file)
    from samri_ml.io import image_stem

    out = Path(out_dir) / f"{image_stem(Path(in_file).name, ('.nii.gz', '.nii'))}_binary.nii.gz"
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    nb.save(nb.Nifti1Image(mask_inside(data).astype(np.uint8), img.affine, header), str(out))
    return str(out)


def check_template_mask(template, template_mask, template_img, mask_img) -> None:
    """Refuse (:class:`~samri_ml.errors.SamriMLError`, naming both files) a template's brain
    mask that is not on the template's grid (same shape, affines within 1e-3) or holds no
    voxel inside (:func:`mask_inside`): the rule of ``samri_ml-register --template-mask`` and
    of ``init_generic_wf(template_mask=...)``, which took either, to register to a template
    without its brain or measure brain coverage on another grid. A mask of other values than
    0 and 1 (probabilities, 0/255) gets a :class:`~samri_ml.errors.SamriMLNote`: its voxels
    above 0.5 are the brain, for the registration (:func:`binary_mask_file`) as for the QC."""
    import warnings

    from samri_ml.errors import SamriMLError, SamriMLNote

    if tuple(template_img.shape[:3]) != tuple(mask_img.shape[:3]) or not np.allclose(
            template_img.affine, mask_img.affine, atol=1e-3):
        raise SamriMLError(
            f"template {template} {tuple(template_img.shape[:3])} and mask {template_mask} "
            f"{tuple(mask_img.shape[:3])} are not on the same grid; hint: resample the mask "
            "onto the template (antsApplyTransforms -n NearestNeighbor -r TEMPLATE)")
    data = np.asanyarray(mask_img.dataobj)
    if not np.any(data):
        raise SamriMLError(f"template mask {template_mask} is empty")
    if is_binary(data):
        return
    low, high = float(np.min(data[data != 0])), float(np.max(data))
    if not np.any(mask_inside(data)):
        raise SamriMLError(f"template mask {template_mask} has no voxel above {MASK_LEVEL} (its "
                           f"values: {low:g} to {high:g}); hint: give a brain mask, 1 inside")
    warnings.warn(f"template mask {template_mask} is not binary (values {low:g} to {high:g}): "
                  f"its voxels above {MASK_LEVEL} are taken as the brain, by the registration "
                  "and the QC alike", SamriMLNote, stacklevel=3)


#: an adult mouse brain's volume (mm^3), low and high: the templates' brain masks here are
#: 508-537 mm^3, the masks of the real scans (manual, algorithmic, the shipped masker's) 299-775
MOUSE_BRAIN_MM3 = (400.0, 550.0)
#: how far from :data:`MOUSE_BRAIN_MM3` a mask's volume may be, either side, before it is
#: called into question: wide, so that no mouse scan here is (a 12-slice EPI's mask 299 mm^3,
#: the largest manual mask 775), while a rat's brain (about 2000) and a few slices of a brain
#: are; a mouse's whole head (1100-1600 mm^3 in sammba's field of view) only where it is large
PLAUSIBLE_FACTOR = 3.0
#: volumes (mm^3) outside which the header's voxel size, not the mask, is taken to be off: a
#: voxel edge ten times too large or small gives a volume 1000 times off
TOO_LARGE_MM3, TOO_SMALL_MM3 = 20_000.0, 5.0
#: a mouse brain's volume (mm^3), the scale the voxel size's factor is told against
TYPICAL_BRAIN_MM3 = 500.0


def plausible_brain_mm3() -> tuple[float, float]:
    """The brain volumes (mm^3) a mouse brain mask may have without a note: a factor of
    :data:`PLAUSIBLE_FACTOR` either side of :data:`MOUSE_BRAIN_MM3` (133-1650 mm^3)."""
    low, high = MOUSE_BRAIN_MM3
    return low / PLAUSIBLE_FACTOR, high * PLAUSIBLE_FACTOR


def brain_volume_note(mm3: float, voxel_mm) -> str | None:
    """A note on a brain mask of ``mm3`` mm^3 that no mouse brain has, or None where it is
    plausible (:func:`plausible_brain_mm3`, bounds included).

    The note names the volume, the expected range and a hint: a volume a thousand times off
    or more (outside :data:`TOO_SMALL_MM3`-:data:`TOO_LARGE_MM3`) is the header's voxel size
    ``voxel_mm`` (mm, the affine's column lengths) off by a power of ten,
    :math:`10^{\\max(1, |\\mathrm{round}(\\log_{10}(V / 500) / 3)|)}` (coordinates in
    micrometres in a header saying mm: 1,000); a volume above the range (up to 40 times a
    mouse brain's) is a rat, the whole head masked, or a voxel size too large; one below it
    (down to a hundredth) a few slices of the brain in the image, a mask of part of it, or a
    voxel size too small."""
    low, high = plausible_brain_mm3()
    if low <= mm3 <= high:
        return None
    sizes = " x ".join(f"{z:g}" for z in voxel_mm)
    said = f"{mm3:.0f}" if mm3 >= 10 else f"{mm3:.2g}"
    note = (f"a brain mask of {said} mm^3, outside a mouse brain's {low:.0f}-{high:.0f} mm^3; "
            "hint: ")
    if mm3 > TOO_LARGE_MM3 or mm3 < TOO_SMALL_MM3:
        power = max(1, abs(round(np.log10(max(mm3, 1e-12) / TYPICAL_BRAIN_MM3) / 3)))
        factor = "ten" if power == 1 else f"{10 ** power:,}"
        return note + (f"the header's voxel size ({sizes} mm) may be off by a factor of "
                       f"{factor}; the mask does not depend on it, registration to a template "
                       "does")
    if mm3 > high:
        return note + ("not a mouse (a rat's brain is about 2000 mm^3)? the whole head masked "
                       f"(look at it on the image)? or the header's voxel size ({sizes} mm) too "
                       "large?")
    return note + ("only a few slices of the brain in the image, or part of it masked (look at "
                   f"it on the image)? or the header's voxel size ({sizes} mm) too small?")


def voxel_size_mm(img):
    """The voxel edges of ``img`` in mm: the affine's column lengths in the header's spatial
    unit (:func:`samri_ml.qc.volume.mm_per_unit`: micron, meter)."""
    from nibabel.affines import voxel_sizes

    from samri_ml.qc.volume import affine_mm

    return voxel_sizes(affine_mm(img))


def mask_volume(mask_img) -> tuple[int, float, str | None]:
    """A brain mask's voxels (those above 0), its volume in mm^3 whatever the header's spatial
    unit, and :func:`brain_volume_note` on it (None where a mouse brain has that volume)."""
    from samri_ml.qc.volume import affine_mm, voxel_volume

    n = int(np.count_nonzero(np.asanyarray(mask_img.dataobj) > 0))
    mm3 = n * voxel_volume(affine_mm(mask_img))
    return n, mm3, brain_volume_note(mm3, voxel_size_mm(mask_img))
