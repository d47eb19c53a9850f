"""Loading atlas plates and microscopy sections, and the seed's preprocessing.

Everything here is plain numpy/OpenCV (no TensorFlow) so it is fast to import and to test.

The seed (Antanavicius, Leiras, Selvan) feeds the network grayscale, CLAHE-equalised images padded
to a square and resized to 224, 448 or 1024 px. :func:`preprocess` does exactly that for any size.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from samri_ml.errors import SamriMLError, SamriMLNote
from samri_ml.io import quiet_stderr
from samri_ml.paths import shared_data_dir  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
#: a montage's file name (:mod:`samri_ml.plates.montage`): the section's file name, extension
#: included (``101.png`` and ``101.jpg`` of one folder keep a montage each), then this
MONTAGE_SUFFIX = "_plates.png"
MIN_SIDE = 16  # px; anything smaller carries no anatomy worth ranking


def is_montage(path) -> bool:
    """Whether ``path`` is named as a montage of the identification (:data:`MONTAGE_SUFFIX`):
    written beside the sections (``--montage`` their folder), one was read as a section."""
    return Path(path).name.lower().endswith(MONTAGE_SUFFIX)

_LABEL_RE = re.compile(r"^(\d+)")
JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF

#: a float image in [0, 1] whose 0.1st-99.9th percentiles span less than this is stretched
#: between them, as 16-bit images are: ``round(255 x)`` would leave it fewer than half of the
#: 8-bit grey levels (a bit or more lost; a float export with max 0.05 kept 13 levels and
#: ranked plate 132 for 101). Every shared section and plate spans at least 0.55 (sections
#: 0.70), so a float copy of them reads as its 8-bit PNG.
FLOAT_MIN_SPAN = 0.5


def label_from_name(path) -> int:
    """Plate label of a section file: the number at the start of its name.

    ``100_2.png`` -> 100, ``91.png`` -> 91.

    Raises
    ------
    SamriMLError
        When the name does not start with a number.
    """
    name = Path(path).name
    m = _LABEL_RE.match(name)
    if not m:
        raise SamriMLError(
            f"cannot read a plate number from the file name {name!r}; "
            "hint: name labelled sections '<plate>.png' or '<plate>_<n>.png'"
        )
    return int(m.group(1))


def _stretch_integer(img: np.ndarray) -> np.ndarray:
    """An integer image of up to 16 bits (16-bit, 8-bit signed, or a dim 8-bit one) stretched
    between its 0.1st and 99.9th percentiles to 8 bits, as :func:`_to_uint8` stretches any
    other, through a table of its levels: no float64 copies of the image (a 12000 x 9000
    16-bit slide took 2.8 GB, the same as 8-bit 0.8 GB). The percentiles are
    :func:`_level_range`'s: the tissue's, where a small section lies alone on a large slide."""
    info = np.iinfo(img.dtype)
    lo, hi = _level_range(img)
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    levels = np.arange(int(info.min), int(info.max) + 1, dtype=np.float64)
    table = np.clip((levels - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8)
    if info.min < 0:  # signed: its unsigned view, top bit flipped, counts from info.min
        unsigned = np.dtype(f"u{img.dtype.itemsize}")
        return table[img.view(unsigned) ^ unsigned.type(-int(info.min))]
    return table[img]


#: a colour image whose grey spans less than this fraction of its most contrasted channel's
#: span is read from that channel (the grey would lose over half of its levels, as a dim
#: float image would: :data:`FLOAT_MIN_SPAN`)
COLOUR_MIN_SPAN = 0.5


def _span(img: np.ndarray) -> float:
    """The 0.1st to 99.9th percentile span of an image (:func:`_level_range`), on every
    fourth pixel each way."""
    lo, hi = _level_range(img[::4, ::4])
    return float(hi - lo)


#: :func:`_level_range`: an image whose middle 98 % (1st to 99th percentile) spans at most
#: this fraction of its levels (min to max) is one flat background with a little tissue
FLAT_BACKGROUND_SPAN = 0.1


def _level_range(img: np.ndarray) -> tuple[float, float]:
    """The 0.1st and 99.9th percentiles of ``img``: the levels it is stretched between (hot
    pixels and dust left out). Where its middle 98 % is one flat background
    (:data:`FLAT_BACKGROUND_SPAN`), those of the tissue, the pixels outside it, with the
    background's level kept at one end: a
    small section alone on a large slide (under a hundredth of it: 800 px on a 20000 x 15000
    scan) had its 99.9th percentile in its own tissue, which half came out white (read as
    dim, or 16-bit: val_1's 110, plate 114 and 'uncertain' where 110 as it is)."""
    lo, hi = (float(v) for v in np.percentile(img, [0.1, 99.9]))
    sample = img[::4, ::4]  # whether it is flat: on a sixteenth (a 16-bit slide: 0.2 s)
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    spread = float(sample.max()) - float(sample.min())
    if spread > 0 and p99 - p1 <= FLAT_BACKGROUND_SPAN * spread:
        tissue = img[(img < p1) | (img > p99)]
        if tissue.size:
            t_lo, t_hi = np.percentile(tissue, [0.1, 99.9])
            lo, hi = min(float(t_lo), p1), max(float(t_hi), p99)
    return lo, hi


def _transparent_as_background(img: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """A grey image whose ``clear`` pixels (fully transparent: they show nothing, whatever
    colour they store) take the median of the opaque pixels around them, the background the
    section was cut out of (dark for a fluorescence or dark-field section, bright for a
    brightfield one). A cut-out saved with white transparent pixels was read as a dark
    section on white: an audit's val_1 + val_2 sections, background made transparent white,
    MAE 1.00 -> 5.91."""
    import cv2

    if not clear.any() or clear.all():
        return img
    mask = clear.astype(np.uint8)
    rim = cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool) & ~clear
    out = img.copy()
    out[clear] = np.median(img[rim])
    return out


def _to_uint8(img: np.ndarray, path) -> np.ndarray:
    """Grayscale uint8 from 8/16-bit, float, RGB(A) or multi-page arrays."""
    img = np.asarray(img)
    if img.ndim == 3:
        if img.shape[2] in (3, 4):
            import cv2

            rgb = img[..., :3]
            clear = img[..., 3] == 0 if img.shape[2] == 4 else None
            live = [c for c in range(3) if rgb[..., c].max() > rgb[..., c].min()]
            if len(live) == 1:
                # one stain in one colour (a DAPI-blue export): that channel, whole; the grey
                # of blue alone would span 29 levels of 255
                img = np.ascontiguousarray(rgb[..., live[0]])
            else:
                if rgb.dtype not in (np.uint8, np.uint16, np.float32):
                    rgb = rgb.astype(np.float32)
                img = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
                spans = [_span(rgb[..., c]) for c in range(3)]
                if _span(img) < COLOUR_MIN_SPAN * max(spans):
                    # one stain mostly in one colour, the others a little noise (a DAPI-blue
                    # JPEG: its chroma rings into red and green): the grey kept 35 levels
                    img = np.ascontiguousarray(rgb[..., int(np.argmax(spans))])
            if clear is not None:
                img = _transparent_as_background(img, clear)
        elif img.shape[2] == 1:
            img = img[..., 0]
        elif img.shape[2] == 2:  # grey and alpha (a cut-out section)
            img = _transparent_as_background(np.ascontiguousarray(img[..., 0]),
                                             img[..., 1] == 0)
        elif img.shape[0] in (1, 3, 4) and img.shape[1] > 4:  # channels first
            img = img.mean(axis=0)
        else:
            raise SamriMLError(
                f"{path}: a {img.shape} array is not a 2D section image; hint: pass one slice"
            )
    if img.ndim != 2:
        raise SamriMLError(f"{path}: expected a 2D image, got shape {img.shape}; hint: give "
                           "one section (a PNG, JPEG or TIFF page)")
    if img.dtype == np.uint8:
        return img
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.integer) and img.dtype.itemsize <= 2:
        return _stretch_integer(img)
    f = img.astype(np.float64)
    if not np.all(np.isfinite(f)):
        f = np.where(np.isfinite(f), f, 0.0)
    lo, hi = _level_range(f)
    if (np.issubdtype(img.dtype, np.floating) and f.min() >= 0 and f.max() <= 1.0
            and hi - lo >= FLOAT_MIN_SPAN):
        # the originals are float in [0, 1]: value = round(255 x), as the shared PNGs; a dim
        # one (FLOAT_MIN_SPAN) is stretched below, as 16-bit images are
        return np.round(f * 255).astype(np.uint8)
    if hi <= lo:
        lo, hi = f.min(), f.max()
    if hi <= lo:
        return np.zeros(f.shape, np.uint8)
    return np.clip((f - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8)


def read_image(path) -> np.ndarray:
    """Read any 2D section or plate as grayscale uint8.

    Accepts 8/16-bit and float PNG/TIFF/JPEG, RGB(A) images (converted to gray) and
    float TIFFs in [0, 1] (the microscope's originals). A brightfield section (dark tissue on a
    bright background) is inverted, with a note, to look like the plates. An EXIF orientation
    tag is applied as viewers apply it: by :func:`exif_upright` for JPEG and PNG, by the
    decoder itself for a TIFF's tags 2-4 (libtiff), and by :func:`exif_upright` for a TIFF's
    tags 5-8 (stored turned by a quarter turn: OpenCV cannot decode those, so the stored
    pixels are decoded from the file's bytes with the tag cleared, :func:`_tiff_tag_cleared`).

    The image is read-only: what the tissue box needs of it was found while reading and is
    kept with it (:func:`_keep_look`); change a copy (``img.copy()``).

    Raises
    ------
    SamriMLError
        Missing file, not an image, a truncated file, a TIFF of several channels per pixel
        (or stored turned by a quarter turn in a compression OpenCV cannot decode), an image
        smaller than 16 px, or one with a single value (empty), each with a one-line cause.
    """
    import cv2

    p = Path(path)
    if not p.exists():
        raise SamriMLError(f"{path}: no such file")
    if p.is_dir():
        # a folder of sections given as one (`samri_ml-identify-plate sections/`)
        raise SamriMLError(f"{path}: is a directory, not an image; hint: give the images in "
                           f"it, e.g. {p / '*.png'}")
    _quiet_opencv()
    # OpenCV (and SimpleITK) open files by a UTF-8 name: a link to one that is not UTF-8
    with _opencv_path(p, path) as cv:
        data = None
        tiff = _is_tiff(p)
        turn = 1  # an orientation tag still to apply (libtiff applies a TIFF's tags 2-4 itself)
        if tiff:
            turn, grey_alpha = _check_tiff(p)
            with quiet_stderr():  # libtiff's own warnings and errors about the file
                if turn == 1:
                    img = cv2.imread(cv, cv2.IMREAD_UNCHANGED)
                else:  # 5-8: OpenCV cannot decode them; the stored pixels, turned below
                    stored = _tiff_tag_cleared(p.read_bytes())
                    img = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_UNCHANGED)
            if grey_alpha and img is not None and img.ndim == 2:
                img = _tiff_grey_alpha(p, img)
            if img is None and turn != 1:
                raise SamriMLError(f"{path}: a TIFF stored turned by a quarter turn (orientation "
                                   f"tag {turn}) that OpenCV cannot decode; hint: save it upright "
                                   "(orientation tag 1)")
        elif p.suffix.lower() in (".jpg", ".jpeg", ".png"):
            data = p.read_bytes()  # read once: checked, decoded, searched for its EXIF
            # by the content, not the name (a PNG saved as .jpg is a PNG)
            if data[:2] == JPEG_MAGIC and not _jpeg_complete(data):
                # libjpeg warns on stderr and OpenCV fills the missing rows with grey
                raise SamriMLError(f"{path}: truncated or corrupt JPEG (it ends before its last "
                                   "scan does); hint: copy or export it again")
            if data[:8] == PNG_MAGIC and not _png_complete(data):
                # libpng would print its own error line before ours
                raise SamriMLError(f"{path}: truncated or corrupt PNG (it ends before its last "
                                   "chunk does); hint: copy or export it again")
            img = (cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                   if data else None)
        else:
            img = cv2.imread(cv, cv2.IMREAD_UNCHANGED)
        if img is None:
            img = _read_with_fallbacks(Path(cv), path)
        elif tiff:
            try:
                with quiet_stderr():
                    pages = cv2.imcount(cv)
            except (cv2.error, AttributeError):  # an OpenCV without imcount
                pages = 1
            _first_page_note(path, pages, _tiff_smaller_copies(p) if pages > 1 else 0)
    raw, img = img, _to_uint8(img, path)
    img = exif_upright(img, turn if tiff else _exif_orientation(p, data))
    _check_section(img, raw, path)
    return _as_the_plates(img, path, keep=True)


