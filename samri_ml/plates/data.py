"""Loading atlas plates and microscopy sections, and the seed's preprocessing.

Everything here is plain numpy/OpenCV (no TensorFlow) so it is fast to import and to test.

The seed (Antanavicius, Leiras, Selvan) feeds the network grayscale, CLAHE-equalised images padded
to a square and resized to 224, 448 or 1024 px. :func:`preprocess` does exactly that for any size.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from samri_ml.errors import SamriMLError, SamriMLNote
from samri_ml.paths import shared_data_dir  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MIN_SIDE = 16  # px; anything smaller carries no anatomy worth ranking

_LABEL_RE = re.compile(r"^(\d+)")
JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


def _to_uint8(img: np.ndarray, path) -> np.ndarray:
    """Grayscale uint8 from 8/16-bit, float, RGB(A) or multi-page arrays."""
    img = np.asarray(img)
    if img.ndim == 3:
        if img.shape[2] in (3, 4):
            import cv2

            rgb = img[..., :3]
            live = [c for c in range(3) if rgb[..., c].max() > rgb[..., c].min()]
            if len(live) == 1:
                # one stain in one colour (a DAPI-blue export): that channel, whole; the grey
                # of blue alone would span 29 levels of 255
                img = np.ascontiguousarray(rgb[..., live[0]])
            else:
                if rgb.dtype not in (np.uint8, np.uint16, np.float32):
                    rgb = rgb.astype(np.float32)
                img = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
        elif img.shape[2] == 1:
            img = img[..., 0]
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
    f = img.astype(np.float64)
    if not np.all(np.isfinite(f)):
        f = np.where(np.isfinite(f), f, 0.0)
    if np.issubdtype(img.dtype, np.floating) and f.min() >= 0 and f.max() <= 1.0:
        # the originals are float in [0, 1]: value = round(255 x), as the shared PNGs
        return np.round(f * 255).astype(np.uint8)
    lo, hi = np.percentile(f, [0.1, 99.9])
    if hi <= lo:
        lo, hi = f.min(), f.max()
    if hi <= lo:
        return np.zeros(f.shape, np.uint8)
    return np.clip((f - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8)


def read_image(path) -> np.ndarray:
    """Read any 2D section or plate as grayscale uint8.

    Accepts 8/16-bit and float PNG/TIFF/JPEG, RGB(A) images (converted to gray) and
    float TIFFs in [0, 1] (the microscope's originals).

    Raises
    ------
    SamriMLError
        Missing file, not an image, an image smaller than 16 px, or one with a single value
        (empty), each with a one-line cause.
    """
    import cv2

    p = Path(path)
    if not p.exists():
        raise SamriMLError(f"{path}: no such file")
    if p.is_dir():
        raise SamriMLError(f"{path}: is a directory, not an image")
    _quiet_opencv()
    data = None
    if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
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
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    else:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        img = _read_with_fallbacks(p)
    elif p.suffix.lower() in (".tif", ".tiff"):
        try:
            pages = cv2.imcount(str(p))
        except (cv2.error, AttributeError):  # an OpenCV without imcount
            pages = 1
        if pages > 1:
            import warnings

            warnings.warn(f"{path}: a TIFF of {pages} pages; its first page is used (hint: "
                          "save each section as its own file)", SamriMLNote, stacklevel=2)
    img = _to_uint8(img, path)
    img = exif_upright(img, _exif_orientation(p, data))
    h, w = img.shape
    if min(h, w) < MIN_SIDE:
        raise SamriMLError(
            f"{path}: image is {w}x{h} px, too small to identify (need at least "
            f"{MIN_SIDE} px a side)"
        )
    if int(img.max()) == int(img.min()):
        raise SamriMLError(f"{path}: image is empty (every pixel is {int(img.min())})")
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
        from PIL import Image

        with Image.open(path) as im:
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


def _read_with_fallbacks(p: Path) -> np.ndarray:
    """OpenCV could not decode ``p``: try multi-page/odd TIFFs through SimpleITK (only TIFFs:
    SimpleITK also reads MRI volumes, which are no sections)."""
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz", ".mnc", ".nrrd", ".mha", ".mhd", ".dcm")):
        raise SamriMLError(f"{p}: a volume (MRI/CT) format, not a section image; hint: give a "
                           "PNG, JPEG or TIFF of one microscopy section")
    if not name.endswith((".tif", ".tiff")):
        raise SamriMLError(f"{p}: not a readable image; hint: give a PNG, JPEG or TIFF section")
    try:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
    except Exception:
        raise SamriMLError(
            f"{p}: not a readable image; hint: give a PNG, JPEG or TIFF section"
        ) from None
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[0]  # a stack: its first page, as OpenCV reads a multi-page TIFF
    return arr


def clahe(img: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a uint8 image."""
    import cv2

    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(img)


def pad_square(img: np.ndarray) -> np.ndarray:
    """Pad with zeros (background) to a centred square of side ``max(h, w)``."""
    h, w = img.shape[:2]
    s = max(h, w)
    out = np.zeros((s, s) + img.shape[2:], img.dtype)
    y, x = (s - h) // 2, (s - w) // 2
    out[y : y + h, x : x + w] = img
    return out


def tissue_bbox(img: np.ndarray, margin: float = 0.02) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the tissue: Otsu threshold of a blurred copy,
    connected components larger than 2 % of the largest, plus a ``margin`` (fraction of side).
    The whole image when nothing stands out.
    """
    import cv2

    h, w = img.shape
    small = cv2.resize(img, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    blur = cv2.GaussianBlur(small, (5, 5), 0)
    _, fg = cv2.threshold(blur, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8))
    if n <= 1:
        return 0, h, 0, w
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = stats[1:][areas >= 0.02 * areas.max()]
    # the union of the kept components' boxes (from the stats: no pass over the label image)
    top, left = kept[:, cv2.CC_STAT_TOP], kept[:, cv2.CC_STAT_LEFT]
    bottom, right = top + kept[:, cv2.CC_STAT_HEIGHT], left + kept[:, cv2.CC_STAT_WIDTH]
    sy, sx = h / small.shape[0], w / small.shape[1]
    m = int(margin * max(h, w))
    y0, y1 = max(0, int(top.min() * sy) - m), min(h, int(bottom.max() * sy) + m)
    x0, x1 = max(0, int(left.min() * sx) - m), min(w, int(right.max() * sx) + m)
    if (y1 - y0) < MIN_SIDE or (x1 - x0) < MIN_SIDE:
        return 0, h, 0, w
    return y0, y1, x0, x1


def preprocess(
    img: np.ndarray, size: int = 224, *, equalise: bool = True, crop: bool = True
) -> np.ndarray:
    """The seed's preprocessing: grayscale uint8 -> CLAHE -> square padding -> ``size`` px.

    With ``crop`` the image is first cut to its tissue bounding box (:func:`tissue_bbox`), so
    that plates (tissue on a wide background) and sections (tight crops) share a scale.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(size, size)`` with values in [0, 1].
    """
    import cv2

    img = _to_uint8(img, "<array>")
    if crop:
        y0, y1, x0, x1 = tissue_bbox(img)
        img = img[y0:y1, x0:x1]
    if equalise:
        img = clahe(img)
    sq = pad_square(img)
    interp = cv2.INTER_AREA if sq.shape[0] > size else cv2.INTER_LINEAR
    out = cv2.resize(sq, (size, size), interpolation=interp)
    return out.astype(np.float32) / 255.0


def _image_files(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SamriMLError(f"{folder}: not a directory")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


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
        import warnings

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
        raise SamriMLError(f"{folder}: two files share a plate number")
    return np.array(numbers, dtype=int), [read_image(p) for _, p in files]


def load_sections(folder) -> tuple[list[Path], np.ndarray, list[np.ndarray]]:
    """Load labelled sections (label = leading number of the file name).

    Returns
    -------
    paths : list of pathlib.Path
    labels : numpy.ndarray of int
    images : list of numpy.ndarray (grayscale uint8)
    """
    files = _image_files(folder)
    if not files:
        raise SamriMLError(f"{folder}: no images (.png, .jpg, .tif) found")
    nested = [d.name for d in sorted(Path(folder).iterdir()) if d.is_dir() and _image_files(d)]
    if nested:
        import warnings

        warnings.warn(f"{folder}: subfolders are not read ({', '.join(nested[:3])}"
                      f"{', ...' if len(nested) > 3 else ''}); hint: evaluate each folder on its "
                      "own", SamriMLNote, stacklevel=2)
    labels = np.array([label_from_name(p) for p in files], dtype=int)
    return files, labels, [read_image(p) for p in files]
