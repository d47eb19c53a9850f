"""A PNG montage of a section beside its best-matching plates (OpenCV only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from samri_ml.plates.data import atlas_signature, load_atlas, preprocess

TILE = 256
#: height (px) of a tile's label band, above its picture (and of a note's, below it)
LABEL_BAND = 24


def _tile(img: np.ndarray, text: str, prepared: bool = False, note: str = "",
          foot: bool = False) -> np.ndarray:
    """A labelled tile: ``img`` cut to its whole tissue and equalised (the triangle box: the
    Otsu box cuts the brainstem off posterior plates), unless ``prepared`` (an index
    thumbnail, made so already), :data:`TILE` px square, under a band of :data:`LABEL_BAND`
    px with ``text``; with ``note`` (or ``foot``: a blank one, so that tiles beside a noted
    one are as high) a second band below it."""
    import cv2

    t = img if prepared or img.dtype != np.uint8 else preprocess(img, TILE,
                                                                   crop_threshold="triangle")
    t = (np.clip(t, 0, 1) * 255).astype(np.uint8) if t.dtype != np.uint8 else t
    t = cv2.resize(t, (TILE, TILE))
    t = cv2.cvtColor(t, cv2.COLOR_GRAY2BGR)
    # the labels in bands of their own, above and below the picture: drawn over it, they hid
    # its top (and, with a note, its foot) 24 px, a tenth of the section a user compares
    bands = [(text, "top")] + ([(note, "foot")] if note or foot else [])
    for label, where in bands:
        band = np.zeros((LABEL_BAND, TILE, 3), np.uint8)
        # OpenCV's fonts draw ASCII only, and a file name that is not UTF-8 (a Latin-1 byte,
        # held by Python as a surrogate) crashed putText: the process ended, nothing written
        label = label.encode("ascii", "replace").decode()
        scale = 0.5
        if where == "foot":  # a note of several parts in smaller letters, else its end
            label, scale = _fit_note(label)
        cv2.putText(band, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, scale, (80, 220, 255), 1,
                    cv2.LINE_AA)
        t = np.vstack([band, t] if where == "top" else [t, band])
    return t


#: the smallest letters of a foot note (OpenCV's scale; the labels' is 0.5)
NOTE_MIN_SCALE = 0.35


def _fit_note(text: str) -> tuple[str, float]:
    """``(text, scale)`` of a foot note in a tile's width: at the labels' scale, 0.5, where it
    fits, else smaller, down to :data:`NOTE_MIN_SCALE`, where it then loses its start (a note
    of several parts keeps its last: ``uncertain``); it was cut to 30 characters at 0.5."""
    import cv2

    def width(t: str, scale: float) -> int:
        return cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]

    room = TILE - 8
    scale = min(0.5, 0.5 * room / max(width(text, 0.5), 1))
    if scale >= NOTE_MIN_SCALE:
        return text, scale
    while len(text) > 4 and width(text, NOTE_MIN_SCALE) > room:
        text = "..." + text.lstrip(".")[1:]
    return text, NOTE_MIN_SCALE


#: the last atlas folder read for montages: ``(folder, its atlas_signature)`` and
#: ``{plate: image}``
_ATLAS_READ: dict = {}


def _atlas_pictures(atlas_dir) -> dict:
    """``{plate: image}`` of an atlas folder, read once while its files stay as they are (a
    montage per section read the whole atlas again: 2.4 s a section for 132 plates). Its
    notes were said when the identifier read it, so they are not said again here."""
    import warnings

    from samri_ml.errors import SamriMLNote

    folder = Path(atlas_dir).resolve()
    # the plates' content (a plate put back with its size and time is read again)
    key = (folder, atlas_signature(folder))
    if key not in _ATLAS_READ:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SamriMLNote)
            nums, imgs = load_atlas(atlas_dir)
        _ATLAS_READ.clear()
        _ATLAS_READ[key] = dict(zip(nums.tolist(), imgs, strict=True))
    return _ATLAS_READ[key]


def write_montage(
    section: np.ndarray,
    result: dict,
    out_png,
    *,
    top: int = 5,
    atlas_dir=None,
    plate_images: dict | None = None,
    index: dict | None = None,
    title: str = "section",
    note: str = "",
) -> Path:
    """Write ``out_png``: the section (labelled ``title``, e.g. its file name, and at its foot
    ``note``, e.g. how it was read), then its ``top`` plates (number and distance), each whole
    under its label: :data:`TILE` + :data:`LABEL_BAND` px high (another band with a note).

    Plate pictures come from ``plate_images`` ({number: image}), else ``atlas_dir``, else the
    thumbnails stored in ``index`` (the plate index that ranked the section, as loaded by
    :class:`~samri_ml.plates.identify.PlateIdentifier`), else in the shipped index. A plate
    without a picture (an index exported before thumbnails were stored) is shown as its
    number on a blank tile, and a note says so.
    """
    import cv2

    prepared = plate_images is None and atlas_dir is None  # the index's thumbnails
    if plate_images is None:
        if atlas_dir is not None:
            plate_images = _atlas_pictures(atlas_dir)
        else:
            if index is None:
                from samri_ml.plates.identify import default_model_dir

                with np.load(default_model_dir() / "plates_index.npz") as z:
                    index = {k: z[k] for k in ("plates", "thumbnails")}
            plate_images = dict(zip(np.asarray(index["plates"]).tolist(),
                                    index.get("thumbnails", ()), strict=False))  # fmt: skip
    tiles = [_tile(section, _label(title), note=note)]
    shown = list(zip(result["ranking"], result["distances"], strict=True))[:top]
    missing = [p for p, _ in shown if p not in plate_images]
    if missing:
        import warnings

        from samri_ml.errors import SamriMLNote

        warnings.warn(f"no picture of plate(s) {', '.join(map(str, missing))} in the plate "
                      "index (no thumbnails stored): the montage shows their numbers only; "
                      "hint: give the atlas folder", SamriMLNote, stacklevel=2)
    for p, d in shown:
        img = plate_images.get(p, np.zeros((TILE, TILE), np.float32))  # blank: no picture
        # the embedding distance, lower closer ("d=" read as nothing in particular)
        tiles.append(_tile(img, f"#{len(tiles)} plate {p}  dist {d:.3f}", prepared,
                           foot=bool(note)))
    out = Path(out_png)
    from samri_ml.bids import atomic_write_bytes
    from samri_ml.errors import SamriMLError

    # encoded here, renamed into place: on a full disk cv2.imwrite printed libpng's own
    # "libpng error: Write Error" and the error line had no cause
    ok, png = cv2.imencode(".png", np.hstack(tiles))
    if not ok:
        raise SamriMLError(f"cannot write the montage {out} (PNG encoding failed)")
    try:
        atomic_write_bytes(png.tobytes(), out)
    except OSError as err:
        raise SamriMLError(f"cannot write the montage {out} ({err.strerror or err})") from err
    return out


#: characters of a tile's label that fit its width
LABEL_CHARS = 30


def _label(text: str) -> str:
    """``text`` in :data:`LABEL_CHARS` characters: a long one loses its start (a file name's
    end tells it from its neighbours)."""
    return text if len(text) <= LABEL_CHARS else "..." + text[-(LABEL_CHARS - 3):]


def write_ranked_montage(ident, img: np.ndarray, result: dict, out_png, *, top: int = 5,
                         atlas_dir=None, title: str = "section") -> Path:
    """:func:`write_montage` of a section as ``ident`` (an identifier of
    :mod:`samri_ml.plates.identify`) ranked it: turned back as it was ranked, beside the
    pictures of the index that ranked it (with ``variant="auto"``: of the variant the router
    chose). A piece read as a part of a section (``read_as``) is drawn as it was read: at a
    whole section's scale, where that part lies in a section. How it was read (turned back,
    the part), that it was read inverted (a brightfield section, :func:`read_inverted`: dark
    tissue on a bright background, shown bright on dark) and that its ranking is
    ``uncertain`` are noted at the foot of its tile (the last two were said on the command
    line only)."""
    from samri_ml.plates.data import _to_uint8, read_inverted
    from samri_ml.plates.identify import part_image, turn_back

    shown = turn_back(img, result.get("turned_degrees", 0) // 90)
    notes = []
    if result.get("turned_degrees"):  # drawn as it was ranked: turned back
        notes.append(f"came turned {result['turned_degrees']} deg")
    used = getattr(ident, result["model"]) if "model" in result else ident
    if result.get("read_as"):
        shown = _to_uint8(shown, "<array>")
        shown = preprocess(part_image(shown, used.tissue_box(shown), result["read_as"]), TILE,
                           crop=False)
        notes.append(result["read_as"])
    if read_inverted(img):
        notes.append("inverted (brightfield)")
    if result.get("uncertain"):  # last: a note too long for the tile keeps its end
        notes.append("uncertain")
    return write_montage(shown, result, out_png, top=top, atlas_dir=atlas_dir, index=used.index,
                         title=title, note=", ".join(notes))