@contextmanager
def _opencv_path(p: Path, path=None):
    """``str(p)``, the name OpenCV opens ``p`` by; where ``p``'s name is not UTF-8 (a Latin-1
    byte from a Windows share or an old microscope PC, which Python holds as a surrogate),
    a link to it of an ASCII name in a temporary folder: OpenCV takes a name as UTF-8 only,
    and such a name crashed it (a segmentation fault: the run ended, nothing written, for a
    TIFF, BMP, WebP or GIF section). ``path``: the path as given, for the message."""
    name = str(p)
    try:
        name.encode()
    except UnicodeEncodeError:
        pass
    else:
        yield name
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="samri_ml-") as folder:
        link = Path(folder) / p.name.encode("ascii", "replace").decode()
        try:
            link.symlink_to(p.resolve())
        except OSError:
            raise SamriMLError(f"{path if path is not None else p}: a file name that is not "
                               "UTF-8, which OpenCV cannot open; hint: rename the file") from None
        yield str(link)


#: :func:`neighbour_correlation` below which an image is noise, not a section: the 132
#: atlas plates and the 70 train/val sections have 0.76-0.95, white noise and a camera's
#: dark frame stretched to 8 bits about 0.0
MIN_NEIGHBOUR_CORRELATION = 0.3


def neighbour_correlation(img: np.ndarray, size: int = 128) -> float:
    """Correlation of neighbouring pixels (the mean of the vertical and horizontal lag-1
    autocorrelations) of ``img`` shrunk to ``size`` px a side by area averaging: near 1 for
    an image with structure (a section: tissue against background), near 0 for noise. A
    uint8 image is shrunk as it is (a float32 copy of a 20000 x 15000 slide scan took 1.2 GB;
    the correlations move by under 0.001)."""
    import cv2

    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
    a = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    a -= a.mean()
    var = float((a * a).mean())
    if var == 0:
        return 0.0
    return float(((a[1:] * a[:-1]).mean() + (a[:, 1:] * a[:, :-1]).mean()) / (2 * var))


def _check_section(img: np.ndarray, raw: np.ndarray, path) -> None:
    """Refuse a uint8 section (``raw``: as it came) too small, empty or without structure
    (noise: a camera's dark frame, stretched to 8 bits, was ranked plate 52 at a distance no
    section is flagged uncertain at) to identify."""
    h, w = img.shape
    if min(h, w) < MIN_SIDE:
        raise SamriMLError(
            f"{path}: image is {w}x{h} px, too small to identify (need at least "
            f"{MIN_SIDE} px a side)"
        )
    if int(img.max()) == int(img.min()):
        # the file's own value (a constant 16-bit 1000 is 0 in 8 bits)
        value = raw.flat[0] if raw.size and np.all(raw == raw.flat[0]) else img.flat[0]
        text = _value_text(value)
        if raw.dtype.kind in "fc" and not np.all(np.isfinite(raw)):
            text += " or NaN/Inf"
        raise SamriMLError(f"{path}: image is empty (every pixel is {text})")
    r = neighbour_correlation(img)
    if r < MIN_NEIGHBOUR_CORRELATION:
        raise SamriMLError(f"{path}: no tissue: the image is noise (neighbouring pixels "
                           f"correlate at r = {r:.2f}; sections and plates at 0.76 or more); "
                           "hint: check that it is the section's image or channel, not a dark "
                           "frame or an empty channel")


def as_section(img, name: str = "<array>", keep: bool = False) -> np.ndarray:
    """A section given as an array (read in a notebook, with any reader) made what
    :func:`read_image` makes of a file: grayscale uint8 (:func:`_to_uint8`: 16-bit, float,
    RGB(A)), refused where too small or empty (NaN and Inf pixels count as 0), then as
    :func:`_as_the_plates` makes a read file: a bright border cut off (:func:`frame_box`) and
    inverted where it is dark tissue on a bright background (:func:`looks_brightfield`),
    each with a note.
    :meth:`~samri_ml.plates.identify.PlateIdentifier.rank` takes arrays through it (the 12
    val_1 sections inverted, as arrays: MAE 6.8, their files 0.7; blank and NaN arrays were
    ranked). It leaves :func:`read_image`'s images as they are (never brightfield).
    ``keep``: the section is for the caller alone (``rank``'s): read-only, its quarter-size
    look kept for the tissue box as :func:`read_image`'s are, and a copy where it would be
    ``img`` itself (the array given is left writable).

    Raises
    ------
    SamriMLError
        Not a 2D (or RGB(A)) image, under :data:`MIN_SIDE` px a side, or one value throughout,
        with ``name`` in the one-line cause.
    """
    raw = np.asarray(img)
    out = _to_uint8(raw, name)
    _check_section(out, raw, name)
    return _as_the_plates(out, name, keep, given=raw)


def _value_text(value) -> str:
    """A pixel value as a user would write it: ``1000``, ``0.25``."""
    value = np.asarray(value).item()
    return f"{value:g}" if isinstance(value, float) else str(int(value))


def _first_page_note(path, pages: int, copies: int = 0) -> None:
    """The ``note:`` that only the first page of a multi-page TIFF is used, where pages other
    than ``copies`` of it (:func:`_tiff_smaller_copies`) are left out."""
    if pages - copies > 1:
        of = f" ({copies} of them smaller copies of the first)" if copies else ""
        warnings.warn(f"{path}: a TIFF of {pages} pages{of}; its first page is used (hint: "
                      "save each section as its own file)", SamriMLNote, stacklevel=3)


