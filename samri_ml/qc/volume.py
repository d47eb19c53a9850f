"""Volume Conservation Factor (VCF): how much a processing step changes the imaged volume.

A registration has no ground truth, but it should neither shrink nor inflate the brain. SAMRI's
authors therefore compare the volume above a fixed intensity threshold before and after processing.
The threshold is taken once, from the unprocessed image, and applied to both.

All functions are pure (numpy arrays and affines in, numbers out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the hint of a processed image that is all zeros (the QC interfaces and ``samri_ml-qc scan``)
EMPTY_PROCESSED_HINT = ("the processing left nothing in the image: a registration that moved "
                        "the scan off the template's grid? check its transform")

#: Percentile of the unprocessed image used as the foreground threshold (SAMRI's choice).
DEFAULT_PERCENTILE = 66.0

#: A VCF outside this range means the processed scan lost or gained most of its volume: the
#: registration diverged (a rat head to DSURQE: 0.046; the 10x emory scan: 0.002). The
#: command line names such scans in a note, the report in a red banner.
PLAUSIBLE_VCF = (0.25, 4.0)


def grid_volume(img) -> float:
    """Volume (mm^3) of an image's whole grid, :math:`n_x n_y n_z \\cdot v`: the most that any
    image resampled onto it can hold above a threshold."""
    return float(np.prod(img.shape[:3])) * voxel_volume(affine_mm(img))


def vcf_ceiling(volume_raw, grid_mm3) -> float | None:
    """The highest VCF a scan can reach on a grid of ``grid_mm3`` (:func:`grid_volume` of the
    template): :math:`V_{grid} / V_{raw}`; None where either is unknown or not positive.

    A scan whose field of view is much wider than the template's (a head with neck and
    muscles, 29 mm across, against a 13 mm brain template) has more volume above threshold
    than the template's grid holds: its VCF stays below the plausible range however well it
    is registered (the nirodents head: ceiling 0.19, VCF 0.15, well registered).
    """
    if not isinstance(volume_raw, (int, float)) or not isinstance(grid_mm3, (int, float)) \
            or volume_raw <= 0 or grid_mm3 <= 0:
        return None
    return float(grid_mm3 / volume_raw)


def vcf_verdict(record: dict, grid_mm3: float | None = None) -> str | None:
    """What a QC record's VCF says of its registration: None (within :data:`PLAUSIBLE_VCF`,
    or not measured), ``"implausible"`` (outside it: the registration probably failed) or
    ``"uninformative"`` (below it, but the template's grid could not hold more: the ceiling
    of :func:`vcf_ceiling` is itself below the range, and the scan fills at least the range's
    lower bound of what the grid can hold, so the VCF cannot tell; a scan that fills less,
    e.g. one moved off the grid, is still implausible)."""
    vcf = record.get("vcf")
    lo, hi = PLAUSIBLE_VCF
    if not isinstance(vcf, (int, float)) or lo <= vcf <= hi:
        return None
    ceiling = vcf_ceiling(record.get("volume_raw"), grid_mm3)
    if vcf < lo and ceiling is not None and ceiling < lo and vcf >= lo * ceiling:
        return "uninformative"
    return "implausible"


def uninformative_vcf_text(record: dict, grid_mm3: float) -> str:
    """Why an ``"uninformative"`` VCF (:func:`vcf_verdict`) says nothing, in one phrase."""
    ceiling = vcf_ceiling(record.get("volume_raw"), grid_mm3)
    return (f"VCF {record['vcf']:.3g} is below {PLAUSIBLE_VCF[0]:g} but could not be above "
            f"{ceiling:.2g}: the template's grid ({grid_mm3:.0f} mm^3) is smaller than the "
            f"scan's volume above threshold ({record['volume_raw']:.0f} mm^3; a field of view "
            "wider than the template's), so the VCF cannot tell whether the registration "
            "failed")


def voxel_volume(affine: np.ndarray) -> float:
    """Volume of one voxel in mm^3.

    .. math:: v = |\\det A_{3 \\times 3}|

    where :math:`A_{3 \\times 3}` is the upper-left 3x3 block of the voxel-to-world affine. Its
    columns are the voxel edge vectors, so the determinant is the volume of the (possibly oblique,
    sheared) voxel parallelepiped, unlike the product of the header zooms.

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-world (mm) affine.

    Returns
    -------
    float
        Voxel volume in mm^3.
    """
    if hasattr(affine, "affine"):  # an image: its affine (it was numpy's 'setting an array
        affine = affine.affine      # element with a sequence')
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        from samri_ml.qc.smoothness import _refuse

        _refuse(f"affine must be 4x4, got {affine.shape}")
    return float(abs(np.linalg.det(affine[:3, :3])))


#: millimetres per spatial unit of a NIfTI header (``xyzt_units``); 'unknown' (no unit) counts
#: as mm, the convention of the rodent scans here
MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def mm_per_unit(unit: str | None) -> float:
    """Millimetres per spatial unit ``unit`` of a NIfTI header (``header.get_xyzt_units()[0]``:
    ``meter``, ``mm``, ``micron``; unknown or None: 1). A voxel volume from the affine in the
    header's unit is :math:`v \\cdot s^3` mm^3 with :math:`s` = ``mm_per_unit(unit)``."""
    return MM_PER_UNIT.get(unit or "unknown", 1.0)


