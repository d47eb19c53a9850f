"""Brain-mask prediction with the shipped masker (two U-Nets averaged) or any model file with
the same input.

``predict_mask`` takes a NIfTI image (3D, or 4D reduced to its temporal mean), predicts every
slice of each view (sagittal, coronal and axial by default; the seed's coronal only with
``views=("coronal",)``) with the U-Net after the seed's preprocessing, inverts the
preprocessing, averages the views' probabilities, thresholds at 0.5, keeps the largest 3D
connected component, fills holes (in 3D and in each coronal slice), drops small islands far
from the brain in each coronal slice and returns a uint8 mask on the input's grid and affine.
It never returns an empty mask: it raises :class:`samri_ml.errors.SamriMLError` instead.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from samri_ml.errors import SamriMLError, SamriMLNote
from samri_ml.io import check_same_grid, nifti_class
from samri_ml.masking import preprocess as pp
from samri_ml.masks import fill_holes, largest_component

#: file name of the shipped model inside ``samri_ml/data/models``
MODEL_NAME = "unet_brainmask.keras"


def default_model_path() -> Path:
    """Path of the shipped model (``samri_ml/data/models/unet_brainmask.keras``)."""
    return Path(str(resources.files("samri_ml").joinpath("data", "models", MODEL_NAME)))


@lru_cache(maxsize=4)
def _load_cached(path: str, checksum: str, precision: str):
    """Per file content (``checksum``: :func:`~samri_ml.models.inference.file_checksum`; a
    modification time kept the network of a file replaced with its time, ``cp -p``) and per
    precision too: ``SAMRI_ML_PRECISION`` changed in a session (float32 to compare) kept the
    precision of the first load. Shared by every user of the process: its precision is not
    marked again (:func:`~samri_ml.models.inference.mark_shared`)."""
    from samri_ml.models.inference import import_keras, mark_shared
    from samri_ml.models.unet import CUSTOM_OBJECTS

    keras = import_keras()
    model = keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
    check_masker(model, path)
    return mark_shared(model, precision, "load_model(path, precision={precision})")


def _fits(shape, channels) -> bool:
    """Whether a batch ``shape`` (batch axis first) is of 64 x 64 slices with ``channels``
    (``(1,)``, or ``()`` for none); ``None`` fits any size."""
    shape = tuple(shape)[1:]
    want = (pp.SIZE, pp.SIZE, *channels)
    return len(shape) == len(want) and all(s in (None, w) for s, w in zip(shape, want,
                                                                          strict=True))


def check_masker(model, path) -> None:
    """Refuse a model that does not map 64 x 64 x 1 slices to a 64 x 64 (x 1) probability map
    (e.g. the plate embedding), which TensorFlow would only refuse deep in a reshape."""
    try:
        ok = _fits(model.input_shape, (1,)) and (_fits(model.output_shape, (1,))
                                                 or _fits(model.output_shape, ()))
    except (AttributeError, TypeError, ValueError):  # several inputs or outputs
        ok = False
    if not ok:
        shapes = (getattr(model, "input_shape", "?"), getattr(model, "output_shape", "?"))
        # both shapes: a plate embedding takes the masker's 64x64x1 slices, and "it takes
        # (None, 64, 64, 1) inputs" named the one that fits
        raise SamriMLError(f"{path}: not a brain-masking model (it maps {shapes[0]} inputs to "
                           f"{shapes[1]} outputs; a masker maps {pp.SIZE}x{pp.SIZE}x1 slices "
                           f"to {pp.SIZE}x{pp.SIZE} brain probabilities)")


def masker_file_problem(path) -> str | None:
    """Why the ``.keras`` file at ``path`` is no brain-masking model, from its saved
    configuration alone (no TensorFlow: for the checks a command makes before its work, e.g.
    ``samri_ml-register --mask-model``, whose run only failed in its masking steps); None where
    it may be one (:func:`check_masker` checks the loaded model in full)."""
    from samri_ml.models.inference import saved_config
    from samri_ml.models.siamese import MODEL_PREFIX

    config = saved_config(path)
    try:
        name = str(config.get("name", ""))
        inputs = [layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
                  for layer in config["layers"] if layer["class_name"] == "InputLayer"]
    except (KeyError, TypeError, AttributeError):  # None: no readable archive
        return "not a Keras model file (a .keras archive, as samri_ml-train-masker writes)"
    if name.startswith(MODEL_PREFIX):
        return "a plate embedding model (samri_ml-identify-plate's), not a brain-masking model"
    if len(inputs) == 1 and isinstance(inputs[0], list) and not _fits(inputs[0], (1,)):
        shape = tuple(inputs[0])
        return (f"not a brain-masking model (it takes {shape} inputs; a masker takes "
                f"{pp.SIZE}x{pp.SIZE}x1 slices)")
    return None


def load_model(path=None, precision: str | None = None):
    """Load (once per file content and precision) a Keras masking model; default: the shipped
    one. ``precision``: ``float32`` or ``bfloat16`` (default:
    :func:`~samri_ml.models.inference.inference_precision`). The model is every caller's of
    the process: mark none with another precision, ask for one in it here.

    Raises
    ------
    SamriMLError
        Missing or unreadable model file.
    """
    path = Path(path) if path is not None else default_model_path()
    if not path.is_file():
        raise SamriMLError(f"{path}: model file not found; hint: give the path of a .keras file")
    from samri_ml.models.inference import checked_precision, file_checksum

    precision = checked_precision(precision)
    try:
        return _load_cached(str(path.resolve()), file_checksum(path), precision)
    except SamriMLError:
        raise
    except Exception as err:  # keras raises many types for a bad file
        from samri_ml.models.inference import keras_load_failure

        raise SamriMLError(keras_load_failure(path, err)) from err


def training_record_path(model_path) -> Path:
    """The ``_training.json`` that ``samri_ml-train-masker`` writes beside a model
    (``m.keras`` -> ``m_training.json``): its settings, history and validation Dice."""
    path = Path(model_path)
    return path.with_name(path.stem + "_training.json")


def model_record_notes(model_path, views) -> None:
    """Notes from ``model_path``'s ``_training.json`` (``samri_ml-train-masker``'s record):
    where it was trained along fewer slice directions than ``views`` (a model trained on
    coronal slices alone, the seed's method, ``--views coronal``, was run along all three by
    default, on sagittal and axial slices it never saw, without a word), and where an
    interrupted run saved it (the best epochs before Ctrl-C or a time limit: masks from it
    went without a word; ``--average-of`` refuses one)."""
    import json
    import warnings

    if model_path is None:
        return  # the shipped model: trained along all three
    path = Path(model_path)
    try:
        record = json.loads(training_record_path(path).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(record, dict):
        return
    if record.get("interrupted"):
        warnings.warn(f"{path} was saved by an interrupted training run (its _training.json "
                      "says 'interrupted'): the best epochs before it stopped; hint: finish "
                      "the training, or use it knowingly", SamriMLNote, stacklevel=3)
    try:
        trained = [str(v) for v in record["config"]["views"]]
    except (KeyError, TypeError):
        return
    unseen = [v for v in dict.fromkeys(views) if v not in trained]
    if unseen and trained:
        warnings.warn(f"{path} was trained on {' and '.join(trained)} slices only (its "
                      f"_training.json), not {' and '.join(unseen)}; hint: predict along "
                      f"those alone (--views {' '.join(trained)})", SamriMLNote, stacklevel=3)


def predict_probabilities(model, slices: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run the network on preprocessed slices ``(n, 64, 64, 1)``; returns probabilities, same shape."""
    from keras import ops

    from samri_ml.models.inference import inference_fn

    fn = inference_fn(model)
    x = np.asarray(slices, dtype=np.float32)
    out = [ops.convert_to_numpy(fn(x[s : s + batch_size])) for s in range(0, len(x), batch_size)]
    return np.concatenate(out, axis=0)