def _tiff_smaller_copies(path: Path) -> int:
    """How many pages after a TIFF's first are smaller copies of it (a slide scanner's or
    microscope export's pyramid levels and thumbnail): marked reduced-resolution (bit 0 of
    NewSubfileType) or smaller at its aspect ratio (within 2 %). Such a pyramid was noted
    as a TIFF of several pages to save as one file each, though its first page is the image
    and nothing is left out."""
    try:
        with _pil_open(path) as im:
            w, h = im.size
            copies = 0
            for i in range(1, getattr(im, "n_frames", 1)):
                im.seek(i)
                pw, ph = im.size
                copies += bool(int(im.tag_v2.get(254, 0)) & 1
                               or (pw < w and ph < h and abs(pw * h - ph * w) <= 0.02 * w * ph))
    except Exception:  # noqa: BLE001 - pages Pillow cannot read: every page is noted
        return 0
    return copies


def _is_tiff(path: Path) -> bool:
    """Whether a file's first bytes are a TIFF's (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in TIFF_MAGICS
    except OSError:
        return False


def _check_tiff(path: Path) -> tuple[int, bool]:
    """Refuse a TIFF cut short (its first tags, which libtiff writes after the image data, or
    a strip or tile lie past the end of the file; libtiff printed its own lines above ours),
    from its first page's tags (Pillow reads them without decoding the image).

    Returns the orientation tag still to be applied to the decoded pixels: 5-8 (stored
    turned by a quarter turn: OpenCV cannot decode such a file, SimpleITK's fallback returns
    tag 5 as stored and 6-8 wrongly turned, and Pillow ignores the tag); 1 otherwise (tags
    2-4 are applied by libtiff itself, in OpenCV and SimpleITK alike, so :func:`exif_upright`
    must not apply them again: it turned or mirrored such images a second time). And whether
    the page holds grey and alpha (two samples per pixel, which OpenCV decodes as grey
    alone: :func:`_tiff_grey_alpha`)."""
    import logging

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    order = "little" if head[:2] == b"II" else "big"
    first_ifd = (int.from_bytes(head[4:8], order) if head[2:4] in (b"*\x00", b"\x00*")
                 else int.from_bytes(head[8:16], order))  # BigTIFF: a 64-bit offset
    if len(head) < 8 or first_ifd >= size:  # libtiff writes the tags after the image data
        raise SamriMLError(f"{path}: truncated or corrupt TIFF (it ends before its tags); "
                           "hint: copy or export it again")
    # Pillow warns and logs of its own on a file it cannot decode (20 samples per pixel)
    log = logging.getLogger("PIL.TiffImagePlugin")
    was, log.disabled = log.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = _pil_open(path)
        with im:
            tags = im.tag_v2
            orientation = int(tags.get(0x0112, 1))
            grey_alpha = int(tags.get(277, 1)) == 2 and im.mode == "LA"
            offsets = tags.get(273) or tags.get(324)  # StripOffsets or TileOffsets
            counts = tags.get(279) or tags.get(325)  # StripByteCounts or TileByteCounts
    except Exception:  # noqa: BLE001 - no Pillow, or tags it cannot read: the decoders judge
        return 1, False
    finally:
        log.disabled = was
    offsets = offsets if isinstance(offsets, tuple) else (offsets,)
    counts = counts if isinstance(counts, tuple) else (counts,)
    if any(o is not None and c is not None and o + c > size
           for o, c in zip(offsets, counts, strict=False)):
        raise SamriMLError(f"{path}: truncated or corrupt TIFF (its image data runs past the "
                           "end of the file); hint: copy or export it again")
    return (orientation if orientation in (5, 6, 7, 8) else 1), grey_alpha


_PIL_SIZE_LOCK = threading.Lock()


def _pil_open(path):
    """``PIL.Image.open(path)`` whatever the image's size, without Pillow's warning. Pillow
    refuses an image over twice its ``MAX_IMAGE_PIXELS`` (179 megapixels) and warns over it
    (89): the tags read here were taken as absent for a large slide scan (its EXIF or TIFF
    orientation ignored, the TIFF checks skipped), and a raw ``DecompressionBombWarning``
    was printed. The pixels are OpenCV's to decode, which has no such limit."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            with _PIL_SIZE_LOCK:  # Pillow's limit is global: given back at once
                was, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    return Image.open(path)
                finally:
                    Image.MAX_IMAGE_PIXELS = was


def _tiff_grey_alpha(path: Path, img: np.ndarray) -> np.ndarray:
    """A grey-and-alpha TIFF (:func:`_check_tiff` says which) read with its alpha by Pillow;
    ``img``, OpenCV's decoding, where Pillow cannot. OpenCV drops the alpha, and a cut-out
    whose clear background is stored white was ranked as a dark section on white (val_2's
    101: plate 102 first, against 101 from the same pixels as a PNG)."""
    try:
        with _pil_open(path) as im:
            both = np.asarray(im)
    except Exception:  # noqa: BLE001 - Pillow cannot read it: OpenCV's grey, as before
        return img
    return both if both.shape[:2] == img.shape else img


