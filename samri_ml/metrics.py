"""Overlap metrics shared by tests, benchmarks and evaluation (pure numpy)."""

from __future__ import annotations

import numpy as np


def dice(a, b) -> float:
    """Dice coefficient of two binary arrays: ``2 |A & B| / (|A| + |B|)`` (1.0 if both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def label_dice(a, b, labels=None) -> dict[int, float]:
    """Dice per label of two integer label maps, over ``labels`` (default: non-zero labels of ``a``)."""
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    if labels is None:
        labels = [int(v) for v in np.unique(a) if v != 0]
    return {int(k): dice(a == k, b == k) for k in labels}