#: an island of a coronal slice is dropped when it lies farther from the slice's largest piece
#: than this fraction of that piece's equivalent radius (and is smaller than
#: :data:`ISLAND_KEEP_FRACTION` of it); scale-free, so headers with 10x voxel sizes do not matter
ISLAND_DISTANCE_FRACTION = 0.25
ISLAND_KEEP_FRACTION = 0.25

#: a volume needs this many voxels along at least two axes to be masked
MIN_SIDE = 8
#: ... and this many along every axis: the sagittal and axial views of a 3-slice stack are
#: strips 3 px wide stretched to 64 (an audit's 3-slice cut of a head: a mask over 52 % of
#: it, skull and muscle, exit 0)
MIN_SLICES = 5
#: fewer slices than this along an axis are masked, with a note that the mask is unreliable:
#: an audit's slabs of 5-6 slices got Dice 0.51-0.81 with the full volume's mask (nirodents
#: 0.69/0.81, sammba EPI mean 0.51/0.69), 8 slices 0.85-0.97
RELIABLE_SLICES = 8
#: the smallest ``max_slices`` accepted (half the network's 64 px frame)
MIN_MAX_SLICES = 32
#: a mask filling more of the image than this is no brain (a brain fills at most about half of
#: its bounding box; a tightly cropped template reaches 0.42): refused instead of written
MAX_MASK_FRACTION = 0.9
#: a mask filling more of the image than this gets a note: more than any real brain filled of
#: its grid (the shipped data: 0.15-0.54; a skull-stripped brain cut to its own bounding box,
#: 0.37), as much as noise gets (absolute Gaussian noise: 0.89, written without a word)
NOTE_MASK_FRACTION = 0.7


