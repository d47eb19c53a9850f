"""A deterministic mouse-head phantom and a small BIDS dataset made from it, with known ground truth.

Everything here is pure numpy/scipy/nibabel and fast (the whole dataset takes seconds).

The anatomy is a set of smooth implicit shapes (approximate signed distance functions of
ellipsoids, blended with a smooth minimum), evaluated at any world point (mm, RAS+), so the same
model renders the template, any subject (through a known pose and deformation) and any contrast
without interpolating images:

* brain: cerebrum (cortex, corpus callosum / external capsule band, internal capsule, striatum,
  deep grey matter, hippocampus, lateral/third/fourth ventricles), cerebellum with folia (fissures,
  arbor-vitae-like white matter, molecular layer), brainstem, olfactory bulbs;
* around it: cerebrospinal fluid rim, skull (thicker at the base), temporalis / jaw / neck muscle,
  skin; air is 0.

Contrasts (``contrast=``): ``'t2'`` (CSF bright, GM > WM, muscle darker than brain, bone dark),
``'t1'`` (WM > GM, CSF dark) and ``'epi'`` (T2*-weighted gradient-echo EPI: flatter contrast and
signal drop-out near the ear canals and the frontal sinus).

Coordinates: template world = model coordinates in mm, RAS+, origin at the centre of the
template grid (63 x 96 x 48 voxels of 0.2 mm, as SAMRI's dsurqec_200micron).

Subjects (:func:`make_subject`): a point ``x_s`` (mm) of the subject's anatomical scan shows the
template anatomy at ``x_t = D(A^-1 x_s)``, where ``A`` (``template_to_subject``, 4x4) is the pose,
``A = T(c + t) R S T(-c)`` (rotation ``R = Rz Ry Rx``, per-axis scale ``S``, translation ``t``,
centre ``c``), and ``D(y) = y + sum_k w_k exp(-|y - p_k|^2 / (2 sigma^2))`` a smooth deformation.
The functional run uses ``A_f = E A`` (``E`` a small extra rigid offset) and an EPI distortion
along the phase-encoding axis (y): ``x_s -> x_s + d(x_s) e_y`` before ``A_f^-1``.
:func:`subject_to_template_points` applies these maps from the stored pose JSON.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from samri_ml.errors import FULL_DISK_ERRNOS, SamriMLError
from samri_ml.lock import LOCK_NAME, OutputLock

__all__ = [
    "BRAIN_LABELS",
    "CONTRASTS",
    "LABELS",
    "HeadParams",
    "bias_field",
    "deformation_displacement",
    "ellipsoid_sdf",
    "head_model",
    "is_current_example",
    "make_subject",
    "make_template",
    "pose_matrix",
    "random_pose",
    "render_head",
    "rician",
    "rotation_matrix",
    "slice_timing",
    "smooth_max",
    "smooth_min",
    "subject_to_template_points",
    "write_example_dataset",
]

#: label index -> name (the dseg of the template and of the ground truth)
LABELS: dict[int, str] = {
    0: "background",
    1: "cortex",
    2: "white_matter",
    3: "striatum",
    4: "deep_grey_matter",
    5: "hippocampus",
    6: "ventricles",
    7: "cerebellum",
    8: "brainstem",
    9: "olfactory_bulb",
    10: "csf",
    11: "skull",
    12: "muscle",
    13: "skin",
}
#: labels that make up the brain mask (brain tissue and ventricles; not the CSF rim)
BRAIN_LABELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
GREY_LABELS: tuple[int, ...] = (1, 3, 4, 5, 7, 9)

#: mean intensity of each label per contrast (arbitrary units, CSF ~ 1000 on T2)
CONTRASTS: dict[str, dict[int, float]] = {
    "t2": {0: 0, 1: 560, 2: 330, 3: 505, 4: 470, 5: 610, 6: 1000, 7: 525, 8: 400, 9: 600,
           10: 950, 11: 45, 12: 240, 13: 430},
    "t1": {0: 0, 1: 430, 2: 620, 3: 460, 4: 500, 5: 420, 6: 120, 7: 470, 8: 540, 9: 410,
           10: 150, 11: 60, 12: 380, 13: 560},
    "epi": {0: 0, 1: 540, 2: 440, 3: 520, 4: 505, 5: 560, 6: 720, 7: 525, 8: 465, 9: 560,
            10: 700, 11: 40, 12: 200, 13: 250},
}  # fmt: skip
#: how strongly the T2-like micro-structure (layers, folia, bundles) shows in each contrast
_TEXTURE_SIGN = {"t2": 1.0, "t1": -0.6, "epi": 0.5}

TEMPLATE_SHAPE: tuple[int, int, int] = (63, 96, 48)
TEMPLATE_ZOOM = 0.2
TEMPLATE_NAME = "Phantom"
GENERATOR = "samri_ml-example"
MANIFEST = ".samri_ml-example.json"


@dataclass(frozen=True)
class HeadParams:
    """Shape parameters of the head phantom (defaults: the template).

    Attributes
    ----------
    scale : tuple of float
        Per-axis scale of the whole head (x, y, z).
    ventricle_scale : float
        Width/height factor of the ventricles.
    cortex_mm, csf_mm, skull_mm, skin_mm : float
        Thickness of the cortex, the CSF rim, the skull vault and the skin (mm).
    muscle_scale : float
        Size factor of the temporalis muscles.
    folia : int
        Number of cerebellar folia around a full turn.
    texture_seed : int
        Seed of the smooth low-amplitude intensity texture.
    texture_amplitude : float
        Relative amplitude of that texture.
    """

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ventricle_scale: float = 1.0
    cortex_mm: float = 0.85
    csf_mm: float = 0.12
    skull_mm: float = 0.3
    skin_mm: float = 0.2
    muscle_scale: float = 1.0
    folia: int = 16
    texture_seed: int = 0
    texture_amplitude: float = 0.03


# --------------------------------------------------------------------------- pure geometry


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation ``R = Rz(c) Ry(b) Rx(a)`` for ``angles_deg = (a, b, c)`` about x, y, z (degrees)."""
    a, b, c = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def pose_matrix(
    rotation_deg: Sequence[float] = (0, 0, 0),
    translation_mm: Sequence[float] = (0, 0, 0),
    scale: Sequence[float] = (1, 1, 1),
    center_mm: Sequence[float] = (0, 0, 0),
) -> np.ndarray:
    """4x4 affine ``A = T(c + t) R S T(-c)``: scale and rotate about ``c``, then translate."""
    c = np.asarray(center_mm, dtype=float)
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rotation_deg) @ np.diag(np.asarray(scale, dtype=float))
    m[:3, 3] = c + np.asarray(translation_mm, dtype=float) - m[:3, :3] @ c
    return m