def _tiff_tag_cleared(data: bytes) -> bytes:
    """A TIFF file's bytes with its first page's orientation tag (274) set to 1: decoded, they
    give the pixels as stored (OpenCV decodes those; it fails on tags 5-8)."""
    order = "little" if data[:2] == b"II" else "big"
    if data[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 8-byte counts, 20-byte entries
        ifd = int.from_bytes(data[8:16], order)
        n, first, step, value = int.from_bytes(data[ifd:ifd + 8], order), ifd + 8, 20, 12
    else:
        ifd = int.from_bytes(data[4:8], order)
        n, first, step, value = int.from_bytes(data[ifd:ifd + 2], order), ifd + 2, 12, 8
    out = bytearray(data)
    for e in range(first, min(first + n * step, len(data) - step + 1), step):
        if int.from_bytes(out[e:e + 2], order) == 0x0112:
            out[e + value:e + value + 2] = (1).to_bytes(2, order)
            break
    return bytes(out)


#: what is said of a section read inverted (:func:`_as_the_plates`)
BRIGHTFIELD_NOTE = ("dark tissue on a bright background (brightfield?): inverted to bright "
                    "tissue on dark, as the atlas plates are")


#: a frame's pixels lie within this many grey levels of its value (a JPEG's blocks ring a
#: little around the section's edge) ...
FRAME_TOL = 16
#: ... in at least this fraction of each of its rows and columns
FRAME_FILL = 0.98


def _frame_lines(lines: np.ndarray, value: int) -> tuple[int, int]:
    """How many of ``lines`` (rows of a 2D array) at its start and at its end belong to a
    flat frame of ``value`` (:data:`FRAME_TOL`, :data:`FRAME_FILL`); looked at line by line
    from each end (no copy of a whole-slide image)."""
    def flat(line: np.ndarray) -> bool:
        return (np.abs(line.astype(np.int16) - value) <= FRAME_TOL).mean() >= FRAME_FILL

    n = len(lines)
    start = next((i for i in range(n) if not flat(lines[i])), n)
    end = next((i for i in range(n - start) if not flat(lines[n - 1 - i])), n - start)
    return start, end


def frame_box(img: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` inside a flat frame brighter than the section it surrounds (a
    dark-background section saved with a white or grey border: padded to a canvas, pasted on
    a page), or ``None`` where there is none.

    The frame: the rows and columns at the image's edges flat at the value of its outer ring
    (:func:`_frame_lines`), brighter than the median of what they surround and clearly
    brighter (twice :data:`FRAME_TOL`) than the edge of what they surround, around a section whose flat
    background is dark (:func:`_flat_fraction`: more of it lies flat at its dark end than at
    its bright end). Where the section's background goes on into the border, or the section
    is dark tissue with no background of its own (a brightfield crop padded with its bright
    background), the border is background and is inverted with it
    (:func:`looks_brightfield`). Such a border was taken
    for tissue: the tissue box held the whole canvas and the section was read as brightfield
    and inverted (an audit's val_1 + val_2 sections padded white by half their size: MAE 1.00
    -> 10.95, Top-5 95 % -> 50 %). A frame at the background's level (the shared sections'
    flat dark edges) is left to :func:`tissue_bbox`: none of the atlas plates, training or
    validation sections has one of these."""
    h, w = img.shape
    ring = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    value = int(np.median(ring))
    if value <= 2 * FRAME_TOL:  # no frame this dark is clearly brighter than what it holds
        return None
    top, bottom = _frame_lines(img, value)
    if top + bottom >= h - MIN_SIDE:
        return None
    left, right = _frame_lines(img[top:h - bottom].T, value)
    if (top + bottom + left + right == 0) or left + right >= w - MIN_SIDE:
        return None
    box = top, h - bottom, left, w - right
    inner = img[box[0]:box[1], box[2]:box[3]]
    edge = np.concatenate([inner[0], inner[-1], inner[:, 0], inner[:, -1]])
    # the edge's median first: the whole section's is a partition of every pixel
    if value - np.median(edge) <= 2 * FRAME_TOL or value <= np.median(inner):
        return None
    blur = _quarter(inner)[1]
    if not _dark_background(blur):  # the border is a brightfield section's own background
        return None
    return box


def _dark_background(blur: np.ndarray) -> bool:
    """Whether what a bright frame or fill surrounds (its blurred quarter-size copy) has a
    flat dark background of its own (:func:`_flat_fraction`: more of it lies flat at its dark
    end than at its bright end), near black (its 1st percentile at most twice
    :data:`FRAME_TOL`): a brightfield section's tissue, which the slide's bright background
    surrounds, has none (stained tissue's darkest is grey). :func:`frame_box` did not ask
    the second: val_1 + val_2 sections made brightfield at 200 px on a white 6000 x 8000
    slide (under 0.1 % of it) had 5 of 22 the slide cut off as a 'flat bright border', and
    were ranked not inverted (their darkest 1 %: 61-115)."""
    return (np.percentile(blur, 1) <= 2 * FRAME_TOL
            and _flat_fraction(blur) > _flat_fraction(255 - blur))


#: :func:`bright_fill`: a fill's value is shared (within :data:`FRAME_TOL`) by at least this
#: fraction of the image's outer ring ...
FILL_RING = 0.2
#: ... its pixels lie within this many grey levels of it in at least :data:`FILL_FLAT` of them
#: (a rotation's or a paste's padding is one value, a JPEG's ringing aside; tissue is not) ...
FILL_EXACT, FILL_FLAT = 4, 0.9
#: ... and it covers at least this fraction of the image
FILL_MIN = 0.01


def bright_fill(img: np.ndarray) -> np.ndarray | None:
    """Where a dark-background section is padded with a flat bright value that is not a
    rectangle (:func:`frame_box`): a section turned by a few degrees with white corners, or
    pasted turned on a white page. ``None`` where there is none, else a boolean mask of it.

    The fill: the pixels within :data:`FRAME_TOL` of one bright value (above twice
    :data:`FRAME_TOL`) held by at least :data:`FILL_RING` of the image's outer ring, connected
    to that ring; nearly all of them (:data:`FILL_FLAT`) within :data:`FILL_EXACT` grey levels
    of it, at least :data:`FILL_MIN` of the image, clearly brighter (twice
    :data:`FRAME_TOL`) than the pixels along its edge, around a section whose flat background
    is dark (:func:`_flat_fraction`, as :func:`frame_box`; its 1st percentile at most twice
    :data:`FRAME_TOL`). A brightfield section's bright background fails the last: what it
    surrounds is tissue, with no dark background of its own. Such corners were taken for
    tissue (the 22 val_1 + val_2 sections turned by 10
    degrees with white corners: MAE 2.68, Top-5 73 %; with black corners 1.09, 95.5 %)."""
    import cv2

    ring = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    hist = np.bincount(ring, minlength=256)
    near = np.convolve(hist, np.ones(2 * FRAME_TOL + 1), "same")
    near[: 2 * FRAME_TOL + 1] = 0  # a fill this dark is not clearly brighter than the section
    centre = int(np.argmax(near))
    if near[centre] < FILL_RING * ring.size:
        return None
    lo = max(0, centre - FRAME_TOL)
    value = lo + int(np.argmax(hist[lo:centre + FRAME_TOL + 1]))  # the fill's own value

    on_ring = np.abs(ring.astype(np.int16) - value) <= FRAME_TOL
    if np.mean(np.abs(ring[on_ring].astype(np.int16) - value) <= FILL_EXACT) < FILL_FLAT:
        return None  # tissue touching the edge, not one flat value: before the costly part
    # the pixels near the value connected to the ring: flooded (4-connected) from a border
    # around the image, in one uint8 copy (labelling every flat piece and picking the ring's
    # with np.isin took 24 s and 5.9 GB for a 20000 x 15000 brightfield slide scan)
    flat = cv2.copyMakeBorder(cv2.inRange(img, value - FRAME_TOL, value + FRAME_TOL),
                              1, 1, 1, 1, cv2.BORDER_CONSTANT, value=255)
    cv2.floodFill(flat, None, (0, 0), 128, flags=4)
    fill = flat[1:-1, 1:-1] == 128
    del flat
    share = fill.mean()
    if share < FILL_MIN or share > 1 - FILL_MIN:
        return None
    hist = cv2.calcHist([img], [0], fill.view(np.uint8), [256], [0, 256]).ravel()
    if hist[max(0, value - FILL_EXACT):value + FILL_EXACT + 1].sum() < FILL_FLAT * hist.sum():
        return None
    grown = cv2.dilate(fill.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    edge = img[grown & ~fill]
    if not edge.size or value - np.median(edge) <= 2 * FRAME_TOL:
        return None
    # what the fill surrounds, on the quarter-size copy where the other rules look
    small, blur = _quarter(img)
    inside = blur[cv2.resize(fill.astype(np.uint8), small.shape[::-1],
                             interpolation=cv2.INTER_NEAREST) == 0]
    # a brightfield section's own background is the fill: what it surrounds is tissue, with
    # no dark background of its own
    if not inside.size or not _dark_background(inside):
        return None
    return fill


def _as_the_plates(img: np.ndarray, path, keep: bool = False,
                   given: np.ndarray | None = None) -> np.ndarray:
    """A read section made to look like the atlas plates where it can be: a dim one (its
    0.1st to 99.9th percentiles span under :data:`FLOAT_MIN_SPAN` of the 8 bits) is
    stretched between them, as :func:`_to_uint8` stretches 16-bit and dim float images; a
    bright frame around it (:func:`frame_box`) is cut off; dark tissue on a bright background
    (:func:`looks_brightfield`) is inverted; each change, and other sections on the same
    image (:func:`other_sections`; the largest is ranked), is said in a note. ``keep``: the
    image returned is the caller's own (:func:`read_image`'s), its quarter-size look kept for
    the tissue box (:func:`_keep_look`: read-only); a copy where it shares memory with
    ``given`` (an array a user gave, left writable)."""
    if _span(img) < FLOAT_MIN_SPAN * 255:
        # a dim 8-bit section is stretched as a 16-bit or float one is: its float copy was,
        # its 8-bit copy was not (a quarter of the levels: MAE 1.00 -> 4.32; a tenth: 31.7)
        img = _stretch_integer(img)
    box = frame_box(img)
    if box is not None:
        h, w = img.shape
        warnings.warn(f"{path}: a flat bright border around the section (rows {box[0]} above, "
                      f"{h - box[1]} below, columns {box[2]} left, {w - box[3]} right) left "
                      "out: it is not tissue", SamriMLNote, stacklevel=3)
        img = img[box[0]:box[1], box[2]:box[3]]
    fill = bright_fill(img)
    if fill is not None:
        warnings.warn(f"{path}: flat bright corners or edges around the section (a turned "
                      f"section's padding?, {100 * fill.mean():.0f} % of the image) made "
                      "background: they are not tissue", SamriMLNote, stacklevel=3)
        img = img.copy()
        img[fill] = np.percentile(img[~fill], 1)  # the section's own dark background
    inverted = looks_brightfield(img)
    if inverted:
        warnings.warn(f"{path}: {BRIGHTFIELD_NOTE}", SamriMLNote, stacklevel=3)
        img = 255 - img
    look = _quarter_look(img)
    n = other_sections(img, look)
    if n:
        warnings.warn(f"{path}: {n} more section-sized object(s) on the image (another "
                      "section? a label?), left out: the largest is ranked (hint: one section "
                      "per image)", SamriMLNote, stacklevel=3)
    if keep:
        if given is not None and np.may_share_memory(img, given):
            img = img.copy()  # the same pixels: the same look
        _keep_look(img, look, inverted)
    return img


def _quiet_opencv() -> None:
    """OpenCV's own log lines (``[ERROR:0@0.016] global grfmt_tiff.cpp ...`` above our one-line
    error for a broken TIFF) off: a file it cannot read is reported by :func:`read_image`."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # an OpenCV build without the logging module
        pass


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG file's bytes run to its end-of-image marker: its segments are walked
    (lengths), each scan's entropy-coded data skipped to the next marker (``FF 00`` stuffing
    and restart markers are data), and the file must reach ``FF D9``. A cut file ends inside a
    scan."""
    n, i = len(data), 2
    if data[:2] != JPEG_MAGIC:
        return False
    while i + 1 < n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: its data runs to the next real marker
            while True:
                i = data.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return False
                nxt = data[i + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    i += 1 if nxt == 0xFF else 2
                    continue
                break
    return False


def _png_chunks(data: bytes):
    """The chunk types of a PNG file, walked by their lengths, up to ``IEND``; a chunk whose
    data runs past the end of the file is not given (a truncated file)."""
    i = 8
    while i + 8 <= len(data):
        kind = data[i + 4:i + 8]
        i += 12 + int.from_bytes(data[i:i + 4], "big")
        if i > len(data):
            return
        yield kind
        if kind == b"IEND":
            return


def _png_has_exif(data: bytes) -> bool:
    """Whether a PNG file's chunks hold an ``eXIf`` chunk."""
    return b"eXIf" in _png_chunks(data)


def _png_complete(data: bytes) -> bool:
    """Whether a PNG file's chunks run whole to its ``IEND`` chunk."""
    return b"IEND" in _png_chunks(data)


def _exif_orientation(path: Path, data: bytes | None = None) -> int:
    """The EXIF/TIFF orientation tag (1-8; 1 where there is none or it cannot be read).
    ``data``: the file's bytes, where read already. A PNG without an ``eXIf`` chunk has none:
    Pillow would decode the whole image to look for one after the pixel data (6-7 ms for a
    1024 px section, a fifth of reading it)."""
    if data is not None and data[:8] == PNG_MAGIC and not _png_has_exif(data):
        return 1
    try:
        with _pil_open(path) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - no Pillow, a format it does not know, a broken tag
        return 1
    return value if 1 <= value <= 8 else 1


def exif_upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """The image as viewers show it, for an EXIF orientation (as ``PIL.ImageOps.
    exif_transpose``): the pixels of a photo taken turned are stored turned, with the tag
    saying how to turn them back."""
    turn = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.T,
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.T[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return img if turn is None else np.ascontiguousarray(turn(img))


def _read_with_fallbacks(p: Path, path=None) -> np.ndarray:
    """OpenCV could not decode ``p``: try multi-page/odd TIFFs through SimpleITK (only TIFFs:
    SimpleITK also reads MRI volumes, which are no sections). A stack of pages gives its first
    page (with a note); an image of more channels per pixel than RGBA (a spectral or
    multi-channel confocal export) is refused: which channel holds the section is for the
    user to say. ``path``: the path as given, for the messages."""
    path = p if path is None else path
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz", ".mnc", ".nrrd", ".mha", ".mhd", ".dcm")):
        raise SamriMLError(f"{path}: a volume (MRI/CT) format, not a section image; hint: "
                           "give a PNG, JPEG or TIFF of one microscopy section")
    if not name.endswith((".tif", ".tiff")):
        raise SamriMLError(f"{path}: not a readable image; hint: give a PNG, JPEG or TIFF "
                           "section")
    try:
        import SimpleITK as sitk

        with quiet_stderr():  # libtiff's and ITK's own lines about the file
            image = sitk.ReadImage(str(p))
            arr = sitk.GetArrayFromImage(image)
    except Exception:
        raise SamriMLError(
            f"{path}: not a readable image; hint: give a PNG, JPEG or TIFF section"
        ) from None
    channels = image.GetNumberOfComponentsPerPixel()
    if channels not in (1, 3, 4):
        raise SamriMLError(f"{path}: an image of {channels} channels per pixel (shape "
                           f"{arr.shape}), not one grey or colour section; hint: save the "
                           "channel to rank as its own image")
    if image.GetDimension() == 3:  # a stack of pages: the first, as OpenCV reads one
        _first_page_note(path, arr.shape[0])
        arr = arr[0]
    return arr


def clahe(img: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a uint8 image."""
    import cv2

    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(img)


#: px: the longest side of the images the shipped models were trained and indexed at (the
#: atlas plates and the training and validation sections are 1024 px). A larger tissue crop
#: is shrunk to it before CLAHE (:func:`at_working_scale`): CLAHE works on 8 x 8 tiles of
#: the image it is given, so the same section read at 10000 px was equalised differently
#: and ranked differently (the top 5 of 6 of the 22 validation sections blown up 8 times)
WORKING_SIDE = 1024


def at_working_scale(img: np.ndarray, side: int = WORKING_SIDE) -> np.ndarray:
    """``img`` shrunk (area averaging) so that its longest side is ``side`` px; ``img``
    itself where it is no larger (every shared plate and section: their rankings unchanged)."""
    import cv2

    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    f = side / max(h, w)
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))),
                      interpolation=cv2.INTER_AREA)


def pad_square(img: np.ndarray) -> np.ndarray:
    """Pad with zeros (background) to a centred square of side ``max(h, w)``."""
    h, w = img.shape[:2]
    s = max(h, w)
    out = np.zeros((s, s) + img.shape[2:], img.dtype)
    y, x = (s - h) // 2, (s - w) // 2
    out[y : y + h, x : x + w] = img
    return out


#: how :func:`tissue_bbox` separates tissue from background (the plate index says which one
#: its model was trained with: ``crop_threshold``; an index without it is ``otsu``)
CROP_THRESHOLDS = ("otsu", "triangle")


def tissue_bbox(img: np.ndarray, margin: float = 0.02,
                threshold: str = "otsu") -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the tissue: a threshold of a blurred copy,
    connected components larger than 2 % of the largest, plus a ``margin`` (fraction of side).
    The whole image when nothing stands out.

    ``threshold``: ``otsu`` (what the models shipped until 2026-12-02 were trained with) or
    ``triangle`` (Zack's triangle method: just above the background peak). Otsu's level falls
    between the bright and the dim tissue of an atlas plate: on plates 100-131 the dim
    brainstem is below it and the box holds the cerebellum only (plate 23 loses its cortex);
    the triangle level keeps every plate's and section's whole tissue.

    A section on a slide: where pieces of tissue (at the triangle level) lie far from the
    largest one (a label, a scale bar, a second section; :func:`_section_pieces`), the box is
    sought within the section's region only, and its margin is a fraction of the tissue's
    size, not of the slide's. Images without such pieces (the atlas plates, the training and
    validation sections) get the box they always got.

    An image of one section larger than :data:`WORKING_SIDE` px is looked at shrunk to it, or,
    on a slide of mostly background or with other things on it, shrunk so that its section
    is (:func:`_quarter_look`), the box scaled back.
    """
    import cv2

    if threshold not in CROP_THRESHOLDS:
        raise ValueError(f"threshold {threshold!r}: one of {', '.join(CROP_THRESHOLDS)}")
    h, w = img.shape
    small, blur, region = _section_region(img)
    oy, ox = region[0], region[1]
    blur = blur[region[0]:region[2], region[1]:region[3]]
    union = _tissue_union(blur, cv2.THRESH_OTSU if threshold == "otsu" else cv2.THRESH_TRIANGLE)
    if union is None:
        return 0, h, 0, w
    top, left, bottom, right = union
    top, left, bottom, right = top + oy, left + ox, bottom + oy, right + ox
    sy, sx = h / small.shape[0], w / small.shape[1]
    # the margin: a fraction of the image's side, or of the tissue's where the tissue is
    # small in the image (a section on a slide: 2 % of a 4000 px slide was a tenth of it),
    # longer side against longer side: a section filling the height of a 30000 x 500 strip
    # got 2 % of 30000 px (600 px on a 575 px section, ranked as noise)
    side = max((bottom - top) * sy, (right - left) * sx)
    if side >= 0.5 * max(h, w):
        side = max(h, w)
    m = int(margin * side)
    y0, y1 = max(0, int(top * sy) - m), min(h, int(bottom * sy) + m)
    x0, x1 = max(0, int(left * sx) - m), min(w, int(right * sx) + m)
    if (y1 - y0) < MIN_SIDE or (x1 - x0) < MIN_SIDE:
        return 0, h, 0, w
    return y0, y1, x0, x1


#: pieces of tissue within this fraction of the section's box size from it belong to it
#: (two olfactory bulbs, a detached cerebellum); farther ones are other things on the slide
NEAR = 0.5
#: a piece of at least this fraction of the section's largest piece's area is section-sized:
#: it may be another section (:func:`other_sections`)
SECTION_SIZED = 0.25
#: a section-sized piece belongs to the section only within this fraction of the section's
#: box size from it (a torn midline, two olfactory bulbs: 0.12 apart in plate 1's dorsal
#: half); farther, it is another section
#: on the slide (sections laid side by side 0.46 of their width apart used to be joined
#: into one, ranked as one wide section, with no note)
NEAR_SECTION = 0.15


def _union_box(stats: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` around connected components' stats rows."""
    import cv2

    top, left = stats[:, cv2.CC_STAT_TOP], stats[:, cv2.CC_STAT_LEFT]
    return (int(top.min()), int(left.min()),
            int((top + stats[:, cv2.CC_STAT_HEIGHT]).max()),
            int((left + stats[:, cv2.CC_STAT_WIDTH]).max()))


def _tissue_pieces(blur: np.ndarray, method: int | None = None) -> np.ndarray:
    """The connected pieces of ``blur`` above a threshold (``method``: ``cv2.THRESH_OTSU`` or
    ``cv2.THRESH_TRIANGLE``, the default): ``connectedComponentsWithStats`` rows, the
    background's row removed (none where nothing stands out)."""
    import cv2

    method = cv2.THRESH_TRIANGLE if method is None else method
    _, fg = cv2.threshold(blur, 0, 1, cv2.THRESH_BINARY + method)
    return cv2.connectedComponentsWithStats(fg.astype(np.uint8))[2][1:]


def _tissue_union(blur: np.ndarray, method: int | None = None
                  ) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` around :func:`_tissue_pieces` of at least 2 % of the
    largest one's area (smaller ones are dust), in px of ``blur``; ``None`` where nothing
    stands out. :func:`tissue_bbox`'s box before its margin, and :func:`_tissue_side`'s."""

    stats = _tissue_pieces(blur, method)
    return _dust_free_union(stats) if len(stats) else None


def _dust_free_union(stats: np.ndarray) -> tuple[int, int, int, int]:
    """:func:`_union_box` of the connected pieces (``connectedComponentsWithStats`` rows, the
    background's removed; at least one) of at least 2 % of the largest one's area."""
    import cv2

    areas = stats[:, cv2.CC_STAT_AREA]
    return _union_box(stats[areas >= 0.02 * areas.max()])


def _section_pieces(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of connected components (``connectedComponentsWithStats`` rows, background row
    removed): those that make up the section, and those left out.

    Components under 2 % of the largest are dust. The section is the largest component and,
    repeatedly, every other one within :data:`NEAR` of the section's box size from its box; a
    scale bar, a label or a second section farther away is left out (their boxes used to be
    joined to the section's: a slide with a label ranked the true plate 45th on average).
    A section-sized piece (:data:`SECTION_SIZED`) joins only within :data:`NEAR_SECTION`, and
    a smaller one only where it lies nearer the section than any section-sized piece left
    out (a fragment of the next section used to bridge the gap to it)."""
    import cv2

    areas = stats[:, cv2.CC_STAT_AREA]
    big = stats[areas >= 0.02 * areas.max()]
    sized = big[:, cv2.CC_STAT_AREA] >= SECTION_SIZED * areas.max()
    near = np.where(sized, NEAR_SECTION, NEAR)
    t, lo, b, r = (big[:, cv2.CC_STAT_TOP], big[:, cv2.CC_STAT_LEFT],
                   big[:, cv2.CC_STAT_TOP] + big[:, cv2.CC_STAT_HEIGHT],
                   big[:, cv2.CC_STAT_LEFT] + big[:, cv2.CC_STAT_WIDTH])
    # gaps between the pieces' boxes (negative where they overlap), [i, j]
    between = np.maximum(np.maximum(t[:, None] - b, t - b[:, None]),
                         np.maximum(lo[:, None] - r, lo - r[:, None]))
    inside = np.zeros(len(big), bool)
    inside[np.argmax(big[:, cv2.CC_STAT_AREA])] = True
    while True:
        bt, bl, bb, br = _union_box(big[inside])
        reach = near * max(bb - bt, br - bl)
        gap = np.maximum(np.maximum(t - bb, bt - b), np.maximum(lo - br, bl - r))
        others = sized & ~inside  # section-sized pieces left out so far: other sections
        to_others = np.where(others, between, np.inf).min(axis=1)
        grown = inside | ((gap <= reach) & (sized | (gap < to_others)))
        if (grown == inside).all():
            break
        inside = grown
    return big[inside], big[~inside]


def _quarter(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A quarter-size copy of ``img`` and its blur (where :func:`tissue_bbox` looks)."""
    import cv2

    h, w = img.shape
    small = cv2.resize(img, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    return small, cv2.GaussianBlur(small, (5, 5), 0)


def _mostly_background(blur: np.ndarray) -> bool:
    """Whether over half of the image is flat background: its median within 2 grey levels
    and 5 % of the range of its 5th percentile (a section on a slide; not a crop of tissue,
    nor an atlas plate, whose tissue fills most of it)."""
    cum = np.cumsum(np.bincount(blur.ravel(), minlength=256)) / blur.size
    p5, p50, p95 = np.searchsorted(cum, [0.05, 0.5, 0.95])
    return bool(p50 - p5 <= 2 + 0.05 * (p95 - p5))


#: crops of sections laid side by side with little background around them (not
#: :func:`_mostly_background`) are told apart where the section's largest piece of tissue at
#: the triangle level is at least this fraction of the image (in a crop of one section the
#: triangle level may fall in the bright tail: its pieces are specks, 1.3 % of a training
#: section's image) and at least this fraction of the image is flat background (in a crop of
#: tissue the triangle level may fall between bright and dim tissue: 5 % of plate 120 without
#: its cortex is flat, 17-37 % of the validation sections put side by side)
SIDE_BY_SIDE_TISSUE = SIDE_BY_SIDE_FLAT = 0.1
#: ... and where the image is at least this many pixels high and wide (the quarter-size copy
#: of a smaller one is too coarse: pieces of 128 px plate thumbnails, e.g. the ventral half of
#: plate 90, 48 px high, fell apart into "sections")
SIDE_BY_SIDE_MIN_PX = 256


def _flat_fraction(blur: np.ndarray) -> float:
    """The fraction of the image within 2 grey levels and 5 % of its range (1st to 99th
    percentile) of its 1st percentile: flat dark background."""
    lo, hi = np.percentile(blur, [1, 99])
    return float((blur <= lo + 2 + 0.05 * (hi - lo)).mean())


def _on_a_slide(blur: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_section_pieces` at the triangle level (the whole tissue, dim parts included)
    of a section on a slide: mostly background (:func:`_mostly_background`), tissue far from
    the section, and the section's box under half of the image; or sections side by side
    with little background (crops put together): another section-sized piece
    (:data:`SECTION_SIZED`) far from the section, whose largest piece is at least
    :data:`SIDE_BY_SIDE_TISSUE` of the image and whose box is under three quarters of it, in
    an image at least :data:`SIDE_BY_SIDE_FLAT` flat background (:func:`_flat_fraction`)
    and :data:`SIDE_BY_SIDE_MIN_PX` high and wide.
    ``None`` otherwise (in a crop of tissue the triangle level falls in the bright tail and
    its pieces are specks)."""
    import cv2

    slide = _mostly_background(blur)
    stats = _tissue_pieces(blur)
    if not len(stats):
        return None
    kept, far = _section_pieces(stats)
    if not len(far):  # nothing far away
        return None
    largest = kept[:, cv2.CC_STAT_AREA].max()
    if not slide and (min(blur.shape) < SIDE_BY_SIDE_MIN_PX // 4
                      or largest < SIDE_BY_SIDE_TISSUE * blur.size
                      or not (far[:, cv2.CC_STAT_AREA] >= SECTION_SIZED * largest).any()
                      or _flat_fraction(blur) < SIDE_BY_SIDE_FLAT):
        return None
    t, lo, b, r = _union_box(kept)
    if (b - t) * (r - lo) >= (0.5 if slide else 0.75) * blur.size:
        return None
    return kept, far


def _section_region(img: np.ndarray):
    """``small, blur, (top, left, bottom, right)``: the region of the quarter-size copy that
    holds the section. The whole copy, unless the section lies on a slide with other things
    (:func:`_on_a_slide`; then the section's pieces' box grown by :data:`NEAR` of its size,
    and in ``blur`` the boxes of the things left out, outside the section's box, are made
    background: a second section laid nearer than that used to be boxed with it)."""
    small, blur, slide = _quarter_look(img)
    if slide is None:
        return small, blur, (0, 0, small.shape[0], small.shape[1])
    t, lo, b, r = _union_box(slide[0])
    # the background: the histogram's peak (the triangle level's foot)
    section, background = blur[t:b, lo:r].copy(), np.bincount(blur.ravel()).argmax()
    blur = blur.copy()
    for ft, fl, fb, fr in (_union_box(row[None]) for row in slide[1]):
        blur[ft:fb, fl:fr] = background
    blur[t:b, lo:r] = section
    pad = int(NEAR * max(b - t, r - lo))
    return small, blur, (max(0, t - pad), max(0, lo - pad), min(small.shape[0], b + pad),
                         min(small.shape[1], r + pad))


#: :func:`_quarter_look` of the images :func:`read_image` returned, by ``id``: ``(a weak
#: reference to the image, its look, whether it was inverted)``, dropped when the image is
#: freed (the reference tells a later image given the same ``id`` from it)
_LOOKS: dict[int, tuple] = {}


def _quarter_look(img: np.ndarray) -> tuple:
    """``small, blur, slide``: :func:`_quarter` of ``img`` and :func:`_on_a_slide` of its
    blur, which reading (:func:`other_sections`) and the tissue box (:func:`tissue_bbox`)
    both need. Made once for an image :func:`read_image` returned (:func:`_keep_look`): it
    was made twice, 1.5-2 ms of a 1000 px section's 7.5 ms ranking.

    An image of one section (nothing else on it) larger than :data:`WORKING_SIDE` px is
    then looked at shrunk to it (:func:`at_working_scale`), where its tissue box is sought:
    the blur and the thresholds see it at the scale of the plates and sections the models
    were trained with (a quarter of the image whatever its size, blurred 5 px, gave the same
    section read at 8 times its size a box up to 13 % of its width narrower). On a slide of
    mostly background (:func:`_mostly_background`) it is the section, not the slide, that is
    shrunk to :data:`WORKING_SIDE` (:func:`_tissue_side`; not at all where it is no larger):
    an 800 px section on a 20000 x 15000 slide, shrunk with it to 41 px, got a box up to 18 %
    of its size too wide, and the true plate of 11 of the 22 validation sections laid at
    600 px on it moved in the ranking (3, as at the slide's own size, now). On a slide with
    other things on it (:func:`_on_a_slide`) it is likewise the section (its pieces' box),
    not the slide, that is brought to :data:`WORKING_SIDE`, where the things left out at
    the slide's own size still are (else it is looked at at its own size): such a slide was
    looked at at its own size whatever the section's, and the 22 validation sections on a
    slide with a label, scanned 1, 3 and 8 times, got boxes up to 210 px of the section's
    size apart (7 of 22 over 8 px; none now). Shrinking the whole slide would not do: its
    section may be small in it (a label shrunk with it came out as large as a section)."""
    kept = _LOOKS.get(id(img))
    if kept is not None and kept[0]() is img:
        return kept[1]
    return _look_afresh(img)


def _look_afresh(img: np.ndarray) -> tuple:
    """:func:`_quarter_look` of ``img``, made (not one kept)."""
    small, blur = _quarter(img)
    slide = _on_a_slide(blur)
    if max(img.shape) > WORKING_SIDE:
        if slide is not None:  # the section's pieces, the things left out aside
            top, left, bottom, right = _union_box(slide[0])
            side = 4 * max(bottom - top, right - left)
        else:
            side = 4 * _tissue_side(blur) if _mostly_background(blur) else max(img.shape)
        if side > WORKING_SIDE:
            shrunk = _quarter(at_working_scale(img, round(WORKING_SIDE * max(img.shape) / side)))
            again = _on_a_slide(shrunk[1]) if slide is not None else None
            if slide is None or again is not None:  # (the things left out still are)
                (small, blur), slide = shrunk, again
    return small, blur, slide


def _tissue_side(blur: np.ndarray) -> int:
    """The longer side (px of ``blur``) of the box around the tissue at the triangle level
    (pieces of at least 2 % of the largest, as :func:`tissue_bbox` keeps); ``blur``'s own
    longer side where nothing stands out."""
    top, left, bottom, right = _tissue_union(blur) or (0, 0, *blur.shape)
    return max(bottom - top, right - left)


def _keep_look(img: np.ndarray, look: tuple, inverted: bool = False) -> None:
    """Keep ``look`` (:func:`_quarter_look`) for ``img`` as long as it lives, ``img`` made
    read-only: a look kept for pixels changed in place would box the old ones (a copy,
    ``img.copy()``, is looked at again); and whether it was ``inverted``
    (:func:`read_inverted`)."""
    img.flags.writeable = False
    key = id(img)
    _LOOKS[key] = (weakref.ref(img), look, inverted)
    weakref.finalize(img, _LOOKS.pop, key, None)


def read_inverted(img: np.ndarray) -> bool:
    """Whether ``img`` is a section :func:`read_image` (or :func:`as_section` with ``keep``)
    inverted: dark tissue on a bright background (brightfield), made bright on dark as the
    plates are. The montage says so on its tile, which shows it inverted."""
    kept = _LOOKS.get(id(img))
    return kept is not None and kept[0]() is img and kept[2]


def other_sections(img: np.ndarray, look: tuple | None = None) -> int:
    """How many section-sized pieces of tissue :func:`tissue_bbox` leaves out of ``img``
    (0 for one section; 1 or more for a slide of several, of which the largest is used):
    pieces left out with at least a quarter of the largest one's area. ``look``:
    :func:`_quarter_look` of ``img``, where made already."""
    import cv2

    slide = (_quarter_look(img) if look is None else look)[2]
    if slide is None:
        return 0
    kept, far = slide
    return int((far[:, cv2.CC_STAT_AREA] >= SECTION_SIZED * kept[:, cv2.CC_STAT_AREA].max()).sum())


#: :func:`looks_brightfield`'s limit on the flatness ratio of the bright and dark tenths
BRIGHTFIELD_RATIO = 0.7
#: :func:`looks_brightfield`'s least level of the bright tenth (where it starts: the local
#: mean's 90th percentile), as a fraction of the image's 99th percentile: a background is the
#: brightest there is
BRIGHTFIELD_LEVEL = 0.78
#: what :func:`looks_brightfield` takes for a glare spot, left out of the image's brightest
#: level: a place above the bright tenth at most this times as textured (local standard
#: deviation) as the bright tenth's median, with its rim (the 7 px window)
BRIGHTFIELD_GLARE_SD = 0.75


def looks_brightfield(img: np.ndarray) -> bool:
    """Whether a uint8 section has dark tissue on a bright background (brightfield Nissl),
    the opposite of the atlas plates and confocal sections the networks were trained on.

    The background is flat and the tissue textured: on a 128 px copy, the local standard
    deviation (7x7) of the brightest tenth of the image is compared with that of the darkest
    tenth; brightfield when the bright tenth's is under 0.7 times the dark tenth's. Set on the
    atlas plates and the training sections and their inverted copies (ratio at least 1.0 for
    the 180 images as they are; under 0.7 for all 132 inverted plates and 43 of the 48
    inverted sections; those left are tight crops without background, where it is moot);
    checked on val_1/val_2 and an audit's 30 transformations of them: none of the 660 other
    images flagged, 21 of their 22 inverted and 21 of 22 purple-on-white copies flagged.

    The bright tenth must also be at the image's brightest (the local mean's 90th percentile
    at least :data:`BRIGHTFIELD_LEVEL` times the image's 99th percentile): a background's
    level. A piece of a confocal section with no background (its dorsal half or two thirds)
    has a bright tenth of tissue, less flat than its dark tenth there; the flatness alone flagged 8 of the 490 such
    pieces of train, val_1 and val_2 (ratio 0.60-0.69), which were inverted (val_1's 87.png
    dorsal half: its plate ranked 40th, not 12th). Their bright tenths lie at 0.67-0.77 of
    the 99th percentile, those of every flagged inverted plate, section and piece (591) at
    0.80 or more. The 99th percentile leaves out flat spots brighter than the bright tenth
    (:data:`BRIGHTFIELD_GLARE_SD`): a slide photo's glare spot of 2-4 % of the picture,
    above a background at 0.8 of its level, set the image's brightest, and 0-3 of val_1 and
    val_2's 22 sections as such photos were flagged (19-22 now, with camera noise; a
    confocal piece's bright tissue is no such spot: none of the 490 flagged)."""
    import cv2

    h, w = img.shape
    f = 128 / max(h, w)
    g = cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))),
                   interpolation=cv2.INTER_AREA).astype(np.float32)
    mu = cv2.blur(g, (7, 7))
    sd = np.sqrt(np.maximum(cv2.blur(g * g, (7, 7)) - mu * mu, 0))
    # the darkest and brightest tenths; a hundredth, or a thousandth, where a small section
    # on a large slide is under a tenth of it (a whole-slide scan: a 1200 px section on a
    # 20000 x 15000 slide is 0.3 % of it, and was not inverted)
    for q in (10, 1, 0.1):
        lo, hi = np.percentile(mu, [q, 100 - q])
        if hi - lo >= 8:
            break
    else:  # no contrast to speak of: unless a section too small to be seen at 128 px
        around = _around_what_stands_out(img)
        return around is not None and looks_brightfield(around)
    bright_sd = float(np.median(sd[mu >= hi]))
    if not bright_sd < BRIGHTFIELD_RATIO * float(np.median(sd[mu <= lo])):
        return False
    # a glare spot is brighter than the background but as flat: it is no tissue above it
    glare = (mu > hi) & (sd <= BRIGHTFIELD_GLARE_SD * bright_sd)
    rest = g[cv2.dilate(glare.astype(np.uint8), np.ones((7, 7), np.uint8)) == 0]
    return hi >= BRIGHTFIELD_LEVEL * (np.percentile(rest, 99) if rest.size else hi)


