"""Loading images with one-line, user-facing errors (see :class:`samri_ml.errors.SamriMLError`)."""

from __future__ import annotations

import gzip
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from samri_ml.errors import SamriMLError, SamriMLNote


@contextmanager
def quiet_stderr():
    """File descriptor 2 pointed at /dev/null for the ``with`` block: what C libraries print
    there themselves (TensorFlow's start-up lines, libtiff's and ITK's warnings about a file)
    is dropped, so that a command's one-line error stands alone. Python errors raised inside
    still propagate; without a file descriptor 2 (an embedded interpreter) nothing changes."""
    try:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        yield
        return
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()  # what Python wrote meanwhile goes to /dev/null too
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


#: the hint of an all-zero image (:func:`load_nifti`'s ``zero_hint``), unless the caller knows more
ZERO_HINT = "check the file (an empty export or a failed conversion?)"


def load_nifti(path, *, allow_4d: bool = True, allow_2d: bool = False, check_values: bool = True,
               squeeze: bool = True, float32: bool = False, zero_hint: str = ZERO_HINT):
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
    squeeze : bool
        Return a 4D image of one volume as 3D (the default); False keeps the file's shape (what
        an output "IN multiplied by the mask" must keep).
    float32 : bool
        Hold float64 values as float32 (:func:`read_float32`): what the network
        (:func:`image_data`) and a masked copy take anyway, in half the memory, and for a
        scaled integer image without nibabel's float64 array of the whole image.
    zero_hint : str
        The hint of the all-zero refusal (the QC of a processed image names the registration,
        not the file's export).

    Returns
    -------
    nibabel.Nifti1Image
        Holding the data read here (its ``dataobj`` an array, scaled): ``img.dataobj`` and
        ``img.get_fdata()`` do not read the file again.

    Raises
    ------
    SamriMLError
        Missing file, not a NIfTI, truncated/corrupt file, wrong number of dimensions,
        NaN/Inf or all-zero data, an affine without a usable orientation (:func:`check_affine`),
        with ``float32`` values beyond float32's range.

    Warns
    -----
    SamriMLNote
        What nibabel fixed in the header while reading it (its log lines, e.g. a zero voxel
        size set to 1), one note each instead of nibabel's raw line.
    """
    import nibabel as nb

    path = Path(path)
    absent = content_missing(path)
    if absent:
        raise SamriMLError(f"{path}: {absent}")
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
            with _nibabel_log() as fixed:
                img = nb.load(str(path))
            short = _shorter_than_its_header(path, img)
            if short:  # before the header's size is allocated (a 4 KB file took 13 GB)
                raise SamriMLError(f"{path}: truncated or corrupt image ({short})")
            data = full = read_float32(img.dataobj) if float32 else np.asanyarray(img.dataobj)
        except (nb.filebasedimages.ImageFileError, gzip.BadGzipFile) as err:
            misnamed = _misnamed_nifti(path)
            if misnamed:
                raise SamriMLError(f"{path}: {misnamed}") from err
            raise SamriMLError(f"{path}: not a NIfTI image ({_one_line(err)}); hint: give a .nii "
                               "or .nii.gz file") from err
        except (EOFError, OSError, ValueError, HeaderDataError, HeaderTypeError,
                zlib_error()) as err:
            unread = _unreadable_voxel_type(err) or _invalid_intercept(err)
            if unread:
                raise SamriMLError(f"{path}: {unread}") from err
            raise SamriMLError(f"{path}: truncated or corrupt image ({_one_line(err)})") from err
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    if 0 in img.shape or data.size == 0:  # nibabel reads a header of no voxels as shape (0,)
        raise SamriMLError(f"{path}: holds no voxels (its header's shape {img.shape}); hint: "
                           "check the file (an empty export or a failed conversion?)")
    if data.dtype.fields is not None:  # RGB24 / RGBA32: a record per voxel
        raise SamriMLError(f"{path}: a colour (RGB) NIfTI; hint: give one grayscale channel, "
                           "e.g. the scanner's magnitude image")
    # drop trailing singleton dimensions beyond 3 (e.g. 4D with one volume)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    check_dimensions(path, data.shape, allow_4d=allow_4d, allow_2d=allow_2d)
    if check_values:
        finite = np.isfinite(data)
        if not finite.all():
            bad = int((~finite).sum())
            raise SamriMLError(f"{path}: {bad} voxels are NaN or Inf; hint: fix or zero them first")
        if not np.any(data):
            raise SamriMLError(f"{path}: the image is all zeros; hint: {zero_hint}")
    check_affine(img, path)
    _say_header_fixes(img, path, fixed)
    _say_unknown_orientation(img, path)
    # the data are scaled: the file's scaling (which nibabel keeps in the proxy, not the
    # header) is said in ``extra``, for image_data's message
    slope, inter = (float(getattr(img.dataobj, key, default)) for key, default in
                    (("slope", 1.0), ("inter", 0.0)))
    extra = {**img.extra, **({"scl_slope": slope, "scl_inter": inter}
                             if (slope, inter) != (1.0, 0.0) else {})}
    if squeeze and data.ndim != len(img.shape):
        kind = nifti_class(img)
        # the file_map keeps get_filename(): the messages naming the image (a batch's
        # "the image is constant" of an (x, y, z, 1) scan named none)
        img = kind(np.asarray(data), img.affine, img.header, extra=extra,
                   file_map=img.file_map if kind is type(img) else None)
    else:
        # the image holds the data read above: its dataobj was still the file, which each
        # caller's img.dataobj or get_fdata() read (and decompressed) a second time; the
        # file_map keeps get_filename()
        img = type(img)(full, img.affine, img.header, extra=extra, file_map=img.file_map)
    return img


def check_dimensions(path, shape, *, allow_4d: bool = True, allow_2d: bool = False) -> None:
    """Refuse (:class:`SamriMLError`, one line naming ``path``) an image of ``shape`` (its
    trailing dimensions of 1 beyond the third left out: a 4D image of one volume is 3D) that
    is not 3D, or 4D with ``allow_4d``, or 2D with ``allow_2d``: the rule of
    :func:`load_nifti`, and of the workflow factories, which have the header only."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    ndim = len(shape)
    # a 3D header around one slice, e.g. (24, 24, 1), is a 2D image too
    if ndim == 2 or (ndim == 3 and min(shape) == 1):
        if not allow_2d:
            what = "one voxel" if np.prod(shape) == 1 else "a 2D image"
            raise SamriMLError(f"{path}: is {what} {shape}; a 3D volume is needed")
    if ndim > 4 or (ndim == 4 and not allow_4d):
        raise SamriMLError(
            f"{path}: has {ndim} dimensions {shape}; expected 3D" + (" or 4D" if allow_4d else "")
        )
    if ndim < 2:
        raise SamriMLError(f"{path}: has {ndim} dimension(s); expected a 3D image")


def _unreadable_voxel_type(err: BaseException) -> str | None:
    """What to say of a header whose voxel type is a valid one that nibabel cannot read (NIfTI's
    1-bit DT_BINARY, code 1; a 128-bit float where numpy has none), or None: such a file was
    called "truncated or corrupt" (an unknown code still is: that header is corrupt)."""
    import re

    match = re.fullmatch(r"data code (\d+) not supported", str(err))
    if not match:
        return None
    from nibabel.nifti1 import data_type_codes

    code = int(match[1])
    label = data_type_codes.label.get(code, "")
    return (f"its voxel type (NIfTI datatype {code}, {label}) cannot be read; hint: save "
            "it as uint8, int16 or float32")


def _invalid_intercept(err: BaseException) -> str | None:
    """What to say of a header whose scl_slope scales the voxels but whose scl_inter is NaN
    or Inf (nibabel refuses to read it), or None: such a file, whole, was called "truncated
    or corrupt"."""
    import re

    match = re.fullmatch(r"Valid slope but invalid intercept (\S+)", str(err))
    if not match:
        return None
    return (f"its header's scl_inter is {match[1]} where its scl_slope scales the voxel "
            "values, so they cannot be read; hint: set scl_inter to the offset meant, e.g. 0 "
            "(nibabel: img.header['scl_inter'] = 0)")


#: how an unlocked git-annex file whose content is not here begins (a pointer, not the data)
ANNEX_POINTER = b"/annex/objects/"


def _misnamed_nifti(path) -> str | None:
    """What is wrong with a NIfTI file whose name says the other compression (an uncompressed
    one named ``.nii.gz``, a gzipped one named ``.nii``: nibabel picks by the name, and both
    were called "not a NIfTI image", with the hint to give the very extension they had);
    None where that is not it."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(352)
    except OSError:
        return None
    nifti = head[344:348] == b"n+1\0" or head[4:8] == b"n+2\0"  # NIfTI-1's magic, NIfTI-2's
    if name.lower().endswith(".nii.gz") and nifti:
        return (f"an uncompressed NIfTI named .gz; hint: rename it to {name[:-3]} (or gzip "
                "it)")
    if name.lower().endswith(".nii") and head[:2] == b"\x1f\x8b":
        return f"a gzip-compressed NIfTI named .nii; hint: rename it to {name}.gz"
    return None


def annex_unfetched(path) -> bool:
    """Whether ``path`` is a DataLad/git-annex file whose content is not here: a symbolic
    link into ``.git/annex/objects`` whose target is missing (a locked file), or a git-annex
    pointer file (an unlocked one)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return "annex/objects" in os.readlink(path).replace(os.sep, "/")
    try:
        if path.is_file() and path.stat().st_size < 1024:
            with open(path, "rb") as f:
                return f.read(len(ANNEX_POINTER)) == ANNEX_POINTER
    except OSError:
        pass  # load_nifti says why it cannot be read
    return False


def content_missing(path) -> str | None:
    """Why ``path`` is there by name but its content is not, or None: a DataLad/git-annex
    file not fetched (:func:`annex_unfetched`) or a symbolic link to nothing. Such scans
    failed with "no such file" (for a file ``ls`` lists) or "not a NIfTI"."""
    path = Path(path)
    if annex_unfetched(path):
        return ("its content is not here (a DataLad/git-annex file not fetched); hint: fetch "
                f"it, e.g. datalad get {path} (or git annex get)")
    if path.is_symlink() and not path.exists():
        return (f"a symbolic link to {os.readlink(path)}, which does not exist; hint: fix or "
                "remove the link")
    return None


def check_affine(img, name) -> None:
    """Refuse an image whose affine (the sform or qform that nibabel reads) has no usable
    orientation: not finite, or singular (an sform of zeros). Every output is written on the
    input's affine, and the voxel sizes and orientation come from it.

    Raises
    ------
    SamriMLError
        Naming ``name`` (the file, or what the image is) and which form the affine came from.
    """
    if img.affine is None:  # an image made in memory without one
        raise SamriMLError(f"{name}: has no affine (orientation and voxel size); hint: give "
                           "one, e.g. nibabel.Nifti1Image(data, affine)")
    rzs = np.asarray(img.affine, dtype=float)[:3, :3]
    finite = bool(np.all(np.isfinite(rzs)))
    # singular whatever the unit: the determinant against the voxel sizes' product (a 40 um
    # grid in meters, 6.4e-14, was refused as singular under an absolute 1e-12)
    sizes = np.linalg.norm(rzs, axis=0) if finite else np.zeros(3)
    if sizes.all() and abs(np.linalg.det(rzs)) > 1e-6 * np.prod(sizes):
        return
    header = img.header
    form = "affine"
    if hasattr(header, "get_sform"):
        form = ("sform" if header.get_sform(coded=True)[1] else
                "qform" if header.get_qform(coded=True)[1] else "affine")
    what = "singular (e.g. all zeros)" if finite else "NaN or Inf"
    raise SamriMLError(f"{name}: the header's {form} is {what}, so the image has no "
                       "orientation or voxel size; hint: fix the header's sform/qform (e.g. "
                       "set sform_code to 0 where the qform is right)")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


#: an Analyze or NIfTI pair's file extensions, gzipped or not
PAIR_EXTENSIONS = (".img.gz", ".hdr.gz", ".img", ".hdr")
#: the image file extensions samri_ml reads: NIfTI, and a pair's
IMAGE_EXTENSIONS = (".nii.gz", ".nii", *PAIR_EXTENSIONS)


def image_extension(name: str, extensions=IMAGE_EXTENSIONS) -> str:
    """The one of ``extensions`` that the file name ``name`` ends in, in any case; '' for
    none."""
    return next((ext for ext in extensions if name.lower().endswith(ext)), "")


def image_stem(name: str, extensions=IMAGE_EXTENSIONS) -> str:
    """The file name ``name`` without its image extension (:func:`image_extension`):
    ``sub-01_T2w.nii.gz`` -> ``sub-01_T2w``, ``head.IMG`` -> ``head``."""
    return name[: len(name) - len(image_extension(name, extensions))]


def grid_offset(affine, other, shape) -> float:
    """How far (in the affines' unit) ``other`` puts a corner of a grid of ``shape`` from
    where ``affine`` puts it, at most over the eight corners; 0 for one grid."""
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float).T
    return float(np.abs(affine @ corners - other @ corners)[:3].max())


