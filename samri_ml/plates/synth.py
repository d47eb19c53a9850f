"""Synthetic coronal sections cut from the Allen CCFv3 annotation volume, at any angle.

The 48 real training sections cover plates 60-131 and one modality (confocal). The CCFv3
annotation (a label volume on the same grid as the plates: plate ``N`` is at antero-posterior
index ``527 - 4 (N - 1)`` of the 25 um grid, see ../shared/data/README.md) gives unlimited
training sections with an exact position and cutting angle: cut a plane, paint every region
with a random intensity (SynthSeg-style, so that no contrast is privileged), add texture, a
smooth staining gradient, blur or a low resolution (two-photon/MRI-like) and noise. The network
then has to rank plates from the layout of regions, which is what carries over between
modalities, instead of from the Nissl texture.

Everything here is numpy/scipy/OpenCV: fast to import and to test.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from samri_ml.errors import SamriMLError
from samri_ml.paths import shared_data_dir

ANNOTATION = Path("ccf") / "annotation_25_reoriented_2017.nrrd"
AP_FRONT_25UM = 527  # antero-posterior index (25 um grid) of plate 1
PLATE_STEP_25UM = 4  # plates are 100 um apart


def read_nrrd(path) -> np.ndarray:
    """A minimal NRRD reader (raw or gzip encoding, little endian): the array in the file's
    axis order (the first axis in ``sizes`` first)."""
    raw = Path(path).read_bytes()
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise SamriMLError(f"{path}: not an NRRD file")
    header = {}
    for line in raw[:end].decode("ascii", "replace").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        header[key.strip()] = value.strip().lstrip("=")
    dtypes = {"uint8": "u1", "uint16": "<u2", "uint32": "<u4", "int16": "<i2", "int32": "<i4",
              "float": "<f4", "double": "<f8", "unsigned short": "<u2", "unsigned int": "<u4"}
    if header.get("type") not in dtypes:
        raise SamriMLError(f"{path}: NRRD type {header.get('type')!r} not supported")
    if header.get("endian", "little") != "little":
        raise SamriMLError(f"{path}: big-endian NRRD not supported")
    sizes = [int(s) for s in header["sizes"].split()]
    body = raw[end + 2 :]
    encoding = header.get("encoding", "raw")
    if encoding in ("gzip", "gz"):
        body = gzip.decompress(body)
    elif encoding != "raw":
        raise SamriMLError(f"{path}: NRRD encoding {encoding!r} not supported")
    arr = np.frombuffer(body, dtype=dtypes[header["type"]], count=int(np.prod(sizes)))
    return arr.reshape(sizes[::-1]).transpose()  # NRRD's fastest axis is the first


@dataclass
class Annotation:
    """The CCFv3 annotation on a coarser grid, with compact labels ``0..K`` (0 = outside).

    ``volume`` axes: left-right, antero-posterior (index grows anteriorly), inferior-superior;
    ``step`` is the subsampling of the 25 um grid (2 -> 50 um voxels).
    """

    volume: np.ndarray
    step: int
    n_labels: int
    layer_groups: np.ndarray | None = None

    @classmethod
    def load(cls, path=None, step: int = 2) -> Annotation:
        path = Path(path) if path else shared_data_dir() / ANNOTATION
        if not path.exists():
            raise SamriMLError(f"CCF annotation not found: {path}")
        vol = read_nrrd(path)[::step, ::step, ::step]
        ids, compact = np.unique(vol, return_inverse=True)
        compact = compact.reshape(vol.shape).astype(np.uint16)
        if ids[0] != 0:  # keep 0 = outside the brain
            compact += 1
            ids = np.concatenate([[0], ids])
        groups = _layer_groups(ids, path.parent / "allen2017_colours.csv")
        return cls(np.ascontiguousarray(compact), step, int(compact.max()), groups)

    def ap_index(self, plate: float) -> float:
        """Antero-posterior index on this grid of (possibly fractional) plate ``plate``."""
        return (AP_FRONT_25UM - PLATE_STEP_25UM * (plate - 1)) / self.step

    def cut(self, plate: float, pitch_deg: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
        """Label section through ``plate``'s position, tilted by ``pitch_deg`` (dorsal part
        moves anterior) and ``yaw_deg`` (left part moves anterior) about the brain's centre.

        Returns a 2D uint16 array, superior up, left-right as the plates.
        """
        nx, ny, nz = self.volume.shape
        x = np.arange(nx, dtype=np.float32)
        z = np.arange(nz, dtype=np.float32)
        zz, xx = np.meshgrid(z, x, indexing="ij")
        a = (
            self.ap_index(plate)
            + np.tan(np.radians(yaw_deg)) * (xx - nx / 2)
            + np.tan(np.radians(pitch_deg)) * (zz - nz / 2)
        )
        coords = np.stack([xx, np.clip(a, 0, ny - 1), zz])
        sec = ndimage.map_coordinates(self.volume, coords, order=0, mode="constant", cval=0)
        return sec[::-1]  # rows: superior first


def _layer_groups(ids: np.ndarray, names_csv: Path) -> np.ndarray | None:
    """Compact label -> group: isocortical areas merged per layer ("..., layer 2/3" -> one
    group), every other region its own group. Nissl stains show layers, not areal borders.
    ``None`` without the names file."""
    import csv

    if not names_csv.exists():
        return None
    names = {}
    with open(names_csv, newline="") as f:
        for row in csv.DictReader(f):
            names[int(row["idx"])] = row["name"]
    groups = np.arange(len(ids))
    layer_group: dict[str, int] = {}
    for i, rid in enumerate(ids):
        m = re.search(r"layer\s*([0-9/ab]+)", names.get(int(rid), ""), re.IGNORECASE)
        if m:
            groups[i] = layer_group.setdefault(m.group(1).lower(), len(ids) + len(layer_group))
    return groups


def paint(
    labels: np.ndarray, n_labels: int, rng: np.random.Generator, groups: np.ndarray | None = None
) -> np.ndarray:
    """Random intensity per region, texture, staining gradient, blur or low resolution, noise.

    Returns a float32 image in [0, 1] with the background (label 0) dark, as the plates.
    """
    import cv2

    lut = rng.uniform(0.15, 1.0, n_labels + 1).astype(np.float32)
    if groups is not None and rng.random() < 0.6:
        lut = rng.uniform(0.15, 1.0, int(groups.max()) + 1).astype(np.float32)[groups]
    elif rng.random() < 0.4:  # fewer distinct classes: neighbouring ids share an intensity
        k = int(rng.integers(4, 16))
        lut = rng.uniform(0.15, 1.0, k).astype(np.float32)[rng.integers(0, k, n_labels + 1)]
    lut[0] = rng.uniform(0.0, 0.12)
    img = lut[labels]
    h, w = img.shape
    tissue = labels > 0
    # cell-like texture and a smooth staining gradient
    tex = rng.normal(1.0, rng.uniform(0.05, 0.35), img.shape).astype(np.float32)
    img = img * np.where(tissue, tex, 1.0)
    grad = cv2.resize(rng.normal(0, 1, (4, 4)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    img = img * np.exp(rng.uniform(0, 0.4) * grad)
    # resolution: sharp (Nissl-like), blurred, or low resolution (two-photon/MRI templates)
    r = rng.random()
    if r < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 2.0)))
    elif r < 0.7:
        f = rng.uniform(0.15, 0.5)
        small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))),
                           interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = img + rng.normal(0, rng.uniform(0.0, 0.05), img.shape).astype(np.float32)
    img = np.clip(img, 0, None)
    return (img / max(float(img.max()), 1e-6)).astype(np.float32)


class SectionSynth:
    """Draws synthetic sections ``(uint8 image, plate)`` for training.

    Pitch and yaw are normal with a standard deviation of half ``max_tilt_deg``, clipped at
    ``max_tilt_deg`` (most sections are cut nearly coronally); the section's label is the plate nearest to the
    plane's centre (its antero-posterior position jitters by up to half a plate).
    """

    def __init__(self, annotation: Annotation, max_tilt_deg: float = 10.0, upsample: int = 2):
        self.ann = annotation
        self.max_tilt = max_tilt_deg
        self.upsample = upsample

    def __call__(self, plate: int, rng: np.random.Generator) -> np.ndarray:
        import cv2

        pos = plate + rng.uniform(-0.45, 0.45)
        pitch, yaw = np.clip(rng.normal(0, self.max_tilt / 2, 2), -self.max_tilt, self.max_tilt)
        lab = self.ann.cut(pos, pitch, yaw)
        if self.upsample > 1:
            h, w = lab.shape
            lab = cv2.resize(lab, (w * self.upsample, h * self.upsample),
                             interpolation=cv2.INTER_NEAREST)
        img = paint(lab, self.ann.n_labels, rng, self.ann.layer_groups)
        return np.round(255 * img).astype(np.uint8)


def template_slice(volume: np.ndarray, plate: int, upsample: int = 8) -> np.ndarray:
    """The coronal slice through ``plate`` of a 200 um volume on the CCF grid, as a uint8 image.

    ``volume`` has axes (superior-inferior, antero-posterior, right-left) as
    ../shared/data/mri/templates/average_template_200um.nii.gz (the Allen two-photon average),
    67 slices from the anterior end; plates are 100 um apart, so plate N is at slice
    ``66 - (N - 1) / 2``, rounded (the true plate of a 200 um slice is known to +-1 plate).
    The slice is turned superior up, scaled to 0-255 and upsampled (cubic) ``upsample`` times.
    """
    import cv2

    j = int(round(volume.shape[1] - 1 - (plate - 1) / 2))
    if not 0 <= j < volume.shape[1]:
        raise SamriMLError(f"plate {plate} is outside the volume's {volume.shape[1]} slices")
    sl = np.asarray(volume[::-1, j, :], dtype=np.float64)  # superior up
    sl = (255 * sl / max(sl.max(), 1)).astype(np.uint8)
    size = (sl.shape[1] * upsample, sl.shape[0] * upsample)
    return cv2.resize(sl, size, interpolation=cv2.INTER_CUBIC)