#: :func:`_around_what_stands_out`: a pixel this many grey levels or more from the image's
#: median stands out of the background (the contrast :func:`looks_brightfield` asks of its
#: darkest and brightest thousandths)
STANDS_OUT = 8


def _around_what_stands_out(img: np.ndarray) -> np.ndarray | None:
    """The part of ``img`` around what stands out of its background (pixels
    :data:`STANDS_OUT` grey levels or more from the median of a copy of at most
    :data:`WORKING_SIDE` px; pieces under 2 % of the largest left out, as dust), grown by
    half its size each way; ``None`` where nothing stands out or that part is not under half
    of the image each way (or under :data:`MIN_SIDE` px). A section under a thousandth of a
    large slide is a few pixels on :func:`looks_brightfield`'s 128 px copy (200 px on a
    6000 x 8000 slide: 3 px), where its darkest and brightest thousandths were both the
    slide's: 'no contrast', and a brightfield one was not inverted (7 of the 22 val_1 +
    val_2 sections so made, at 0.04-0.08 % of the slide)."""
    import cv2

    h, w = img.shape
    g = at_working_scale(img)
    far = (cv2.absdiff(g, np.full_like(g, int(np.median(g)))) >= STANDS_OUT).astype(np.uint8)
    stats = cv2.connectedComponentsWithStats(far)[2][1:]
    if not len(stats):
        return None
    top, left, bottom, right = _dust_free_union(stats)
    sy, sx = h / g.shape[0], w / g.shape[1]
    gy, gx = (bottom - top) / 2, (right - left) / 2
    y0, y1 = max(0, int((top - gy) * sy)), min(h, int(np.ceil((bottom + gy) * sy)))
    x0, x1 = max(0, int((left - gx) * sx)), min(w, int(np.ceil((right + gx) * sx)))
    if y1 - y0 >= h / 2 or x1 - x0 >= w / 2 or min(y1 - y0, x1 - x0) < MIN_SIDE:
        return None
    return img[y0:y1, x0:x1]


