"""Which shipped plate model fits a section: a modality router (``--variant auto``).

The default embedding is trained on confocal sections and Nissl plates and does not transfer to
other modalities (two-photon: Top-5 20 %); the multimodal variant does (70 %) but is worse on
confocal sections. The embeddings are trained to ignore appearance, so the router looks at the
appearance itself: the radial power spectrum (:data:`N_BANDS` log-spaced bands, normalised to
their mean: texture and sharpness, not brightness) and the gradient statistics of the
preprocessed input (the network's own ``size`` x ``size`` image, so it costs one FFT), and a
logistic regression trained on confocal sections and atlas plates (with simulated partial
cuts) against synthetic sections cut from the CCF annotation and painted with random contrasts
(:mod:`samri_ml.plates.synth`). A section goes to the multimodal model only where the router is
confident (probability >= :data:`THRESHOLD`), as a confocal section sent there costs more than a
two-photon one kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from samri_ml.errors import SamriMLError

N_BANDS = 10
#: probability of "another modality" from which a section goes to the multimodal model
THRESHOLD = 0.9
ROUTER_NAME = "plates_router.json"


@lru_cache(maxsize=4)
def _band_map(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an ``n`` x ``n`` image's half spectrum (``rfft2``): each coefficient's band (0 ..
    N_BANDS - 1; N_BANDS: outside every band), its multiplicity in the full spectrum (1 or 2),
    and each band's coefficient count in the full spectrum."""
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    radius = np.hypot(fy, fx)
    edges = np.geomspace(1 / n, 0.5 * np.sqrt(2), N_BANDS + 1)
    band = np.digitize(radius, edges) - 1
    band[(band < 0) | (band >= N_BANDS)] = N_BANDS
    weight = np.full(radius.shape, 2.0)
    weight[:, 0] = 1  # the columns rfft2 keeps once
    if n % 2 == 0:
        weight[:, -1] = 1
    counts = np.bincount(band.ravel(), weights=weight.ravel(), minlength=N_BANDS + 1)
    return band.ravel(), weight.ravel(), counts[:N_BANDS]


def appearance_features(x: np.ndarray) -> np.ndarray:
    """Features of one preprocessed section ``(s, s)`` (float, as the network sees it):
    ``N_BANDS`` log mean powers of log-spaced radial frequency bands minus their mean, and the
    log mean and log standard deviation of the gradient magnitude (image standardised). About
    1 ms for 224 px (a half spectrum, one weighted count per band)."""
    from scipy import fft

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"expected a square 2D image, got shape {x.shape}")
    x = (x - x.mean()) / (x.std() + 1e-6)
    spec = fft.rfft2(x)
    power = (spec.real**2 + spec.imag**2).ravel()
    band, weight, counts = _band_map(x.shape[0])
    sums = np.bincount(band, weights=weight * power, minlength=N_BANDS + 1)[:N_BANDS]
    bands = np.log(sums / counts + 1e-9)
    bands -= bands.mean()
    gy, gx = np.gradient(x)
    g = np.hypot(gx, gy)
    return np.r_[bands, np.log(g.mean() + 1e-6), np.log(g.std() + 1e-6)]


@dataclass
class ModalityRouter:
    """Standardised logistic regression on :func:`appearance_features`."""

    mean: list
    scale: list
    coef: list
    intercept: float
    threshold: float = THRESHOLD
    size: int = 224
    notes: dict = field(default_factory=dict)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(another modality than confocal/Nissl) per row of ``features``."""
        z = (np.atleast_2d(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1 / (1 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def other_modality(self, prepped: np.ndarray) -> np.ndarray:
        """Probabilities for preprocessed sections ``(N, s, s)``."""
        return self.probability(np.stack([appearance_features(x) for x in prepped]))

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path) -> ModalityRouter:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise SamriMLError(f"{path}: not a plate modality router ({err})") from err


def fit_router(in_domain: list[np.ndarray], other: list[np.ndarray], prep, *, C: float = 0.1,
               threshold: float = THRESHOLD, size: int = 224, notes: dict | None = None
               ) -> ModalityRouter:
    """Fit the router on uint8 sections of the default model's domain (``in_domain``) and of
    other modalities (``other``); ``prep`` is the identifier's preprocessing."""
    from sklearn.linear_model import LogisticRegression

    x = np.stack([appearance_features(prep(im)) for im in [*in_domain, *other]])
    y = np.r_[np.zeros(len(in_domain)), np.ones(len(other))]
    mean, scale = x.mean(0), x.std(0) + 1e-9
    clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced")
    clf.fit((x - mean) / scale, y)
    return ModalityRouter(mean.tolist(), scale.tolist(), clf.coef_[0].tolist(),
                          float(clf.intercept_[0]), threshold, size, dict(notes or {}, C=C))


#: the router's training images are shrunk to a random largest side between this and their
#: own (log-uniform): a small section, upsampled to the network's input, looks blurred, and
#: blur alone must not make a confocal section "another modality"
MIN_TRAINING_SIDE = 112


def shrink(img: np.ndarray, rng: np.random.Generator, min_side: int = MIN_TRAINING_SIDE):
    """``img`` resized (area) to a random largest side in ``[min_side, its own]``."""
    import cv2

    side = max(img.shape)
    if side <= min_side:
        return img
    target = float(np.exp(rng.uniform(np.log(min_side), np.log(side))))
    f = target / side
    return cv2.resize(img, (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))),
                      interpolation=cv2.INTER_AREA)


def training_sections(data_dir, n_synth: int = 400, seed: int = 0,
                      min_side: int = MIN_TRAINING_SIDE):
    """The router's training data: confocal ``train`` sections and atlas plates with simulated
    partial cuts (in-domain), and ``n_synth`` synthetic CCF sections, a third of them partial
    (other); every image shrunk to a random size (:func:`shrink`). val_1/val_2 are left for
    checking it."""
    from samri_ml.plates.augment import hemisection, missing_cerebellum, missing_cortex, on_uint8
    from samri_ml.plates.data import load_atlas, load_sections
    from samri_ml.plates.synth import Annotation, SectionSynth

    rng = np.random.default_rng(seed)
    data_dir = Path(data_dir)

    def cut(img, fn):
        return on_uint8(fn, img, rng)

    inside = []
    _, _, sections = load_sections(data_dir / "train")
    for im in sections:
        inside += [im, *(cut(im, fn) for fn in (missing_cortex, hemisection, missing_cerebellum))]
    _, plates = load_atlas(data_dir / "atlas")
    for im in plates:
        inside += [im, cut(im, missing_cortex), cut(im, hemisection)]
    synth = SectionSynth(Annotation.load(), max_tilt_deg=6.0)
    other = []
    for i in range(n_synth):
        im = synth(int(rng.integers(8, 129)), rng)
        other.append(im if i % 3 == 0 else cut(im, missing_cortex if i % 3 == 1 else hemisection))
    return [shrink(im, rng, min_side) for im in inside], [shrink(im, rng, min_side) for im in other]