def ellipsoid_sdf(x, y, z, center, axes, angles_deg=None):
    """Approximate signed distance (mm) to an ellipsoid, negative inside.

    ``d = k0 (k0 - 1) / k1`` with ``k0 = |q / a|``, ``k1 = |q / a^2|`` and ``q`` the point in the
    ellipsoid's frame (first-order exact near the surface).
    """
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    if angles_deg is not None and any(angles_deg):
        r = rotation_matrix(angles_deg).astype(np.float32)  # local -> world, so local = r.T d
        dx, dy, dz = (
            r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
            r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
            r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
        )
    a, b, c = axes
    u, v, w = dx / a, dy / b, dz / c
    k0 = np.sqrt(u * u + v * v + w * w)
    k1 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def smooth_min(a, b, k: float):
    """Polynomial smooth minimum (blended union of two distance fields), ``k`` in mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def smooth_max(a, b, k: float):
    """Smooth maximum (blended intersection), ``-smooth_min(-a, -b, k)``."""
    return -smooth_min(-a, -b, k)


def _texture(x, y, z, seed: int, n: int = 6):
    """Smooth random field with unit standard deviation (sum of ``n`` plane waves, 1.5-4 mm)."""
    rng = np.random.default_rng([seed, 7])
    out = np.zeros_like(x)
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        k = 2 * np.pi / rng.uniform(1.5, 4.0)
        out += np.cos(k * (d[0] * x + d[1] * y + d[2] * z) + rng.uniform(0, 2 * np.pi))
    return out * np.float32(math.sqrt(2.0 / n))


def head_model(x, y, z, head: HeadParams | None = None, contrasts: Sequence[str] = ("t2",)):
    """Labels and intensities of the phantom at world points (mm, template frame).

    Parameters
    ----------
    x, y, z : ndarray
        Coordinates in mm (any common shape), RAS+.
    head : HeadParams
        Shape parameters (default: the template's).
    contrasts : sequence of {'t2', 't1', 'epi'}
        Which intensity images to compute.

    Returns
    -------
    labels : ndarray of uint8
        :data:`LABELS` index per point.
    intensity : dict
        contrast -> float32 intensity per point.
    """
    head = head or HeadParams()
    for c in contrasts:
        if c not in CONTRASTS:
            raise ValueError(f"contrast {c!r}: expected one of {sorted(CONTRASTS)}")
    f32 = np.float32
    sx, sy, sz = head.scale
    x = np.asarray(x, dtype=f32) / f32(sx)
    y = np.asarray(y, dtype=f32) / f32(sy)
    z = np.asarray(z, dtype=f32) / f32(sz)
    ax = np.abs(x)
    vs = head.ventricle_scale

    # -- brain parts
    cerebrum = smooth_min(
        smooth_min(
            ellipsoid_sdf(x, y, z, (0, 3.4, 0.1), (3.4, 2.4, 2.5)),  # frontal
            ellipsoid_sdf(x, y, z, (0, 0.8, 0.45), (4.5, 3.2, 2.95)),
            1.0,
        ),
        ellipsoid_sdf(x, y, z, (0, -1.9, 0.1), (4.9, 2.5, 2.9)),  # temporal/occipital
        1.0,
    )
    # interhemispheric fissure: a 0.24 mm slab down to the corpus callosum, deeper in front/back
    t = head.cortex_mm
    z_cut = 2.2 - 3.5 * np.clip((np.abs(y - 0.3) - 2.6) / 1.4, 0, 1) ** 1.5
    # cortical depth: the fissure counts only above z_cut + t, so the callosum crosses under it
    depth = -np.maximum(cerebrum, -np.maximum(ax - 0.12, z_cut + t - z))
    cerebrum = np.maximum(cerebrum, -np.maximum(ax - 0.12, z_cut - z))
    midbrain = ellipsoid_sdf(x, y, z, (0, -3.4, -0.3), (2.3, 2.0, 1.9))
    stem = ellipsoid_sdf(x, y, z, (0, -4.9, -1.85), (2.0, 3.3, 1.55), (15, 0, 0))
    cb_c = (-5.55, 0.15)
    cereb = ellipsoid_sdf(x, y, z, (0, cb_c[0], cb_c[1]), (3.1, 1.85, 2.3))
    theta = np.arctan2(z - f32(cb_c[1] - 0.5), y - f32(cb_c[0] + 0.3))
    folium = np.cos(head.folia * theta)
    cereb = cereb + f32(0.3) * np.maximum(folium, 0) ** 6  # fissures between folia
    paraf = ellipsoid_sdf(ax, y, z, (3.25, -5.3, -0.75), (0.6, 0.6, 0.65))
    cereb = np.minimum(cereb, paraf)
    bulb = ellipsoid_sdf(ax, y, z, (0.95, 6.2, -0.35), (1.0, 1.7, 1.3), (-10, 0, 0))

    brain = smooth_min(smooth_min(cerebrum, stem, 0.6), midbrain, 0.4)
    brain = smooth_min(brain, cereb, 0.15)
    brain = smooth_min(brain, bulb, 0.3)
    parts = np.stack([cerebrum, cereb, stem, bulb, midbrain])
    part = np.argmin(parts, axis=0)
    del parts

    # -- envelope (fills the crevices with CSF), skull, head
    env = smooth_min(smooth_min(smooth_min(cerebrum, stem, 1.0), cereb, 0.8), bulb, 1.0)
    env = np.minimum(env, brain)
    skull_th = head.skull_mm * (1 + 1.2 * np.clip((-z - 1.5) / 2.0, 0, 1))
    outer_skull = env - head.csf_mm - skull_th
    ms = head.muscle_scale
    soft = ellipsoid_sdf(ax, y, z, (4.55, -0.6, 0.2), (1.7 * ms, 3.4 * ms, 2.6 * ms), (0, -8, 0))
    soft = np.minimum(soft, ellipsoid_sdf(x, y, z, (0, 1.2, -5.4), (5.2, 8.2, 2.7)))  # jaw
    soft = np.minimum(soft, ellipsoid_sdf(x, y, z, (0, -9.0, -1.6), (4.3, 3.2, 3.4)))  # neck
    soft = np.minimum(soft, ellipsoid_sdf(x, y, z, (0, 8.9, -1.6), (2.6, 3.0, 2.2)))  # snout
    headf = smooth_min(outer_skull - head.skin_mm, soft, 0.7)

    labels = np.zeros(x.shape, dtype=np.uint8)
    labels[headf < 0] = 12
    labels[(headf < 0) & (headf > -head.skin_mm)] = 13
    labels[outer_skull < 0] = 11
    labels[env < head.csf_mm] = 10

    # -- inside the brain
    inside = brain < 0
    tex = np.zeros(x.shape, dtype=f32)
    lab = np.full(x.shape, 4, dtype=np.uint8)  # deep grey matter by default
    cortex = (depth < t) & ((z > -1.9) | (ax > 2.6))
    lab[cortex] = 1
    tex[cortex] = (0.1 * (1 - depth / t) - 0.04)[cortex]
    band = (depth >= t) & (depth < t + 0.3) & (z > -0.2 - 0.35 * ax) & (y > -3.5) & (y < 3.7)
    band &= (ax > 0.9) | (z_cut > 1.2)  # no white-matter sheet along the deep fissure
    lab[band] = 2
    deep = depth >= t + 0.3
    striatum = (ellipsoid_sdf(ax, y, z, (2.0, 1.9, 0.1), (1.35, 1.7, 1.5)) < 0) & deep
    lab[striatum] = 3
    bundles = np.sin(7.5 * x) * np.sin(7.5 * y + 1.0) * np.sin(7.5 * z + 2.0)
    tex[striatum] = (-0.18 * np.clip((bundles - 0.25) / 0.6, 0, 1))[striatum]
    capsule = ellipsoid_sdf(ax, y, z, (2.4, -0.5, -0.7), (0.35, 1.4, 1.0), (0, -20, 0)) < 0
    lab[capsule & deep] = 2
    hippo = smooth_min(
        smooth_min(
            ellipsoid_sdf(ax, y, z, (1.6, -2.0, 1.0), (1.4, 1.1, 0.5), (0, 12, 0)),
            ellipsoid_sdf(ax, y, z, (2.5, -2.6, 0.3), (0.8, 0.9, 0.8)),
            0.4,
        ),
        ellipsoid_sdf(ax, y, z, (3.0, -3.0, -0.8), (0.6, 0.9, 1.1), (0, -20, 0)),
        0.4,
    )
    hip = (hippo < 0) & (depth >= t + 0.25)
    lab[hip] = 5
    tex[hip] = (0.05 * np.cos(2 * np.pi * hippo / 0.6))[hip]  # pyramidal/molecular layering
    vent = ellipsoid_sdf(ax, y, z, (1.1, 1.0, 1.25), (0.25 * vs, 1.9, 0.55 * vs), (0, 25, 0))
    vent = np.minimum(vent, ellipsoid_sdf(x, y, z, (0, -1.5, -0.7), (0.12, 1.3, 1.0 * vs)))
    vent = np.minimum(vent, ellipsoid_sdf(x, y, z, (0, -3.6, -0.6), (0.12, 1.1, 0.14), (15, 0, 0)))
    vent = np.minimum(vent, ellipsoid_sdf(x, y, z, (0, -4.75, -1.05), (0.75 * vs, 0.45, 0.22)))

    lab_cb = np.full(x.shape, 7, dtype=np.uint8)
    dcb = -cereb
    arbor = (dcb > 1.5) | ((dcb > 0.55) & (folium < -0.65))
    lab_cb[arbor] = 2
    tex_cb = np.where(dcb < 0.18, f32(0.1), f32(-0.06))

    dob = -bulb
    tex_ob = np.where(dob < 0.25, f32(0.08), np.where(dob > 0.6, f32(-0.1), f32(0)))

    lab = np.where(part == 1, lab_cb, lab)
    lab[part == 2] = 8
    lab[part == 3] = 9
    mid = (part == 4) & ~hip
    lab[mid] = 4
    tex = np.where(part == 1, tex_cb, np.where(part == 3, tex_ob, tex))
    tex[(part == 2) | mid] = 0
    lab[vent < 0] = 6
    labels[inside] = lab[inside]
    tex[~inside] = 0

    smooth = _texture(x, y, z, head.texture_seed) * f32(head.texture_amplitude)
    out = {}
    for c in contrasts:
        lut = np.array([CONTRASTS[c].get(i, 0) for i in range(256)], dtype=f32)
        img = lut[labels] * (1 + f32(_TEXTURE_SIGN[c]) * tex) * (1 + smooth)
        if c == "epi":  # susceptibility drop-out at the ear canals and the frontal sinus
            for cx, cy, cz, s in ((4.3, -4.0, -3.0, 0.9), (-4.3, -4.0, -3.0, 0.9),
                                  (0.0, 8.0, 0.8, 0.8)):  # fmt: skip
                r2 = (x - f32(cx)) ** 2 + (y - f32(cy)) ** 2 + (z - f32(cz)) ** 2
                img *= 1 - f32(0.7) * np.exp(-r2 / f32(2 * s * s))
        out[c] = img.astype(f32)
    return labels, out


# --------------------------------------------------------------------------- rendering


def _grid_points(shape, affine, offset=(0.0, 0.0, 0.0), sl=slice(None)):
    """World coordinates (x, y, z) of the voxels ``i`` of a grid (flat index slice ``sl``)."""
    n = int(np.prod(shape))
    idx = np.arange(n)[sl]
    ijk = np.stack(np.unravel_index(idx, shape)).astype(np.float64)
    ijk += np.asarray(offset, dtype=float)[:, None]
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return xyz.astype(np.float32)


def render_head(
    shape: Sequence[int],
    affine: np.ndarray,
    *,
    contrasts: Sequence[str] = ("t2",),
    head: HeadParams | None = None,
    mapping: Callable | None = None,
    supersample: int | Sequence[int] = 1,
    chunk: int = 400_000,
):
    """Render the phantom on a grid.

    Parameters
    ----------
    shape, affine
        The output grid (voxel -> world mm, RAS+).
    contrasts : sequence of {'t2', 't1', 'epi'}
    head : HeadParams
    mapping : callable, optional
        ``mapping(xyz) -> xyz``: from the grid's world coordinates (3, N) to template
        coordinates (pose, deformation...). Identity if None.
    supersample : int or 3 ints
        Sub-samples per voxel and axis; intensities are averaged over them (partial volume) in
        the voxels at a label edge or in textured tissue. Labels are taken at voxel centres.

    Returns
    -------
    labels : ndarray uint8, shape ``shape``
    images : dict contrast -> float32 ndarray, shape ``shape``
    """
    shape = tuple(int(s) for s in shape)
    ss = np.broadcast_to(np.asarray(supersample, dtype=int), (3,))
    offsets = np.array([
        ((i + 0.5) / ss[0] - 0.5, (j + 0.5) / ss[1] - 0.5, (k + 0.5) / ss[2] - 0.5)
        for i in range(ss[0]) for j in range(ss[1]) for k in range(ss[2])
    ])  # fmt: skip
    n = int(np.prod(shape))
    labels = np.zeros(n, dtype=np.uint8)
    images = {c: np.zeros(n, dtype=np.float32) for c in contrasts}
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        pts = _grid_points(shape, affine, sl=sl)
        if mapping is not None:
            pts = mapping(pts)
        labels[sl], ims = head_model(*pts, head=head, contrasts=contrasts)
        for c in contrasts:
            images[c][sl] = ims[c]
    labels = labels.reshape(shape)
    if len(offsets) > 1:
        # partial volume where it matters: voxels at a label edge or in textured tissue
        edge = np.isin(labels, (2, 3, 5, 7, 9))
        for ax in range(3):
            a, b = [slice(None)] * 3, [slice(None)] * 3
            a[ax], b[ax] = slice(1, None), slice(None, -1)
            diff = labels[tuple(a)] != labels[tuple(b)]
            edge[tuple(a)] |= diff
            edge[tuple(b)] |= diff
        todo = np.flatnonzero(edge)
        ijk = np.stack(np.unravel_index(todo, shape)).astype(np.float64)
        for start in range(0, todo.size, max(1, chunk // len(offsets))):
            part = ijk[:, start : start + max(1, chunk // len(offsets))]
            sub = (part[:, None, :] + offsets.T[:, :, None]).reshape(3, -1)
            pts = (affine[:3, :3] @ sub + affine[:3, 3:4]).astype(np.float32)
            if mapping is not None:
                pts = mapping(pts)
            _, ims = head_model(*pts, head=head, contrasts=contrasts)
            idx = todo[start : start + part.shape[1]]
            for c in contrasts:
                images[c][idx] = ims[c].reshape(len(offsets), -1).mean(0)
    return labels, {c: v.reshape(shape) for c, v in images.items()}


def template_affine(shape=TEMPLATE_SHAPE, zoom: float = TEMPLATE_ZOOM) -> np.ndarray:
    """RAS+ affine of a grid of ``zoom`` mm voxels whose centre is world (0, 0, 0)."""
    aff = np.diag([zoom, zoom, zoom, 1.0])
    aff[:3, 3] = -(np.asarray(shape, dtype=float) - 1) / 2 * zoom
    return aff


def _nifti(data, affine, *, code: int = 1, tr: float | None = None, intent: str | None = None):
    import nibabel as nb

    img = nb.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms(img.header.get_zooms()[:3] + (float(tr),))
    if intent:
        img.header.set_intent(intent)
    return img


def make_template(
    seed: int = 0,
    *,
    head: HeadParams | None = None,
    shape: Sequence[int] = TEMPLATE_SHAPE,
    zoom: float = TEMPLATE_ZOOM,
    contrasts: Sequence[str] = ("t2", "epi"),
    supersample: int = 2,
) -> dict:
    """The phantom template: intensity images, brain mask and label map on one RAS+ grid.

    Parameters
    ----------
    seed : int
        Seed of the smooth intensity texture (``head.texture_seed`` is set to it).
    head : HeadParams
    shape, zoom
        Grid (default 63 x 96 x 48 voxels of 0.2 mm).
    contrasts : sequence of {'t2', 't1', 'epi'}
        ``'epi'`` is blurred to the resolution of a 0.3 x 0.3 x 0.6 mm EPI (FWHM = voxel size).
    supersample : int
        Sub-samples per voxel and axis for the intensities.

    Returns
    -------
    dict
        ``'T2w'``, ``'T1w'``, ``'bold'`` (those asked for; float32), ``'mask'`` (uint8 brain mask,
        brain and ventricles), ``'dseg'`` (uint8 labels, :data:`LABELS`) as nibabel images, and
        ``'head'``: the :class:`HeadParams` used (pass it to :func:`make_subject`).
    """
    from scipy import ndimage

    head = replace(head or HeadParams(), texture_seed=int(seed))
    affine = template_affine(shape, zoom)
    labels, ims = render_head(
        shape, affine, contrasts=contrasts, head=head, supersample=supersample
    )
    out: dict = {"head": head}
    names = {"t2": "T2w", "t1": "T1w", "epi": "bold"}
    for c in contrasts:
        img = ims[c]
        if c == "epi":
            sigma = np.array([0.3, 0.3, 0.6]) / 2.3548 / zoom
            img = ndimage.gaussian_filter(img, sigma, mode="nearest")
        out[names[c]] = _nifti(img.astype(np.float32), affine, code=2)
    out["mask"] = _nifti(np.isin(labels, BRAIN_LABELS).astype(np.uint8), affine, code=2)
    out["dseg"] = _nifti(labels, affine, code=2, intent="label")
    return out


# --------------------------------------------------------------------------- subjects


def random_pose(
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 10.0,
    max_translation_mm: float = 1.0,
    max_scale: float = 0.05,
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> dict:
    """Random pose parameters and matrix (uniform in the given ranges, per axis)."""
    rot = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    tra = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    sca = 1 + rng.uniform(-max_scale, max_scale, 3)
    m = pose_matrix(rot, tra, sca, center_mm)
    return {
        "rotation_deg": rot.tolist(),
        "translation_mm": tra.tolist(),
        "scale": sca.tolist(),
        "center_mm": [float(c) for c in center_mm],
        "template_to_subject": m.tolist(),
        "subject_to_template": np.linalg.inv(m).tolist(),
    }


def deformation_displacement(points, centers, sigma: float, weights):
    """Displacement ``u(y) = sum_k w_k exp(-|y - p_k|^2 / (2 sigma^2))`` (mm) at points (3, N)."""
    pts = np.asarray(points, dtype=np.float64)
    c = np.asarray(centers, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    u = np.zeros_like(pts)
    for ck, wk in zip(c, w, strict=True):
        g = np.exp(-((pts - ck[:, None]) ** 2).sum(0) / (2 * sigma * sigma))
        u += wk[:, None] * g
    return u


def bias_field(points, center, coefficients, scale_mm: float = 8.0):
    """Multiplicative bias ``b = exp(sum_j c_j P_j((x - x0) / h))``, ``P`` the 9 monomials of
    degree 1 and 2 (x, y, z, x^2, y^2, z^2, xy, xz, yz), at points (3, N)."""
    q = (
        np.asarray(points, dtype=np.float64) - np.asarray(center, dtype=float)[:, None]
    ) / scale_mm
    x, y, z = q
    basis = np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z])
    return np.exp(np.tensordot(np.asarray(coefficients, dtype=float), basis, axes=1))


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician magnitude ``sqrt((s + sigma n1)^2 + (sigma n2)^2)``, ``n1, n2 ~ N(0, 1)``."""
    n1 = rng.standard_normal(signal.shape, dtype=np.float32)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2)


