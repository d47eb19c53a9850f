"""Overlap metrics shared by tests, benchmarks and evaluation (pure numpy)."""

from __future__ import annotations

import os

import numpy as np

from samri_ml.errors import SamriMLError


def _voxels(x, what: str, name: str) -> np.ndarray:
    """The voxels of an array or a nibabel image (an image's ``np.asarray`` is a 0-d object
    array, ``True``: any two images had Dice 1.0)."""
    if hasattr(x, "dataobj"):
        return np.asanyarray(x.dataobj)
    arr = np.asarray(x)
    if arr.dtype == object or arr.ndim == 0:
        raise SamriMLError(f"{what}: {name} is a {type(x).__name__}, not a mask; hint: give "
                           "arrays, nibabel images or NIfTI paths")
    return arr


def _image(x):
    """``x`` as a nibabel image where it is one or a NIfTI path (it has a grid), else None."""
    if isinstance(x, (str, os.PathLike)):
        from samri_ml.io import load_nifti

        return load_nifti(x, check_values=False)
    return x if hasattr(x, "dataobj") and hasattr(x, "affine") else None


def _pair(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as arrays of one shape (trailing axes of length 1 aside: a 4D file of one
    volume); numpy broadcast other shapes silently (Dice above 1). Two images (or paths) must
    also be on one grid: a mask stored in another orientation, same shape, was compared voxel
    by voxel (the dama manual mask with itself flipped L-R in its header: Dice 0.936)."""
    img_a, img_b = _image(a), _image(b)
    if img_a is not None and img_b is not None and img_a.affine is not None \
            and img_b.affine is not None and img_a.shape[:3] == img_b.shape[:3]:
        from samri_ml.io import affine_unit, grids_apart

        # (a 2D image's grid is one slice thick: its shape alone has no third axis); half a
        # voxel apart or more, as a mask applied to an image
        moved = grids_apart(img_a.affine, img_b.affine, (*img_a.shape[:3], 1, 1)[:3])
        if moved is not None:
            names = [str(x) if isinstance(x, (str, os.PathLike)) else n
                     for x, n in ((a, "the first"), (b, "the second"))]
            raise SamriMLError(f"{what}: {names[0]} and {names[1]} have one shape but not one "
                               f"grid (their affines put it up to {moved:.3g} "
                               f"{affine_unit(img_a)} apart: another orientation or position); "
                               "hint: resample one onto the other's "
                               "grid first (nearest neighbour)")
    a = _voxels(a if img_a is None else img_a, what, "the first")
    b = _voxels(b if img_b is None else img_b, what, "the second")

    def core(shape):
        shape = list(shape)
        while len(shape) > 1 and shape[-1] == 1:
            shape.pop()
        return tuple(shape)

    if core(a.shape) != core(b.shape):
        raise SamriMLError(f"{what}: the masks differ in shape, {a.shape} and {b.shape}; hint: "
                           "resample one onto the other's grid first")
    return a.reshape(core(a.shape)), b.reshape(core(b.shape))


def dice(a, b) -> float:
    """Dice coefficient of two binary masks: ``2 |A & B| / (|A| + |B|)`` (1.0 if both are empty).

    ``a``, ``b``: arrays, nibabel images or NIfTI paths of one shape (two images or paths: of
    one grid, their affines too); nonzero is inside (a probability map: threshold it first;
    a label map: every label is inside).

    Raises
    ------
    SamriMLError
        Masks of different shapes or grids, or something that is not a mask.
    """
    a, b = _pair(a, b, "dice")
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def label_dice(a, b, labels=None) -> dict[int, float]:
    """Dice per label of two integer label maps (as :func:`dice` takes masks), over ``labels``
    (default: non-zero labels of ``a``)."""
    a, b = _pair(a, b, "label_dice")
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    if labels is None:
        labels = [int(v) for v in np.unique(a) if v != 0]
    return {int(k): dice(a == k, b == k) for k in labels}