def drop_far_islands(
    mask: np.ndarray,
    distance_fraction: float = ISLAND_DISTANCE_FRACTION,
    keep_fraction: float = ISLAND_KEEP_FRACTION,
) -> np.ndarray:
    """Remove, in each coronal slice (axis 1 of a RAS array), small pieces far from its largest.

    A slice-wise network can call a patch of head tissue brain (temporal muscle beside the brain
    of a skull-on head); when such patches join the brain's 3D component through the end slices,
    keeping the largest component leaves them. A piece is dropped when it is smaller than
    ``keep_fraction`` of the slice's largest piece and no voxel of it is within
    ``distance_fraction`` x that piece's equivalent radius (``sqrt(area / pi)``) of it. Pieces
    close to the brain (a paraflocculus, the other olfactory bulb) or large ones stay.
    """
    from scipy import ndimage

    out = np.array(mask, dtype=bool)
    for j in range(out.shape[pp.CORONAL_AXIS]):
        box = ndimage.find_objects(out[:, j, :].astype(np.uint8))
        if not box:
            continue
        # every piece lies in the slice's bounding box of foreground, so distances computed
        # there are exact (and cheap where the brain fills a small part of the field of view)
        region = (box[0][0], j, box[0][1])
        window = out[region]
        lab, n = ndimage.label(window)
        if n < 2:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        main = int(np.argmax(sizes))
        dist = ndimage.distance_transform_edt(lab != main)
        limit = distance_fraction * np.sqrt(sizes[main] / np.pi)
        # the nearest voxel of each piece to the largest one
        nearest = np.asarray(ndimage.minimum(dist, lab, index=np.arange(n + 1)))
        drop = (sizes < keep_fraction * sizes[main]) & (nearest > limit)
        drop[0] = False  # the background
        if drop.any():
            out[region] = window & ~drop[lab]
    return out


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Light post-processing: keep the largest 3D connected component, fill holes, drop small
    islands far from the brain in each coronal slice (:func:`drop_far_islands`), and keep the
    largest 3D component again: a patch of muscle joined to the brain through a piece that
    was dropped in one slice was left as an island of its own (the nirodents T2w head: two of
    57 and 62 mm^3 beside the skull).

    Holes are filled in each coronal slice (axis 1 of a RAS array), as the seed filled its
    training labels per slice; that fills the 3D holes too (:func:`samri_ml.masks.fill_holes`).
    """
    mask = fill_holes(largest_component(mask), within_axis=pp.CORONAL_AXIS)
    return largest_component(drop_far_islands(mask))


def _as_image(img):
    import nibabel as nb

    if isinstance(img, (str, os.PathLike)):
        from samri_ml.io import load_nifti

        return load_nifti(img, allow_4d=True)
    if not isinstance(img, nb.spatialimages.SpatialImage):
        raise SamriMLError(f"expected a NIfTI image or a path, got {type(img).__name__}")
    from samri_ml.io import check_affine

    check_affine(img, "the image")  # load_nifti checked a file's already
    return img


def temporal_mean_image(img):
    """The image :func:`predict_mask` masks in place of a 4D series: its temporal mean (the
    values :func:`predict_mask` computes from the series, float32) with the series' affine and
    header, so that its mask is the series' own, bit for bit, header included. Any other image
    (3D, a single volume, 5D) is returned as it is.

    A caller that needs nothing else of the series (``samri_ml-mask`` without ``--masked`` or
    ``--png``) drops the series' volumes before the network pass this way: a mean is one
    volume's memory, the series is T of them.

    Raises
    ------
    SamriMLError
        Values beyond float32's range (:func:`samri_ml.io.image_data`).
    """
    from samri_ml.io import image_data

    shape = img.shape
    if len(shape) != 4 or shape[-1] < 2:
        return img
    mean = pp.temporal_mean(image_data(img))
    out = nifti_class(img)(mean, img.affine, img.header, extra=img.extra)
    # the series' file, for the messages that name the image (set_filename would refuse a
    # MINC file's name for a NIfTI image)
    out.samri_ml_source = img.get_filename()
    return out


#: the RAS axis across which a mouse brain is (nearly) mirror-symmetric: left-right
LEFT_RIGHT_AXIS = 0


#: the default ``max_slices`` of :func:`predict_mask`: ``None`` predicts every slice. A number
#: N predicts a view with more slices on N of them, evenly spaced, and interpolates linearly in
#: between (each slice is resized to 64 x 64, so the views across it resolve no more than 64
#: positions along its axis): faster on large volumes, but not the default, as it lowered the
#: Dice of both validation subjects upsampled x2 (by 0.0013-0.0017 at N = 128; docs/masking.rst)
MAX_SLICES_PER_VIEW: int | None = None


def _slice_positions(n: int, max_slices: int | None) -> np.ndarray:
    """Indices of the slices to predict along an axis of ``n``: all, or about ``max_slices``
    evenly spaced ones including both ends, symmetric about the middle (so that a mirrored
    volume gets the mirrored slices and the mirror averaging stays exact)."""
    if max_slices is None or n <= max_slices:
        return np.arange(n)
    spaced = np.linspace(0, n - 1, max(max_slices, 2))
    first_half = np.floor(spaced[: (len(spaced) + 1) // 2] + 0.5).astype(int)
    return np.unique(np.concatenate([first_half, n - 1 - first_half]))


def _take_slices(vol: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    return vol if len(positions) == vol.shape[axis] else np.take(vol, positions, axis=axis)


def _interpolate_slices(values: np.ndarray, positions: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` of slices known at ``positions`` onto ``0..n-1``."""
    if len(positions) == n:
        return values
    target = np.arange(n)
    k = np.clip(np.searchsorted(positions, target, side="right") - 1, 0, len(positions) - 2)
    w = ((target - positions[k]) / (positions[k + 1] - positions[k])).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n
    w = w.reshape(shape)
    return np.take(values, k, axis=axis) * (1 - w) + np.take(values, k + 1, axis=axis) * w