def slice_timing(n_slices: int, tr: float) -> list[float]:
    """Interleaved ascending acquisition (0, 2, 4, ..., 1, 3, ...): onset (s) of each slice."""
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    times = [0.0] * n_slices
    for pos, s in enumerate(order):
        times[s] = round(pos * tr / n_slices, 6)
    return times


def _distortion_shift(points, params: dict) -> np.ndarray:
    """EPI shift (mm) along y: a smooth bump near the skull base plus a gentle gradient in z."""
    x, y, z = np.asarray(points, dtype=np.float64)
    c = params["center_mm"]
    bump = np.exp(
        -((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * params["sigma_mm"] ** 2)
    )
    return params["amplitude_mm"] * bump + params["gradient_mm_per_mm"] * (z - c[2])


def subject_to_template_points(points, pose: dict, *, modality: str = "anat") -> np.ndarray:
    """Map world points (3, N) of a subject's scan to the template frame (mm).

    Parameters
    ----------
    points : array (3, N)
        World coordinates (mm, RAS+) in the subject's anatomical (``'anat'``) or functional
        (``'func'``) scan.
    pose : dict
        The subject's pose JSON (``derivatives/groundtruth/.../*_pose.json``) or
        ``make_subject(...)['pose']``.
    modality : {'anat', 'func'}
        ``'func'`` uses the functional pose and the EPI distortion.

    Returns
    -------
    ndarray (3, N)
        ``x_t = D(A^-1 x)``, ``D(y) = y + u(y)`` (:func:`deformation_displacement`); for
        ``'func'``: ``x_t = D(A_f^-1 (x + d(x) e_y))``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if modality == "func":
        pts = pts.copy()
        pts[1] += _distortion_shift(pts, pose["func"]["distortion"])
        inv = np.asarray(pose["func"]["subject_to_template"])
    elif modality == "anat":
        inv = np.asarray(pose["subject_to_template"])
    else:
        raise ValueError(f"modality {modality!r}: expected 'anat' or 'func'")
    y = inv[:3, :3] @ pts + inv[:3, 3:4]
    d = pose["deformation"]
    return y + deformation_displacement(y, d["centers_mm"], d["sigma_mm"], d["weights_mm"])


def _bold_timecourses(rng, n_labels: int, f_lo=0.02, f_hi=0.2, n=4):
    freqs = rng.uniform(f_lo, f_hi, (n_labels, n))
    phases = rng.uniform(0, 2 * np.pi, (n_labels, n))

    def ts(label: int, t):
        t = np.asarray(t, dtype=np.float64)[..., None]
        return np.cos(2 * np.pi * freqs[label] * t + phases[label]).sum(-1) * math.sqrt(2.0 / n)

    return ts, freqs, phases


def make_subject(
    template: dict,
    seed: int | Sequence[int],
    *,
    n_volumes: int = 20,
    tr: float = 1.0,
    head: HeadParams | None = None,
    max_rotation_deg: float = 10.0,
    max_translation_mm: float = 1.0,
    max_scale: float = 0.05,
    displacement_mm: tuple[float, float] = (0.3, 0.4),
    bias: float = 0.2,
    snr: tuple[float, float] = (20.0, 30.0),
    func_zooms: Sequence[float] = (0.3, 0.3, 0.6),
    bold_amplitude: float = 0.02,
) -> dict:
    """A subject made from the template with a known pose, deformation, bias field and noise.

    Parameters
    ----------
    template : dict
        :func:`make_template` output (its grid and ``'head'`` are used).
    seed : int or sequence of int
        Seed of everything random about this subject.
    n_volumes, tr : int, float
        Length of the BOLD run and its repetition time (s).
    head : HeadParams
        Overrides ``template['head']``.
    max_rotation_deg, max_translation_mm, max_scale
        Pose ranges (uniform per axis) about the template centre.
    displacement_mm : (float, float)
        The smooth deformation's largest displacement over the brain is drawn in this range.
    bias : float
        Bias field amplitude: ``|log b| <= log(1 + bias)`` over the head.
    snr : (float, float)
        Signal-to-noise ratio (mean brain signal / noise sigma) drawn in this range.
    func_zooms : 3 floats
        Functional voxel size (mm); slices along z.
    bold_amplitude : float
        Relative BOLD fluctuation in grey matter (half of it in other brain tissue).

    Returns
    -------
    dict
        nibabel images ``'T2w'`` (int16), ``'bold'`` (int16, 4D), ``'mask'``, ``'dseg'`` (anat
        grid), ``'func_mask'``, ``'func_dseg'`` (func grid); ``'pose'`` (JSON-able ground truth,
        see :func:`subject_to_template_points`), ``'T2w_json'``, ``'bold_json'`` (sidecars).
    """
    from scipy import ndimage

    head = head or template.get("head") or HeadParams()
    rng = np.random.default_rng(seed)
    t_img = template["mask"]
    t_shape = np.asarray(t_img.shape[:3])
    t_aff = t_img.affine
    t_centre = t_aff[:3, :3] @ ((t_shape - 1) / 2) + t_aff[:3, 3]

    pose = random_pose(
        rng, max_rotation_deg=max_rotation_deg, max_translation_mm=max_translation_mm,
        max_scale=max_scale, center_mm=t_centre,
    )  # fmt: skip
    a = np.asarray(pose["template_to_subject"])

    # smooth deformation, scaled so that its largest displacement in the brain is known
    brain_pts = np.argwhere(np.asarray(t_img.dataobj) > 0)[::7].T
    brain_pts = t_aff[:3, :3] @ brain_pts + t_aff[:3, 3:4]
    lo, hi = brain_pts.min(1), brain_pts.max(1)
    centres = rng.uniform(lo, hi, (16, 3))
    sigma_def = 2.0
    weights = rng.normal(size=(16, 3))
    u = deformation_displacement(brain_pts, centres, sigma_def, weights)
    target = rng.uniform(*displacement_mm)
    weights *= target / np.linalg.norm(u, axis=0).max()
    u_norm = np.linalg.norm(
        deformation_displacement(brain_pts, centres, sigma_def, weights), axis=0
    )
    pose["deformation"] = {
        "centers_mm": centres.tolist(),
        "sigma_mm": sigma_def,
        "weights_mm": weights.tolist(),
        "max_displacement_mm": float(u_norm.max()),
        "mean_displacement_mm": float(u_norm.mean()),
    }

    # anatomical grid: 0.2 mm, centred on the posed brain (own origin), shape jittered around
    # the template's but always holding the whole brain with a 1 mm margin
    zoom = float(t_img.header.get_zooms()[0])
    posed = a[:3, :3] @ brain_pts + a[:3, 3:4]
    a_centre = (posed.min(1) + posed.max(1)) / 2 + rng.uniform(-0.3, 0.3, 3)
    need = 2 * (np.abs(posed - a_centre[:, None]).max(1) + 1.0) / zoom
    a_shape = tuple(int(s) for s in np.maximum(t_shape + rng.integers(-2, 5, 3), np.ceil(need)))
    a_aff = np.diag([zoom, zoom, zoom, 1.0])
    a_aff[:3, 3] = np.round(a_centre - (np.asarray(a_shape) - 1) / 2 * zoom, 3)

    def anat_map(pts):
        return subject_to_template_points(pts, pose, modality="anat").astype(np.float32)

    labels, ims = render_head(a_shape, a_aff, contrasts=("t2",), head=head, mapping=anat_map)
    t2 = ndimage.gaussian_filter(ims["t2"], 0.5, mode="nearest")  # MR point-spread function

    # bias field (coil, scanner frame) and Rician noise
    coefs = rng.normal(size=9) * np.array([1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    pts = _grid_points(a_shape, a_aff)
    logb = np.log(bias_field(pts, a_centre, coefs)).reshape(a_shape)
    coefs *= math.log(1 + bias) / np.abs(logb[labels > 0]).max()
    b = bias_field(pts, a_centre, coefs).reshape(a_shape).astype(np.float32)
    brain = np.isin(labels, BRAIN_LABELS)
    snr_val = float(rng.uniform(*snr))
    sigma = float(t2[brain].mean() / snr_val)
    t2n = rician(t2 * b, sigma, rng)
    pose["bias"] = {"center_mm": a_centre.tolist(), "coefficients": coefs.tolist(),
                    "scale_mm": 8.0, "amplitude": bias}  # fmt: skip
    pose["noise"] = {"snr": snr_val, "sigma": sigma}

    # functional grid and pose: a small extra rigid offset, distortion along y (phase encoding)
    extra_rot = rng.uniform(-1.0, 1.0, 3)
    direction = rng.normal(size=3)
    extra_tra = direction / np.linalg.norm(direction) * rng.uniform(0.2, 0.4)
    posed_centre = a[:3, :3] @ t_centre + a[:3, 3]
    e = pose_matrix(extra_rot, extra_tra, (1, 1, 1), posed_centre)
    af = e @ a
    fz = np.asarray(func_zooms, dtype=float)
    f_shape = tuple(int(s) for s in np.ceil(np.asarray(a_shape) * zoom / fz - 1e-6))
    f_centre = a_centre + rng.uniform(-0.2, 0.2, 3)
    f_aff = np.diag([*fz, 1.0])
    f_aff[:3, 3] = np.round(f_centre - (np.asarray(f_shape) - 1) / 2 * fz, 3)
    skull_base = posed_centre + a[:3, :3] @ np.array([0.0, -3.0, -3.2])
    pose["func"] = {
        "extra_rotation_deg": extra_rot.tolist(),
        "extra_translation_mm": extra_tra.tolist(),
        "template_to_subject": af.tolist(),
        "subject_to_template": np.linalg.inv(af).tolist(),
        "distortion": {
            "axis": "y",
            "center_mm": skull_base.tolist(),
            "sigma_mm": 2.0,
            "amplitude_mm": float(rng.uniform(0.2, 0.3)),
            "gradient_mm_per_mm": float(rng.uniform(-0.02, 0.02)),
        },
    }

    def func_map(pts):
        return subject_to_template_points(pts, pose, modality="func").astype(np.float32)

    # partial volume per label: W[l] = mean over sub-samples of intensity * [label == l]
    ss = (2, 2, 3)
    offs = [((i + 0.5) / ss[0] - 0.5, (j + 0.5) / ss[1] - 0.5, (k + 0.5) / ss[2] - 0.5)
            for i in range(ss[0]) for j in range(ss[1]) for k in range(ss[2])]  # fmt: skip
    nf = int(np.prod(f_shape))
    n_lab = len(LABELS)
    weights_pv = np.zeros((n_lab, nf), dtype=np.float32)
    for off in offs:
        lab_s, im_s = head_model(*func_map(_grid_points(f_shape, f_aff, off)), head=head,
                                 contrasts=("epi",))  # fmt: skip
        np.add.at(weights_pv, (lab_s.astype(np.intp), np.arange(nf)), im_s["epi"] / len(offs))
    f_labels, _ = head_model(*func_map(_grid_points(f_shape, f_aff)), head=head, contrasts=())
    f_labels = f_labels.reshape(f_shape)
    weights_pv = weights_pv.reshape((n_lab, *f_shape))

    st = np.asarray(slice_timing(f_shape[2], tr))
    ts, freqs, phases = _bold_timecourses(rng, n_lab)
    amp = np.zeros(n_lab)
    amp[list(GREY_LABELS)] = bold_amplitude
    amp[[2, 6, 8]] = bold_amplitude / 2
    times = np.arange(n_volumes)[:, None] * tr + st[None, :]  # (T, Z): acquisition time
    fpts = _grid_points(f_shape, f_aff)
    fb = bias_field(fpts, a_centre, coefs).reshape(f_shape).astype(np.float32)
    static = weights_pv.sum(0)
    f_brain = np.isin(f_labels, BRAIN_LABELS)
    f_sigma = float(static[f_brain].mean() / snr_val)
    bold = np.empty((*f_shape, n_volumes), dtype=np.float32)
    ny = f_shape[1]
    for v in range(n_volumes):
        vol = static.copy()
        for lab_i in np.flatnonzero(amp):
            mod = (amp[lab_i] * ts(lab_i, times[v])).astype(np.float32)  # (Z,)
            vol += weights_pv[lab_i] * mod[None, None, :]
        vol = vol + np.float32(0.03) * np.roll(vol, ny // 2, axis=1)  # Nyquist ghost
        bold[..., v] = rician(vol * fb, f_sigma, rng)
    pose["bold"] = {"amplitude": amp.tolist(), "frequencies_hz": freqs.tolist(),
                    "phases_rad": phases.tolist(), "ghost": 0.03, "sigma": f_sigma}  # fmt: skip

    vox = zoom**3
    pose["brain_volume_mm3"] = float(brain.sum() * vox)
    pose["convention"] = (
        "RAS+ mm. x_subject = template_to_subject @ x_template (affine part). Exact map from a "
        "subject anat point x to the template: x_t = D(subject_to_template @ x), D(y) = y + sum_k "
        "w_k exp(-|y-p_k|^2/(2 sigma^2)) (deformation). func: x_t = D(func.subject_to_template @ "
        "(x + d(x) e_y)), d the EPI distortion. See samri_ml.example.subject_to_template_points."
    )

    def to_int16(arr):
        return np.clip(np.rint(arr), 0, 32767).astype(np.int16)

    t2_json = {
        "Manufacturer": "samri_ml phantom",
        "MagneticFieldStrength": 9.4,
        "PulseSequenceType": "RARE",
        "EchoTime": 0.033,
        "RepetitionTime": 2.5,
    }
    bold_json = {
        "TaskName": "rest",
        "RepetitionTime": float(tr),
        "SliceTiming": st.tolist(),
        "SliceEncodingDirection": "k",
        "PhaseEncodingDirection": "j",
        "EchoTime": 0.015,
        "MagneticFieldStrength": 9.4,
        "Manufacturer": "samri_ml phantom",
        "PulseSequenceType": "gradient-echo EPI",
    }
    return {
        "T2w": _nifti(to_int16(t2n), a_aff),
        "mask": _nifti(brain.astype(np.uint8), a_aff),
        "dseg": _nifti(labels, a_aff, intent="label"),
        "bold": _nifti(to_int16(bold), f_aff, tr=tr),
        "func_mask": _nifti(f_brain.astype(np.uint8), f_aff),
        "func_dseg": _nifti(f_labels, f_aff, intent="label"),
        "pose": pose,
        "T2w_json": t2_json,
        "bold_json": bold_json,
    }


# --------------------------------------------------------------------------- dataset


def _save(img, path: Path) -> None:
    """Write a NIfTI; ``.nii.gz`` with a zero gzip time stamp so that files are reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)


