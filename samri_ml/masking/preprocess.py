"""The seed's slice preprocessing (Klug et al.), its inverse, and orientation handling.

A volume is first brought to the closest RAS orientation (axes permuted and flipped only, no
resampling) with nibabel, so that axis 1 runs posterior -> anterior and ``vol[:, j, :]`` is a coronal
slice (left-right x inferior-superior), the seed's view; the functions take ``axis=`` for the
sagittal and axial views too (:data:`VIEW_AXES`). Then, exactly as in the seed:

1. intensities are clipped from the volume's minimum to its 99th percentile and divided by the
   (clipped) maximum: ``x <- min(x, P99) / max(min(x, P99))``;
2. every slice dimension larger than 64 is resized to 64 with ``cv2.resize`` (bilinear), a
   smaller one is zero-padded (centred) to 64;
3. for training labels, the mask is zeroed where the image is zero and each slice's holes are filled
   with ``scipy.ndimage.binary_fill_holes``.

Prediction inverts step 2 (crop the padding, resize back) and step 0 (back to the input's axes), so
the mask lies on the input grid. Only the direction part of the affine is used, so the header quirks
of real data (voxel sizes 10x too large, thick one-slice-per-millimetre coronal stacks) do not
matter; an affine without a usable direction (zeros, NaN) falls back to the array axes here (the
direction finding of the training data), but :func:`samri_ml.io.load_nifti` and
:func:`samri_ml.masking.predict.predict_mask` refuse such an image: its mask would have no
orientation or voxel size either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samri_ml.errors import SamriMLError

#: side of the network's square input
SIZE = 64
#: axis of a RAS-oriented array that runs posterior -> anterior (slices along it are coronal)
CORONAL_AXIS = 1
#: the RAS axis each view slices along (sagittal: left-right, coronal: posterior-anterior,
#: axial: inferior-superior); a slice keeps the other two axes in RAS order
VIEW_AXES = {"sagittal": 0, "coronal": CORONAL_AXIS, "axial": 2}
#: the seed's view (coronal slices only)
SEED_VIEWS = ("coronal",)
#: all three orthogonal views
ALL_VIEWS = ("sagittal", "coronal", "axial")


def view_axis(view: str) -> int:
    """The RAS axis that ``view`` (``sagittal``, ``coronal`` or ``axial``) slices along."""
    try:
        return VIEW_AXES[view]
    except KeyError:
        raise SamriMLError(
            f"unknown view {view!r}; choose from {', '.join(VIEW_AXES)}"
        ) from None


def _in_plane(shape, axis: int) -> tuple[int, int]:
    """Shape of one slice along ``axis`` of a volume of ``shape``."""
    return tuple(n for i, n in enumerate(shape) if i != axis)


def orientation_of(affine) -> np.ndarray:
    """nibabel orientation (``ornt``) taking the array's axes to the closest RAS axes.

    Falls back to the identity (array axes taken as RAS) when the affine's 3x3 part is singular or
    not finite, as in headers with zero voxel sizes.
    """
    import nibabel as nb

    affine = np.asarray(affine, dtype=float)
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    rzs = affine[:3, :3]
    if not np.all(np.isfinite(rzs)) or abs(np.linalg.det(rzs)) < 1e-12:
        return identity
    ornt = nb.orientations.io_orientation(affine)
    if np.any(np.isnan(ornt)):
        return identity
    return ornt


def to_ras(data: np.ndarray, affine) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the first three axes of ``data`` to RAS; returns ``(ras_data, ornt)``."""
    import nibabel as nb

    ornt = orientation_of(affine)
    return nb.orientations.apply_orientation(data, ornt), ornt


