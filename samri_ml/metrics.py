"""Overlap metrics shared by tests, benchmarks and evaluation (pure numpy)."""

from __future__ import annotations

import os

import numpy as np

from samri_ml.errors import SamriMLError


def _voxels(x, what: str, name: str) -> np.ndarray:
    """The voxels of an array, a nibabel image or a NIfTI path (an image's ``np.asarray`` is a
    0-d object array, ``True``: any two images had Dice 1.0)."""
    if isinstance(x, (str, os.PathLike)):
        from samri_ml.io import load_nifti

        x = load_nifti(x, check_values=False)
    if hasattr(x, "dataobj"):
        return np.asanyarray(x.dataobj)
    arr = np.asarray(x)
    if arr.dtype == object or arr.ndim == 0:
        raise SamriMLError(f"{what}: {name} is a {type(x).__name__}, not a mask; hint: give "
                           "arrays, nibabel images or NIfTI paths")
    return arr


def _pair(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as arrays of one shape (trailing axes of length 1 aside: a 4D file of one
    volume); numpy broadcast other shapes silently (Dice above 1)."""
    a, b = _voxels(a, what, "the first"), _voxels(b, what, "the second")

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

    ``a``, ``b``: arrays, nibabel images or NIfTI paths of one shape; nonzero is inside (a
    probability map: threshold it first).

    Raises
    ------
    SamriMLError
        Masks of different shapes, or something that is not a mask.
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
