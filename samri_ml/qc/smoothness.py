"""Spatial smoothness (FWHM) estimation in the manner of AFNI's 3dFWHMx, and the SCF.

Registration interpolates, and interpolation smooths. SAMRI's Smoothness Conservation Factor (SCF)
compares the smoothness of a processed image with that of its source, as the ratio of the
full-width-at-half-maximum (FWHM) of a Gaussian kernel that would produce the measured spatial
correlation. This module estimates that FWHM without AFNI:

1. **Mask**: an automask of the (temporal mean) image (:func:`automask`: half the median of
   the voxels above Otsu's threshold, largest component, holes filled), or a given mask.
2. **Detrending** (4D): each voxel's time series is detrended with Legendre polynomials
   (:func:`detrend`), like ``3dFWHMx -detrend``; each volume is then estimated on its own and,
   per axis, the estimates combined by their geometric mean, as ``3dFWHMx`` does by default
   (its ``-geom``; :func:`geometric_mean`).
3. **Classic FWHM** per axis from first differences (:func:`classic_fwhm`), as ``3dFWHMx``
   without ``-acf``, by default modelling the Gaussian kernel as sampled on the voxel grid
   (``kernel="continuous"`` gives AFNI's formula; they differ below ~2 voxels FWHM).
4. **ACF model** :math:`a e^{-r^2/(2b^2)} + (1-a) e^{-r/c}` fitted to the empirical spatial
   autocorrelation function (:func:`empirical_acf`, :func:`fit_acf`), with the FWHM of the fitted
   curve, as ``3dFWHMx -acf``.

All functions are pure (arrays and voxel sizes in, numbers out).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from samri_ml.masks import largest_component

#: :math:`\sqrt{8 \ln 2}`, Gaussian sigma -> FWHM
SIGMA_TO_FWHM = math.sqrt(8.0 * math.log(2.0))


# --------------------------------------------------------------------------------------------
# Masking and detrending
# --------------------------------------------------------------------------------------------


def clip_level(data: np.ndarray, bins: int = 256) -> float:
    """Intensity level separating foreground (head) from background: Otsu's threshold.

    .. math:: c = \\arg\\max_t\\ \\omega_0(t)\\,\\omega_1(t)\\,(\\mu_0(t) - \\mu_1(t))^2

    over a ``bins``-bin histogram of :math:`|x|` clipped at its 99.9th percentile (so that a few
    hot voxels do not squeeze the histogram), with :math:`\\omega_k, \\mu_k` the weight and mean of
    the voxels below and above :math:`t`. Otsu's criterion is used instead of AFNI's iterated
    median clip, which settles inside a noisy background when the background is most of the
    image (the usual case for small-animal scans in a large field of view).
    """
    x = np.abs(np.asarray(data, dtype=np.float64)).ravel()
    top = float(np.percentile(x, 99.9))
    if not top > 0:
        top = float(x.max())
    if not top > 0:
        return 0.0
    hist, edges = np.histogram(np.minimum(x, top), bins=bins, range=(0.0, top))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def head_level(data: np.ndarray) -> float:
    """Intensity level of the head's edge: half the median intensity of the foreground.

    .. math:: h = \\tfrac{1}{2}\\,\\mathrm{median}\\{|x| : |x| > c\\}

    with :math:`c` Otsu's threshold (:func:`clip_level`), as AFNI's clip level is half a
    median of the bright voxels. A half-maximum level stays on an edge blurred symmetrically,
    so an image and its resampled or smoothed copy get masks of the same region; Otsu's own
    threshold can fall inside a tissue's intensity peak (a skull-on T2 phantom), where a
    half-voxel resampling took 17 % of the mask away and the SCF of a smoothed copy came out
    below 1 (0.83).
    """
    x = np.abs(np.asarray(data, dtype=np.float64))
    c = clip_level(x)
    above = x[x > c]
    return 0.5 * float(np.median(above)) if above.size else c


def automask(data: np.ndarray) -> np.ndarray:
    """Binary foreground mask of an image (3D, or the temporal mean of 4D data).

    .. math:: M = \\mathrm{fill}(\\mathrm{largest\\_component}(|\\bar{x}| > h))

    with :math:`h` from :func:`head_level`, the largest face-connected component kept and its
    holes filled, in the spirit of AFNI's ``3dAutomask``.
    """
    from scipy import ndimage

    data = np.asarray(data)
    mean = data.mean(axis=3, dtype=np.float64) if data.ndim == 4 else data.astype(np.float64)
    level = head_level(mean)
    mask = np.abs(mean) > level
    if not mask.any():
        return mask
    mask = largest_component(mask)
    return ndimage.binary_fill_holes(mask)


def _require_array(x, what: str,
                   arrays: str = "np.asanyarray(img.dataobj) and img.affine"):
    """Refuse a nibabel image or a path where voxels are wanted: ``np.asarray`` of an image is
    a 0-d object array, refused as ``expected 3D or 4D data, got 0D`` (a path: the same)."""
    import os

    if isinstance(x, (str, os.PathLike)) or hasattr(x, "dataobj"):
        from samri_ml.errors import SamriMLError

        given = f"the path {str(x)!r}" if isinstance(x, (str, os.PathLike)) else \
            f"a {type(x).__name__}"
        raise SamriMLError(f"{what} takes voxel arrays, got {given}; hint: pass "
                           f"{arrays}, or use the "
                           "VolumeConservation/SmoothnessConservation interfaces on files")
    return x


def _refuse(message: str, name: str | None = None):
    """:class:`~samri_ml.errors.SamriMLValueError` (a ``ValueError`` too, as these functions
    raised before) with its cause on one line, after the image's ``name`` where given: the
    command line said ``cannot compute QC: only 2 voxels in the mask`` without saying whose."""
    from samri_ml.errors import SamriMLValueError

    raise SamriMLValueError(f"{name}: {message}" if name else message)


def _require_finite(data: np.ndarray, name: str | None = None) -> None:
    """Refuse NaN or Inf voxels (:func:`_refuse`): one NaN made the automask's level 0 (the
    whole image) and moved a FWHM from 0.82 to 1.40 mm without a word. (The command line and
    the Nipype interfaces refuse such images when loading them.)"""
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        _refuse(f"{bad} voxel(s) are NaN or Inf; hint: fix or zero them first", name)


def _require_varying(data: np.ndarray, name: str | None = None, processed: bool = False) -> None:
    """Refuse a constant image (:func:`_refuse`): a processed one came out with VCF 0.0 (no
    voxel above the raw image's threshold, a number that compare counted as measured), and its
    FWHM null with a note blaming its axes. All zeros are refused when loading."""
    if data.size and float(np.min(data)) == float(np.max(data)):
        value = float(np.min(data))
        hint = ("the processing left a constant image: a failed registration? check its "
                "transform" if processed else "check the file (an empty export?)")
        _refuse(f"the image is constant (every voxel is {value:g}): its volume and smoothness "
                f"are undefined; hint: {hint}", name)


def same_kind(processed, raw) -> tuple[np.ndarray, np.ndarray]:
    """The two images, made comparable for their smoothness: where one is a time series and the
    other a single volume, the series' temporal mean. A series' FWHM is that of its detrended
    fluctuations, a volume's that of the image itself, and their ratio means nothing (a series
    of five copies of a volume against that volume gave SCF 0.15; the means give 1). This
    happens in the workflow, too: a run cut by its dummy scans to one volume."""
    processed, raw = np.asarray(processed), np.asarray(raw)
    series = [a.ndim == 4 and a.shape[3] > 1 for a in (processed, raw)]
    if series[0] != series[1]:
        if series[0]:
            processed = processed.mean(axis=3, dtype=np.float64)
        else:
            raw = raw.mean(axis=3, dtype=np.float64)
    return processed, raw


def detrend(series: np.ndarray, order: int) -> np.ndarray:
    """Remove a polynomial trend from each row (a voxel's time series) by least squares.

    .. math:: r = y - P (P^\\top y)

    where the columns of :math:`P` (T x (q+1)) are orthonormalised Legendre polynomials of
    degree 0..q on the time axis (q = ``order``). ``order=0`` removes the mean only.

    Parameters
    ----------
    series : (n_voxels, T) array
    order : int
        Polynomial order q (capped at T - 2 so that at least one degree of freedom remains).
    """
    series = np.asarray(series)
    n_t = series.shape[-1]
    order = int(max(0, min(order, n_t - 2)))
    t = np.linspace(-1.0, 1.0, n_t)
    basis = np.polynomial.legendre.legvander(t, order)  # (T, q+1)
    q, _ = np.linalg.qr(basis)
    q = q.astype(series.dtype if series.dtype.kind == "f" else np.float64)
    coef = series @ q  # (n, q+1)
    return series - coef @ q.T


def default_detrend_order(n_t: int) -> int:
    """The detrending order: :math:`q = \\max(1, \\lfloor T/30 \\rfloor)` (Legendre
    polynomials), capped at :math:`T-2`; the order of 3dFWHMx's ``-detrend`` rule of thumb,
    not its detrending: AFNI fits other functions (sines and cosines beside the polynomials)
    and treats short runs otherwise (an audit of 2026-12-03 read its source). Not reproduced
    here: samri_ml's functional SCFs are comparable with one another, not with AFNI's to the
    last digit."""
    return int(max(0, min(max(1, n_t // 30), n_t - 2)))


# --------------------------------------------------------------------------------------------
# Classic (first-difference) FWHM
# --------------------------------------------------------------------------------------------


def _rho_sampled_gaussian(sigma: float) -> float:
    """Lag-1 autocorrelation of white noise smoothed by a *sampled* Gaussian kernel.

    .. math:: \\rho_d(\\sigma) = \\frac{\\sum_k g_k g_{k+1}}{\\sum_k g_k^2},\\quad
              g_k = e^{-k^2/(2\\sigma^2)}
    """
    half = int(math.ceil(8.0 * sigma)) + 2
    k = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (k / sigma) ** 2)
    return float(np.dot(g[:-1], g[1:]) / np.dot(g, g))


def sigma_from_lag1(rho: float, kernel: str = "sampled") -> float:
    """Gaussian kernel sigma (in voxels) that gives a lag-1 autocorrelation ``rho``.

    ``kernel='continuous'`` is AFNI's classic formula, exact for a continuous Gaussian:

    .. math:: \\rho = e^{-1/(4\\sigma^2)} \\Rightarrow \\sigma = \\sqrt{-1/(4 \\ln \\rho)}

    ``kernel='sampled'`` inverts :math:`\\rho_d(\\sigma)` of a Gaussian kernel sampled on the
    voxel grid (how scipy, SPM and FSL smooth). The two agree to < 0.5% for FWHM > 2 voxels; below,
    the continuous formula underestimates (by ~18% at FWHM = 1 voxel, where the sampled kernel's
    lag-1 weight is only half of what the continuous formula assumes).

    Returns ``nan`` when ``rho`` is not in (0, 1).
    """
    if not (0.0 < rho < 1.0) or not math.isfinite(rho):
        return float("nan")
    sigma_c = math.sqrt(-1.0 / (4.0 * math.log(rho)))
    if kernel == "continuous":
        return sigma_c
    if kernel != "sampled":
        _refuse(f"kernel must be 'sampled' or 'continuous', got {kernel!r}")
    # aliasing error of the sampled kernel ~ 4 exp(-pi^2 sigma^2): negligible above 1.6 voxels
    if sigma_c > 2.0:
        return sigma_c
    from scipy.optimize import brentq

    lo, hi = 0.05, 4.0
    if _rho_sampled_gaussian(lo) >= rho:
        return lo
    return float(brentq(lambda s: _rho_sampled_gaussian(s) - rho, lo, hi, xtol=1e-10))


def lag1_correlations(volume: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Lag-1 spatial autocorrelation along each axis, from first differences inside a mask.

    .. math::

        \\hat\\rho_i = 1 - \\frac{\\overline{(x_{u+e_i} - x_u)^2}}{2\\,\\mathrm{Var}(x)}

    with the mean over voxel pairs :math:`(u, u+e_i)` that are both in the mask and the variance
    over mask voxels. This is the identity :math:`E[(x_{u+e}-x_u)^2] = 2\\sigma^2(1-\\rho)` of a
    stationary field.

    Returns
    -------
    rho : (3,) array
        ``nan`` for an axis without pairs or a constant image.
    n_voxels : int
        Voxels in the mask.
    """
    m = np.asarray(mask, dtype=bool)
    vals = np.asarray(volume, dtype=np.float64)[m][:, None]
    return _lag1_series(vals, m)[:, 0], int(m.sum())


def _lag1_series(series: np.ndarray, mask: np.ndarray, chunk: int = 16) -> np.ndarray:
    """:func:`lag1_correlations` of every column of ``series`` (n_voxels in mask order, T) at once.

    Returns a (3, T) array. Pairs are indexed once; columns are processed in chunks so that the
    difference array stays small.
    """
    n, n_t = series.shape
    rho = np.full((3, n_t), np.nan)
    if n < 2:
        return rho
    var = series.var(axis=0, dtype=np.float64)
    pos = np.full(mask.shape, -1, dtype=np.int64)
    pos[mask] = np.arange(n)
    for axis in range(3):
        if mask.shape[axis] < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        pair = mask[tuple(lo)] & mask[tuple(hi)]
        if not pair.any():
            continue
        i_lo = pos[tuple(lo)][pair]
        i_hi = pos[tuple(hi)][pair]
        msd = np.empty(n_t)
        for t0 in range(0, n_t, chunk):
            d = series[i_hi, t0 : t0 + chunk].astype(np.float64) - series[i_lo, t0 : t0 + chunk]
            msd[t0 : t0 + chunk] = np.einsum("ij,ij->j", d, d) / d.shape[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            rho[axis] = np.where(var > 0, 1.0 - msd / (2.0 * var), np.nan)
    return rho


def _fwhm_from_rho(rho: np.ndarray, voxel_sizes, kernel: str) -> np.ndarray:
    """Per-axis FWHM (mm) from lag-1 correlations of shape (3, ...) (see :func:`classic_fwhm`)."""
    out = np.full(rho.shape, np.nan)
    for axis in range(3):
        for k, r in np.ndenumerate(rho[axis]):
            out[(axis, *k)] = SIGMA_TO_FWHM * sigma_from_lag1(float(r), kernel) * voxel_sizes[axis]
    return out


def classic_fwhm(
    volume: np.ndarray, mask: np.ndarray, voxel_sizes, *, kernel: str = "sampled"
) -> np.ndarray:
    """Per-axis FWHM (mm) of one volume from first differences (3dFWHMx's classic method).

    .. math::

        \\mathrm{FWHM}_i = \\sqrt{8 \\ln 2}\\; \\sigma(\\hat\\rho_i)\\; \\Delta_i,
        \\qquad \\sigma(\\rho) = \\sqrt{-1/(4 \\ln \\rho)} \\text{ (continuous kernel)}

    with :math:`\\hat\\rho_i` from :func:`lag1_correlations`, :math:`\\Delta_i` the voxel size
    (mm) and :math:`\\sigma(\\rho)` from :func:`sigma_from_lag1` (``kernel``). An axis without
    usable pairs, or with :math:`\\hat\\rho_i \\le 0`, gives ``nan``.
    """
    rho, _ = lag1_correlations(volume, mask)
    return _fwhm_from_rho(rho, voxel_sizes, kernel)


def geometric_mean(values) -> float:
    """Geometric mean of the valid (finite, positive) values; ``nan`` where there are none.

    .. math:: G = \\Big(\\prod_{k \\in \\mathrm{valid}} v_k\\Big)^{1/n}

    3dFWHMx's default (``-geom``) both for the sub-bricks' estimates along one axis and for the
    three axes' means; like it, a value that is not positive (an axis without neighbours, a
    lag-1 correlation of 0 or less: ``nan`` here) is left out rather than counted as 0.
    """
    vals = np.asarray(values, dtype=float).ravel()
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size == 0:
        return float("nan")
    return float(np.exp(np.mean(np.log(vals))))


def combine_fwhm(per_axis) -> float:
    """Combined FWHM: geometric mean of the valid per-axis values (:func:`geometric_mean`).

    .. math:: \\mathrm{FWHM} = \\Big(\\prod_{i \\in \\mathrm{valid}} \\mathrm{FWHM}_i\\Big)^{1/n}
    """
    return geometric_mean(per_axis)


# --------------------------------------------------------------------------------------------
# ACF method
# --------------------------------------------------------------------------------------------


def acf_model(r, a: float, b: float, c: float):
    """3dFWHMx's mixed ACF model.

    .. math:: \\mathrm{ACF}(r) = a\\, e^{-r^2/(2b^2)} + (1-a)\\, e^{-r/c}
    """
    r = np.asarray(r, dtype=float)
    return a * np.exp(-0.5 * (r / b) ** 2) + (1.0 - a) * np.exp(-r / c)


def acf_model_fwhm(a: float, b: float, c: float) -> float:
    """FWHM (mm) of the ACF model: :math:`2r` where :math:`\\mathrm{ACF}(r) = 1/2`.

    This is the number 3dFWHMx ``-acf`` prints. For Gaussian-smoothed white noise (a = 1) the
    ACF is itself Gaussian with :math:`b = \\sqrt{2}\\,\\sigma_{kernel}`, so this value is
    :math:`\\sqrt{2}` times the smoothing kernel's FWHM.
    """
    from scipy.optimize import brentq

    def f(r):
        return float(acf_model(r, a, b, c)) - 0.5

    hi = max(b, c, 1e-9)
    while f(hi) > 0:
        hi *= 2.0
        if hi > 1e9:
            return float("nan")
    return 2.0 * float(brentq(f, 0.0, hi, xtol=1e-12))


def empirical_acf(
    volumes, mask: np.ndarray, voxel_sizes, radius_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radially averaged spatial autocorrelation inside a mask, up to ``radius_mm``.

    .. math::

        \\mathrm{ACF}(\\mathbf{d}) = \\frac{C(\\mathbf{d})}{C(\\mathbf{0})},\\qquad
        C(\\mathbf{d}) = \\frac{\\sum_t \\sum_u m_u m_{u+d}\\, x_t(u)\\, x_t(u+d)}
                              {\\sum_u m_u m_{u+d}}

    computed exactly over all voxel pairs with zero-padded FFTs as
    :math:`\\mathcal{F}^{-1}|\\mathcal{F}(m x)|^2 / \\mathcal{F}^{-1}|\\mathcal{F}(m)|^2`, normalised
    to 1 at :math:`\\mathbf{d}=0`, then averaged over offsets in bins of radius
    :math:`r = \\|\\mathbf{d} \\odot \\Delta\\|` (mm), bin width = half the smallest voxel size.

    Parameters
    ----------
    volumes : iterable of 3D arrays
        Demeaned (or detrended) volumes; their ACFs are pooled.
    mask : 3D bool array
    voxel_sizes : 3 floats (mm)
    radius_mm : float
        Largest distance computed.

    Returns
    -------
    r : (n,) array
        Bin-centre distances (mean distance of the offsets in the bin), mm; r[0] = 0.
    acf : (n,) array
    n_offsets : (n,) array
        Number of offsets averaged in each bin.
    """
    from scipy import fft as sfft

    m = np.asarray(mask, dtype=np.float64)
    vox = np.asarray(voxel_sizes, dtype=float)
    lags = [int(min(max(1, math.floor(radius_mm / vox[i])), m.shape[i] - 1)) for i in range(3)]
    shape = [sfft.next_fast_len(m.shape[i] + lags[i]) for i in range(3)]
    fm = sfft.rfftn(m, shape)
    cnt = sfft.irfftn(fm * np.conj(fm), shape)
    num = np.zeros(shape)
    for vol in volumes:
        fx = sfft.rfftn(np.asarray(vol, dtype=np.float64) * m, shape)
        num += sfft.irfftn(fx * np.conj(fx), shape)
    # gather offsets -lag..lag per axis (negative offsets wrap to the end of the padded array)
    idx = [np.r_[0 : lags[i] + 1, shape[i] - lags[i] : shape[i]] for i in range(3)]
    off = [np.r_[0 : lags[i] + 1, -lags[i] : 0] * vox[i] for i in range(3)]
    sub_num = num[np.ix_(*idx)]
    sub_cnt = cnt[np.ix_(*idx)]
    dist = np.sqrt(
        off[0][:, None, None] ** 2 + off[1][None, :, None] ** 2 + off[2][None, None, :] ** 2
    )
    good = (sub_cnt > 0.5) & (dist <= radius_mm + 1e-9)
    cov = np.where(good, sub_num / np.maximum(sub_cnt, 1.0), 0.0)
    c0 = num[0, 0, 0] / cnt[0, 0, 0]
    if not c0 > 0:
        return np.zeros(1), np.ones(1), np.ones(1)
    acf = cov / c0
    width = 0.5 * float(vox.min())
    bins = np.rint(dist / width).astype(int)
    b, d, a = bins[good], dist[good], acf[good]
    n_off = np.bincount(b)
    keep = n_off > 0
    r = np.bincount(b, weights=d)[keep] / n_off[keep]
    acf_r = np.bincount(b, weights=a)[keep] / n_off[keep]
    return r, acf_r, n_off[keep]


def fit_acf(r: np.ndarray, acf: np.ndarray) -> tuple[float, float, float]:
    """Least-squares fit of :func:`acf_model` (a, b, c) to an empirical ACF.

    Minimises :math:`\\sum_j (\\mathrm{ACF}(r_j) - \\widehat{\\mathrm{ACF}}_j)^2` over
    :math:`0 \\le a \\le 1,\\ b, c > 0`, from starting values read off where the empirical ACF
    crosses 1/2 (as 3dFWHMx does, with a bounded optimiser instead of its NEWUOA).
    """
    from scipy.optimize import least_squares

    r = np.asarray(r, dtype=float)
    acf = np.asarray(acf, dtype=float)
    below = np.nonzero(acf < 0.5)[0]
    if below.size and below[0] > 0:
        j = below[0]
        r_half = r[j - 1] + (acf[j - 1] - 0.5) * (r[j] - r[j - 1]) / (acf[j - 1] - acf[j])
    else:
        r_half = r[min(1, len(r) - 1)] or 1.0
    b0 = max(r_half / math.sqrt(2.0 * math.log(2.0)), 1e-6)
    c0 = max(r_half / math.log(2.0), 1e-6)
    scale = float(np.max(r)) if np.max(r) > 0 else 1.0

    def resid(p):
        return acf_model(r, p[0], p[1], p[2]) - acf

    best = None
    for a0 in (0.9, 0.5, 0.1):
        sol = least_squares(
            resid,
            x0=[a0, b0, c0],
            bounds=([0.0, 1e-6 * scale, 1e-6 * scale], [1.0, 100 * scale, 100 * scale]),
            x_scale=[1.0, b0, c0],
        )
        if best is None or sol.cost < best.cost:
            best = sol
    a, b, c = (float(v) for v in best.x)
    return a, b, c


# --------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------


@dataclass
class Smoothness:
    """Smoothness estimate of one image (lengths in mm).

    Attributes
    ----------
    fwhm : float
        Combined classic FWHM (geometric mean of ``fwhm_axes``): the width of the Gaussian kernel
        that, applied to white noise, gives the measured first-difference statistics. Used for
        the SCF.
    fwhm_axes : tuple of 3 floats
        Classic FWHM along the three voxel axes (for 4D data the geometric mean over volumes,
        as 3dFWHMx's default ``-geom``).
    acf_params : tuple (a, b, c) or None
        Fitted ACF model parameters (b and c in mm), or None when ``acf=False``.
    acf_fwhm : float
        FWHM of the fitted ACF (3dFWHMx ``-acf``'s 4th number): :math:`2r` with
        :math:`\\mathrm{ACF}(r)=1/2`; :math:`\\sqrt{2}` x the kernel FWHM for Gaussian smoothing.
    acf_fwhm_kernel : float
        ``acf_fwhm / sqrt(2)``: the ACF estimate on the same (kernel) scale as ``fwhm``.
    n_voxels, n_volumes : int
        Mask size and number of volumes used.
    """

    fwhm: float
    fwhm_axes: tuple
    acf_params: tuple | None = None
    acf_fwhm: float = float("nan")
    acf_fwhm_kernel: float = float("nan")
    n_voxels: int = 0
    n_volumes: int = 1
    acf_r: list = field(default_factory=list, repr=False)
    acf_values: list = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_smoothness(
    data: np.ndarray,
    voxel_sizes,
    *,
    mask: np.ndarray | None = None,
    use_automask: bool = True,
    detrend_order: int | None = None,
    kernel: str = "sampled",
    acf: bool = True,
    acf_radius: float | None = None,
    max_acf_volumes: int = 20,
    name: str | None = None,
) -> Smoothness:
    """Estimate the spatial smoothness (FWHM, mm) of a 3D or 4D image, like AFNI's 3dFWHMx.

    Steps:

    1. mask = ``mask`` if given, else :func:`automask` of the temporal mean if ``use_automask``,
       else all voxels;
    2. 4D: each voxel's series is detrended (:func:`detrend`, order ``detrend_order``, default
       :func:`default_detrend_order`); 3D: the mask mean is removed;
    3. per volume, the classic per-axis FWHM (:func:`classic_fwhm`); 4D estimates are combined
       over volumes by their geometric mean, as 3dFWHMx does by default (``-geom``):
       :math:`\\mathrm{FWHM}_i = (\\prod_t \\mathrm{FWHM}_{i,t})^{1/T}`;
       combined :math:`\\mathrm{FWHM} = (\\prod_i \\mathrm{FWHM}_i)^{1/3}` (both over the valid
       values only, :func:`geometric_mean`);
    4. if ``acf``: the empirical ACF pooled over (up to ``max_acf_volumes`` evenly spaced) volumes
       out to ``acf_radius`` (default 2.5 x the classic FWHM, at least 3 voxels), the model
       :math:`a e^{-r^2/(2b^2)} + (1-a) e^{-r/c}` fitted and its FWHM
       :math:`2r_{1/2}` (:func:`acf_model_fwhm`).

    Parameters
    ----------
    data : 3D or 4D array
    voxel_sizes : 3 floats
        Voxel edge lengths (mm) along the array axes.
    mask : 3D array, optional
        Voxels to use (nonzero = in).
    use_automask : bool
        Compute a foreground mask when ``mask`` is not given. Turn off for pure noise fields.
    detrend_order : int, optional
        Polynomial order for 4D detrending.
    kernel : {'sampled', 'continuous'}
        Kernel model of the classic estimator, see :func:`sigma_from_lag1`; 'continuous' is
        AFNI's formula.
    acf : bool
        Also fit the ACF model.
    acf_radius : float, optional
        Largest distance (mm) of the empirical ACF.
    max_acf_volumes : int
        Volumes pooled for the ACF of 4D data (the classic estimate uses all of them).
    name : str, optional
        What the image is (a path), said first in the errors.

    Raises
    ------
    samri_ml.errors.SamriMLValueError
        (a ``ValueError``) for data that is not 3D or 4D, NaN or Inf voxels, fewer than 3 voxel
        sizes, a mask of another shape, or fewer than 8 voxels in the mask.

    Returns
    -------
    Smoothness
    """
    data = np.asarray(_require_array(
        data, "estimate_smoothness", "np.asanyarray(img.dataobj) and img.header.get_zooms()[:3]"))
    if data.ndim not in (3, 4):
        _refuse(f"expected 3D or 4D data, got {data.ndim}D", name)
    _require_finite(data, name)
    vox = [float(abs(v)) for v in np.ravel(voxel_sizes)][:3]
    if len(vox) < 3:  # it was an IndexError deep inside
        _refuse(f"voxel_sizes: 3 values (mm) needed, got {len(vox)}", name)
    if mask is not None:
        m = np.asarray(_require_array(mask, "estimate_smoothness's mask",
                                      "np.asanyarray(mask_img.dataobj)")) != 0
        if m.shape != data.shape[:3]:
            _refuse(f"mask shape {m.shape} differs from the image's {data.shape[:3]}; hint: "
                    "give a mask on the image's grid", name)
    elif use_automask:
        m = automask(data)
    else:
        m = np.ones(data.shape[:3], dtype=bool)
    n_vox = int(m.sum())
    if n_vox < 8:
        hint = ("give a mask of the brain" if mask is not None else
                "the image is flat or nearly empty (no foreground for the automask); give a "
                "mask of the brain")
        _refuse(f"only {n_vox} voxel{'' if n_vox == 1 else 's'} in the "
                f"{'mask' if mask is not None else 'automask'}; "
                f"cannot estimate smoothness; hint: {hint}", name)

    if data.ndim == 4 and data.shape[3] > 1:
        # float32: the 4D series can be large, and float64 copies of it cost seconds
        series = data[m].astype(np.float32, copy=False)  # (n_vox, T)
        order = default_detrend_order(series.shape[1]) if detrend_order is None else detrend_order
        series = detrend(series, order)
        n_t = series.shape[1]
    else:
        base = data if data.ndim == 3 else data[..., 0]
        vals = np.asarray(base, dtype=np.float64)[m]
        series = (vals - vals.mean())[:, None]
        n_t = 1

    def volume(t):
        v = np.zeros(data.shape[:3])
        v[m] = series[:, t]
        return v

    per_vol = _fwhm_from_rho(_lag1_series(series, m), vox, kernel)  # (3, T)
    # 3dFWHMx's default -geom: the geometric mean over volumes (it was the arithmetic mean, while
    # the docs said 3dFWHMx; the arithmetic is 3dFWHMx -arith, which also averages the axes so)
    axes = tuple(geometric_mean(row) for row in per_vol)
    fwhm = combine_fwhm(axes)
    result = Smoothness(fwhm=fwhm, fwhm_axes=axes, n_voxels=n_vox, n_volumes=n_t)
    if acf:
        if acf_radius is None:
            ref = fwhm if math.isfinite(fwhm) else 3.0 * min(vox)
            acf_radius = max(2.5 * ref, 3.0 * min(vox))
        picks = np.unique(np.linspace(0, n_t - 1, min(n_t, max_acf_volumes)).round().astype(int))
        r, emp, _ = empirical_acf((volume(t) for t in picks), m, vox, acf_radius)
        if r.size >= 4:
            a, b, c = fit_acf(r, emp)
            result.acf_params = (a, b, c)
            result.acf_fwhm = acf_model_fwhm(a, b, c)
            result.acf_fwhm_kernel = result.acf_fwhm / math.sqrt(2.0)
        result.acf_r = [float(v) for v in r]
        result.acf_values = [float(v) for v in emp]
    return result


#: Names of the world (RAS+) axes, as :func:`comparable_fwhm` reports those it left out.
WORLD_AXES = ("L-R", "P-A", "I-S")


def comparable_fwhm(axes_processed, affine_processed, axes_raw, affine_raw):
    """Combined FWHMs of two images over the same world axes: those measured in both.

    .. math::

        S_{p} = \\Big(\\prod_{w \\in W} \\mathrm{FWHM}^{p}_{a_p(w)}\\Big)^{1/|W|},\\quad
        S_{r} = \\Big(\\prod_{w \\in W} \\mathrm{FWHM}^{r}_{a_r(w)}\\Big)^{1/|W|}

    with :math:`a(w)` the voxel axis of each image closest to world axis :math:`w` (its
    affine: :func:`nibabel.orientations.io_orientation`; the processed image may be on another,
    e.g. a template's, grid) and :math:`W` the world axes whose FWHM is valid (finite,
    positive) in both images. An axis with no neighbour correlation (a single slice, a
    correlation of 0 or less) has none; each image's own combined FWHM
    (:func:`combine_fwhm`) then averaged 3 axes on one side and 2 on the other, and their
    ratio, the SCF, compared unlike things.

    Returns
    -------
    fwhm_processed, fwhm_raw : float
        Where no axis is valid in both, each image's own :func:`combine_fwhm` (``nan`` for
        one without any): there is no SCF to keep consistent, and a measured FWHM says more
        than none.
    left_out : tuple of str
        The :data:`WORLD_AXES` left out (measured in one image or neither), in order.
    """
    from nibabel.orientations import io_orientation

    def by_world(axes, affine):
        vals = np.asarray(axes, dtype=float)
        out = np.full(3, np.nan)
        for voxel_axis, (world, _) in enumerate(io_orientation(np.asarray(affine))):
            if not np.isnan(world):
                out[int(world)] = vals[voxel_axis]
        return out

    p, r = by_world(axes_processed, affine_processed), by_world(axes_raw, affine_raw)
    both = np.isfinite(p) & (p > 0) & np.isfinite(r) & (r > 0)
    left_out = tuple(name for name, ok in zip(WORLD_AXES, both, strict=True) if not ok)
    if not both.any():
        return combine_fwhm(p), combine_fwhm(r), left_out
    return geometric_mean(p[both]), geometric_mean(r[both]), left_out


def smoothness_conservation(
    fwhm_processed: float, fwhm_raw: float, vcf: float | None = None
) -> tuple[float, float]:
    """Smoothness Conservation Factor and its volume-normalised form.

    .. math::

        \\mathrm{SCF} = S_{processed} / S_{raw}, \\qquad
        \\mathrm{SCF}_{norm} = \\mathrm{SCF} / \\mathrm{VCF}^{1/3}

    with :math:`S` the combined FWHM (mm), over the same axes in both images
    (:func:`comparable_fwhm`). A registration that scales the brain by a linear factor
    :math:`k` scales every length, the FWHM included, by :math:`k` and the volume by :math:`k^3`;
    dividing by :math:`\\mathrm{VCF}^{1/3}` removes that share, leaving the smoothing added by
    interpolation.

    Returns
    -------
    scf, scf_normalised : float
        ``scf_normalised`` is ``nan`` when ``vcf`` is None or not positive.
    """
    scf = fwhm_processed / fwhm_raw if fwhm_raw > 0 else float("nan")
    if vcf is None or not (vcf > 0):
        return float(scf), float("nan")
    return float(scf), float(scf / vcf ** (1.0 / 3.0))
