"""Training the masking U-Net: data set assembly, the seed's augmentation and two-phase schedule.

Data (see :mod:`samri_ml.masking.data` and :mod:`samri_ml.masking.synth`): real scans with masks
from the training sources, plus synthetic skull-on heads built around the real brains of those
sources (several per brain, T1/T2/EPI/random contrasts). Every volume goes through the seed's
preprocessing (:mod:`samri_ml.masking.preprocess`), sliced along every view of ``views`` (the
seed: coronal only; the shipped model: sagittal, coronal and axial, predicted the same way);
slices without brain are kept with probability ``empty_fraction`` (more often when they hold
tissue, see :func:`volume_slices`).

Split: ``sklearn.model_selection.train_test_split`` (90/10) over *subjects* (a dama subject with all
the synthetic heads made from its brain; a lab's ``sub-<label>`` with all its scans under
``scans``; a whole scan otherwise), so no brain is seen in both
training and validation; the two 0.2 mm templates (one shared brain) always go to training. Sources listed in ``holdout`` are not used at
all (leave-source-out evaluation).

Schedule (seed): phase 1 without augmentation, then phase 2 with the seed's augmentation (rotation up
to 90 degrees, shifts of 30 px, shear 5 degrees, zoom +-0.2, horizontal and vertical flips);
Adam, loss BCE + Dice loss, ReduceLROnPlateau and EarlyStopping on the validation loss, Keras'
progress bar, fixed seeds (numpy, Python, Keras/TensorFlow).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from samri_ml.bids import DeferredInterrupt, deferred_sigint
from samri_ml.masking import preprocess as pp
from samri_ml.masking import synth
from samri_ml.masking.predict import training_record_path
from samri_ml.paths import interrupted_path


@dataclass
class TrainConfig:
    """Settings of one training run (written into the model card)."""

    width: int = 8
    holdout: tuple[str, ...] = ("sammba", "emory")
    synth_per_dama: int = 10
    synth_per_template: int = 40
    empty_fraction: float = 0.25
    snout_neck: bool = False
    views: tuple[str, ...] = pp.ALL_VIEWS
    crops_per_scan: int = 0
    crop_fraction: float = 0.0
    stripped_rim: str = "fill"
    val_fraction: float = 0.1
    batch_size: int = 32
    learning_rate: float = 1e-3
    epochs_plain: int = 3
    epochs_augmented: int = 12
    steps_per_epoch: int = 150
    patience: int = 4
    max_minutes: float = 40.0
    seed: int = 0
    #: seed of the weights' initialisation, the batch order and the augmentation (None: ``seed``);
    #: ``seed`` alone fixes the data set and its validation split
    train_seed: int | None = None
    threads: int = 2
    #: probability that a slice of the augmented phase gets a random intensity curve
    #: (:func:`remap_intensity`)
    intensity_augment: float = 0.0
    #: probability that a slice of the augmented phase with a black background (a skull-stripped
    #: brain) gets a faint one (:func:`faint_background`)
    background_augment: float = 0.0
    #: ... only on slices whose brain fills at least this share of the slice (0: any slice)
    background_min_brain: float = 0.0
    init_model: str = ""
    dataset_cache: str = ""
    #: a lab's own scans with masks (:func:`~samri_ml.masking.data.lab_scans`) instead of the
    #: shared data's
    scans: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _resample_to(source: synth.BrainSource, zoom_mm: float = 0.2) -> synth.BrainSource:
    """A coarser copy of a brain source (synthesis cost grows with the voxel count)."""
    from scipy import ndimage

    factors = np.asarray(source.zooms) / zoom_mm
    if np.allclose(factors, 1.0, atol=0.05):
        return source

    def rs(a, order):
        return None if a is None else ndimage.zoom(a.astype(np.float32), factors, order=order)

    mask = rs(source.mask, 1) > 0.5
    labels = rs(source.labels, 0)
    return synth.BrainSource(
        mask, (zoom_mm,) * 3, None if labels is None else labels.astype(np.int32),
        rs(source.image, 1), source.name,
    )  # fmt: skip


def volume_slices(image, mask, rng, empty_fraction, tissue_boost=False, views=pp.SEED_VIEWS):
    """Seed-preprocessed ``(x, y)`` slices of one RAS volume along each of ``views``.

    Slices without brain are kept with probability ``empty_fraction``; with ``tissue_boost``
    three times that (at most 0.9) when they hold tissue (snout, neck): those teach the net
    that a head slice may have no brain in it.
    """
    axes = [pp.view_axis(v) for v in views]
    vol = pp.normalise(image)
    x = np.concatenate([pp.volume_to_slices(vol, normalised=True, axis=a) for a in axes])
    y = np.concatenate([pp.mask_to_slices(mask, image, axis=a) for a in axes])
    has_brain = y.reshape(len(y), -1).any(axis=1)
    has_tissue = (x.reshape(len(x), -1) > 0.1).mean(axis=1) > 0.05
    boost = min(0.9, 3 * empty_fraction) if tissue_boost else empty_fraction
    p_keep = np.where(has_tissue, boost, empty_fraction)
    keep = has_brain | (rng.random(len(y)) < p_keep)
    return x[keep], y[keep]


def scan_group(scan) -> str:
    """Split group of a scan: its subject (a lab's ``sub-<label>``) or its own name, but both
    0.2 mm templates (one shared brain) together."""
    return "templates" if scan.source == "templates" else scan.subject or scan.name


def build_dataset(config: TrainConfig, data_dir=None, cache_dir=None, log=print):
    """Assemble the slices and split them by group; returns ``(x, y, groups, is_val, volumes)``.

    ``volumes`` maps each validation group to its (image, mask) RAS volumes (for the 3D Dice).
    """
    from samri_ml.masking.data import lab_scans, real_scans

    rng = np.random.default_rng(config.seed)
    if config.scans:
        scans = lab_scans(config.scans)
    else:
        scans = real_scans(
            data_dir, cache_dir, skip=tuple(config.holdout), stripped_rim=config.stripped_rim
        )
    # the templates are one shared brain, not a subject: always trained on; subjects are split
    subjects = [scan_group(s) for s in scans if s.source != "templates"]
    val_groups = set(split_groups(subjects, config.val_fraction, config.seed))
    xs, ys, groups = [], [], []
    volumes: dict[str, list] = {}

    def add(group, image, mask):
        x, y = volume_slices(
            image, mask, rng, config.empty_fraction, config.snout_neck, tuple(config.views)
        )
        xs.append(x)
        ys.append(y)
        groups.extend([group] * len(x))
        if group in val_groups:
            volumes.setdefault(group, []).append((image, mask))

    t0 = time.time()
    for scan in scans:
        group = scan_group(scan)
        add(group, scan.image, scan.mask)  # the real scan as it is (the seed's data)
        for _ in range(config.crops_per_scan):  # its brain filling the field of view
            add(group, *synth.crop_to_brain(scan.image, scan.mask, rng))
        n_synth = {"dama": config.synth_per_dama, "templates": config.synth_per_template}.get(
            scan.source, 0
        )
        if n_synth:
            src = _resample_to(
                synth.BrainSource(scan.mask, scan.zooms, scan.labels, scan.image, scan.name)
            )
            for _ in range(n_synth):
                image, mask, _ = synth.synth_volume(src, rng, snout_neck=config.snout_neck)
                if rng.random() < config.crop_fraction:
                    image, mask = synth.crop_to_brain(image, mask, rng)
                add(group, image, mask)
        log(f"  {scan.name}: {1 + n_synth} volumes ({time.time() - t0:.0f} s so far)")
    # float16 values, as the data set cache stores them (halved): the run that builds it
    # trains on what the runs that read it do (the same command gave other numbers)
    x = np.concatenate(xs).astype(np.float16).astype(np.float32)
    y = np.concatenate(ys).astype(np.float32)
    groups = np.asarray(groups)
    return x, y, groups, np.isin(groups, sorted(val_groups)), volumes


#: the :class:`TrainConfig` fields that define the data set (and its validation split)
DATA_KEYS = ("holdout", "synth_per_dama", "synth_per_template", "empty_fraction", "val_fraction",
             "seed", "snout_neck", "views", "crops_per_scan", "crop_fraction", "stripped_rim",
             "scans")  # fmt: skip


#: the :data:`DATA_KEYS` of the shared data alone: a lab's ``--scans`` data set has none of them
SHARED_DATA_KEYS = ("holdout", "synth_per_dama", "synth_per_template", "snout_neck",
                    "stripped_rim")


#: the :class:`TrainConfig` fields that choose the validation subjects (:func:`split_groups`)
SPLIT_KEYS = ("holdout", "val_fraction", "seed")


def split_note(model_path, config: TrainConfig, role: str) -> str | None:
    """Why the validation Dice of a run starting from (``role`` ``--init``) or averaging
    (``--average-of``) ``model_path`` may be too high: its ``_training.json`` records another
    split of the subjects than ``config``'s, so some of this run's validation subjects may
    have been its training data. None where the splits agree or nothing is recorded."""
    try:
        saved = json.loads(training_record_path(model_path).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(saved, dict) or saved.get("scans", "") != config.scans:
        return None  # (also) other scans: a lab's are none of the shared data's subjects
    here = json.loads(json.dumps({k: getattr(config, k) for k in SPLIT_KEYS}))

    def split_of(key, value):  # the templates are never split (always trained on)
        return sorted(set(value) - {"templates"}) if key == "holdout" else value

    diff = [k for k in SPLIT_KEYS if k in saved and split_of(k, saved[k]) != split_of(k, here[k])]
    if not diff:
        return None
    shown = ", ".join(f"{k} {saved[k]!r}, here {here[k]!r}" for k in diff)
    return (f"{role} {model_path} was trained on another split of the subjects ({shown}): "
            "some validation subjects here may have been its training data, so the validation "
            "Dice can be too high; hint: give the data options of its _training.json")


#: the modules whose code decides what a data set cache holds (the slices, labels and heads)
DATASET_MODULES = ("samri_ml.masking.preprocess", "samri_ml.masking.data",
                   "samri_ml.masking.synth", "samri_ml.masks")


def dataset_code_fingerprint() -> str:
    """sha256 of the source of :data:`DATASET_MODULES`: the code part of a data set cache's key.
    A cache made by other preprocessing code (an upgrade, a lab's own change) was read back as
    if this code had made it (only the synthetic heads carried a version)."""
    import hashlib
    import importlib
    import inspect

    digest = hashlib.sha256()
    for name in DATASET_MODULES:
        digest.update(inspect.getsource(importlib.import_module(name)).encode())
    return digest.hexdigest()


def _stale_cache_reason(stored: str, settings: str) -> str:
    """Why a data set cache whose key is ``stored`` is not the one for ``settings``."""
    try:
        old, new = json.loads(stored), json.loads(settings)
    except (ValueError, TypeError):
        return "holds a data set of other settings or scans"
    if "data" not in old:  # the first release's key (an upgrade's rebuild, not new settings)
        return "was built by an older samri_ml, which did not record its scans"
    if {k: v for k, v in old.items() if k != "code"} == {k: v for k, v in new.items()
                                                         if k != "code"}:
        return "was built by other preprocessing code (another samri_ml version?)"
    return "holds a data set of other settings or scans"


def cached_dataset(config: TrainConfig, data_dir=None, cache_dir=None, log=print):
    """:func:`build_dataset`, stored in / read from ``config.dataset_cache`` (.npz) when set.

    The cache is used only if it was built with the same data settings from the same scans
    (:func:`~samri_ml.masking.data.data_fingerprint` of ``data_dir``); else it is rebuilt.
    """
    from samri_ml.masking.data import data_fingerprint, lab_scans_fingerprint

    path = dataset_cache_path(config.dataset_cache)
    if path is None:
        # no key without a cache: it reads every file of the scans (a lab's --scans folder of
        # many GB took minutes, for nothing)
        log("building the data set ...")
        return build_dataset(config, data_dir, cache_dir, log)
    settings = {k: getattr(config, k) for k in DATA_KEYS}
    if not config.scans:
        del settings["scans"]  # the caches of the shared data made before --scans still match
    else:
        # options of the shared data do nothing with a lab's scans (the command says so): a
        # --holdout or --synth-per-dama given threw the lab's cache away all the same
        for key in SHARED_DATA_KEYS:
            settings.pop(key, None)
    settings["synth_version"] = synth.VERSION  # a cache of older synthetic heads is not reused
    # nor one of other scans
    settings["data"] = (lab_scans_fingerprint(config.scans) if config.scans
                        else data_fingerprint(data_dir))
    settings["code"] = dataset_code_fingerprint()  # nor one that other code made
    settings = json.dumps(settings, sort_keys=True)
    if path.is_file():
        import zipfile

        from samri_ml.errors import SamriMLError

        try:
            f = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile):
            f = None
        if not isinstance(f, np.lib.npyio.NpzFile) or "settings" not in f.files:
            if isinstance(f, np.lib.npyio.NpzFile):
                f.close()
            raise SamriMLError(f"{path}: not a data set cache of samri_ml-train-masker; hint: "
                               "give another --dataset-cache path, or remove that file")
        with f:
            stored = str(f["settings"])
            if stored == settings:
                log(f"data set read from {path}")
                vols: dict[str, list] = {}
                for key in f.files:
                    if key.startswith("vimg|"):
                        _, group, i = key.split("|")
                        vols.setdefault(group, []).append(
                            (f[key], f[f"vmsk|{group}|{i}"].astype(bool))
                        )
                # stored as float16 to halve the file; cv2 (augmentation) needs float32
                x = f["x"].astype(np.float32)
                return x, f["y"].astype(np.float32), f["groups"], f["is_val"], vols
        log(f"{path} {_stale_cache_reason(stored, settings)}: rebuilt and replaced")
    log("building the data set ...")
    x, y, groups, is_val, vols = build_dataset(config, data_dir, cache_dir, log)
    arrays = {}
    for group, items in vols.items():
        for i, (image, mask) in enumerate(items):
            arrays[f"vimg|{group}|{i}"] = image
            arrays[f"vmsk|{group}|{i}"] = mask.astype(np.uint8)
    from samri_ml.bids import atomic_target

    # through a temporary file: Ctrl-C while the (large) cache was written left a truncated
    # one, which the next run refused ("not a data set cache"); the rename makes it whole
    with atomic_target(path, suffix=".npz") as tmp:
        np.savez(tmp, x=x.astype(np.float16), y=y.astype(np.uint8), groups=groups,
                 is_val=is_val, settings=settings, **arrays)  # fmt: skip
    return x, y, groups, is_val, vols


def dataset_cache_path(name) -> Path | None:
    """The file a ``dataset_cache`` setting names (None where unset): with ``.npz`` added where
    it lacks it, as ``np.savez`` adds it (a cache named without it was written but never read)."""
    if not name:
        return None
    path = Path(name)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def split_groups(groups, val_fraction: float, seed: int) -> list[str]:
    """The validation groups: ``train_test_split`` (``test_size=val_fraction``) of the unique groups."""
    from sklearn.model_selection import train_test_split

    unique = sorted(set(groups))
    _, val = train_test_split(unique, test_size=val_fraction, random_state=seed)
    return sorted(val)


# ---------------------------------------------------------------------------------------------
# augmentation (the seed's ImageDataGenerator settings, with cv2)
# ---------------------------------------------------------------------------------------------


def augment_pair(x, y, rng, *, rotation=90.0, shift=30.0, shear=5.0, zoom=0.2):
    """One random affine (rotation, shift, shear, zoom) and h/v flips, same for slice and mask.

    ``x`` and ``y`` are 2D 64x64 arrays; the image is interpolated bilinearly, the mask with nearest
    neighbour; outside the slice is filled with the nearest edge value (Keras' default 'nearest').
    """
    import cv2

    n = x.shape[0]
    c = (n - 1) / 2.0
    a = math.radians(rng.uniform(-rotation, rotation))
    s = math.radians(rng.uniform(-shear, shear))
    zx, zy = rng.uniform(1 - zoom, 1 + zoom, size=2)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shr = np.array([[1, -math.sin(s)], [0, math.cos(s)]])
    mat = rot @ shr @ np.diag([zx, zy])
    t = np.array([c, c]) - mat @ np.array([c, c]) + rng.uniform(-shift, shift, size=2)
    m = np.hstack([mat, t[:, None]]).astype(np.float32)
    border = cv2.BORDER_REPLICATE
    xa = cv2.warpAffine(x, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=border)
    ya = cv2.warpAffine(y, m, (n, n), flags=cv2.INTER_NEAREST, borderMode=border)
    if rng.random() < 0.5:
        xa, ya = xa[:, ::-1], ya[:, ::-1]
    if rng.random() < 0.5:
        xa, ya = xa[::-1], ya[::-1]
    return np.ascontiguousarray(xa), np.ascontiguousarray(ya)


def remap_intensity(x, rng, knots: int = 5):
    """``x`` (a preprocessed slice, values in [0, 1]) through a random intensity curve: linear
    between ``knots`` random levels at equal steps of [0, 1], scaled so that the highest is 1,
    with 0 kept at 0 (the background stays dark, as :mod:`~samri_ml.masking.preprocess`
    leaves it). One anatomy is so seen in contrasts no scan or synthetic head of the training
    set has (the brain darker than the tissue around it, or brighter, or CSF dark)."""
    levels = rng.uniform(0.05, 1.0, knots)
    levels = np.concatenate([[0.0], levels / levels.max()])
    return np.interp(x, np.linspace(0.0, 1.0, knots + 1), levels).astype(np.float32)


#: :func:`faint_background`'s largest level (of the slice's range, 0-1): a skull-stripped
#: brain with noise of 1-10 % of its 99th percentile around it was masked at Dice 0.6-0.9 of
#: its own mask by the model trained without it (2026-12-02, fifteenth session)
FAINT_BACKGROUND_MAX = 0.12


def faint_background(x, rng, max_level: float = FAINT_BACKGROUND_MAX):
    """``x`` (a preprocessed slice, values in [0, 1]) with its black background (the pixels
    exactly 0: outside a skull-stripped brain) filled with a faint one: a random mix of a
    linear ramp in a random direction and noise (magnitude of Gaussian noise, smoothed or not),
    up to a random level under ``max_level``. The brain is left as it is. A slice with under a
    tenth of its pixels black (a head, whose air is noise already) comes back unchanged."""
    import cv2

    black = x == 0
    if black.mean() < 0.1:
        return x
    n0, n1 = x.shape
    level = rng.uniform(0.005, max_level)
    yy, xx = np.mgrid[0:n0, 0:n1].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(a) * xx + math.sin(a) * yy
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    noise = np.abs(rng.normal(0.0, 1.0, x.shape)).astype(np.float32)
    if rng.random() < 0.5:
        noise = cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.5, 2.0))
    noise /= max(float(np.percentile(noise, 99)), 1e-6)
    mix = rng.uniform(0.0, 1.0)
    background = level * (mix * ramp + (1 - mix) * noise)
    return np.where(black, np.clip(background, 0.0, 1.0), x).astype(np.float32)


def _sequence(x, y, batch_size, steps, augment, seed, intensity: float = 0.0,
              background: float = 0.0, background_min_brain: float = 0.0):
    import keras

    class Slices(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)

        def __len__(self):
            return steps

        def __getitem__(self, idx):
            pick = self.rng.integers(0, len(x), size=batch_size)
            bx, by = x[pick].copy(), y[pick].copy()
            if augment:
                for i in range(batch_size):
                    bx[i, ..., 0], by[i, ..., 0] = augment_pair(
                        bx[i, ..., 0], by[i, ..., 0], self.rng
                    )
                    if intensity and self.rng.random() < intensity:
                        bx[i, ..., 0] = remap_intensity(bx[i, ..., 0], self.rng)
                    if (background and by[i].mean() >= background_min_brain
                            and self.rng.random() < background):
                        bx[i, ..., 0] = faint_background(bx[i, ..., 0], self.rng)
            return bx, by

    return Slices()


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def train(config: TrainConfig, out_path, data_dir=None, cache_dir=None, log=print) -> dict:
    """Train, save ``out_path`` (.keras), the loss curve PNG and a JSON summary beside it.

    Returns the summary (settings, data counts, per-phase history, validation Dice per volume).
    """
    import random

    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(config.threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    import keras

    from samri_ml.models.unet import bce_dice_loss, build_unet, dice_coefficient

    train_seed = config.seed if config.train_seed is None else config.train_seed
    random.seed(train_seed)
    np.random.seed(train_seed)
    keras.utils.set_random_seed(train_seed)
    out_path = Path(out_path)
    t_start = time.time()
    # the starting model before the data set (minutes): one of another kind or width is
    # refused at once (it failed in the first batch, or trained on under a wrong card)
    init = load_init(config.init_model, config.width) if config.init_model else None
    if init is not None and (why := split_note(config.init_model, config, "--init")):
        _note(why)
    x, y, groups, val_m, volumes = cached_dataset(config, data_dir, cache_dir, log)
    train_m = ~val_m
    val_groups = sorted(volumes)
    val_volumes = {g: volumes[g] for g in val_groups}
    log(
        f"{len(x)} slices ({train_m.sum()} train, {val_m.sum()} validation); "
        f"validation groups: {', '.join(val_groups)}"
    )
    xt, yt, xv, yv = x[train_m], y[train_m], x[val_m], y[val_m]
    counts = {"n_slices": int(len(x)), "n_train_slices": int(train_m.sum()),
              "n_val_slices": int(val_m.sum()), "validation_groups": val_groups}  # fmt: skip

    if init is not None:
        log(f"starting from the weights of {config.init_model}")
        # the starting point on the same volumes: a fine-tune that made the model worse
        # (a lab's few scans, too many epochs) was not said
        counts["init_validation_dice"] = validation_dice(
            init, val_volumes, tuple(config.views))
        if counts["init_validation_dice"]:
            log(f"the --init model's median validation Dice: "
                f"{np.median(list(counts['init_validation_dice'].values())):.4f}")
        model = init
    else:
        model = build_unet(width=config.width)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=bce_dice_loss,
        metrics=[dice_coefficient],
    )
    deadline = t_start + 60 * config.max_minutes

    history: dict[str, list] = {}

    class Record(keras.callbacks.Callback):
        """Each finished epoch into ``history`` (kept if a later one is interrupted) and the
        time limit, checked at its end."""

        def __init__(self, phase):
            super().__init__()
            self.phase = phase

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                history.setdefault(key, []).append(float(value))
            history.setdefault("phase", []).append(self.phase)
            if time.time() > deadline:
                log("time budget reached; stopping")
                self.model.stop_training = True

    class OneBatchAtATime(keras.callbacks.Callback):
        """Ctrl-C waits for the end of the batch it came in (a training or a validation
        step): one that came while TensorFlow traced the first step (seconds) broke the
        trace, and the run ended "error: SystemError: Objects/listobject.c:338: bad argument
        to internal function" (exit 1, the finished epochs not saved), not "interrupted", as
        train-plates' did (bids.deferred_sigint there too). ``stack`` is closed by the caller
        where a batch ends in an error (the handler put back)."""

        def __init__(self):
            super().__init__()
            self.stack = ExitStack()

        def _begin(self, batch, logs=None):
            self.stack.enter_context(deferred_sigint())

        def _end(self, batch, logs=None):
            self.stack.close()  # raises DeferredInterrupt where Ctrl-C came

        on_train_batch_begin = on_test_batch_begin = _begin
        on_train_batch_end = on_test_batch_end = _end

    phases = [("plain", config.epochs_plain, False), ("augmented", config.epochs_augmented, True)]
    stopper = None
    batches = OneBatchAtATime()
    try:
        for phase, epochs, augment in phases:
            if epochs <= 0 or time.time() > deadline:
                continue
            log(f"phase {phase}: up to {epochs} epochs of {config.steps_per_epoch} batches")
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.patience, restore_best_weights=True
            )
            callbacks = [
                keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2),
                stopper,
                Record(phase),
                batches,
            ]
            # Keras writes its bar or epoch lines to stdout, where train-masker prints its
            # result (JSON): progress goes to stderr, as the commands' other lines do
            with batches.stack, redirect_stdout(sys.stderr):
                model.fit(
                    _sequence(xt, yt, config.batch_size, config.steps_per_epoch, augment,
                              train_seed, config.intensity_augment, config.background_augment,
                              config.background_min_brain),
                    validation_data=(xv, yv),
                    batch_size=config.batch_size,
                    epochs=epochs,
                    callbacks=callbacks,
                    # Keras' bar redraws itself every 50 ms with backspaces and colours even into
                    # a file or a pipe (it takes any POSIX system for a terminal): a cluster job's
                    # log filled with control characters, whatever NO_COLOR said. A terminal gets
                    # the bar; a file, a pipe or NO_COLOR one plain line per epoch.
                    verbose=1 if sys.stderr.isatty() and not os.environ.get("NO_COLOR") else 2,
                )
            if stopper.stopped_epoch:  # said (a phase of 'up to 5 epochs' ended at 3 silently)
                best_epoch = getattr(stopper, "best_epoch", None)
                restored = (f"; epoch {best_epoch + 1}'s weights restored"
                            if best_epoch is not None else "")
                log(f"phase {phase}: early stop after epoch {stopper.stopped_epoch + 1}: "
                    f"val_loss not improved for {config.patience} epochs{restored}")
    except KeyboardInterrupt:  # Ctrl-C: keep what the finished epochs learnt
        n = len(history.get("phase", []))
        if not n:
            _note(f"interrupted before the first epoch ended: {_kept(out_path)}")
            raise
        if stopper is not None and stopper.best_weights is not None:
            model.set_weights(stopper.best_weights)  # this phase's best epoch so far
        _save_interrupted(model, out_path, config, history, counts, t_start,
                          f"interrupted after {n} epoch(s)")
        raise
    if not history.get("phase"):  # an untrained model is no result
        from samri_ml.errors import SamriMLError

        if config.epochs_plain <= 0 and config.epochs_augmented <= 0:
            raise SamriMLError("epochs_plain and epochs_augmented are both 0: nothing to train")
        raise SamriMLError(
            f"the time limit ({config.max_minutes:g} min) was over before the first epoch "
            f"began ({time.time() - t_start:.0f} s went into the data set); nothing was "
            "written; hint: raise --max-minutes, or build the data set once with "
            "--dataset-cache")
    try:  # the validation Dice and the saving: Ctrl-C here keeps the trained model too
        return _save_run(model, out_path, config, history, counts, t_start,
                         volumes=val_volumes)
    except DeferredInterrupt:  # Ctrl-C while the files were renamed: all are this run's
        _note(f"interrupted while saving: {out_path} and the files beside it are this run's, "
              "complete")
        raise
    except KeyboardInterrupt:
        _save_interrupted(model, out_path, config, history, counts, t_start,
                          f"interrupted after the last epoch ({len(history['phase'])} in all)")
        raise


def load_init(path, width: int):
    """The ``--init`` model to train on: refused in one line where it is missing, no Keras
    model, no brain masker (e.g. the plate embedding), or a U-Net of another ``width`` than
    the run's (the run's summary would record a width the model does not have)."""
    import keras

    from samri_ml.errors import SamriMLError
    from samri_ml.masking.predict import check_masker
    from samri_ml.models.inference import keras_load_failure
    from samri_ml.models.unet import CUSTOM_OBJECTS, unet_width

    path = Path(path)
    if not path.is_file():
        raise SamriMLError(f"--init {path}: model file not found; hint: give the path of a "
                           ".keras file")
    try:
        model = keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
    except Exception as err:  # keras raises many types for a bad file
        raise SamriMLError("--init " + keras_load_failure(path, err)) from err
    check_masker(model, f"--init {path}")
    own = unet_width(model)
    if own is not None and own != width:
        raise SamriMLError(f"--init {path} is a U-Net of width {own}, the run's --width is "
                           f"{width}; hint: pass --width {own} (fine-tuning keeps the model's "
                           "width)")
    return model


def _note(text: str) -> None:
    from samri_ml.errors import SamriMLNote

    warnings.warn(text, SamriMLNote, stacklevel=3)


def _kept(out_path: Path) -> str:
    """What OUT holds after an interrupted run that wrote nothing."""
    if out_path.is_file():
        return f"{out_path} and the files beside it were left as they were"
    return "nothing was saved"


def training_state(model_path) -> str:
    """What ``model_path``'s ``_training.json`` says of its run: ``"interrupted"`` (Ctrl-C
    saved the best weights so far), ``"finished"`` (a finished run or an average) or
    ``"unrecorded"`` (no readable record: a model copied there, or of another tool)."""
    try:
        summary = json.loads(training_record_path(model_path).read_text())
    except (OSError, ValueError):
        return "unrecorded"
    if isinstance(summary, dict) and summary.get("interrupted"):
        return "interrupted"
    return "finished"


def _finished_model(out_path: Path) -> bool:
    """Whether ``out_path`` holds a model that is no interrupted run's (a finished run, an
    average, a model copied there): one that Ctrl-C must not replace."""
    return out_path.is_file() and training_state(out_path) != "interrupted"


def check_members(member_paths, option: str = "--average-of") -> None:
    """Refuse ``--average-of`` (``option``) members that an interrupted run saved (their
    ``_training.json`` says so): their few epochs' weights pulled the average towards an
    unfinished model, without a word (:func:`combine` notes members without a record).

    Raises
    ------
    SamriMLError
        Naming the first interrupted member.
    """
    from samri_ml.errors import SamriMLError

    for path in member_paths:
        if not Path(path).is_file():
            continue  # load_model says so
        if training_state(path) == "interrupted":
            raise SamriMLError(
                f"{option} {path} is an interrupted run (its _training.json says "
                "'interrupted'): its weights are those of the epochs before Ctrl-C; hint: "
                f"finish its training (samri_ml-train-masker ... --init {path}) or leave it "
                "out")


def _save_interrupted(model, out_path, config, history, counts, t_start, what: str) -> None:
    """After Ctrl-C: save the weights ``model`` holds, marked as interrupted, and say so; a
    second Ctrl-C while saving leaves the previous set as it was (all are renamed at once).
    A finished model at ``out_path`` is not replaced by them (a rerun into its name stopped
    after an epoch put a one-epoch model there): they go to :func:`interrupted_path`."""
    target = interrupted_path(out_path) if _finished_model(out_path) else out_path
    kept = (f"; {out_path}, a finished model, was left as it was" if target != out_path
            else "")
    try:
        _save_run(model, target, config, history, counts, t_start, interrupted=True)
    except DeferredInterrupt:
        pass  # saved all the same
    except KeyboardInterrupt:
        _note(f"{what}, and again while saving: {_kept(target)}{kept}")
        raise
    _note(f"{what}: {target} holds the best weights so far (its _training.json says "
          f"'interrupted'; no validation Dice){kept}")


def _save_run(model, out_path, config: TrainConfig, history: dict, counts: dict,
              t_start: float, volumes: dict | None = None, interrupted: bool = False) -> dict:
    """The validation Dice of the trained ``model`` on ``volumes`` (none for an
    ``interrupted`` run, which is marked so), then ``out_path`` (.keras), the loss curve and
    the summary (``_training.json``) beside it, written as one set (:func:`write_set`);
    returns the summary."""
    summary = {
        "config": asdict(config),
        **counts,
        "validation_dice": validation_dice(model, volumes, tuple(config.views)) if volumes
        else {},
        "history": history,
        "minutes": (time.time() - t_start) / 60,
        "date": time.strftime("%Y-%m-%d"),
    }
    if interrupted:  # stopped by Ctrl-C after len(history["phase"]) epochs
        summary["interrupted"] = True
    _note_worse_than_init(summary["validation_dice"], counts.get("init_validation_dice"),
                          config.init_model)
    with write_set(out_path, loss_png=True) as (tmp_model, tmp_json, tmp_png):
        save_without_optimizer(model, tmp_model)
        plot_history(history, tmp_png, init_model=config.init_model or "random weights",
                     model_name=out_path.stem)
        tmp_json.write_text(json.dumps(summary, indent=1))
    return summary


@contextmanager
def write_set(out_path, loss_png: bool = False):
    """Temporary paths for a model ``out_path`` (.keras), its ``_training.json`` and (with
    ``loss_png``) its ``_loss.png``; yields ``(model, json, png or None)``. They are renamed
    as one set, the model last (:func:`samri_ml.bids.atomic_targets`), so the model and the
    files beside it are never of two runs; without ``loss_png`` an earlier run's loss curve is
    removed (an average has none, and a trained model's is not its own)."""
    from samri_ml.bids import atomic_targets

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    png = out_path.with_name(out_path.stem + "_loss.png")
    files = [out_path, training_record_path(out_path)]
    with atomic_targets(files + [png] * loss_png, remove=() if loss_png else [png]) as tmps:
        yield tmps[0], tmps[1], tmps[2] if loss_png else None


def average_weights(models, names=None):
    """A copy of the first model whose weights are the element-wise mean of all ``models``
    (``names``: their files, for the error).

    Averaging runs fine-tuned from one starting point (a "model soup") cancels part of their
    run-to-run variance at no cost at prediction time (the shipped masker, see its card).

    Raises
    ------
    SamriMLError
        When the models do not share one architecture.
    """
    from samri_ml.errors import SamriMLError
    from samri_ml.models.unet import uncompiled_copy, unet_width

    weights = [m.get_weights() for m in models]
    shapes = [[w.shape for w in ws] for ws in weights]
    for i, s in enumerate(shapes[1:], 1):
        if s != shapes[0]:
            names = names or [f"model {j + 1}" for j in range(len(models))]
            widths = [unet_width(models[j]) for j in (0, i)]
            what = (f"widths {widths[0]} and {widths[1]}" if widths[0] != widths[1]
                    else "layers")
            raise SamriMLError(f"--average-of: {names[i]} differs from {names[0]} in "
                               f"architecture ({what}); hint: average runs fine-tuned from "
                               "one model")
    out = uncompiled_copy(models[0])
    out.set_weights([np.mean(ws, axis=0).astype(ws[0].dtype) for ws in zip(*weights, strict=True)])
    return out


#: how :func:`combine` makes one model of several: its option and what it writes
COMBINE_KINDS = {"average": "--average-of", "ensemble": "--ensemble-of"}


def average(config: TrainConfig, member_paths, out_path, data_dir=None, cache_dir=None,
            log=print) -> dict:  # fmt: skip
    """Save the weight average of ``member_paths`` at ``out_path`` (:func:`combine`)."""
    return combine(config, member_paths, out_path, data_dir, cache_dir, log, kind="average")


def combine(config: TrainConfig, member_paths, out_path, data_dir=None, cache_dir=None,
            log=print, kind: str = "average") -> dict:  # fmt: skip
    """Save one model made of ``member_paths`` at ``out_path`` with a summary beside it:
    ``kind`` ``"average"``, their weight average (:func:`average_weights`, one network's
    time), or ``"ensemble"``, the mean of their predictions
    (:func:`samri_ml.models.unet.ensemble`; members of any width, each one's time, not
    mirrored by default).

    The validation Dice is computed as in :func:`train`, on the validation subjects of
    ``config``'s data set (read from ``config.dataset_cache`` when it matches).
    """
    from samri_ml.masking.predict import load_model
    from samri_ml.models.unet import ensemble

    option = COMBINE_KINDS[kind]
    out_path = Path(out_path)
    t_start = time.time()
    check_members(member_paths, option)
    # load_model refuses a missing file with one line, before TensorFlow starts; float32:
    # their weights are copied into the new model, in whatever precision the session runs
    members = [load_model(p, "float32") for p in member_paths]
    import keras

    # before the data set
    model = (average_weights(members, [str(p) for p in member_paths]) if kind == "average"
             else ensemble(members))
    for p in member_paths:
        if training_state(p) == "unrecorded":  # after the refusals: a note, not an error
            _note(f"{option} {p} has no {training_record_path(p).name}: whether its "
                  "training finished, and on which subjects, is unknown")
        elif why := split_note(p, config, option):
            _note(why)
    _, _, _, _, volumes = cached_dataset(config, data_dir, cache_dir, log)
    val_groups = sorted(volumes)
    member_info = []
    for p in member_paths:
        info = training_record_path(p)
        summary = json.loads(info.read_text()) if info.is_file() else {}
        member_info.append({"model": str(p), **{k: summary[k] for k in (
            "config", "average_of", "ensemble_of", "members", "history", "minutes",
            "validation_dice") if k in summary}})  # fmt: skip
    summary = {
        # only the data settings apply (holdout, validation split); nothing was trained here
        "config": {k: getattr(config, k) for k in DATA_KEYS},
        f"{kind}_of": [str(p) for p in member_paths],
        "members": member_info,
        "validation_groups": val_groups,
        "validation_dice": validation_dice(model, volumes, tuple(config.views)),
        "minutes": (time.time() - t_start) / 60,
        "date": time.strftime("%Y-%m-%d"),
        "keras": keras.__version__,
    }
    if kind == "average":
        _note_worse_average(summary["validation_dice"], member_info)
    with write_set(out_path) as (tmp_model, tmp_json, _):
        save_without_optimizer(model, tmp_model)
        tmp_json.write_text(json.dumps(summary, indent=1))
    return summary


#: a weight average this much below its worst member's median validation Dice is noted
AVERAGE_LOSS_NOTE = 0.1


#: a fine-tuned model's median validation Dice this far below its --init model's is said
INIT_LOSS_NOTE = 0.002


def _note_worse_than_init(dice: dict, init_dice: dict | None, init_model) -> None:
    """Note a fine-tuned model whose median validation Dice is below its ``--init`` model's
    on the same volumes (each phase restores its own best epoch, none the starting point: a
    lab's run could end worse than the model it started from, unsaid)."""
    if not dice or not init_dice:
        return
    mine, before = (float(np.median(list(d.values()))) for d in (dice, init_dice))
    if mine < before - INIT_LOSS_NOTE:
        _note(f"the trained model's median validation Dice is {mine:.4f}, its --init model's "
              f"{before:.4f} on the same volumes ({init_model}): the training made it worse "
              "there; hint: fewer epochs or a lower --learning-rate, or keep the --init model")


def _note_worse_average(dice: dict, member_info: list[dict]) -> None:
    """Note a weight average far worse than its members on the validation volumes: the weights
    of networks not fine-tuned from one model average to noise (two models trained from
    random weights gave Dice 0.0, without a word)."""
    medians = [float(np.median(list(m["validation_dice"].values()))) for m in member_info
               if isinstance(m.get("validation_dice"), dict) and m["validation_dice"]]
    if not dice or not medians:
        return
    mine = float(np.median(list(dice.values())))
    if mine < min(medians) - AVERAGE_LOSS_NOTE:
        _note(f"the weight average's median validation Dice is {mine:.3f}, its members' "
              f"{min(medians):.3f}-{max(medians):.3f}: averaged weights of networks not "
              "fine-tuned from one model make another network; hint: --ensemble-of averages "
              "their predictions instead")


def save_without_optimizer(model, path) -> None:
    """Save ``model`` as ``.keras`` without its optimizer state or compile settings.

    A third of the size, and prediction needs neither. The copy is rebuilt from the config:
    ``keras.models.clone_model`` also clones the compile settings (Keras >= 3.12), which fails on
    the custom loss and crashed ``samri_ml-train-masker`` after its last epoch.
    """
    from samri_ml.models.unet import uncompiled_copy

    compact = uncompiled_copy(model)
    compact.set_weights(model.get_weights())
    compact.save(path)


def validation_dice(model, volumes_by_group, views=pp.ALL_VIEWS) -> dict[str, float]:
    """3D Dice of the full prediction pipeline (with post-processing) on validation volumes.

    Keys ``<group>#<i>`` (i = 0 is the real scan, i > 0 its synthetic heads).
    """
    import nibabel as nb

    from samri_ml.errors import SamriMLError
    from samri_ml.masking.predict import predict_mask
    from samri_ml.metrics import dice

    out = {}
    for group, vols in volumes_by_group.items():
        for i, (image, mask) in enumerate(vols):
            try:
                pred = predict_mask(nb.Nifti1Image(image, np.eye(4)), model, views=views)
                pred = pred.get_fdata() > 0
            except SamriMLError:
                pred = np.zeros(mask.shape, bool)
            out[f"{group}#{i}"] = dice(pred, mask)
    return out


def plot_history(history, path, *, init_model: str | None = None, title: str | None = None,
                 model_name: str | None = None):
    """Loss and Dice per epoch (both phases), saved as PNG; returns the figure (outside pyplot).

    The loss axis starts at 0 and the Dice axis ends at 1, so that noise of a percent does
    not look like unstable training. Marked: the epoch whose weights each phase restored (the
    lowest ``val_loss``; ``EarlyStopping(restore_best_weights=True)`` restores it at the end of
    a phase), learning-rate changes (``learning_rate``/``lr`` in ``history``) and the switch
    from plain to augmented slices. The title names the model file (``model_name``, else
    ``path`` less its ``_loss.png``; ``path`` may be a temporary name) and the weights it
    started from: ``init_model``, else the ``init_model`` of a ``<model>_training.json``
    beside it whose history is this one (a regenerated plot); it is also the PNG's ``Title``
    text.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if model_name is None:
        model_name = (path.name[: -len("_loss.png")] if path.name.endswith("_loss.png")
                      else path.stem)
    if init_model is None:
        beside = path.with_name(model_name + "_training.json")
        try:
            saved = json.loads(beside.read_text())
            if saved.get("history") == history:
                init_model = saved.get("config", {}).get("init_model") or "random weights"
        except (OSError, ValueError, AttributeError):
            pass
    n = len(history.get("loss", []))
    epochs = np.arange(1, n + 1)
    phases = list(history.get("phase", [])) or ["training"] * n
    lr = history.get("learning_rate", history.get("lr"))

    # a Figure without pyplot: a notebook's backend and open figures are left alone
    fig = Figure(figsize=(10, 4.0))
    FigureCanvasAgg(fig)  # its renderer, whatever the backend
    axes = fig.subplots(1, 2)
    for key, ax in (("loss", axes[0]), ("dice_coefficient", axes[1])):
        for pre, label, style in (("", "train", "-o"), ("val_", "validation", "-s")):
            v = np.asarray(history.get(pre + key, []), dtype=float)
            if v.size:
                ax.plot(epochs[: v.size], v, style, ms=3.5, label=label)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(n, 1) + 0.5)
        ax.set_xticks(epochs if n <= 20 else np.unique(np.linspace(1, n, 10).round()))
        vals = np.concatenate([np.asarray(history.get(p + key, []), dtype=float)
                               for p in ("", "val_")])
        vals = vals[np.isfinite(vals)]
        if key == "loss":
            ax.set_title("BCE + Dice loss (lower is better)")
            ax.set_ylabel("loss")
            ax.set_ylim(0.0, 1.15 * float(vals.max()) if vals.size and vals.max() > 0 else 1.0)
        else:
            ax.set_title("Dice on 2D slices (higher is better)")
            ax.set_ylabel("Dice")
            lo = float(vals.min()) if vals.size else 0.0
            ax.set_ylim(max(0.0, min(lo - 0.05, lo - 0.25 * (1.0 - lo))), 1.0)
        ax.grid(alpha=0.3)
    # the epoch each phase restored (lowest val_loss of the phase)
    val_loss = np.asarray(history.get("val_loss", []), dtype=float)
    for ph in dict.fromkeys(phases):
        idx = [i for i, p in enumerate(phases) if p == ph and i < val_loss.size
               and np.isfinite(val_loss[i])]
        if not idx:
            continue
        best = min(idx, key=lambda i: val_loss[i])
        for j, ax in enumerate(axes):
            ax.axvline(best + 1, color="tab:green", lw=1.2, alpha=0.8,
                       label=f"restored: epoch {best + 1}" + (f" ({ph})" if len(set(phases)) > 1
                                                               else "") if j == 0 else None)
        key = "val_dice_coefficient"
        if len(history.get(key, [])) > best:
            axes[1].plot(best + 1, history[key][best], "*", color="tab:green", ms=11)
        axes[0].plot(best + 1, val_loss[best], "*", color="tab:green", ms=11)
    # learning-rate changes: the rate logged for epoch i is the one it trained with
    if lr is not None and len(lr) > 1:
        for i in range(1, len(lr)):
            if lr[i] != lr[i - 1]:
                for j, ax in enumerate(axes):
                    ax.axvline(i + 0.5, color="tab:red", ls="--", lw=0.9,
                               label=(f"learning rate {lr[i - 1]:.2g} \u2192 {lr[i]:.2g}"
                                      if j == 0 else None))
    n_plain = phases.count("plain")
    if n_plain and n_plain < n:
        for j, ax in enumerate(axes):
            ax.axvline(n_plain + 0.5, color="grey", ls=":",
                       label="plain \u2192 augmented" if j == 0 else None)
    # one legend, below the panels: in a panel's corner it hid the curve there (a loss falling
    # from 0.7 ran under the lower left one's eight entries for its epochs 4-9)
    handles, labels = axes[0].get_legend_handles_labels()
    entries = dict(zip(labels, handles, strict=True))  # a rate changed back and forth: once
    ncol = min(4, len(entries)) or 1
    rows = -(-len(entries) // ncol)
    legend_h = 0.22 * rows + 0.12 if entries else 0.0
    fig.set_size_inches(10, 4.0 + legend_h)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=ncol,
                   fontsize=8, frameon=False)
    if title is None:
        title = f"{model_name}.keras"
        if init_model:
            title += f" (started from {Path(str(init_model)).name})"
        if lr is not None and len(lr):
            title += f", initial learning rate {lr[0]:.2g}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, legend_h / (4.0 + legend_h), 1, 1))
    # the title in the PNG's own text too: which model's curves a file shows is read there
    fig.savefig(path, format="png", dpi=100, metadata={"Title": title})
    return fig
