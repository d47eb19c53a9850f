"""Binary-mask operations shared by the masker, the QC and the reports (pure numpy/scipy)."""

from __future__ import annotations

import numpy as np


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