def mirrors_by_default(model) -> bool:
    """Whether ``model`` predicts the left-right mirrored volume too when ``flip`` is not
    given: a single network does (test-time augmentation), an ensemble of networks
    (:func:`samri_ml.models.unet.ensemble`, the shipped masker) does not: its members'
    mean replaces the mirror, in as many passes (mirrored too it took twice the time)."""
    from samri_ml.models.unet import ensemble_size

    return ensemble_size(model) == 1


def predict_volume(model, ras: np.ndarray, views=pp.ALL_VIEWS, flip: bool | None = None,
                   max_slices: int | None = MAX_SLICES_PER_VIEW,
                   high: float | None = None) -> np.ndarray:
    """Brain probability of a RAS volume: the mean over ``views`` of the slice-wise predictions.

    With ``flip`` (test-time augmentation; None: :func:`mirrors_by_default`) each view's
    prediction is the mean of the volume's and of its left-right mirror's (mirrored back).
    Sagittal slices are cut along the left-right axis, so the mirror only reverses their order
    and gives the same prediction: it is not run again; the coronal and axial slices are. A
    view with more than ``max_slices`` slices is predicted on ``max_slices`` of them and
    interpolated (:data:`MAX_SLICES_PER_VIEW`). All slices go through the network in one pass
    (bigger batches are faster on CPU); all-zero slices get probability 0 without it. ``high``: the volume's 99th percentile
    (:func:`~samri_ml.masking.preprocess.high_percentile`), where known already.
    """
    vol = pp.normalise(ras, high)
    # each view once: a repeated one was summed twice but divided as one (the mean shrank)
    axes = list(dict.fromkeys(pp.view_axis(v) for v in views))
    if not axes:
        raise SamriMLError("no view to predict; choose from " + ", ".join(pp.VIEW_AXES))
    mirrored = np.flip(vol, LEFT_RIGHT_AXIS)
    mirror = mirrors_by_default(model) if flip is None else flip
    jobs = [(a, False) for a in axes]
    if mirror:
        jobs += [(a, True) for a in axes if a != LEFT_RIGHT_AXIS]
    positions = {a: _slice_positions(ras.shape[a], max_slices) for a in axes}
    stacks = [
        pp.volume_to_slices(_take_slices(mirrored if m else vol, positions[a], a),
                            normalised=True, axis=a)
        for a, m in jobs
    ]
    slices = np.concatenate(stacks)
    del vol, mirrored  # the slices hold what the network needs (64 px): a volume less below
    # an all-zero slice (outside a skull-stripped brain's box) holds no brain: not run
    filled = slices.reshape(len(slices), -1).any(axis=1)
    probs = np.zeros_like(slices)
    if filled.any():
        probs[filled] = predict_probabilities(model, slices[filled])
    # a view's predictions (the volume's and its mirror's) are added (commutative: the result
    # stays exactly mirror-equivariant), then the views' means in a fixed order; one view's
    # total at a time (a 408 x 408 x 392 volume held all three: 0.5 GB more at the peak)
    starts = np.cumsum([0] + [len(s) for s in stacks])
    out = np.zeros(ras.shape, np.float32)
    for axis in axes:
        total, count = None, 0
        for j, (a, m) in enumerate(jobs):
            if a != axis:
                continue
            shape = list(ras.shape)
            shape[axis] = len(stacks[j])
            p = pp.slices_to_volume(probs[starts[j] : starts[j + 1]], tuple(shape), axis=axis)
            p = _interpolate_slices(p, positions[axis], ras.shape[axis], axis)
            p = np.flip(p, LEFT_RIGHT_AXIS) if m else p
            if total is None:  # a new array (no other reference to it): added to in place
                total = p if p.dtype == np.float32 else p.astype(np.float32)
            else:
                total += p
            count += 1
            del p
        total *= np.float32(1 / (len(axes) * count))
        out += total
        del total
    return out