def spatial_unit(img) -> str:
    """The spatial unit of ``img``'s header (``meter``, ``mm``, ``micron``, ``unknown``);
    ``unknown`` (taken as mm) for a header without one, such as Analyze 7.5's (a QC of an
    Analyze image ended in "AttributeError: ... no attribute 'get_xyzt_units'")."""
    units = getattr(img.header, "get_xyzt_units", None)
    return units()[0] if units is not None else "unknown"


def affine_mm(img) -> np.ndarray:
    """The voxel-to-world affine of a NIfTI image in mm, whatever its header's spatial unit.

    .. math:: A_{mm} = \\mathrm{diag}(s, s, s, 1)\\, A

    with :math:`s` = :func:`mm_per_unit` of ``img.header.get_xyzt_units()[0]``. The volumes and
    FWHMs of the QC record are in mm^3 and mm: a scan whose header counts in microns used to
    give them in um^3 and um (its VCF against a template in mm: 9e-10).
    """
    affine = np.array(img.affine, dtype=float)
    affine[:3] *= mm_per_unit(spatial_unit(img))
    return affine


def image_mm(img):
    """``img`` with its affine in mm (:func:`affine_mm`) and its header's spatial unit mm;
    ``img`` itself where that is its unit already. Two images compared on one grid (a
    template's mask and a scan registered to it) must count in the same unit: a mask in
    microns lay 1000x away from a scan in mm (its brain_coverage: 0.0001)."""
    if mm_per_unit(spatial_unit(img)) == 1.0:
        return img
    out = img.__class__(img.dataobj, affine_mm(img), img.header)
    out.header.set_xyzt_units("mm", img.header.get_xyzt_units()[1])
    return out


def temporal_mean(data: np.ndarray) -> np.ndarray:
    """Average a 4D series over time (last axis); return 3D data unchanged (as float).

    .. math:: \\bar{x}(v) = \\frac{1}{T} \\sum_{t=1}^{T} x(v, t)
    """
    data = np.asarray(data)
    if data.ndim == 4:
        return data.mean(axis=3, dtype=np.float64)
    if data.ndim != 3:
        from samri_ml.qc.smoothness import _refuse

        _refuse(f"expected 3D or 4D data, got {data.ndim}D")
    return data.astype(np.float64, copy=False)