def _write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(out: Path) -> dict | None:
    try:
        man = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return man if isinstance(man, dict) and man.get("generator") == GENERATOR else None


def _settings(n_subjects: int, n_volumes: int, seed: int) -> dict:
    from samri_ml import __version__

    return {"seed": int(seed), "n_subjects": int(n_subjects), "n_volumes": int(n_volumes),
            "version": __version__}  # fmt: skip


def is_current_example(out_dir, n_subjects: int = 3, n_volumes: int = 20, seed: int = 0) -> bool:
    """True if ``out_dir`` holds a complete, unmodified example dataset made with these settings
    (checked against the SHA-256 sums in its manifest)."""
    out = Path(out_dir)
    manifest = _read_manifest(out) if out.is_dir() else None
    if manifest is None or manifest.get("settings") != _settings(n_subjects, n_volumes, seed):
        return False
    files = manifest.get("files", {})
    return bool(files) and all(
        (out / f).is_file() and _sha256(out / f) == h for f, h in files.items()
    )


def write_example_dataset(
    out_dir,
    n_subjects: int = 3,
    n_volumes: int = 20,
    seed: int = 0,
    *,
    force: bool = False,
) -> Path:
    """Write the example BIDS dataset (template, subjects, ground truth) to ``out_dir``.

    A folder written before by this function (it holds a ``.samri_ml-example.json`` manifest)
    is left untouched when it is complete and was made with the same settings, and is rewritten
    otherwise (only the files it lists are replaced or removed). Any other non-empty folder is
    refused unless ``force`` (then same-named files are overwritten, nothing is removed).
    While it writes, the folder is locked (:class:`~samri_ml.lock.OutputLock`, no file left
    after): another run into it is refused at once.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    SamriMLError
        ``out_dir`` is a file, or a non-empty folder that is not an example dataset, or another
        run is writing to it.
    """
    if n_subjects < 1 or n_volumes < 1:
        raise SamriMLError("need at least one subject and one volume")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SamriMLError(f"{out}: exists and is not a folder")

    fresh = not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir())
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        # two runs into one OUT_DIR: the second was refused as "not a samri_ml example
        # dataset" (the first one's files), or, rewriting one, failed on the files the first
        # removed ("give a writable OUT_DIR"); a run stopped removed the other's files
        with OutputLock(out, "OUT_DIR", remove=True):
            try:
                _write_files(out, n_subjects, n_volumes, seed, force, written)
            except (OSError, KeyboardInterrupt):
                # a full disk or a quota, Ctrl-C or SIGTERM: the files written so far are
                # removed (and the folders, where it was new or empty), so that the same
                # command can be run again; it was a bare "OSError: [Errno 28] No space left
                # on device" (an interrupt: a file cut short at its name), and the rerun
                # refused the folder left behind as "not a samri_ml example dataset"
                for path in written:
                    path.unlink(missing_ok=True)
                if fresh:
                    _remove_empty_folders(out)
                raise
    except (OSError, KeyboardInterrupt) as err:
        if fresh:  # now without its lock file: removed where nothing else is in it
            _remove_empty_folders(out)
        if isinstance(err, KeyboardInterrupt):
            raise
        failed = written[-1] if written else out
        full = err.errno in FULL_DISK_ERRNOS
        hint = "free some space, or give OUT_DIR on another disk" if full else (
            "give a writable OUT_DIR")
        raise SamriMLError(f"cannot write {failed} ({err.strerror or err}); nothing kept; "
                           f"hint: {hint}") from err
    return out


