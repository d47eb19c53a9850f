"""Functional-run preprocessing in numpy (what SAMRI took from FSL/AFNI): dummy-scan removal,
slice timing correction and the temporal mean."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

#: fewest volumes slice timing correction works on; a shorter run is returned unchanged
MIN_SLICE_TIMING_VOLUMES = 3

#: BIDS' ``SliceEncodingDirection`` values: the slice axis, ``-`` where the slices were
#: acquired from its end (the ``SliceTiming`` list then starts there)
SLICE_ENCODING_DIRECTIONS = ("i", "j", "k", "i-", "j-", "k-")

#: a repetition time (s) above this is one given in milliseconds (the BIDS validator's bound)
MAX_TR_SECONDS = 100.0


def is_number(value) -> bool:
    """Whether a metadata value is a number (JSON's or numpy's; not a string, a boolean or
    None): the rule of ``RepetitionTime`` and each ``SliceTiming`` value, for the sidecars
    ``samri_ml-register`` reads and the ``bold_metadata`` given to ``init_generic_wf``."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_repetition_time(value) -> bool:
    """Whether ``value`` is a repetition time: a number of seconds above 0 (``"1.0"``, 0 and
    -1 are not; one over :data:`MAX_TR_SECONDS` is, in milliseconds: check that apart)."""
    return is_number(value) and value > 0


def is_slice_timing(value) -> bool:
    """Whether ``value`` is a ``SliceTiming``: a list (or tuple, or 1D array) of numbers, the
    time in seconds of each slice (``["0", "0.5"]`` and a single 0.5 are not)."""
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim == 1 else None
    return isinstance(value, (list, tuple)) and all(is_number(t) for t in value)


def slice_axis(direction) -> int | None:
    """The voxel axis (0, 1, 2) of a ``SliceEncodingDirection`` (``"j-"``: 1); None for a
    value that is none of :data:`SLICE_ENCODING_DIRECTIONS` (``"z"``, ``"k+"``)."""
    if direction not in SLICE_ENCODING_DIRECTIONS:
        return None
    return "ijk".index(direction[0])


def header_slice_axis(img) -> int | None:
    """The slice axis (0, 1, 2) a NIfTI header gives in its ``dim_info`` (``slice_dim``), or
    None (unset, or not a NIfTI header): BIDS' slice axis where the sidecar gives no
    ``SliceEncodingDirection``."""
    try:
        dim = img.header.get_dim_info()[2]
    except (AttributeError, TypeError, ValueError):
        return None
    return dim if dim in (0, 1, 2) else None


def n_dummy_to_drop(n_volumes: int, requested: int) -> int:
    """Dummy volumes to drop: ``requested``, clamped so that at least one volume is left."""
    if n_volumes < 1:
        raise ValueError("a functional run needs at least one volume")
    return int(max(0, min(requested, n_volumes - 1)))


def too_few_volumes_note(n_volumes: int, requested: int,
                         option: str = "--dummy-scans") -> str | None:
    """What ``samri_ml-register`` and ``samri_ml-qc scan`` say of a run of no more volumes than
    ``--dummy-scans`` asks to drop (all but the last are dropped), and ``init_generic_wf`` of
    its ``dummy_scans`` (``option``); None where it has more."""
    if n_volumes > requested:
        return None
    dropped = n_dummy_to_drop(n_volumes, requested)
    return (f"{n_volumes} volumes, not more than {option} {requested}: {dropped} dropped, "
            f"{n_volumes - dropped} kept; hint: {option} 0 keeps them all")


def drop_dummy_volumes(data: np.ndarray, requested: int = 10) -> tuple[np.ndarray, int]:
    """Drop the first ``requested`` volumes of a 4D array (clamped, see :func:`n_dummy_to_drop`).

    Returns the kept data and the number of volumes dropped. 3D data is returned unchanged; a
    5D run of one 4D series, ``(x, y, z, t, 1)`` (which ``samri_ml-register`` takes as 4D),
    comes back 4D (its 5th axis was cut instead, to no voxels, and the run failed two steps on).
    """
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 4:
        return data, 0
    n = n_dummy_to_drop(data.shape[3], requested)
    if n < requested:
        warnings.warn(
            f"only {data.shape[3]} volumes: dropping {n} dummy volumes instead of {requested}",
            stacklevel=2,
        )
    return data[:, :, :, n:], n


def slice_times_outside(slice_times, repetition_time: float) -> tuple[float, float] | None:
    """The first and last slice time where one lies outside the repetition, 0 to
    ``repetition_time``; None where all lie within it."""
    times = np.asarray(slice_times, dtype=float)
    if times.size and (times.min() < 0 or times.max() > repetition_time):
        return float(times.min()), float(times.max())
    return None


def check_slice_times(slice_times, repetition_time: float) -> None:
    """Refuse (``ValueError``) slice times outside the repetition (:func:`slice_times_outside`):
    times in milliseconds against a repetition time in seconds delayed each slice by hundreds
    of repetitions, and the run came out scrambled without a word."""
    outside = slice_times_outside(slice_times, repetition_time)
    if outside:
        raise ValueError(f"slice times {outside[0]:g} to {outside[1]:g} are not within the "
                         f"repetition time, 0 to {repetition_time:g} s; hint: give both in "
                         "seconds (BIDS: milliseconds / 1000)")


def slice_time_correct(
    data: np.ndarray, slice_times, repetition_time: float, slice_axis: int = 2,
    reference_time: float | None = None,
) -> np.ndarray:
    """Shift each slice's time series to a common reference time.

    Slice ``k`` was acquired at ``t_k = slice_times[k]`` within each repetition. Its signal is
    resampled at ``t_ref`` by Fourier (sinc) interpolation, i.e. delayed by
    ``d_k = t_k - t_ref`` seconds: ``S_k(f) * exp(-2 pi i f d_k)`` with the series mirrored at
    its ends (so that no wrap-around edge is created). ``t_ref`` defaults to the middle of the
    repetition, as FSL's slicetimer does. Runs of fewer than 3 volumes are returned unchanged.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 4:
        raise ValueError("slice timing correction needs a 4D time series")
    n_t = data.shape[3]
    slice_times = np.asarray(slice_times, dtype=float)
    if slice_times.size != data.shape[slice_axis]:
        raise ValueError(
            f"{slice_times.size} slice times for {data.shape[slice_axis]} slices along axis {slice_axis}"
        )
    check_slice_times(slice_times, repetition_time)
    if n_t < MIN_SLICE_TIMING_VOLUMES:
        return data.copy()
    if reference_time is None:
        reference_time = repetition_time / 2.0
    # mirror the series so that the FFT sees a continuous periodic signal
    mirrored = np.concatenate([data, data[..., ::-1]], axis=3)
    freqs = np.fft.rfftfreq(2 * n_t, d=repetition_time)
    spectrum = np.fft.rfft(mirrored, axis=3)
    delays = slice_times - reference_time  # positive: slice acquired late, so shift it back
    out = np.empty_like(spectrum)
    for k, delay in enumerate(delays):
        index = [slice(None)] * 4
        index[slice_axis] = k
        phase = np.exp(-2j * np.pi * freqs * delay)
        out[tuple(index)] = spectrum[tuple(index)] * phase
    corrected = np.fft.irfft(out, n=2 * n_t, axis=3)[..., :n_t]
    return corrected


def temporal_mean(data: np.ndarray) -> np.ndarray:
    """Mean over time of a 4D array (3D arrays are returned as they are)."""
    return data.mean(axis=3) if data.ndim == 4 else np.asarray(data)