#: negative voxels in at least this share of the image: demeaned (shifted so that its minimum
#: is 0); fewer: a spline's undershoot around a zero background (clipped at 0)
NEGATIVE_SHIFT_FRACTION = 0.25
#: a minimum above 0 shared by at least this share of the voxels is a constant background
#: offset (subtracted); none of the evaluated scans has one (a minimum of 0, or no flat one)
FLAT_BACKGROUND_FRACTION = 0.2
#: :func:`padding_box` grows the box of the data by this fraction of its size each side
#: (clipped to the grid); without it, the dama brains' minimum Dice went from 0.984 to 0.977
PADDING_MARGIN = 0.1


def padding_box(data: np.ndarray) -> tuple[slice, ...]:
    """Slices of ``data`` without its padding: the bounding box of the voxels above its
    minimum grown by :data:`PADDING_MARGIN`, ``slice(None)`` along an axis where that reaches
    both ends of the grid.

    Always taken, whatever share of the grid the box fills, so that the network sees the same
    volume however much zero padding a scan is stored with (a threshold on that share, a
    quarter of the grid, let an EPI padded to 1.5-2 times its grid per axis through whole: its
    mask came out 1.7-2.5 times its volume)."""
    inside = data > data.min()
    whole = (slice(None),) * data.ndim
    if not inside.any():
        return whole
    from samri_ml.masks import grown_extent

    box = []
    for axis in range(data.ndim):
        lo, hi = grown_extent(inside, axis, PADDING_MARGIN)
        box.append(slice(None) if (lo, hi) == (0, data.shape[axis]) else slice(lo, hi))
    return tuple(box)


def check_maskable(img) -> None:
    """Refuse an image :func:`predict_mask` cannot mask, before any network is loaded: not
    3D/4D, a single slice, too small or too few slices, NaN/Inf, all-zero or constant data.
    ``samri_ml-mask`` calls it before loading the model (a refused image cost the model's load,
    8 s with TensorFlow's start, for a one-line error).

    Raises
    ------
    SamriMLError
        What :func:`predict_mask` would raise for the image's data.
    """
    _checked_volume(_as_image(img))


