"""Brute-force baseline (the seed's SimpleElastix comparison, with SimpleITK).

Each section is registered to every plate with an affine transform maximising Mattes mutual
information (multi-resolution, regular-step gradient descent), and the plates are ranked by
the final metric value (SimpleITK reports ``-MI``, so ascending value = descending MI).
"""

from __future__ import annotations

import numpy as np

from samri_ml.plates.data import preprocess


def _to_sitk(img: np.ndarray):
    import SimpleITK as sitk

    return sitk.GetImageFromArray(np.ascontiguousarray(img, dtype=np.float32))


def mi_affine_score(
    section: np.ndarray,
    plate: np.ndarray,
    *,
    iterations: int = 100,
    bins: int = 32,
    sampling: float = 0.25,
    shrink: tuple[int, ...] = (4, 2, 1),
    seed: int = 1,
) -> float:
    """Final Mattes MI metric value (``-MI``; lower = better) after affine registration of
    ``section`` (moving) to ``plate`` (fixed), both float 2D arrays of the same size.

    ``seed`` fixes the random metric sampling; it must not be 0, which SimpleITK reads as
    "seed from the wall clock" (``sitkWallClock``) and makes every run different."""
    import SimpleITK as sitk

    if seed == 0:
        raise ValueError("seed 0 means a wall-clock seed in SimpleITK; pass a nonzero seed")
    fixed = _to_sitk(plate)
    moving = _to_sitk(section)
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([s / 2 for s in shrink])
    reg.SetInitialTransform(init, inPlace=False)
    try:
        reg.Execute(fixed, moving)
        return float(reg.GetMetricValue())
    except RuntimeError:
        # e.g. all samples mapped outside the fixed image: no overlap at all
        return 0.0


def rank_mi_affine(
    section: np.ndarray,
    plates: np.ndarray,
    plate_imgs: list[np.ndarray],
    size: int = 128,
    *,
    preprocessed: bool = False,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank all plates for one uint8 section by final MI after affine registration.

    ``plate_imgs`` are uint8 plates, or already :func:`preprocess`-ed ones with
    ``preprocessed=True`` (saves the preprocessing when ranking many sections).

    Returns
    -------
    ranking : plate numbers, best (highest MI) first
    scores : the corresponding metric values (``-MI``, ascending)
    """
    s = preprocess(section, size)
    prepped = plate_imgs if preprocessed else [preprocess(p, size) for p in plate_imgs]
    scores = np.array([mi_affine_score(s, p, **kwargs) for p in prepped])
    order = np.argsort(scores, kind="stable")
    return np.asarray(plates)[order], scores[order]
