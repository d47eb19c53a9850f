"""Augmentations for plates and sections (numpy/OpenCV, deterministic given a Generator).

All functions take a float32 image in [0, 1] of shape ``(s, s)`` and a
:class:`numpy.random.Generator`, and return an image of the same shape and dtype.

- the seed's: :func:`random_affine`, :func:`crop_and_pad`, :func:`pepper_noise`;
- simulated partial sections: :func:`missing_cortex`, :func:`missing_cerebellum`,
  :func:`hemisection`, :func:`tiling_seams`, :func:`uneven_staining`;
- :func:`section_like`: a random chain of all of them that turns a plate into something that
  looks like a cropped, partial confocal section.
"""

from __future__ import annotations

import numpy as np

from samri_ml.plates.data import pad_square


def on_uint8(fn, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of these augmentations applied to a uint8 section of any shape: padded to a square,
    scaled to [0, 1], augmented, back to uint8."""
    return (fn(pad_square(img).astype(np.float32) / 255, rng) * 255).astype(np.uint8)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if max(img.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def random_affine(
    img: np.ndarray,
    rng: np.random.Generator,
    max_rotation: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 0.06,
    max_shear: float = 0.05,
) -> np.ndarray:
    """Rotation (degrees), isotropic scale, shear and shift about the centre (the seed's affine)."""
    import cv2

    s = img.shape[0]
    a = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    k = rng.uniform(*scale)
    sh = rng.uniform(-max_shear, max_shear)
    m = (
        k
        * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        @ np.array([[1, sh], [0, 1]])
    )
    c = np.array([s / 2, s / 2])
    t = c - m @ c + rng.uniform(-max_shift, max_shift, 2) * s
    mat = np.hstack([m, t[:, None]]).astype(np.float32)
    return cv2.warpAffine(img, mat, (s, s), flags=cv2.INTER_LINEAR, borderValue=0.0)


def crop_and_pad(img: np.ndarray, rng: np.random.Generator, min_keep: float = 0.6) -> np.ndarray:
    """Keep a random rectangle (each side ``min_keep``..1 of the image), pad it square, resize."""
    s = img.shape[0]
    h = int(s * rng.uniform(min_keep, 1.0))
    w = int(s * rng.uniform(min_keep, 1.0))
    y = rng.integers(0, s - h + 1)
    x = rng.integers(0, s - w + 1)
    return _resize(pad_square(img[y : y + h, x : x + w]), s)


def pepper_noise(img: np.ndarray, rng: np.random.Generator, amount: float = 0.02) -> np.ndarray:
    """Set a fraction ``amount`` (random up to it) of the pixels to 0 (the seed's pepper noise)."""
    out = img.copy()
    out[rng.random(img.shape) < rng.uniform(0, amount)] = 0.0
    return out


def _wavy_boundary(n: int, rng: np.random.Generator, level: float, amp: float) -> np.ndarray:
    """A smooth random curve of ``n`` values around ``level`` (fractions of the side)."""
    x = np.linspace(0, 1, n)
    curve = np.full(n, level)
    for f in (1, 2, 3):
        curve += amp / f * np.sin(2 * np.pi * (f * x + rng.random()))
    return curve


def missing_cortex(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove a dorsal cap of tissue (a cortex torn off or outside the field of view)."""
    s = img.shape[0]
    edge = _wavy_boundary(s, rng, rng.uniform(0.1, 0.35), 0.04) * s
    rows = np.arange(s)[:, None]
    return np.where(rows < edge[None, :], 0.0, img).astype(img.dtype)


def missing_cerebellum(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove a dorsal, roughly elliptical lobe (cerebellum lost in posterior sections)."""
    s = img.shape[0]
    yy, xx = np.mgrid[0:s, 0:s] / s
    cx = 0.5 + rng.uniform(-0.15, 0.15)
    cy = rng.uniform(0.0, 0.25)
    rx, ry = rng.uniform(0.2, 0.45), rng.uniform(0.15, 0.35)
    mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
    return np.where(mask, 0.0, img).astype(img.dtype)


def hemisection(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep one hemisphere (plus or minus a bit) and crop to it, as a hemisection."""
    s = img.shape[0]
    cut = int(s * (0.5 + rng.uniform(-0.08, 0.12)))
    if rng.random() < 0.5:
        part = img[:, :cut]
    else:
        part = img[:, s - cut :]
    return _resize(pad_square(part), s)


def tiling_seams(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tile-wise gain differences and dark/bright seams, as in stitched confocal mosaics."""
    s = img.shape[0]
    n = int(rng.integers(3, 9))
    gains = rng.uniform(0.75, 1.25, (n, n)).astype(np.float32)
    idx = np.minimum(np.arange(s) * n // s, n - 1)
    field = gains[idx][:, idx]
    out = img * field
    step = s / n
    for i in range(1, n):
        p = int(i * step)
        if rng.random() < 0.5:
            out[:, p : p + 1] *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.5:
            out[p : p + 1, :] *= rng.uniform(0.5, 1.5)
    return np.clip(out, 0, 1).astype(img.dtype)


def uneven_staining(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply by a smooth random field (0.6..1.4) and apply a random gamma."""
    import cv2

    coarse = rng.uniform(0.6, 1.4, (3, 3)).astype(np.float32)
    field = cv2.resize(coarse, img.shape[::-1], interpolation=cv2.INTER_CUBIC)
    out = np.clip(img * field, 0, 1) ** rng.uniform(0.7, 1.4)
    return out.astype(img.dtype)


def blur_or_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur or additive Gaussian noise (texture differences between modalities)."""
    import cv2

    if rng.random() < 0.5:
        k = int(rng.choice([3, 5]))
        return cv2.GaussianBlur(img, (k, k), 0)
    noise = rng.normal(0, rng.uniform(0.01, 0.08), img.shape).astype(np.float32)
    return np.clip(img + noise * (img > 0), 0, 1).astype(img.dtype)


def section_like(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random chain of all augmentations: a plate becomes a plausible partial section.

    ``strength`` scales the probability of each step (0 = identity apart from a flip).
    """
    out = img.astype(np.float32)
    p = strength
    if rng.random() < 0.5:
        out = out[:, ::-1].copy()  # coronal sections are nearly symmetric
    if rng.random() < 0.15 * p:
        out = missing_cortex(out, rng)
    if rng.random() < 0.1 * p:
        out = missing_cerebellum(out, rng)
    if rng.random() < 0.15 * p:
        out = hemisection(out, rng)
    if rng.random() < 0.6 * p:
        out = crop_and_pad(out, rng, min_keep=0.65)
    if rng.random() < 0.8 * p:
        out = random_affine(out, rng)
    if rng.random() < 0.5 * p:
        out = tiling_seams(out, rng)
    if rng.random() < 0.6 * p:
        out = uneven_staining(out, rng)
    if rng.random() < 0.4 * p:
        out = blur_or_noise(out, rng)
    if rng.random() < 0.3 * p:
        out = pepper_noise(out, rng)
    return np.ascontiguousarray(out, dtype=np.float32)
