"""Synthetic training volumes: skull-on mouse heads in T1-, T2- and EPI-like contrasts.

Real masked scans are few (and the in-vivo ones here are skull-stripped), so training volumes are
also synthesised, SynthSeg-style, from real brains: a brain mask (with, where available, a label map
and/or a real brain image) is wrapped in a synthetic head, every tissue class gets an intensity, and
the volume goes through a simulated acquisition.

Head model (distances are in mm from the brain surface, all thicknesses random per volume):
``csf`` (0.03-0.15 mm) around the brain, a ``skull`` shell (0.15-0.5 mm), a scalp above, and a head
envelope that reaches far lateral and ventral of the brain (jaw, masticatory muscles) and a little
anterior/posterior (optionally, ``snout_neck=True``, most heads get a snout of 1-6 mm and a neck of
1-5 mm so that many coronal slices hold head but no brain); inside it soft tissue is split into muscle, fat and gland classes by
thresholding smooth random noise, with a few dark pockets (air, bone, eyes).

Contrasts: ``t2`` (CSF and fat bright, muscle dark), ``t1`` (CSF dark, fat bright, brain brighter than
muscle), ``epi`` (T2-like, then low in-plane resolution, thick slices, N/2 ghosting and a smooth
geometric distortion along the phase-encoding direction), ``random`` (every class uniform in [0, 1],
as SynthSeg). A real brain image, when given, provides the brain's texture (possibly inverted,
T1-like). Acquisition: random rotation (+-10 degrees), voxel size (0.08-0.4 mm in-plane; isotropic or
0.3-1.0 mm thick coronal slices), field of view (the head may be cut ventrally), partial-volume blur,
a multiplicative bias field ``exp(b)`` with ``b`` a smooth random field plus a dorsal-ventral ramp
(surface coils), Rician noise ``sqrt((x + n1)^2 + n2^2)`` and a random global scale.

All arrays are RAS-oriented (axis 1 posterior -> anterior, see :mod:`samri_ml.masking.preprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CONTRASTS = ("t1", "t2", "epi", "random")

#: bumped when the synthetic heads change (2: optional snout and neck; 3: T1 muscle up to
#: nearly the brain's intensity)
VERSION = 3

# tissue classes of the synthetic head
AIR, BRAIN, CSF, SKULL, MUSCLE, FAT, GLAND, POCKET, SCALP = range(9)


@dataclass
class BrainSource:
    """A real brain on a RAS grid: mask, optional label map, optional intensity image, voxel size (mm)."""

    mask: np.ndarray
    zooms: tuple[float, float, float]
    labels: np.ndarray | None = None
    image: np.ndarray | None = None
    name: str = ""


def smooth_noise(shape, sigma_vox, rng) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise smoothed with a Gaussian of ``sigma_vox`` voxels.

    Large kernels are applied on a grid coarser by ``sigma_vox // 2`` and interpolated back
    (same spectrum, a fraction of the cost).
    """
    shape = tuple(int(n) for n in shape)
    step = max(1, int(sigma_vox // 2))
    small = tuple(int(np.ceil(n / step)) + 1 for n in shape)
    field = ndimage.gaussian_filter(
        rng.standard_normal(small).astype(np.float32), sigma_vox / step
    )
    if step > 1:
        field = ndimage.zoom(field, step, order=1)[tuple(slice(0, n) for n in shape)]
    else:
        field = field[tuple(slice(0, n) for n in shape)]
    field = field - field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _shift(mask, shift_vox):
    """Shift a boolean array by whole voxels (rounded), filling with False."""
    out = np.zeros_like(mask)
    src, dst = [], []
    for n, s in zip(mask.shape, np.round(shift_vox).astype(int), strict=False):
        if s >= 0:
            src.append(slice(0, n - s))
            dst.append(slice(s, n))
        else:
            src.append(slice(-s, n))
            dst.append(slice(0, n + s))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def _snout_and_neck(brain: np.ndarray, zooms, snout_mm: float, neck_mm: float, rng) -> np.ndarray:
    """Tissue anterior (snout: nasal cavity, eyes, teeth) and posterior (neck) of the brain.

    Real heads are imaged with slices that hold no brain at all; a slice-wise masker that never
    saw such slices calls the snout or the neck "brain". Both are elliptic cylinders along the
    antero-posterior axis, ventral of the brain's centre, the snout tapering towards its tip.
    """
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    centre = (lo + hi) / 2
    half = np.maximum((hi - lo) / 2, 1)
    x, y, z = (np.arange(n, dtype=np.float32) for n in brain.shape)
    xx, yy, zz = np.meshgrid(x, y, z, indexing="ij")
    # snout: from inside the olfactory bulbs forward
    y0 = hi[1] - 1.0 / zooms[1]
    t = np.clip((yy - y0) / max(snout_mm / zooms[1], 1), 0, 1)
    zc = lo[2] + rng.uniform(0.1, 0.45) * (hi[2] - lo[2]) - t * rng.uniform(0, 0.3) * half[2]
    rx = half[0] * rng.uniform(0.45, 0.85) * (1 - rng.uniform(0.3, 0.7) * t)
    rz = half[2] * rng.uniform(0.45, 0.8) * (1 - rng.uniform(0.2, 0.6) * t)
    snout = (yy >= y0) & (yy <= y0 + snout_mm / zooms[1])
    snout &= ((xx - centre[0]) / rx) ** 2 + ((zz - zc) / rz) ** 2 <= 1
    # neck: from inside the cerebellum backwards, wider and lower
    y1 = lo[1] + 1.0 / zooms[1]
    zc = centre[2] - rng.uniform(0.1, 0.6) * half[2]
    rx = half[0] * rng.uniform(0.7, 1.1)
    rz = half[2] * rng.uniform(0.7, 1.1)
    neck = (yy <= y1) & (yy >= y1 - neck_mm / zooms[1])
    neck &= ((xx - centre[0]) / rx) ** 2 + ((zz - zc) / rz) ** 2 <= 1
    return (snout | neck) & ~brain


def head_labels(brain: np.ndarray, zooms, rng, snout_neck: bool = False) -> tuple[np.ndarray, tuple]:
    """Wrap a brain mask into a synthetic head; returns ``(class_volume, padding)``.

    ``padding`` is the ``np.pad`` width applied to the brain's grid (room for the head). With
    ``snout_neck`` most heads get a snout and a neck (:func:`_snout_and_neck`); without, the
    random draws are those of the shipped model's training data (synthesis version 1).
    """
    zooms = np.asarray(zooms, dtype=float)
    snout_mm = neck_mm = 0.0
    if snout_neck:
        snout_mm = rng.uniform(1.0, 6.0) if rng.random() < 0.8 else 0.0
        neck_mm = rng.uniform(1.0, 5.0) if rng.random() < 0.7 else 0.0
    # room: lateral 3.5 mm, posterior/anterior 2 mm (+ neck/snout), inferior 6 mm, superior 1.5 mm
    pad_mm = np.array([[3.5, 3.5], [2.0 + neck_mm, 2.0 + snout_mm], [6.0, 1.5]])
    pad = tuple(
        (int(np.ceil(a / z)), int(np.ceil(b / z)))
        for (a, b), z in zip(pad_mm, zooms, strict=False)
    )
    brain = np.pad(brain.astype(bool), pad)
    dist = ndimage.distance_transform_edt(~brain, sampling=zooms).astype(np.float32)
    t_csf = rng.uniform(0.03, 0.15)
    t_skull = rng.uniform(0.15, 0.5)
    t_scalp = rng.uniform(0.1, 0.5)
    skull_out = t_csf + t_skull
    # head core: the brain pushed ventrally (jaw) and a little anteriorly (snout)
    core = brain.copy()
    drop = rng.uniform(1.5, 4.0)
    for frac in np.linspace(0.25, 1.0, 4):
        core |= _shift(brain, (0, rng.uniform(-0.3, 0.8) / zooms[1], -frac * drop / zooms[2]))
    dist_core = ndimage.distance_transform_edt(~core, sampling=zooms).astype(np.float32)
    wobble = 0.3 * smooth_noise(brain.shape, 1.0 / zooms.mean(), rng)
    head = (dist_core < rng.uniform(0.6, 2.2) + wobble) | (dist < skull_out + t_scalp)
    if snout_mm or neck_mm:
        head |= _snout_and_neck(brain, zooms, snout_mm, neck_mm, rng)
    head = ndimage.binary_fill_holes(head)
    out = np.zeros(brain.shape, dtype=np.int8)
    out[head] = MUSCLE
    tissue = smooth_noise(brain.shape, rng.uniform(0.3, 0.8) / zooms.mean(), rng)
    out[head & (tissue > rng.uniform(0.6, 1.2))] = FAT
    out[head & (tissue < -rng.uniform(0.8, 1.4))] = GLAND
    pockets = smooth_noise(brain.shape, 0.4 / zooms.mean(), rng)
    out[head & (pockets > rng.uniform(1.8, 2.6))] = POCKET
    # scalp: the layer just outside the skull above the brain
    scalp = head & (dist >= skull_out) & (dist < skull_out + t_scalp)
    out[scalp & (rng.random() < 0.5)] = SCALP
    gaps = smooth_noise(brain.shape, 0.3 / zooms.mean(), rng) > 2.0  # sutures / thin bone
    out[(dist >= t_csf) & (dist < skull_out) & ~gaps] = SKULL
    out[(dist > 0) & (dist < t_csf)] = CSF
    out[brain] = BRAIN
    return out, pad


def _class_means(contrast, rng) -> dict[int, float]:
    u = rng.uniform
    if contrast == "t1":
        brain = u(0.45, 0.7)  # muscle is darker than brain in T1w, at times only slightly
        return {AIR: 0.0, BRAIN: brain, CSF: u(0.05, 0.3), SKULL: u(0.0, 0.12),
                MUSCLE: brain * u(0.45, 0.9), FAT: u(0.75, 1.0), GLAND: u(0.35, 0.7),
                POCKET: u(0, 0.1), SCALP: u(0.3, 0.9)}  # fmt: skip
    if contrast in ("t2", "epi"):
        return {AIR: 0.0, BRAIN: u(0.35, 0.6), CSF: u(0.6, 1.0), SKULL: u(0.0, 0.12),
                MUSCLE: u(0.1, 0.35), FAT: u(0.45, 0.9), GLAND: u(0.3, 0.7), POCKET: u(0, 0.1),
                SCALP: u(0.2, 0.7)}  # fmt: skip
    means = {k: u(0.0, 1.0) for k in range(9)}
    means[AIR] = u(0.0, 0.1)
    return means


def paint(classes, source: BrainSource, pad, contrast, rng) -> np.ndarray:
    """Intensities for a class volume (see module docstring)."""
    means = _class_means(contrast, rng)
    img = np.zeros(classes.shape, dtype=np.float32)
    for k, m in means.items():
        img[classes == k] = m
    brain = classes == BRAIN
    b_mean = means[BRAIN]
    spread = 0.15 if contrast == "random" else 0.07
    use_image = source.image is not None and rng.random() < 0.6
    if use_image:
        real = np.pad(source.image.astype(np.float32), pad)[brain]
        med = np.median(real[real > 0]) if np.any(real > 0) else 1.0
        real = np.clip(real / max(med, 1e-6), 0, 3)
        if contrast == "t1" or (contrast == "random" and rng.random() < 0.5):
            real = np.clip(2.0 - real, 0, 3)  # grey/white and CSF contrast reversed
        real = real ** rng.uniform(0.6, 1.6)
        img[brain] = b_mean * real * rng.uniform(0.7, 1.3) / max(np.mean(real), 1e-6)
    elif source.labels is not None:
        labels = np.pad(source.labels.astype(np.int32), pad)
        ids = np.unique(labels[brain])
        lut = np.zeros(int(ids.max()) + 1, dtype=np.float32)
        lut[ids] = b_mean + rng.normal(0, spread, size=len(ids))
        img[brain] = lut[labels[brain]]
    # texture within classes
    img *= 1.0 + rng.uniform(0.03, 0.15) * smooth_noise(classes.shape, 1.0, rng)
    return np.clip(img, 0, None)


def _rotation(max_deg, rng) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    return rot


def acquire(img, brain, zooms, contrast, rng, crop_ap: bool = False):
    """Resample a painted head onto a random scanner grid and add acquisition artefacts.

    Returns ``(image, mask, out_zooms)`` in RAS.
    """
    zooms = np.asarray(zooms, dtype=float)
    if contrast == "epi":
        ip = rng.uniform(0.15, 0.4)
        out_z = np.array([ip, rng.uniform(0.3, 0.8), ip * rng.uniform(0.8, 1.2)])
    else:
        ip = rng.uniform(0.08, 0.3)
        thick = rng.uniform(0.3, 1.0) if rng.random() < 0.3 else ip * rng.uniform(0.9, 1.2)
        out_z = np.array([ip, thick, ip * rng.uniform(0.9, 1.1)])
    # partial volume along the (possibly thick) slice axis and in-plane blur
    sig = np.maximum(out_z / zooms / 2.355 - 0.3, 0) * np.array([1, 1, 1])
    img = ndimage.gaussian_filter(img, sig) if np.any(sig > 0) else img
    # field of view: head bounding box with random margins (ventral side may be cut)
    head = img > 0.02
    idx = np.argwhere(head)
    lo, hi = idx.min(0) * zooms, idx.max(0) * zooms
    bidx = np.argwhere(brain)
    blo, bhi = bidx.min(0) * zooms, bidx.max(0) * zooms
    lo = lo + rng.uniform(-1.0, 0.5, size=3)
    hi = hi + rng.uniform(-0.5, 1.0, size=3)
    lo[2] = rng.uniform(lo[2], blo[2] - 0.5) if rng.random() < 0.4 else lo[2]
    if crop_ap and rng.random() < 0.5:  # field of view cuts into the neck / the snout
        lo[1] = rng.uniform(lo[1], blo[1])
        hi[1] = rng.uniform(bhi[1], hi[1])
    lo[1] = min(lo[1], blo[1] + rng.uniform(0, 0.6))
    hi[1] = max(hi[1], bhi[1] - rng.uniform(0, 0.6))
    lo[0], hi[0] = min(lo[0], blo[0] - 0.2), max(hi[0], bhi[0] + 0.2)
    hi[2] = max(hi[2], bhi[2] + 0.2)
    shape = np.maximum(np.round((hi - lo) / out_z).astype(int), 8)
    shape = np.minimum(shape, 200)
    centre_in = (lo + hi) / 2
    rot = _rotation(10.0, rng)
    grid = np.stack(
        np.meshgrid(
            *[(np.arange(n) - (n - 1) / 2) * z for n, z in zip(shape, out_z, strict=False)],
            indexing="ij",
        ),
        axis=0,
    ).reshape(3, -1)
    coords = (rot @ grid + centre_in[:, None]) / zooms[:, None]
    out = ndimage.map_coordinates(img, coords, order=1, mode="constant").reshape(shape)
    mask = ndimage.map_coordinates(brain.astype(np.float32), coords, order=1).reshape(shape) > 0.5
    out = out.astype(np.float32)
    if contrast == "epi":
        out = _epi_artefacts(out, rng)
    # bias field: smooth field plus a dorsal-ventral ramp (surface coil above the head)
    z = np.linspace(-1, 1, shape[2])[None, None, :]
    bias = (
        rng.uniform(0.05, 0.35) * smooth_noise(shape, max(shape) / 6, rng)
        + rng.uniform(0, 1.2) * z
    )
    out = out * np.exp(bias)
    sigma = rng.uniform(0.005, 0.06) * max(float(np.mean(out[mask])) if mask.any() else 1.0, 1e-3)
    n1, n2 = rng.normal(0, sigma, size=(2, *shape)).astype(np.float32)
    out = np.sqrt((out + n1) ** 2 + n2**2)
    out *= rng.uniform(1.0, 2000.0)
    return out.astype(np.float32), mask, tuple(out_z)


def _epi_artefacts(vol, rng):
    pe = int(rng.choice([0, 2]))  # phase encoding along left-right or inferior-superior
    n = vol.shape[pe]
    # smooth displacement along the phase-encoding axis (susceptibility distortion)
    disp = rng.uniform(0.5, 3.0) * smooth_noise(vol.shape, max(vol.shape) / 8, rng)
    coords = np.indices(vol.shape, dtype=np.float32)
    coords[pe] += disp
    vol = ndimage.map_coordinates(vol, coords, order=1, mode="nearest")
    ghost = np.roll(vol, n // 2, axis=pe) * rng.uniform(0.02, 0.2)
    return vol + ghost


def synth_volume(
    source: BrainSource, rng, contrast: str | None = None, snout_neck: bool = False
):
    """One synthetic head from a real brain; returns ``(image, mask, zooms)`` in RAS.

    Parameters
    ----------
    source : BrainSource
        The brain (RAS mask, optional labels/image) it is built around.
    rng : numpy.random.Generator
        Randomness (fix its seed for reproducible data).
    contrast : str, optional
        One of :data:`CONTRASTS`; random when None.
    snout_neck : bool
        Add a snout and a neck (coronal slices with head and no brain); off by default so
        that the shipped model's training data is reproduced.
    """
    if contrast is None:
        contrast = str(rng.choice(CONTRASTS, p=[0.3, 0.25, 0.25, 0.2]))
    classes, pad = head_labels(source.mask > 0, source.zooms, rng, snout_neck)
    img = paint(classes, source, pad, contrast, rng)
    return acquire(img, classes == BRAIN, source.zooms, contrast, rng, crop_ap=snout_neck)


def crop_to_brain(image, mask, rng, margin=(-0.05, 0.15)):
    """A field of view cropped around the brain, as in brain-only templates and small-FOV scans.

    Each side of the brain's bounding box moves outwards by a random fraction (uniform in
    ``margin``) of the brain's extent along that axis; a negative fraction cuts into the brain.
    Returns ``(image, mask)`` views of the cropped block.
    """
    mask = np.asarray(mask) > 0
    if not mask.any():
        return image, mask
    idx = np.nonzero(mask)
    index = []
    for ax, n in enumerate(mask.shape):
        lo, hi = int(idx[ax].min()), int(idx[ax].max()) + 1
        extent = hi - lo
        a = lo - int(round(rng.uniform(*margin) * extent))
        b = hi + int(round(rng.uniform(*margin) * extent))
        a, b = max(0, a), min(n, b)
        if b - a < 2:
            a, b = lo, hi
        index.append(slice(a, b))
    return image[tuple(index)], mask[tuple(index)]