def _write_files(out: Path, n_subjects: int, n_volumes: int, seed: int, force: bool,
                 written: list[Path]) -> None:
    """:func:`write_example_dataset`'s work, its lock held; each file is added to ``written``
    before it is written."""
    from samri_ml import __version__

    settings = _settings(n_subjects, n_volumes, seed)
    manifest = _read_manifest(out)
    if manifest is not None:
        if not force and is_current_example(out, n_subjects, n_volumes, seed):
            return
        for f in manifest.get("files", {}):  # only what we wrote before
            p = out / f
            if p.is_file():
                p.unlink()
    elif any(p.name != LOCK_NAME for p in out.iterdir()) and not force:
        raise SamriMLError(
            f"{out}: folder is not empty and is not a samri_ml example dataset; hint: give a new "
            "or empty folder, or --force to write into it anyway"
        )

    def save(img, rel):
        written.append(out / rel)
        _save(img, out / rel)

    def save_json(obj, rel):
        written.append(out / rel)
        _write_json(obj, out / rel)

    def save_text(text, rel):
        written.append(out / rel)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)

    generated_by = [{"Name": GENERATOR, "Version": __version__,
                     "Description": f"mouse-head phantom, seed {seed}"}]  # fmt: skip
    save_json(
        {"Name": "samri_ml example: mouse head phantom", "BIDSVersion": "1.8.0",
         "DatasetType": "raw", "License": "CC0", "Authors": ["samri_ml"],
         "GeneratedBy": generated_by},
        "dataset_description.json",
    )  # fmt: skip
    subs = [f"{i + 1:02d}" for i in range(n_subjects)]
    save_text(
        "participant_id\tspecies\tstrain\n"
        + "".join(f"sub-{s}\tMus musculus\tphantom\n" for s in subs),
        "participants.tsv",
    )
    save_text("template/\nderivatives/\n", ".bidsignore")
    save_text(_README.format(n=n_subjects, v=n_volumes, seed=seed), "README")

    tpl = make_template(seed, contrasts=("t2", "epi"))
    tdir = "template"
    save(tpl["T2w"], f"{tdir}/tpl-{TEMPLATE_NAME}_T2w.nii.gz")
    save(tpl["bold"], f"{tdir}/tpl-{TEMPLATE_NAME}_bold.nii.gz")
    save(tpl["mask"], f"{tdir}/tpl-{TEMPLATE_NAME}_desc-brain_mask.nii.gz")
    save(tpl["dseg"], f"{tdir}/tpl-{TEMPLATE_NAME}_dseg.nii.gz")
    lut = "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in LABELS.items() if k)
    save_text(lut, f"{tdir}/tpl-{TEMPLATE_NAME}_dseg.tsv")
    tmask = np.asarray(tpl["mask"].dataobj)
    save_json(
        {"Name": f"{TEMPLATE_NAME}: samri_ml mouse-head phantom template", "seed": int(seed),
         "head": asdict(tpl["head"]), "RAS": True, "res_mm": TEMPLATE_ZOOM,
         "brain_volume_mm3": float(tmask.sum() * TEMPLATE_ZOOM**3), "GeneratedBy": generated_by},
        f"{tdir}/template_description.json",
    )  # fmt: skip

    gt = "derivatives/groundtruth"
    save_json(
        {"Name": "samri_ml example ground truth", "BIDSVersion": "1.8.0",
         "DatasetType": "derivative", "GeneratedBy": generated_by,
         "SourceDatasets": [{"URL": "../../"}]},
        f"{gt}/dataset_description.json",
    )  # fmt: skip
    save_text(lut, f"{gt}/dseg.tsv")
    for i, s in enumerate(subs):
        subj = make_subject(tpl, [int(seed), i + 1], n_volumes=n_volumes)
        base = f"sub-{s}/ses-1"
        stem = f"sub-{s}_ses-1"
        save(subj["T2w"], f"{base}/anat/{stem}_T2w.nii.gz")
        save_json(subj["T2w_json"], f"{base}/anat/{stem}_T2w.json")
        save(subj["bold"], f"{base}/func/{stem}_task-rest_bold.nii.gz")
        save_json(subj["bold_json"], f"{base}/func/{stem}_task-rest_bold.json")
        save(subj["mask"], f"{gt}/{base}/anat/{stem}_desc-brain_mask.nii.gz")
        save(subj["dseg"], f"{gt}/{base}/anat/{stem}_dseg.nii.gz")
        save(subj["func_mask"], f"{gt}/{base}/func/{stem}_task-rest_desc-brain_mask.nii.gz")
        save(subj["func_dseg"], f"{gt}/{base}/func/{stem}_task-rest_dseg.nii.gz")
        save_json(subj["pose"], f"{gt}/{base}/{stem}_pose.json")

    files = {p.relative_to(out).as_posix(): _sha256(p) for p in written}
    written.append(out / MANIFEST)  # last: a folder without it is never taken as complete
    _write_json({"generator": GENERATOR, "settings": settings, "files": files}, out / MANIFEST)