def grids_apart(affine, other, shape) -> float | None:
    """How far apart :func:`grid_offset` puts two grids of ``shape`` where it is half a voxel
    (of ``affine``) or more, NaN included: not one grid; None for one grid (ITK's float32
    rounding of an affine stays far below that)."""
    moved = grid_offset(affine, other, shape)
    voxel = float(np.min(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
    return None if moved < 0.5 * voxel else moved


def check_same_grid(img, mask_img, img_name: str = "the image", mask_name: str = "the mask",
                    *, affine: bool = True) -> None:
    """Refuse a mask that is not on the image's voxel grid: another shape, or (with
    ``affine``) an affine that puts a corner of the grid half a voxel or more away (a mask of
    another scan of the same shape was applied as if it belonged; ITK's float32 rounding of
    an affine stays far below that)."""
    shape, mshape = tuple(img.shape[:3]), tuple(mask_img.shape[:3])
    if shape != mshape:
        raise SamriMLError(f"brain mask {mask_name} {mshape} is not on the grid of {img_name} "
                           f"{shape}; hint: give a mask of that image")
    if not affine:
        return
    moved = grids_apart(img.affine, mask_img.affine, shape)
    if moved is not None:
        raise SamriMLError(f"brain mask {mask_name} is not on the grid of {img_name}: same shape "
                           f"{shape}, but its affine puts the grid {moved:.3g} "
                           f"{affine_unit(img)} away; hint: give a mask of that image, or "
                           "resample it onto the image first")


def affine_unit(img) -> str:
    """The spatial unit ``img``'s affine counts in, for messages: its header's (``um``,
    ``m``), else ``mm`` (NIfTI's convention where the header says none). A header in
    microns was said to be "mm" away."""
    units = getattr(getattr(img, "header", None), "get_xyzt_units", None)
    return {"micron": "um", "meter": "m"}.get(units()[0] if units else "mm", "mm")


@contextmanager
def _nibabel_log():
    """Collect nibabel's log lines (``nibabel.global``: what it fixed in a header while
    reading it) instead of printing them raw; yields the list of their messages."""
    import nibabel as nb

    logger = nb.imageglobals.logger
    records = _Records()
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [records], False
    try:
        yield records.messages
    finally:
        logger.handlers, logger.propagate = saved


def _say_header_fixes(img, path, messages) -> None:
    """One :class:`SamriMLNote` per header fix of nibabel's; a zero voxel size (pixdim) says
    whether the sizes (and so any volume in mm^3) are known from the sform, or unknown."""
    import warnings

    from nibabel.affines import voxel_sizes

    for message in messages:
        if "pixdim" in message and "non-zero" in message:
            if img.header.get_sform(coded=True)[1]:
                sizes = voxel_sizes(img.affine)
                text = (f"{path}: the header's voxel size (pixdim) is zero; the sform's "
                        f"({' x '.join(f'{z:g}' for z in sizes)}) is used")
            else:
                text = (f"{path}: the header's voxel size (pixdim) is zero, taken as 1: sizes "
                        "and volumes in mm are unknown; hint: fix the header's pixdim")
        elif "pixdim" in message and "positive" in message:
            # NIfTI's voxel sizes are positive; ITK takes a negative one as a mirrored axis:
            # nibabel's "setting to abs of pixdim values" hid that a mask written here (with
            # the sizes positive) lay mirrored on its scan in ANTs and ITK-SNAP
            text = (f"{path}: the header's voxel size (pixdim) is negative, which NIfTI does not "
                    "allow: taken as positive (nibabel's reading, and the outputs' headers), "
                    "where ANTs and ITK-SNAP mirror that axis, so outputs on the scan's grid "
                    "lie mirrored on the scan there; hint: check which way that axis runs, and "
                    "make the header's pixdim positive")
        else:
            text = f"{path}: header fixed while reading it: {_one_line(message)}"
        warnings.warn(text, SamriMLNote, stacklevel=3)


def _say_unknown_orientation(img, path) -> None:
    """A note where ``img``'s header holds no orientation: an Analyze 7.5 image without an SPM
    ``.mat`` beside it, whose x axis nibabel takes from right to left (LAS) without a word (a
    mask of a scan stored the other way round came out mirrored), or a NIfTI image whose
    qform_code and sform_code are both 0, which nibabel reads as LAS and ANTs (ITK) as LPS:
    ``samri_ml-register`` registered such a scan from upside down, VCF 0.64, exit 0."""
    import warnings

    import nibabel as nb

    if isinstance(img, nb.Nifti1Pair):  # NIfTI-1 and -2, single files and pairs
        header = img.header
        if int(header["qform_code"]) or int(header["sform_code"]):
            return
        warnings.warn(f"{path}: its header holds no orientation (qform_code and sform_code 0): "
                      "nibabel, and so samri_ml, takes its axes as LAS, ANTs as LPS; hint: set "
                      "the header's sform/qform to the scan's orientation (e.g. nibabel's "
                      "img.set_sform(affine, code=1))", SamriMLNote, stacklevel=3)
        return
    if not isinstance(img, nb.AnalyzeImage):
        return
    mat = img.file_map.get("mat")
    if mat is not None and mat.filename and Path(mat.filename).exists():
        return  # SPM's affine: the orientation is known
    warnings.warn(f"{path}: an Analyze 7.5 image, whose header holds no orientation: its x "
                  "axis is taken to run from right to left (nibabel's default); hint: check "
                  "left and right in the output, or convert the scan to NIfTI where its "
                  "orientation is known", SamriMLNote, stacklevel=3)


def image_data(img, dtype=np.float32) -> np.ndarray:
    """The voxel values of ``img`` as ``dtype`` (real): the magnitude of a complex image
    (``abs``; its real part alone is what numpy's cast keeps).

    Raises
    ------
    SamriMLError
        Values (after the header's scaling) beyond the range of ``dtype``: a huge ``scl_slope``
        made them overflow to Inf in the cast.
    """
    if np.dtype(img.get_data_dtype()).kind == "c":
        raw = np.abs(np.asanyarray(img.dataobj))
    else:
        raw = img.dataobj
    with np.errstate(over="raise"):
        try:
            return np.asarray(raw, dtype=dtype)
        except FloatingPointError:
            # nibabel moves it out of the header (into the proxy; load_nifti's image: extra)
            slope = getattr(img.dataobj, "slope", img.extra.get("scl_slope", 1))
            raise _overflow_error(dtype, slope) from None


#: voxels scaled at once by :func:`read_float32`: 2 MiB of float64 scratch (2^20 voxels were
#: no faster on a 256^3 volume, 24-27 ms, and held 11 bytes a voxel of a small 4D run at the
#: peak, not 6)
SCALED_CHUNK = 1 << 18


def read_float32(dataobj) -> np.ndarray:
    """The voxel values of an image's ``dataobj`` (nibabel's proxy of the file, or an array),
    as float32 where nibabel gives float64, other dtypes as nibabel gives them.

    nibabel scales an integer image with ``scl_slope``/``scl_inter`` into one float64 array
    (8 bytes a voxel, beside the file's integers), which a float32 copy then halved: a 256^3
    int16 volume peaked at 199 MiB to hold 64. Here the file's integers are scaled
    :data:`SCALED_CHUNK` voxels at a time, by nibabel's own arithmetic (in float64, then cast),
    into one float32 array: the same values to the last bit, at 6 bytes a voxel.

    Raises
    ------
    SamriMLError
        Values (after the header's scaling) beyond float32's range.
    """
    from nibabel.arrayproxy import is_proxy
    from nibabel.volumeutils import apply_read_scaling

    # a proxy without slope and inter (MINC's, PAR/REC's, ECAT's) scales in its own way: its
    # whole array, as nibabel gives it (an AttributeError reached samri_ml-mask's users)
    factors = (float(getattr(dataobj, "slope", 1.0)), float(getattr(dataobj, "inter", 0.0)))
    scaled = is_proxy(dataobj) and factors != (1.0, 0.0)
    raw = np.asanyarray(dataobj.get_unscaled() if scaled else dataobj)
    if scaled and raw.dtype.kind in "iuf":
        # the proxy's own factors, as nibabel's get_scaled takes them (float64 arrays)
        slope, inter = np.asanyarray(dataobj.slope), np.asanyarray(dataobj.inter)
        out = np.empty(raw.shape, np.float32, order="F")
        src = np.asfortranarray(raw).reshape(-1, order="F")
        dst = out.reshape(-1, order="F")  # a view: out is Fortran-ordered
        for start in range(0, src.size, SCALED_CHUNK):
            part = slice(start, start + SCALED_CHUNK)
            dst[part] = _float32(apply_read_scaling(src[part], slope, inter), slope)
        return out
    if scaled:  # complex: nibabel's whole array (image_data takes its magnitude)
        raw = np.asanyarray(dataobj)
    return _float32(raw, 1.0) if raw.dtype == np.float64 else raw


def _float32(values: np.ndarray, slope) -> np.ndarray:
    """``values`` as float32; :class:`SamriMLError` where they overflow it (a huge
    ``scl_slope``, said where it is not 1)."""
    with np.errstate(over="raise"):
        try:
            return np.asarray(values, dtype=np.float32)
        except FloatingPointError:
            raise _overflow_error(np.float32, slope) from None


def _overflow_error(dtype, slope) -> SamriMLError:
    """The error for values that overflow ``dtype`` after the header's scaling ``slope``."""
    why = f" (the header's scl_slope is {float(slope):g})" if float(slope) != 1 else ""
    return SamriMLError(f"the image's values overflow {np.dtype(dtype).name}{why}; hint: fix "
                        "the header's scl_slope/scl_inter, or rescale the data")


def nifti_class(img):
    """The NIfTI class to write data with ``img``'s header: NIfTI-2 for a NIfTI-2 image (its
    header in a NIfTI-1 image makes nibabel print ``sizeof_hdr should be 348``), a NIfTI-2
    pair's too (.img/.hdr), else NIfTI-1."""
    import nibabel as nb

    return nb.Nifti2Image if isinstance(img, (nb.Nifti2Image, nb.Nifti2Pair)) else nb.Nifti1Image


def _one_line(err: BaseException) -> str:
    """An exception's text on one line (nibabel's messages can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


#: deflate's largest compression ratio (1032:1), with room: a .nii.gz this many times smaller
#: than the data its header gives cannot hold them
MAX_GZIP_RATIO = 1100


def _shorter_than_its_header(path: Path, img) -> str | None:
    """Why ``path`` cannot hold the voxels its header gives (shape times type size after
    ``vox_offset``), or None: a small file whose header claims a huge volume was found
    truncated only after that volume was allocated (13 GB and 33 s for a 4 KB file, or "out
    of memory" with advice to crop). A .nii is measured; a .nii.gz is bounded by deflate's
    ratio."""
    import nibabel as nb

    if not isinstance(img, nb.AnalyzeImage):  # NIfTI-1/2 and their pairs; not MGH (.mgz)
        return None
    try:
        header = img.header
        need = int(np.prod(img.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
        data_file = Path(img.file_map["image"].filename)  # a pair's .img, not its .hdr
        size = data_file.stat().st_size
    except (AttributeError, TypeError, ValueError, KeyError, OSError):
        return None
    name = data_file.name.lower()
    if name.endswith(".gz"):
        if need > MAX_GZIP_RATIO * size:
            return (f"its header gives {need:,} bytes of voxels, which a {size:,}-byte "
                    "compressed file cannot hold")
        return None
    if name.endswith((".bz2", ".zst", ".xz")):  # other compressions: no bound known here
        return None
    if size < offset + need:
        return f"its header gives {offset + need:,} bytes, the file has {size:,}"
    return None


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