def preprocess(
    img: np.ndarray, size: int = 224, *, equalise: bool = True, crop: bool = True,
    crop_threshold: str = "otsu", box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """The seed's preprocessing: grayscale uint8 -> CLAHE -> square padding -> ``size`` px.

    With ``crop`` the image is first cut to its tissue bounding box (:func:`tissue_bbox` at
    ``crop_threshold``, or ``box`` where the caller has it already), so that plates (tissue on
    a wide background) and sections (tight crops) share a scale, and that crop is equalised
    at no more than :data:`WORKING_SIDE` px (:func:`at_working_scale`), the scale the models
    were trained at, whatever the size the section was scanned at.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(size, size)`` with values in [0, 1].
    """
    import cv2

    img = _to_uint8(img, "<array>")
    if crop:
        y0, y1, x0, x1 = tissue_bbox(img, threshold=crop_threshold) if box is None else box
        img = at_working_scale(img[y0:y1, x0:x1])
    if equalise:
        img = clahe(img)
    sq = pad_square(img)
    interp = cv2.INTER_AREA if sq.shape[0] > size else cv2.INTER_LINEAR
    out = cv2.resize(sq, (size, size), interpolation=interp)
    return out.astype(np.float32) / 255.0


def _image_files(folder, hidden: bool = False) -> list[Path]:
    """The image files of ``folder`` (:data:`IMAGE_SUFFIXES`), sorted; a hidden one (``.x.png``,
    macOS' ``._84.png`` metadata beside ``84.png``) only with ``hidden``: one stopped an
    evaluation with "cannot read a plate number from the file name"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SamriMLError(f"{folder}: not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and (hidden or not p.name.startswith(".")))


def image_subfolders(folder) -> list[str]:
    """The names of ``folder``'s subfolders that hold image files, sorted: a folder of
    sections is read one level deep, and these are said to be left out."""
    return [d.name for d in sorted(Path(folder).iterdir()) if d.is_dir() and _image_files(d)]


def atlas_signature(folder) -> str:
    """sha256 of the names of an atlas folder's image files and the content of its plates
    (what :func:`load_atlas` reads): what tells one state of the folder from another, for
    IdentifyPlate's cache key and the key of the atlas index that
    :meth:`~samri_ml.plates.identify.PlateIdentifier.reindex` keeps
    (:func:`~samri_ml.plates.identify.atlas_index_path`).

    The content, not the sizes and modification times: a plate rewritten at its size and
    put back with its time (``cp -p``, ``rsync -a``, an archive) kept the old key, and
    Nipype the old ranking. Each file is hashed once per process and state
    (:func:`~samri_ml.models.inference.file_checksum`): the shared atlas (132 plates,
    103 MB) takes about 0.1-0.3 s the first time, a few ms after.

    Raises
    ------
    SamriMLError, OSError
        Not a folder, or one that cannot be listed or read.
    """
    import hashlib

    from samri_ml.models.inference import file_checksum

    digest = hashlib.sha256()
    for path in _image_files(folder):
        # the content of the plates only (N.jpg|png|tif): the other images, which load_atlas
        # leaves out by name, were read too (a slide scan of GBs kept beside the plates, each
        # process), and one this user cannot read made the key "unreadable" for good
        checksum = file_checksum(path) if path.stem.isdigit() else "not a plate"
        # the name's bytes (os.fsencode): one that is not UTF-8 ended --atlas and
        # IdentifyPlate in a UnicodeEncodeError
        digest.update(os.fsencode(path.name) + f"\0{checksum}\n".encode())
    return digest.hexdigest()


def load_atlas(folder) -> tuple[np.ndarray, list[np.ndarray]]:
    """Load an atlas folder of plates ``N.jpg|png|tif`` (N = plate number).

    Returns
    -------
    plates : numpy.ndarray
        Plate numbers, ascending (int).
    images : list of numpy.ndarray
        The plates as grayscale uint8, same order.
    """
    files, other = [], []
    for p in _image_files(folder):
        if p.stem.isdigit():
            files.append((int(p.stem), p))
        else:
            other.append(p.name)
    if other and files:
        warnings.warn(f"{folder}: {len(other)} image(s) not named N.jpg|png|tif (N = plate "
                      f"number) left out of the atlas, e.g. {other[0]}", SamriMLNote, stacklevel=2)
    if not files:
        raise SamriMLError(
            f"{folder}: no atlas plates found; hint: name plates N.jpg, N.png or N.tif "
            "(N = plate number)"
        )
    files.sort()
    numbers = [n for n, _ in files]
    if len(set(numbers)) != len(numbers):
        twice = [(n, p) for i, (n, p) in enumerate(files) if numbers.count(n) > 1][:2]
        raise SamriMLError(f"{folder}: {twice[0][1].name} and {twice[1][1].name} are both "
                           f"plate {twice[0][0]}; hint: keep one file per plate")
    return np.array(numbers, dtype=int), _read_plates(folder, [p for _, p in files])


def _read_plates(folder, paths: list[Path]) -> list[np.ndarray]:
    """The plates' images; plates read inverted (brightfield, e.g. the Allen Reference Atlas'
    own Nissl plates) are said in one note for the folder, not one line per plate."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = [read_image(p) for p in paths]
    inverted = [w for w in caught if str(w.message).endswith(BRIGHTFIELD_NOTE)]
    for w in caught:
        if w not in inverted:
            warnings.warn(w.message, w.category, stacklevel=3)
    if inverted:
        first = str(inverted[0].message)[:-len(BRIGHTFIELD_NOTE) - 2]
        warnings.warn(f"{folder}: {len(inverted)} of {len(paths)} plates are dark tissue on a "
                      "bright background (brightfield?): inverted to bright tissue on dark, "
                      f"e.g. {Path(first).name}", SamriMLNote, stacklevel=3)
    return images