def _remove_empty_folders(root: Path) -> None:
    """``root`` and the folders under it, where (once their empty subfolders are gone) empty."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


_README = """\
samri_ml example dataset: a mouse-head phantom
===============================================

Made by `samri_ml-example` ({n} subjects, {v} BOLD volumes, seed {seed}); deterministic.

- template/: the phantom template (RAS+, 0.2 mm, 63 x 96 x 48): T2w, EPI-contrast (bold),
  brain mask (brain and ventricles) and label map (dseg, names in tpl-Phantom_dseg.tsv).
- sub-*/ses-1/anat: T2w, 0.2 mm; sub-*/ses-1/func: 4D BOLD (0.3 x 0.3 x 0.6 mm, TR 1 s,
  interleaved slices along z, phase encoding along y).
  Each subject is the template under a known random pose (rotation <= 10 deg, translation
  <= 1 mm, scale +-5 %), a smooth deformation (0.3-0.4 mm at most), a bias field (+-20 %) and
  Rician noise (SNR 20-30); the BOLD run has a small extra offset (0.2-0.4 mm), EPI distortion
  along y, a Nyquist ghost and a ~2 % BOLD-like fluctuation.
- derivatives/groundtruth: brain masks and label maps on each subject's anatomical and functional
  grids, and the pose (`*_pose.json`; see samri_ml.example.subject_to_template_points).
"""