def from_ras(ras_data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras`: back to the input's axes (same shape as the original array)."""
    import nibabel as nb

    inverse = nb.orientations.ornt_transform(
        nb.orientations.axcodes2ornt("RAS"),
        nb.orientations.axcodes2ornt(nb.orientations.ornt2axcodes(ornt)),
    )
    return nb.orientations.apply_orientation(ras_data, inverse)


#: a background (1st percentile) above this fraction of the bright tissue (99th percentile)
#: is an offset the seed's normalisation keeps: masks come out too large (an audit: +10 % of
#: P99 gave Dice 0.95 with the plain image's mask, +30 % 0.90)
BACKGROUND_NOTE_FRACTION = 0.1


def high_percentile(volume: np.ndarray) -> float:
    """The 99th percentile of a volume, as :func:`normalise` clips it (float32). Where it is
    not positive although some voxels are (a brain in under 1 % of a zero-padded grid), the
    99th percentile of the positive voxels."""
    volume = np.asarray(volume, dtype=np.float32)
    high = np.percentile(volume, 99)
    if not high > 0:
        positive = volume[volume > 0]
        if positive.size:
            high = np.percentile(positive, 99)
    return high


def background_fraction(volume: np.ndarray, high: float | None = None) -> float:
    """The 1st percentile of a volume as a fraction of its 99th (``high``, where known
    already); 0 for a dark background.

    A background is dark when more than 1 % of the voxels (plus two) lie below
    :data:`BACKGROUND_NOTE_FRACTION` of the 99th percentile: the 1st percentile is then below
    that fraction too and is not computed (on a large head volume a percentile costs 50 ms,
    a count 1 ms).
    """
    volume = np.asarray(volume, dtype=np.float32)
    hi = high_percentile(volume) if high is None else high
    if not hi > 0:
        return 0.0
    if np.count_nonzero(volume < BACKGROUND_NOTE_FRACTION * hi) > 0.01 * volume.size + 2:
        return 0.0
    lo = np.percentile(volume, 1)
    return float(lo / hi) if lo > 0 else 0.0


#: the share of neighbouring non-zero voxels of one value above which an integer image is a
#: label map, not a scan: 0.69-0.93 in the shared data's label maps (the DSURQE labels, the
#: emory EPI atlas, a dama label volume), at most 0.48 in its scans and templates rounded to
#: 8 bits (the Allen template; 0.45 for the sammba EPI in 64 levels), 0.06 or less as stored
LABEL_MAP_EQUAL_FRACTION = 0.6


def looks_like_label_map(volume: np.ndarray) -> bool:
    """Whether a volume is a label map (an atlas' regions, numbered), not an image: integer
    values, more than 0 and one other (a mask, 0/1 or 0/255, which was called a label map),
    and of each two neighbouring non-zero voxels (along every axis) more than
    :data:`LABEL_MAP_EQUAL_FRACTION` of one value, where a scan's noise and a template's
    shading make neighbours differ. The network masks a label map as if it
    were a scan (an atlas given for its template got a believable volume, its picture
    nonsense)."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or not volume.size:
        return False
    if volume.dtype.kind == "f" and not np.array_equal(volume, np.round(volume)):
        return False
    top = volume.max()
    if np.all((volume == 0) | (volume == top)):  # a mask (0/1, 0/255): samri_ml-mask says so
        return False
    equal = pairs = 0
    for axis in range(3):
        a = np.moveaxis(volume, axis, 0)
        both = (a[1:] != 0) & (a[:-1] != 0)
        pairs += np.count_nonzero(both)
        equal += np.count_nonzero((a[1:] == a[:-1]) & both)
    return pairs > 0 and equal > LABEL_MAP_EQUAL_FRACTION * pairs


def normalise(volume: np.ndarray, high: float | None = None) -> np.ndarray:
    """The seed's intensity normalisation: ``min(x, P99) / max(min(x, P99))`` (clip min..P99).
    ``high``: the volume's :func:`high_percentile`, where known already.

    Raises
    ------
    SamriMLError
        If the volume is not finite or its clipped maximum is not positive (e.g. all zeros).
    """
    volume = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(volume)):
        raise SamriMLError("the image has NaN or Inf voxels; hint: fix or zero them first")
    if high is None:
        high = high_percentile(volume)
    clipped = np.clip(volume, volume.min(), high)
    top = clipped.max()
    if not top > 0:
        raise SamriMLError(
            "the image has no positive intensities (all zero or negative); nothing to mask"
        )
    if clipped.dtype != np.float32:  # a float64 ``high`` given: divided in float64, as it was
        return (clipped / top).astype(np.float32)
    clipped /= top  # in place: a copy of a large volume less at the peak (the same values)
    return clipped


@dataclass(frozen=True)
class SliceGeometry:
    """How a coronal slice of shape ``shape`` maps to the 64 x 64 network input."""

    shape: tuple[int, int]

    def fitted(self) -> tuple[int, int]:
        """Slice shape after the resize step (each dimension ``min(n, 64)``)."""
        return tuple(min(n, SIZE) for n in self.shape)

    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Zero padding ``((before, after), (before, after))`` after resizing."""
        out = []
        for n in self.fitted():
            total = SIZE - n
            out.append((total // 2, total - total // 2))
        return tuple(out)


def slice_to_input(slice2d: np.ndarray, geometry: SliceGeometry, *, interpolation=None):
    """Resize (dimensions > 64) then zero-pad (dimensions < 64) one slice to 64 x 64."""
    import cv2

    if interpolation is None:
        interpolation = cv2.INTER_LINEAR
    arr = np.asarray(slice2d, dtype=np.float32)
    fitted = geometry.fitted()
    if fitted != arr.shape:
        # cv2 takes (width, height) = (columns, rows)
        arr = cv2.resize(arr, (fitted[1], fitted[0]), interpolation=interpolation)
    return np.pad(arr, geometry.pads())


def input_to_slice(slice64: np.ndarray, geometry: SliceGeometry, *, interpolation=None):
    """Inverse of :func:`slice_to_input`: crop the padding, resize back to the slice's shape."""
    import cv2

    if interpolation is None:
        interpolation = cv2.INTER_LINEAR
    (r0, r1), (c0, c1) = geometry.pads()
    arr = np.asarray(slice64, dtype=np.float32)[r0 : SIZE - r1, c0 : SIZE - c1]
    if arr.shape != tuple(geometry.shape):
        arr = cv2.resize(arr, (geometry.shape[1], geometry.shape[0]), interpolation=interpolation)
    return arr


def volume_to_slices(
    ras_volume: np.ndarray, *, normalised: bool = False, axis: int = CORONAL_AXIS
) -> np.ndarray:
    """Preprocess a RAS volume into network input: ``(n_slices, 64, 64, 1)`` float32.

    Parameters
    ----------
    ras_volume : ndarray
        3D array in RAS orientation (see :func:`to_ras`).
    normalised : bool
        Skip :func:`normalise` when the volume already went through it.
    axis : int
        RAS axis to slice along (default: coronal, the seed's; see :data:`VIEW_AXES`).
    """
    vol = ras_volume if normalised else normalise(ras_volume)
    # C order: slicing a Fortran-ordered array (nibabel's usual) for cv2 is ~40x slower
    vol = np.ascontiguousarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise SamriMLError(f"expected a 3D volume, got shape {vol.shape}")
    geometry = SliceGeometry(_in_plane(vol.shape, axis))
    out = np.empty((vol.shape[axis], SIZE, SIZE, 1), dtype=np.float32)
    for j in range(vol.shape[axis]):
        out[j, :, :, 0] = slice_to_input(np.take(vol, j, axis=axis), geometry)
    return out


def mask_to_slices(
    ras_mask: np.ndarray, ras_volume: np.ndarray, *, axis: int = CORONAL_AXIS
) -> np.ndarray:
    """Training labels as in the seed: ``(n_slices, 64, 64, 1)`` uint8.

    The mask is zeroed where the image is zero, each slice's holes are filled
    (``binary_fill_holes`` of every slice, :func:`samri_ml.masks.fill_holes`), then slices are
    resized (nearest neighbour) / padded like the image.
    """
    import cv2

    from samri_ml.masks import fill_holes

    mask = (np.asarray(ras_mask) > 0.5) & (np.asarray(ras_volume) != 0)
    filled = np.ascontiguousarray(fill_holes(mask, within_axis=axis), dtype=np.float32)
    geometry = SliceGeometry(_in_plane(mask.shape, axis))
    out = np.empty((mask.shape[axis], SIZE, SIZE, 1), dtype=np.uint8)
    for j in range(mask.shape[axis]):
        out[j, :, :, 0] = slice_to_input(np.take(filled, j, axis=axis), geometry,
                                         interpolation=cv2.INTER_NEAREST) > 0.5
    return out


def slices_to_volume(
    slices: np.ndarray, ras_shape: tuple[int, int, int], *, axis: int = CORONAL_AXIS
) -> np.ndarray:
    """Inverse of :func:`volume_to_slices` for network outputs: a float RAS volume of ``ras_shape``."""
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim == 4:
        slices = slices[..., 0]
    if slices.shape[0] != ras_shape[axis]:
        raise ValueError(f"{slices.shape[0]} slices along axis {axis} for shape {ras_shape}")
    geometry = SliceGeometry(_in_plane(ras_shape, axis))
    out = np.empty(ras_shape, dtype=np.float32)
    index = [slice(None)] * 3
    for j in range(ras_shape[axis]):
        index[axis] = j
        out[tuple(index)] = input_to_slice(slices[j], geometry)
    return out


def temporal_mean(data: np.ndarray) -> np.ndarray:
    """A 4D series' mean over time (last axis); a 3D array is returned unchanged."""
    data = np.asarray(data)
    if data.ndim == 4:
        return data.mean(axis=3, dtype=np.float64).astype(np.float32)
    return data