def volume_threshold(raw_data: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Foreground threshold: a percentile of the (temporal mean of the) unprocessed image.

    .. math:: \\theta = P_{66}(\\bar{x}_{raw})

    computed over all voxels (background included), as in SAMRI's analysis code. Where that
    percentile is the image's minimum (a skull-stripped or masked scan, more than 66 % of it
    one background value ``b``), half way from ``b`` to the median of the voxels above it,
    :math:`\\theta = b + (M - b) / 2`: the tissue's edge at half its partial volume, which
    interpolation and blur leave where it was.

    Where it is the image's maximum ``t`` (a saturated scan, a label or mask image: more
    than 34 % of it one top value), likewise half way from the median :math:`m` of the voxels
    below ``t`` to ``t``, :math:`\\theta = t - (t - m) / 2` (nothing is above ``t``: the VCF
    was null, and ``samri_ml-qc scan`` called the image flat).

    (Over all voxels the threshold was ``b``, and every processed voxel above it counted, the
    faint halo of interpolation too: a well registered dama brain got VCF 1.39 to 1.68. The
    66th percentile of the voxels above ``b`` took the brightest third of the tissue, which
    any interpolation shrinks: the dama brains resampled from 0.15 to 0.2 mm got 0.86-0.87,
    smoothed by 0.6 mm 0.43-0.45, zoomed by 1.1 1.14-1.15 for 1.33; now 1.005-1.009, 1.00-1.02
    and 1.34.)
    """
    mean = temporal_mean(raw_data)
    theta = float(np.percentile(mean, percentile))
    low, high = float(mean.min()), float(mean.max())
    if theta <= low:
        above = mean[mean > low]
        if above.size:
            theta = low + 0.5 * (float(np.median(above)) - low)
    elif theta >= high:
        below = mean[mean < high]
        if below.size:
            theta = high - 0.5 * (high - float(np.median(below)))
    return theta


def image_volume(data: np.ndarray, affine: np.ndarray, threshold: float) -> float:
    """Volume (mm^3) of the voxels brighter than a threshold.

    .. math:: V = v \\cdot \\#\\{ u : \\bar{x}(u) > \\theta \\}

    with :math:`v` the voxel volume (:func:`voxel_volume`) and :math:`\\bar{x}` the temporal mean
    for 4D data.
    """
    count = int(np.count_nonzero(temporal_mean(data) > threshold))
    return voxel_volume(affine) * count


@dataclass(frozen=True)
class VolumeConservation:
    """Result of :func:`volume_conservation` (volumes in mm^3)."""

    vcf: float
    volume_processed: float
    volume_raw: float
    threshold: float

    def as_dict(self) -> dict:
        return asdict(self)


def volume_conservation(
    processed: np.ndarray,
    processed_affine: np.ndarray,
    raw: np.ndarray,
    raw_affine: np.ndarray,
    *,
    percentile: float = DEFAULT_PERCENTILE,
) -> VolumeConservation:
    """Volume Conservation Factor of a processed image relative to its unprocessed source.

    .. math::

        \\theta = P_{66}(\\bar{x}_{raw}), \\qquad
        V_i = v_i \\cdot \\#\\{u : \\bar{x}_i(u) > \\theta\\}, \\qquad
        \\mathrm{VCF} = V_{processed} / V_{raw}

    :math:`\\bar{x}` is the temporal mean (4D) or the image itself (3D) and :math:`v_i = |\\det
    A_i|` the voxel volume of each image's own affine, so the two images may be on different
    grids (processed in template space, raw in native space). VCF = 1 means the volume is
    conserved.

    Parameters
    ----------
    processed, raw : 3D or 4D arrays
        The processed (e.g. registered) image and its unprocessed source.
    processed_affine, raw_affine : (4, 4) arrays
        Their voxel-to-world affines (mm).
    percentile : float
        Percentile of the raw image used as the threshold.

    Returns
    -------
    VolumeConservation
        ``vcf``, ``volume_processed``, ``volume_raw`` (mm^3) and the ``threshold`` used.
    """
    from samri_ml.qc.smoothness import _require_array, _require_finite, _require_varying

    processed = _require_array(processed, "volume_conservation")
    raw = _require_array(raw, "volume_conservation")
    images = ((processed, "processed image"), (raw, "raw image"))
    for image, which in images:
        _require_finite(np.asarray(image), which)  # a NaN in raw gave VCF nan with volume 0
    for image, which in images:
        _require_varying(np.asarray(image), which, processed=which.startswith("processed"))
    threshold = volume_threshold(raw, percentile)
    v_raw = image_volume(raw, raw_affine, threshold)
    v_proc = image_volume(processed, processed_affine, threshold)
    vcf = v_proc / v_raw if v_raw > 0 else float("nan")
    return VolumeConservation(
        vcf=float(vcf), volume_processed=v_proc, volume_raw=v_raw, threshold=threshold
    )
