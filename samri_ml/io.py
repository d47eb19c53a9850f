"""Loading images with one-line, user-facing errors (see :class:`samri_ml.errors.SamriMLError`)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from samri_ml.errors import SamriMLError


def load_nifti(path, *, allow_4d: bool = True, allow_2d: bool = False, check_values: bool = True):
    """Load a NIfTI image, refusing what would silently give nonsense downstream.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` file.
    allow_4d : bool
        Accept 4D (time series) images.
    allow_2d : bool
        Accept 2D images (one slice). Otherwise a 2D image is refused.
    check_values : bool
        Refuse NaN/Inf voxels and all-zero images (reads the data once).

    Returns
    -------
    nibabel.Nifti1Image
        With its data read into memory (``img.get_fdata()`` is cached).

    Raises
    ------
    SamriMLError
        Missing file, not a NIfTI, truncated/corrupt file, wrong number of dimensions,
        NaN/Inf or all-zero data.
    """
    import nibabel as nb

    path = Path(path)
    if not path.exists():
        raise SamriMLError(f"{path}: no such file; hint: check the path (relative paths start "
                           "from the current folder)")
    if path.is_dir():
        raise SamriMLError(f"{path}: is a folder, expected a NIfTI image (.nii or .nii.gz)")
    if not os.access(path, os.R_OK):
        raise SamriMLError(f"{path}: not readable (check its permissions)")
    import warnings

    from nibabel.spatialimages import HeaderDataError, HeaderTypeError

    # nibabel warns before it fails on a broken header ("Extension size is not a multiple of
    # 16 bytes"): the one-line error below says it; a file that loads keeps its warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = nb.load(str(path))
            data = np.asanyarray(img.dataobj)
        except (nb.filebasedimages.ImageFileError, gzip.BadGzipFile) as err:
            raise SamriMLError(f"{path}: not a NIfTI image ({_one_line(err)}); hint: give a .nii "
                               "or .nii.gz file") from err
        except (EOFError, OSError, ValueError, HeaderDataError, HeaderTypeError,
                zlib_error()) as err:
            raise SamriMLError(f"{path}: truncated or corrupt image ({_one_line(err)})") from err
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    if data.dtype.fields is not None:  # RGB24 / RGBA32: a record per voxel
        raise SamriMLError(f"{path}: a colour (RGB) NIfTI; hint: give one grayscale channel, "
                           "e.g. the scanner's magnitude image")
    # drop trailing singleton dimensions beyond 3 (e.g. 4D with one volume)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    ndim = data.ndim
    # a 3D header around one slice, e.g. (24, 24, 1), is a 2D image too
    if ndim == 2 or (ndim == 3 and min(data.shape) == 1):
        if not allow_2d:
            raise SamriMLError(f"{path}: is a 2D image {data.shape}; a 3D volume is needed")
    if ndim > 4 or (ndim == 4 and not allow_4d):
        raise SamriMLError(
            f"{path}: has {ndim} dimensions {data.shape}; expected 3D" + (" or 4D" if allow_4d else "")
        )
    if ndim < 2:
        raise SamriMLError(f"{path}: has {ndim} dimension(s); expected a 3D image")
    if check_values:
        finite = np.isfinite(data)
        if not finite.all():
            bad = int((~finite).sum())
            raise SamriMLError(f"{path}: {bad} voxels are NaN or Inf; hint: fix or zero them first")
        if not np.any(data):
            raise SamriMLError(f"{path}: the image is all zeros; hint: check the file (an empty "
                               "export or a failed conversion?)")
    if data.ndim != len(img.shape):
        img = nifti_class(img)(np.asarray(data), img.affine, img.header)
    return img


def nifti_class(img):
    """The NIfTI class to write data with ``img``'s header: NIfTI-2 for a NIfTI-2 image (its
    header in a NIfTI-1 image makes nibabel print ``sizeof_hdr should be 348``), else NIfTI-1."""
    import nibabel as nb

    return nb.Nifti2Image if isinstance(img, nb.Nifti2Image) else nb.Nifti1Image


def _one_line(err: BaseException) -> str:
    """An exception's text on one line (nibabel's messages can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def zlib_error():
    import zlib

    return zlib.error


def _finite(obj):
    """``obj`` with NaN/Inf floats as None and numpy scalars/arrays as Python values."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def json_dumps(obj, **kwargs) -> str:
    """Strict JSON (RFC 8259) that any parser reads: NaN and Inf become ``null`` (Python's
    ``json`` would write the bare ``NaN`` that JavaScript's and many others' parsers reject)."""
    import json

    return json.dumps(_finite(obj), allow_nan=False, **kwargs)