def load_sections(folder, limit: int | None = None
                  ) -> tuple[list[Path], np.ndarray, list[np.ndarray]]:
    """Load labelled sections (label = leading number of the file name): the first ``limit``
    (sorted by name) where given, the others not read (:func:`section_files`).

    Returns
    -------
    paths : list of pathlib.Path
    labels : numpy.ndarray of int
    images : list of numpy.ndarray (grayscale uint8)
    """
    files, labels = section_files(folder, limit)
    return files, labels, [read_image(p) for p in files]


def section_files(folder, limit: int | None = None) -> tuple[list[Path], np.ndarray]:
    """The labelled sections of ``folder`` and their labels (the leading number of the file
    name), not read: the first ``limit`` (sorted by name) where given. Montages of the
    identification (``*_plates.png``, :data:`MONTAGE_SUFFIX`) written into the folder are left
    out, with a note: ``101.png_plates.png`` was read as a section of plate 101 (MAE 26 for
    val_2's 1.4)."""
    every = _image_files(folder, hidden=True)  # one listing: the hidden ones are said
    hidden = [p.name for p in every if p.name.startswith(".")]
    files = [p for p in every if not p.name.startswith(".")]
    if hidden:
        warnings.warn(f"{folder}: {len(hidden)} hidden file(s) left out (e.g. {hidden[0]}; "
                      "'._' files are macOS metadata, not images)", SamriMLNote, stacklevel=2)
    montages = [p for p in files if is_montage(p)]
    files = [p for p in files if p not in montages]
    if montages:
        warnings.warn(f"{folder}: {len(montages)} montage(s) of samri_ml-identify-plate "
                      f"(*{MONTAGE_SUFFIX}, e.g. {montages[0].name}) left out; hint: write them "
                      "into another folder (--montage DIR)", SamriMLNote, stacklevel=2)
    if not files:
        raise SamriMLError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    nested = image_subfolders(folder)
    if nested:
        warnings.warn(f"{folder}: subfolders are not read ({', '.join(nested[:3])}"
                      f"{', ...' if len(nested) > 3 else ''}); hint: evaluate each folder on its "
                      "own", SamriMLNote, stacklevel=2)
    labels = np.array([label_from_name(p) for p in files], dtype=int)  # all: a bad name says so
    return files[:limit], labels[:limit]


def plate_ranges(plates) -> str:
    """Plate numbers as ranges: ``1-103, 106-132``."""
    from itertools import groupby

    numbers = sorted({int(p) for p in plates})
    # consecutive numbers share their difference from their position
    runs = [[p for _, p in run] for _, run in groupby(enumerate(numbers),
                                                       key=lambda ip: ip[1] - ip[0])]
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def check_labels(paths, labels, plates) -> None:
    """Refuse a section whose file-name label is not a plate of the atlas (before any MAE,
    or any training: a KeyError in the batches, after config.json was written)."""
    known = {int(p) for p in plates}
    for path, label in zip(paths, labels, strict=True):
        if int(label) not in known:
            # the atlas' plates as ranges: "plates 1-132" hid the gap a subset of an atlas has
            inside = min(known) < int(label) < max(known)
            hint = ("the atlas lacks that plate: give an atlas that has it, or leave the "
                    "section out" if inside else "name labelled sections '<plate>.png' or "
                    "'<plate>_<n>.png'")
            raise SamriMLError(f"{path}: plate {label} (from the file name) is not in the "
                               f"atlas (plates {plate_ranges(known)}); hint: {hint}")