def _refused(img, message: str) -> SamriMLError:
    """The error refusing ``img``, named by the file it was read from where it was (a batch of
    scans through MaskBrain said "the image is constant" of one of them, without which)."""
    name = getattr(img, "samri_ml_source", None)
    if not name:
        try:
            name = img.get_filename()
        except Exception:  # noqa: BLE001 - an image without a file map
            name = None
    return SamriMLError(f"{name}: {message}" if name else message)


def _checked_volume(img) -> np.ndarray:
    """The 3D data of the nibabel image ``img`` (a 4D series' temporal mean), checked as
    :func:`check_maskable` says."""
    from samri_ml.io import image_data

    data = image_data(img)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise _refused(img, f"expected a 3D or 4D image, got shape {data.shape}")
    data = pp.temporal_mean(data)
    # after the temporal mean, so that a one-slice 4D series is refused too
    if sum(n > 1 for n in data.shape) < 3:
        raise _refused(img, f"image of shape {data.shape} is not a volume (a single slice); a 3D "
                       "image is needed")  # fmt: skip
    if sorted(data.shape)[1] < MIN_SIDE:
        raise _refused(img, f"image of shape {data.shape} is too small to mask (need at least "
                       f"{MIN_SIDE} voxels along two axes)")  # fmt: skip
    if min(data.shape) < MIN_SLICES:
        raise _refused(img, f"image of shape {data.shape} has only {min(data.shape)} slices "
                       f"along one axis, too few for a 3D brain mask (need {MIN_SLICES}); "
                       "hint: mask the whole stack the slices come from")
    if not np.all(np.isfinite(data)):
        raise _refused(img, "the image has NaN or Inf voxels; hint: fix or zero them first")
    if not np.any(data):
        raise _refused(img, "the image is all zeros; nothing to mask")
    if data.min() == data.max():
        raise _refused(img, f"the image is constant (every voxel is {data.min():g}); nothing to "
                       "mask")  # fmt: skip
    return data


def predict_mask(
    img,
    model=None,
    *,
    threshold: float = 0.5,
    return_probability: bool = False,
    views=pp.ALL_VIEWS,
    flip: bool | None = None,
    max_slices: int | None = MAX_SLICES_PER_VIEW,
):
    """Predict the brain mask of a 3D or 4D image, on the input's grid.

    Parameters
    ----------
    img : nibabel image or path-like
        3D volume, or 4D series (its temporal mean is masked).
    model : keras.Model, path-like or None
        The network, a ``.keras`` file, or None for the shipped model (loaded once, then cached).
    threshold : float
        Probability above which a voxel is brain.
    return_probability : bool
        Also return the (unthresholded, unprocessed) probability volume on the input grid.
    views : str or sequence of str
        Slice directions whose predictions are averaged: any of ``sagittal``, ``coronal``,
        ``axial``. Default all three (context the coronal slice lacks: a neck or snout slice
        looks like a brain slice on its own); ``"coronal"`` is the seed's method.
    flip : bool or None
        Also predict the left-right mirror and average (test-time augmentation); None (the
        default): the model's own choice, :func:`mirrors_by_default` (a single network is
        mirrored, an ensemble such as the shipped model is not).
    max_slices : int or None
        Predict at most this many slices per view (at least :data:`MIN_MAX_SLICES`), evenly
        spaced, and interpolate between them (:data:`MAX_SLICES_PER_VIEW`); None predicts
        every slice.

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask (1 = brain) with the input's 3D shape and affine; with ``return_probability``,
        a tuple ``(mask_image, probability_array)``.

    Raises
    ------
    SamriMLError
        Not 3D/4D, a single slice, too small, NaN/Inf, all-zero or constant data, no brain found
        (never an empty mask) or a mask filling nearly the whole image; a model that is not a
        masker, an unknown view, ``max_slices`` under :data:`MIN_MAX_SLICES`.
    """
    import warnings

    import nibabel as nb

    if isinstance(views, str):  # one view: its letters were taken for views ('unknown view 'c'')
        views = (views,)
    for view in views:
        pp.view_axis(view)  # an unknown one refused before any work
    if max_slices is not None and max_slices < MIN_MAX_SLICES:
        # as samri_ml-mask --max-slices and MaskBrain: 3 gave a mask from 3 slices per view
        raise SamriMLError(f"max_slices {max_slices}: must be at least {MIN_MAX_SLICES}")
    if not 0 < threshold < 1:  # NaN too (MaskBrain's Range lets it through)
        # as samri_ml-mask --threshold: 0 was blamed on a bright background, 1.5 and NaN
        # on the image ("no brain found"), after the network's pass
        raise SamriMLError(f"threshold {threshold}: must be between 0 and 1 (a brain "
                           "probability; default 0.5)")
    img = _as_image(img)
    if np.dtype(img.get_data_dtype()).kind == "c":
        warnings.warn("a complex image: its magnitude (abs) is masked", SamriMLNote,
                      stacklevel=2)
    data = _checked_volume(img)
    labels = pp.looks_like_label_map(data)  # before any shift: said after the checks
    high = pp.high_percentile(data)  # once: the note below and the normalisation use it
    offset = pp.background_fraction(data, high)  # 0 where the background is dark (or negative)
    if data.min() < 0:
        if np.mean(data < 0) >= NEGATIVE_SHIFT_FRACTION:
            # a demeaned or z-scored image has no dark zero background, which the seed's
            # normalisation (clip min..P99, divide by the maximum) assumes: shifted so that its
            # darkest voxel is 0 (an audit: Dice 0.79-0.81 with the plain image's mask before)
            data = data - data.min()
        else:
            # a few negative voxels: a spline's undershoot at the edges of a resliced image
            # whose background is zero; shifted, the undershoot (up to 0.45 x P99 in an audit)
            # became an offset of the whole background and the mask shrank to 0.70-0.94 Dice
            # of the image's own (clipped: 0.98-0.99)
            data = np.maximum(data, 0)
        high = None  # the changed volume's own
    elif data.min() > 0 and np.mean(data == data.min()) >= FLAT_BACKGROUND_FRACTION:
        # a constant background above 0 (an offset added to a skull-stripped brain): the
        # network learnt that outside is 0 (an audit: dama brains with 1 % of their 99th
        # percentile added got Dice 0.62-0.70 with their manual masks, 0.91-0.92 without)
        data = data - data.min()
        high = None
        offset = 0.0  # subtracted: no note that would tell the user to do it

    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    else:  # a model object (a plate embedding failed deep in TensorFlow's reshape)
        check_masker(model, f"model {getattr(model, 'name', type(model).__name__)!r}")
    # zero padding around the head (a large or padded grid): the network sees slices resized
    # to 64 px, so the head's apparent size depended on the padding (an audit: a head
    # off-centre in a grid 2.5 times its own got a mask 5 times its brain)
    box = padding_box(data)
    cropped = box != (slice(None),) * 3
    if cropped:
        # normalised by the 99th percentile of what the network sees, as a shifted image was
        # already: the whole grid's, mostly padding, was half the head's own (an audit: the
        # phantom in a grid 2.5 times its own came out 2 % larger, Dice 0.987 with its own)
        high = None
    ras, ornt = pp.to_ras(data[box], img.affine)
    prob_ras = predict_volume(model, ras, views, flip=flip, max_slices=max_slices, high=high)
    if cropped:
        prob = np.zeros(data.shape, np.float32)
        prob[box] = pp.from_ras(prob_ras, ornt)
        prob_ras = pp.to_ras(prob, img.affine)[0]  # the whole grid again, for what follows
    mask_ras = prob_ras > threshold
    if not mask_ras.any():
        hint = ("check that the image is a mouse head or brain MRI with a correct orientation "
                "header")
        if threshold != 0.5:
            hint = (f"lower the threshold (--threshold; {threshold:g} given, default 0.5), or "
                    f"{hint}")
        raise _refused(img, "no brain found in the image (the network predicted an empty "
                       f"mask); hint: {hint}")
    mask_ras = clean_mask(mask_ras)
    if mask_ras.mean() > MAX_MASK_FRACTION:
        raise _refused(
            img,
            f"the predicted mask fills {100 * mask_ras.mean():.0f} % of the image, which no brain "
            "does; hint: check that the background is dark (zero or near zero), not offset"
        )
    if mask_ras.mean() > NOTE_MASK_FRACTION:
        warnings.warn(f"the mask fills {100 * mask_ras.mean():.0f} % of the image, more than a "
                      "brain fills of a box around it; hint: check that the image holds a brain "
                      "with a dark background around it (not noise, nor a crop inside the "
                      "brain)", SamriMLNote, stacklevel=2)
    if min(data.shape) < RELIABLE_SLICES:  # after the checks too
        warnings.warn(f"the image has only {min(data.shape)} slices along one axis: masks of "
                      f"slabs under {RELIABLE_SLICES} slices are unreliable (Dice 0.51-0.81 with "
                      "the whole volume's mask at 5-6 slices in an audit); hint: check the mask, "
                      "or mask the whole stack the slices come from", SamriMLNote, stacklevel=2)
    if offset > pp.BACKGROUND_NOTE_FRACTION:  # after the checks: a refused mask says as much
        warnings.warn(f"the background is not dark (1st percentile {100 * offset:.0f} % of the "
                      "99th: an intensity offset?); the mask may come out too large; hint: "
                      "subtract the background level first", SamriMLNote, stacklevel=2)
    if labels:  # an atlas given for its template: a believable volume, a mask of nothing
        warnings.warn("the image holds integer values in patches of one value: a label map "
                      "(an atlas' regions), not a scan? its mask means nothing; hint: give the "
                      "MRI image (the template, not its labels)", SamriMLNote, stacklevel=2)
    mask = pp.from_ras(mask_ras.astype(np.uint8), ornt)
    # a NIfTI pair's (.img/.hdr) header too: its qform and sform codes were lost (0 and 2)
    header = img.header.copy() if isinstance(img, nb.Nifti1Pair) else None
    out = nifti_class(img)(mask.astype(np.uint8), img.affine, header)
    out.set_data_dtype(np.uint8)
    out.header["scl_slope"] = 1
    out.header["scl_inter"] = 0
    # a 0/1 mask: not the input's display range (viewers that honour it showed the mask all
    # black) nor its intent (a z-score map's); the geometry (forms, codes, units) is kept
    out.header["cal_min"], out.header["cal_max"] = 0, 1
    out.header.set_intent("none")
    if header is not None and len(header.get_data_shape()) == 4:
        out.header.set_xyzt_units(*header.get_xyzt_units())
    if return_probability:
        return out, pp.from_ras(prob_ras, ornt)
    return out


def _name(img, what: str) -> str:
    """A path as given, else ``what``: for messages."""
    return str(img) if isinstance(img, (str, os.PathLike)) else what


def _read_as_is(img):
    """A path's image as the file has it (4D of one volume, NaN voxels); an image as it is."""
    if isinstance(img, (str, os.PathLike)):
        from samri_ml.io import load_nifti

        return load_nifti(img, allow_4d=True, check_values=False, squeeze=False)
    return _as_image(img)


def apply_mask(img, mask_img, *, check_affine: bool = True):
    """The image multiplied by the mask (4D: every volume, a 4D of one volume stays 4D) on the
    input grid: float32, or complex64 for a complex image (its phase kept).

    Parameters
    ----------
    img, mask_img : nibabel image or path-like
        The image, and a mask on its grid (nonzero = brain), e.g. :func:`predict_mask`'s.
    check_affine : bool
        Also refuse a mask whose affine puts the grid elsewhere (:func:`check_same_grid`);
        False compares the shapes only.

    Raises
    ------
    SamriMLError
        An unreadable file, or a mask on another grid.
    """
    names = _name(img, "the image"), _name(mask_img, "the mask")
    img, mask_img = _read_as_is(img), _read_as_is(mask_img)
    check_same_grid(img, mask_img, *names, affine=check_affine)
    dtype = np.complex64 if np.dtype(img.get_data_dtype()).kind == "c" else np.float32
    data = np.asanyarray(img.dataobj)  # a loaded image's own array (float64 if scaled)
    mask = np.asarray(mask_img.dataobj) > 0
    while mask.ndim > 3 and mask.shape[-1] == 1:  # a 3D mask saved as 4D of one volume
        mask = mask[..., 0]
    mask = mask.reshape(mask.shape + (1,) * (data.ndim - mask.ndim))  # across the volumes
    # the product written straight into one array of ``dtype`` (times 0 or 1: the same values
    # as cast first): the cast, the product and its cast were three arrays beside the image,
    # which holds its data since load_nifti keeps them (20 bytes a voxel for a scaled run)
    masked = np.multiply(data, mask, out=np.empty(data.shape, dtype), casting="unsafe")
    out = nifti_class(img)(masked, img.affine, img.header.copy())
    out.set_data_dtype(dtype)
    out.header["scl_slope"] = 1
    out.header["scl_inter"] = 0
    return out
