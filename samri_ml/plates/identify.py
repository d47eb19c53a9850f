"""Rank the atlas plates for microscopy sections with the shipped embedding and plate index.

The shipped files (``samri_ml/data/models``):

- ``plates_embedding.keras`` -- the embedding network (:mod:`samri_ml.models.siamese`);
- ``plates_index.npz`` -- ``plates`` (plate numbers), ``embeddings`` (one row per plate),
  ``region_embeddings`` (plates x regions x L), ``regions`` (region names), the preprocessing
  (``size``, ``crop``, ``equalise``), ranking settings (``smooth``, ``flip_tta``,
  ``region_weight``) and ``height_mm`` / ``width_mm`` (brain extent per plate, from the CCF,
  for the tilt estimate).

Beyond the seed (cutting angle): each section is also cut into overlapping sub-regions
(dorsal/central/ventral bands, left/right halves of the tissue bounding box); each region is
ranked against the same regions of the plates, which gives a plate per region (searched within
:data:`REGION_WINDOW` plates of the whole section's best) and a tilt estimate, and the mean region distance is mixed into the overall ranking
(``d = (1 - w) d_whole + w mean_regions d_region``, with regions without tissue left out),
so a section missing part of its tissue is still matched by what remains.

Pieces of sections: the crop to the tissue box blows a piece up to a whole plate's size, so a
piece over :data:`WIDE_ASPECT` times as wide as high is also ranked as the dorsal and the
ventral part of a section, drawn at a section's scale (:func:`part_canvas`), and with
``hemisections`` every image also as a left and a right half (:meth:`PlateIdentifier.distances`;
``read_as`` in a result names the part that gave the nearest plate).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from samri_ml.errors import SamriMLError, SamriMLNote
from samri_ml.hardware import available_cpus
from samri_ml.plates.data import (
    _to_uint8,
    as_section,
    at_working_scale,
    load_atlas,
    preprocess,
    read_image,
    tissue_bbox,
)

#: name -> (y0, y1, x0, x1) as fractions of the tissue bounding box
REGIONS = {
    "dorsal": (0.0, 0.5, 0.0, 1.0),
    "central": (0.25, 0.75, 0.0, 1.0),
    "ventral": (0.5, 1.0, 0.0, 1.0),
    "left": (0.0, 1.0, 0.0, 0.55),
    "right": (0.0, 1.0, 0.45, 1.0),
}
PLATE_SPACING_MM = 0.1


def _centres_apart() -> tuple[float, float]:
    """How far apart, as fractions of the tissue's height and width, the centres of the
    dorsal and ventral bands and of the left and right halves of :data:`REGIONS` lie."""
    def centre(name, axis):
        lo, hi = REGIONS[name][2 * axis: 2 * axis + 2]
        return (lo + hi) / 2

    return (centre("ventral", 0) - centre("dorsal", 0), centre("right", 1) - centre("left", 1))


#: (dorsal to ventral, left to right): 0.5 and 0.45 (the tilt took 0.5 for both, so its
#: mediolateral angle came out about a tenth too small)
REGION_CENTRES_APART = _centres_apart()
#: a region's plate is searched within this many plates of the whole section's best plate
#: (8 plates = 0.8 mm over half a section, i.e. tilts up to about 15 degrees)
REGION_WINDOW = 8
MIN_TISSUE_FRACTION = 0.25


#: a whole coronal section is at most this wide for its height (the atlas' widest plate is
#: 1.94 times as wide as high, at its tissue box); a wider piece of tissue is also ranked as
#: the dorsal and as the ventral part of a section (:data:`PARTS`)
WIDE_ASPECT = 2.0
#: what a piece of a section may be: (canvas height, width as multiples of the piece's; where
#: the piece lies in the canvas, 0 top/left .. 1 bottom/right). The piece is drawn in a
#: canvas the size of the section it came from, so that it has the scale of a whole section
#: (the crop to the tissue box blows a half section up to a whole plate's size).
PARTS = {
    "dorsal part": (2.0, 1.0, 0.0, 0.5),
    "ventral part": (2.0, 1.0, 1.0, 0.5),
    "left half": (1.0, 2.0, 0.5, 0.0),
    "right half": (1.0, 2.0, 0.5, 1.0),
}


#: a section that comes out far from every plate upright is turned back (by quarter turns)
#: where a turn is the most plate-like of the four and nearer its nearest plate than this
#: share of the index's ``uncertain_distance`` (:meth:`PlateIdentifier.turn_back_uncertain`).
#: Set on the training and val_1 sections, whole and cut into pieces, upright and turned
#: (``benchmarks/plates_orientation.py --pieces``): of val_1's upright pieces none is turned,
#: of its turned whole sections 24 of 36 are turned back.
TURN_FRACTION = 0.7

#: an atlas re-indexed (``--atlas``) keeps the index's ``uncertain_distance`` (and so the
#: ``uncertain`` flag and the turn-back) where each of its plates, re-embedded, lies within
#: this distance of the index's embedding of the plate of its number: the shipped plates (or
#: some of them) under the shipped model. Re-embedding the shipped atlas moved no plate by
#: more than 0.0033 (default and multimodal; sections may be embedded in bfloat16); the
#: nearest two distinct plates lie 0.073 apart.
SAME_PLATE_DISTANCE = 0.02


#: a whole coronal section is at least this wide for its height (the atlas' narrowest plate,
#: plate 22, is 0.92 times as wide as high at its tissue box): a narrower image may be one
#: hemisphere, which ``hemisections`` ranks at a section's scale
NARROW_ASPECT = 0.9


def narrow_box(box: tuple[int, int, int, int]) -> bool:
    """Whether a tissue box ``(y0, y1, x0, x1)`` is narrower than any whole section's
    (:data:`NARROW_ASPECT`): a hint that the image may be one hemisphere."""
    y0, y1, x0, x1 = box
    return (x1 - x0) < NARROW_ASPECT * (y1 - y0)


def part_canvas(piece: np.ndarray, part: str) -> np.ndarray:
    """``piece`` (a uint8 tissue crop) placed in a zero canvas as :data:`PARTS` ``[part]``
    says: the dorsal part of a section at the top of a canvas twice its height, and so on."""
    fy, fx, ay, ax = PARTS[part]
    h, w = piece.shape
    canvas = np.zeros((round(h * fy), round(w * fx)), piece.dtype)
    y, x = round((canvas.shape[0] - h) * ay), round((canvas.shape[1] - w) * ax)
    canvas[y : y + h, x : x + w] = piece
    return canvas


def part_image(img: np.ndarray, box: tuple[int, int, int, int], part: str) -> np.ndarray:
    """The tissue ``box`` of a uint8 ``img`` in its :func:`part_canvas` for ``part``, the
    tissue at no more than :data:`~samri_ml.plates.data.WORKING_SIDE` px (as
    :func:`~samri_ml.plates.data.preprocess` equalises a whole section's crop)."""
    y0, y1, x0, x1 = box
    return part_canvas(at_working_scale(img[y0:y1, x0:x1]), part)


def candidate_parts(box: tuple[int, int, int, int], hemisections: bool = False,
                    wide_aspect: float = WIDE_ASPECT) -> list[str]:
    """The :data:`PARTS` a section with tissue box ``box`` is also ranked as: dorsal and
    ventral part where the box is wider than ``wide_aspect`` (:data:`WIDE_ASPECT`) times its
    height, left and right half with ``hemisections``."""
    y0, y1, x0, x1 = box
    parts = ["dorsal part", "ventral part"] if (x1 - x0) > wide_aspect * (y1 - y0) else []
    return parts + (["left half", "right half"] if hemisections else [])


#: shipped model variants -> sub-folder of ``samri_ml/data/models`` (see the model card)
VARIANTS = {
    # confocal / Nissl sections: best on the seed's kind of data (val_1, val_2)
    "default": ".",
    # also trained on sections cut at random angles from the CCF annotation and painted with
    # random contrasts: much better on other modalities (two-photon), a little worse on confocal
    "multimodal": "plates_multimodal",
}


#: what ``--variant`` accepts: ``auto`` (the default: a modality router picks one of the
#: shipped variants per section, :class:`RoutedIdentifier`) or a variant itself
VARIANT_CHOICES = ("auto", *VARIANTS)


def default_model_dir(variant: str = "default") -> Path:
    """Folder of a shipped model variant (:data:`VARIANTS`) and its index."""
    if variant not in VARIANTS:
        raise SamriMLError(
            f"unknown model variant {variant!r}; hint: one of {', '.join(VARIANTS)}"
        )
    base = Path(str(resources.files("samri_ml") / "data" / "models"))
    return base / VARIANTS[variant] if VARIANTS[variant] != "." else base


def region_crops(img: np.ndarray, crop: bool = True, crop_threshold: str = "otsu",
                 box: tuple[int, int, int, int] | None = None) -> dict[str, np.ndarray]:
    """Sub-images (uint8) of the tissue bounding box (:func:`tissue_bbox` at
    ``crop_threshold``, or ``box`` where the caller has it already) for each region of
    :data:`REGIONS`."""
    if crop:
        y0, y1, x0, x1 = tissue_bbox(img, threshold=crop_threshold) if box is None else box
        img = img[y0:y1, x0:x1]
    # regions are embedded at ~128 px: no need to equalise 1024 px crops
    img = at_working_scale(img, 512)
    h, w = img.shape
    out = {}
    for name, (a, b, c, d) in REGIONS.items():
        out[name] = img[
            int(a * h) : max(int(b * h), int(a * h) + 1),
            int(c * w) : max(int(d * w), int(c * w) + 1),
        ]
    return out


def _map(fn, items: list) -> list:
    """``[fn(x) for x in items]``, on up to one thread per available CPU core for several items
    (the preprocessing is OpenCV, which releases the GIL; the results are the same)."""
    workers = min(len(items), available_cpus())
    if workers < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def tissue_fraction(img: np.ndarray) -> float:
    """Fraction of pixels brighter than the Otsu threshold of the whole image's tissue."""
    import cv2

    if img.size == 0 or img.max() == img.min():
        return 0.0
    thr, _ = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(np.mean(img > min(thr, 0.5 * thr + 8)))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (
        (a**2).sum(-1)[..., :, None]
        - 2 * a @ np.swapaxes(b, -1, -2)
        + (b**2).sum(-1)[..., None, :]
    )
    return np.sqrt(np.maximum(d2, 0))


def smooth_profile(d: np.ndarray, plates: np.ndarray, smooth: float) -> np.ndarray:
    """``d'_k = (1 - s) d_k + s (d_{k-1} + d_{k+1}) / 2`` along ascending plate numbers."""
    if smooth <= 0:
        return d
    order = np.argsort(plates)
    ds = d[..., order]
    padded = np.concatenate([ds[..., :1], ds, ds[..., -1:]], axis=-1)
    ds = (1 - smooth) * ds + smooth * 0.5 * (padded[..., :-2] + padded[..., 2:])
    out = np.empty_like(ds)
    out[..., order] = ds
    return out


def turn_back(img: np.ndarray, quarter_turns: int) -> np.ndarray:
    """``img`` turned clockwise by ``quarter_turns`` x 90 degrees: upright again if it came
    turned counterclockwise by as much."""
    return np.ascontiguousarray(np.rot90(img, -quarter_turns))


def _gather(rows: list[tuple[dict, int]]) -> dict:
    """:meth:`PlateIdentifier.distances`' whole-section results (``whole``, ``read_as``,
    ``as_section``, ``boxes``; ``overall`` = ``whole``) of images taken one by one: ``rows``
    of (results, index of the image in them)."""
    d = {key: [src[key][i] for src, i in rows]
         for key in ("whole", "read_as", "as_section", "boxes")}
    d["whole"], d["as_section"] = np.stack(d["whole"]), np.array(d["as_section"])
    d["overall"] = d["whole"]
    return d


def _extent_or(value, default: float) -> float:
    """An extent in mm from the index, or ``default`` where it is unknown (NaN, 0)."""
    value = float(value)
    return value if math.isfinite(value) and value > 0 else default


def as_sections(imgs) -> list[np.ndarray]:
    """:meth:`PlateIdentifier.rank`'s images (a list, tuple, generator or stack of 2D arrays)
    as :func:`samri_ml.plates.data.as_section` makes each, named ``imgs[i]`` in errors and
    notes; one image given alone is refused with a hint (its rows were taken for images).
    They are ``rank``'s own (``keep``): what their tissue box needs was found while making
    them, not sought again (1.5-2 ms of a 1000 px section)."""
    if isinstance(imgs, np.ndarray) and (imgs.ndim == 2
                                         or (imgs.ndim == 3 and imgs.shape[2] in (3, 4))):
        raise SamriMLError(f"rank takes a list of images, got one {imgs.shape} array; hint: "
                           "rank([image])")
    if isinstance(imgs, (str, Path)):
        raise SamriMLError(f"rank takes a list of images, got the path {str(imgs)!r}; hint: "
                           "rank_files([path])")
    return [as_section(img, f"imgs[{i}]", keep=True) for i, img in enumerate(imgs)]


@lru_cache(maxsize=4)
def _load_embedding(path: str, checksum: str, precision: str):
    """The network in ``path`` (resolved), loaded once per file, content (``checksum``:
    :func:`~samri_ml.models.inference.file_checksum`; a modification time kept the network of
    a file replaced with its time, ``cp -p``, while the atlas index was keyed by the new
    file's content) and precision, shared by the process' identifiers
    (:func:`~samri_ml.models.inference.mark_shared`). An identifier made per call
    (``make_identifier().rank_files(...)`` in a notebook's loop) loaded it again each time:
    1.3-2 s and 20 MB of memory more per call. :func:`load_embedding` checks it."""
    from samri_ml.models.inference import import_keras, mark_shared

    return mark_shared(import_keras().saving.load_model(path, compile=False), precision,
                       "PlateIdentifier(model, precision={precision})")


def load_embedding(path: Path, checksum: str, precision: str | None):
    """:func:`_load_embedding` of ``path`` in ``precision`` (None: the default), refused with
    its name as given where it is not a Keras model or not a plate embedding. Its key is the
    resolved path alone: the path as given was part of it too, so a relative and an absolute
    path of one file (a notebook's ``best.keras`` and a workflow's
    ``/lab/models/best.keras``) loaded the network twice. An unknown precision is refused
    first (marked inside the loading, it was told as "not a Keras model")."""
    from samri_ml.models.inference import checked_precision, keras_load_failure

    precision = checked_precision(precision)
    try:
        model = _load_embedding(str(path.resolve()), checksum, precision)
    except SamriMLError:
        raise
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
        raise SamriMLError(keras_load_failure(path, err, "not a Keras model")) from err
    if not _is_embedding(model):  # a masker, say: it failed deep in numpy
        raise SamriMLError(
            f"{path}: not a plate embedding model (it takes {model.input_shape} inputs and "
            f"gives {model.output_shape} outputs; a plate embedding maps a grey image to one "
            "vector); hint: give a model from samri_ml-train-plates --export")
    return model


class _Ranker:
    """What both identifiers share on top of their ``rank`` and ``_rank`` (the same, of
    sections :func:`as_sections` or :func:`~samri_ml.plates.data.read_image` made)."""

    def rank_files(self, paths, regions: bool | None = None,
                   any_orientation: bool = False) -> dict[str, dict]:
        """``{path as given: rank result}`` for a list (or any iterable: ``Path.glob``'s) of
        image paths; unreadable files raise :class:`SamriMLError`."""
        if isinstance(paths, (str, Path)):  # its characters were taken for paths ('/: is a
            raise SamriMLError(f"rank_files takes a list of paths, got the path "  # directory')
                               f"{str(paths)!r}; hint: rank_files([{str(paths)!r}])")
        paths = list(paths)  # a generator was used up by the reading (a bare zip() ValueError)
        imgs = [read_image(p) for p in paths]
        return dict(zip([str(p) for p in paths],
                        self.rank_read(imgs, regions, any_orientation=any_orientation),
                        strict=True))

    def rank_read(self, imgs: list[np.ndarray], regions: bool | None = None,
                  any_orientation: bool = False) -> list[dict]:
        """``rank`` of images :func:`~samri_ml.plates.data.read_image` read (or
        :func:`as_sections` made): sections as ``rank`` makes them, so not made again
        (:func:`~samri_ml.plates.data.as_section`'s checks, frame and brightfield tests took
        about 3 of the 10 ms a section; the rankings are the same)."""
        return self._rank(list(imgs), regions, any_orientation=any_orientation)


class PlateIdentifier(_Ranker):
    """Embed sections and rank the plates of an index.

    Parameters
    ----------
    model : path, optional
        ``.keras`` embedding network (default: the shipped one).
    index : path, optional
        ``.npz`` plate index (default: the shipped one).
    atlas : path, optional
        Folder of plates ``N.jpg|png|tif``; when given, the plates are embedded again (a
        different atlas) instead of using the index's embeddings.
    variant : str
        Shipped model variant (:data:`VARIANTS`) used where ``model`` / ``index`` are not given.
    precision : str, optional
        ``float32`` or ``bfloat16`` for the network (default:
        :func:`samri_ml.models.inference.inference_precision`).
    hemisections : bool
        Also rank every image as the left and the right half of a section (:data:`PARTS`);
        without it, an image narrower than any whole section gets ``may_be_hemisphere``.
    wide_aspect : float
        A piece wider than this many times its height is also ranked as the dorsal and the
        ventral part of a section (:data:`WIDE_ASPECT`; ``numpy.inf``: never).
    turn_uncertain : bool
        Turn back a section that is far from every plate upright where a quarter turn of it
        is clearly plate-like (:meth:`turn_back_uncertain`); ``False``: the sections are upright.
    """

    def __init__(self, model=None, index=None, atlas=None, variant: str = "default",
                 precision: str | None = None, hemisections: bool = False,
                 wide_aspect: float = WIDE_ASPECT, turn_uncertain: bool = True):
        mdir = default_model_dir(variant)
        self.model_path = Path(model) if model else mdir / "plates_embedding.keras"
        self.index_path = Path(index) if index else mdir / "plates_index.npz"
        for p, given in ((self.model_path, model), (self.index_path, index)):
            if not p.exists():
                raise SamriMLError(
                    f"{p}: no such file; hint: check the path" if given else
                    f"{p}: model file missing; hint: reinstall samri_ml or pass --model/--index"
                )
        try:
            with np.load(self.index_path, allow_pickle=False) as z:
                self.index = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:  # not an .npz (numpy says "pickled data")
            raise SamriMLError(f"{self.index_path}: not a plate index (the .npz written by "
                               "samri_ml-train-plates --export)") from err  # fmt: skip
        if "embeddings" not in self.index or "plates" not in self.index:
            raise SamriMLError(f"{self.index_path}: not a plate index (no plates/embeddings)")
        self.size = int(self.index["size"])
        self.crop = bool(self.index.get("crop", True))
        self.crop_threshold = self._crop_threshold(self.index, self.index_path)
        self.equalise = bool(self.index.get("equalise", True))
        self.smooth = float(self.index.get("smooth", 0.0))
        self.flip_tta = bool(self.index.get("flip_tta", True))
        self.region_weight = float(self.index.get("region_weight", 0.0))
        self._model, self.precision = None, precision
        #: :func:`~samri_ml.models.inference.input_checksum` of the model file when loaded
        self._model_checksum: str | None = None
        #: also rank every section as a left and a right hemisection (:data:`PARTS`)
        self.hemisections = bool(hemisections)
        #: a piece wider than this many times its height is also read as a dorsal/ventral part
        self.wide_aspect = float(wide_aspect)
        #: turn back sections far from every plate upright (:meth:`turn_back_uncertain`)
        self.turn_uncertain = bool(turn_uncertain)
        self.plates = self.index["plates"].astype(int)
        self.embeddings = self.index["embeddings"].astype(np.float32)
        self.region_embeddings = self.index.get("region_embeddings")
        self.height_mm = self.index.get("height_mm")
        self.width_mm = self.index.get("width_mm")
        # the largest nearest-plate distance of the validation sections (val_1) the index was
        # exported with: a section farther from every plate than that is flagged "uncertain"
        self.uncertain_distance = (float(self.index["uncertain_distance"])
                                   if "uncertain_distance" in self.index else None)
        if atlas is not None:
            self.reindex(atlas)

    @property
    def model(self):
        if self._model is None:
            from samri_ml.models.inference import input_checksum

            path = self.model_path
            # the file as loaded: the atlas index kept (atlas_index_path) is this network's,
            # whatever the file holds later (a training run writing it again)
            self._model_checksum = input_checksum(path)
            model = load_embedding(path, self._model_checksum, self.precision)
            shape_in, shape_out = tuple(model.input_shape[1:3]), model.output_shape[-1]
            reindexing = self.embeddings is None  # the index is being made with this model
            made_with = str(self.index.get("model_checksum", ""))
            if not reindexing and made_with and made_with != self._model_checksum:
                # a fine-tuned model beside the shipped index (--model without --index) has
                # the shipped shapes: it ranked against another network's plates, MAE 62
                # where its own index gave 42, with every section 'uncertain' the only sign
                raise SamriMLError(
                    f"{self.index_path} does not belong to {self.model_path}: the index was "
                    "made with another model file (its model_checksum); hint: give the index "
                    "exported with that model (--index, samri_ml-train-plates --export), or "
                    "--atlas DIR to index an atlas with it")
            if not reindexing and (shape_in != (self.size, self.size)
                                   or shape_out != self.embeddings.shape[1]):
                raise SamriMLError(
                    f"{self.index_path} does not belong to {self.model_path}: the index holds "
                    f"{self.embeddings.shape[1]}-d embeddings of {self.size} px images, the "
                    f"model takes {shape_in[0]}x{shape_in[1]} px and gives {shape_out}-d ones; "
                    "hint: give the index exported with that model, or --atlas DIR to index an "
                    "atlas with it")
            self._model = model
        return self._model

    def prep(self, img: np.ndarray) -> np.ndarray:
        """Preprocessed ``(size, size)`` float image, as at training."""
        return self.prep_box(img)[0]

    def prep_box(self, img: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """:meth:`prep`'s image and the tissue box ``(y0, y1, x0, x1)`` it was cut to (the
        whole image without ``crop``)."""
        img = _to_uint8(img, "<array>")
        box = self.tissue_box(img)
        return preprocess(img, self.size, equalise=self.equalise, crop=self.crop,
                          crop_threshold=self.crop_threshold, box=box), box

    def tissue_box(self, img: np.ndarray) -> tuple[int, int, int, int]:
        """The tissue box ``(y0, y1, x0, x1)`` :meth:`prep` cuts a uint8 image to."""
        h, w = img.shape
        return tissue_bbox(img, threshold=self.crop_threshold) if self.crop else (0, h, 0, w)

    def prepare(self, imgs: list[np.ndarray]) -> tuple[np.ndarray, list]:
        """:meth:`prep_box` of several images: ``(N, size, size)`` array and the boxes."""
        pairs = _map(self.prep_box, imgs)
        return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]

    def _as_parts(self, imgs: list[np.ndarray], boxes: list, whole: np.ndarray):
        """Whole-section distances ``(N, P)`` lowered, plate by plate, to those of the image
        ranked as a part of a section (:func:`candidate_parts`), and the part each image's
        nearest plate came from (``None``: the whole section).

        Plate by plate, not the one reading whose nearest plate is nearest: measured on pieces
        of the training and val_1 sections (``benchmarks/plates_parts.py``), picking one
        reading sends a dorsal half taken for a ventral one far off (val_1 dorsal halves MAE
        20.2 against 11.1 plate by plate)."""
        jobs = [(i, part) for i, box in enumerate(boxes)
                for part in candidate_parts(box, self.hemisections, self.wide_aspect)]
        read_as: list = [None] * len(imgs)
        if not jobs:
            return whole, read_as
        from samri_ml.plates.train import embed

        def prep_part(job):
            i, part = job
            return preprocess(part_image(_to_uint8(imgs[i], "<array>"), boxes[i], part),
                              self.size, equalise=self.equalise, crop=False)

        emb = embed(self.model, np.stack(_map(prep_part, jobs)), flip_tta=self.flip_tta)
        d = smooth_profile(_pairwise(emb, self.embeddings), self.plates, self.smooth)
        out, nearest = whole.copy(), whole.min(1)
        for (i, part), row in zip(jobs, d, strict=True):
            out[i] = np.minimum(out[i], row)
            if row.min() < nearest[i]:
                nearest[i], read_as[i] = row.min(), part
        return out, read_as

    @staticmethod
    def _crop_threshold(index: dict, path) -> str:
        """The tissue-box threshold the index's model was trained with (``otsu`` for an index
        that does not say: those exported before 2026-12-02)."""
        from samri_ml.plates.data import CROP_THRESHOLDS

        value = str(index.get("crop_threshold", "otsu"))
        if value not in CROP_THRESHOLDS:
            raise SamriMLError(f"{path}: unknown crop_threshold {value!r} (this samri_ml knows "
                               f"{', '.join(CROP_THRESHOLDS)}); hint: update samri_ml")
        return value

    def embed(self, imgs: list[np.ndarray], prepped: np.ndarray | None = None) -> np.ndarray:
        """Embeddings ``(N, L)`` of uint8 images (preprocessing included, unless ``prepped``
        gives the images after :meth:`prep` already)."""
        from samri_ml.plates.train import embed

        x = np.stack(_map(self.prep, imgs)) if prepped is None else prepped
        return embed(self.model, x, flip_tta=self.flip_tta)

    def embed_regions(self, imgs: list[np.ndarray],
                      boxes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Region embeddings ``(N, R, L)`` and tissue fractions ``(N, R)``: a region's
        tissue density relative to its section's, in the tissue box the regions are cut from
        (the whole image's made a section on a slide 5-500 times as dense as itself).
        ``boxes``: the images' tissue boxes where known (:meth:`prepare`'s), not sought
        again."""
        crops, frac = [], []
        for i, im in enumerate(imgs):
            y0, y1, x0, x1 = self.tissue_box(im) if boxes is None else boxes[i]
            rc = region_crops(im, crop=True, box=(y0, y1, x0, x1))
            whole = tissue_fraction(im[y0:y1, x0:x1])
            for name in REGIONS:
                c = rc[name]
                crops.append(c if min(c.shape) >= 4 else np.zeros((8, 8), np.uint8))
                frac.append(tissue_fraction(c) / max(whole, 1e-6) if whole else 0.0)
        from samri_ml.plates.train import embed

        def prep_crop(c):
            if c.max() > c.min():
                return preprocess(c, self.size, equalise=self.equalise, crop=False)
            return np.zeros((self.size,) * 2, np.float32)

        x = np.stack(_map(prep_crop, crops))
        e = embed(self.model, x, flip_tta=False)
        n, r = len(imgs), len(REGIONS)
        return e.reshape(n, r, -1), np.array(frac).reshape(n, r)

    def reindex(self, atlas, cache: bool = True) -> None:
        """Embed another atlas folder (plates and their regions) with this model, at its input
        size: the index read before, if any, is replaced, whatever model made it.

        With ``cache``, the atlas' index is kept in the user's cache
        (:func:`atlas_index_path`) and read back by the next reindex of the same folder
        (its plates' names and content) with the same model file and
        settings: a MapNode of IdentifyPlate over 100 sections embedded the 132 plates 100
        times (about 40 s each on one thread).

        The index's ``uncertain_distance`` was measured on its own plates: it is kept where
        the atlas holds those plates (or some of them), as this model embeds them
        (:data:`SAME_PLATE_DISTANCE`); otherwise the ``uncertain`` flag and the turn-back
        are off, said in a note."""
        known = ({} if self.embeddings is None
                 else dict(zip(self.plates.tolist(), self.embeddings, strict=True)))
        extents = self._extents_by_plate()
        limit = self.uncertain_distance
        before = self.plates, self.embeddings, self.region_embeddings, self.size
        self.embeddings = None  # being made: the model is not checked against the old index
        try:
            self.size = int(self.model.input_shape[1] or self.size)  # None: any size, keep it
            plates, self.embeddings, self.region_embeddings = self._atlas_index(atlas, cache)
        except BaseException:  # an atlas that does not load leaves the index as it was
            self.plates, self.embeddings, self.region_embeddings, self.size = before
            raise
        self.plates = plates
        # the plates this model embeds as the index did: the index's own
        own = {p for p, e in zip(plates.tolist(), self.embeddings, strict=True)
               if p in known and known[p].shape == e.shape
               and float(np.linalg.norm(known[p] - e)) <= SAME_PLATE_DISTANCE}
        same = len(own) == len(plates)
        self.uncertain_distance = limit if same else None
        # the brain's extent at each plate (the tilt's degrees) is the CCF's, by plate number:
        # kept for each of the index's own plates (it was dropped: the shipped plates given
        # as --atlas turned a tilt of 11.4 degrees into 4.6, the 6 x 10 mm fallback's); NaN,
        # so 6 x 10 mm, for another picture of a plate
        if extents and own:
            self.height_mm, self.width_mm = (
                np.array([extents[p][i] if p in own and p in extents else np.nan
                          for p in plates.tolist()]) for i in (0, 1))
        else:
            self.height_mm = self.width_mm = None
        if limit is not None and not same:
            import warnings

            warnings.warn(f"{atlas}: these plates, re-embedded, are not the plate index's, so "
                          "no result is flagged uncertain and no section far from every plate "
                          "is turned back (their limit was measured on the index's plates)",
                          SamriMLNote, stacklevel=2)
        if extents and not same:
            import warnings

            warnings.warn(f"{atlas}: {len(plates) - len(own)} of its {len(plates)} plates are "
                          "not the plate index's: the tilt's degrees at them take a brain of "
                          "6 x 10 mm (the CCF's extent is known for the index's plates)",
                          SamriMLNote, stacklevel=2)

    def _extents_by_plate(self) -> dict[int, tuple[float, float]]:
        """``{plate: (height_mm, width_mm)}`` of the brain at the index's plates (the CCF's;
        ``{}`` where the index has none)."""
        if self.height_mm is None or self.embeddings is None:
            return {}
        width = self.width_mm if self.width_mm is not None else np.full(len(self.plates), np.nan)
        return {int(p): (float(h), float(w))
                for p, h, w in zip(self.plates.tolist(), self.height_mm, width, strict=True)}

    def _atlas_index(self, atlas, cache: bool):
        """``(plates, embeddings, region_embeddings)`` of an atlas folder with this model:
        from the cache where :meth:`reindex` kept them, else embedded (and kept, unless the
        folder changed while it was read). The notes of loading the atlas (plates left out,
        plates inverted) are said either way."""
        import warnings

        path = atlas_index_path(self, atlas) if cache else None
        cached = _read_atlas_index(path) if path is not None else None
        if cached is not None:
            for note in cached["notes"].tolist():
                warnings.warn(note, SamriMLNote, stacklevel=3)
            return (cached["plates"].astype(int), cached["embeddings"],
                    cached["region_embeddings"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plates, imgs = load_atlas(atlas)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=3)
        embeddings = self.embed(imgs)
        region_embeddings = self.embed_regions(imgs)[0]
        # the key was taken before the plates were read: a plate edited in between was kept
        # under the key of before, and read back by a folder in that state (the plate put
        # back, a node keyed before the edit). Kept only where the key is still the same
        # (the plates' checksums are kept per file state: a few ms)
        if path is not None and atlas_index_path(self, atlas) == path:
            notes = [str(w.message) for w in caught if issubclass(w.category, SamriMLNote)]
            _write_atlas_index(path, plates=plates, embeddings=embeddings,
                               region_embeddings=region_embeddings,
                               notes=np.array(notes, dtype=str))
        return plates, embeddings, region_embeddings

    def distances(self, imgs: list[np.ndarray], regions: bool | None = None,
                  prepped: np.ndarray | None = None, known: dict | None = None,
                  boxes: list | None = None) -> dict:
        """Distances of every image to every plate (``(N, P)``), and per region. ``known``:
        these images' ``whole``, ``read_as``, ``as_section`` and ``boxes`` where they are known
        already (from :meth:`upright`). ``boxes``: the tissue boxes of ``prepped``'s images
        (:meth:`prepare`); they come back in the result.

        A piece of tissue that may be part of a section (:func:`candidate_parts`) is also
        ranked as that part, and each plate keeps its nearest distance; ``read_as`` says which
        part gave the nearest plate (``None``: the whole section), and ``as_section`` the
        nearest distance as a whole section (what :attr:`uncertain_distance` was measured on).
        """
        if known is None:
            if prepped is None:
                prepped, boxes = self.prepare(imgs)
            elif boxes is None:
                boxes = [self.tissue_box(_to_uint8(im, "<array>")) for im in imgs]
            emb = self.embed(imgs, prepped)
            whole = smooth_profile(_pairwise(emb, self.embeddings), self.plates, self.smooth)
            as_section = whole.min(1)
            whole, read_as = self._as_parts(imgs, boxes, whole)
            known = {"whole": whole, "read_as": read_as, "as_section": as_section,
                     "boxes": boxes}
        out = {"whole": known["whole"], "overall": known["whole"], "read_as": known["read_as"],
               "as_section": known["as_section"], "boxes": known["boxes"]}
        whole = out["whole"]
        use_regions = (self.region_weight > 0) if regions is None else regions
        if use_regions and self.region_embeddings is not None:
            # the boxes the whole sections were cut to: the same search, made once (1-2.5
            # ms a section of the command line's default, regions on)
            remb, frac = self.embed_regions(imgs, out["boxes"])
            # (N, R, P): region r of the section against region r of every plate
            d_reg = np.stack(
                [_pairwise(remb[:, r], self.region_embeddings[:, r]) for r in range(len(REGIONS))],
                axis=1,
            )
            d_reg = smooth_profile(d_reg, self.plates, self.smooth)
            ok = frac >= MIN_TISSUE_FRACTION
            weights = ok / np.maximum(ok.sum(1, keepdims=True), 1)
            mean_reg = (d_reg * weights[..., None]).sum(1)
            w = self.region_weight * ok.any(1)[:, None]
            out.update(regions=d_reg, tissue=frac, overall=(1 - w) * whole + w * mean_reg)
        return out

    def upright(self, imgs: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, dict]:
        """Each image turned back to its most plate-like quarter turn: of the four, the one
        whose nearest plate is nearest (:func:`turn_back`). Returns the images so turned, the
        turns found (0-3, counterclockwise quarter turns of the input from upright) and the
        whole-section distances in the turns found."""
        return self._upright(imgs, self.distances(imgs, regions=False))

    def _upright(self, imgs: list[np.ndarray], d0: dict, accept=None):
        """:meth:`upright` given the upright distances ``d0``; ``accept(i, k, d)``: whether
        image ``i`` is turned back by its most plate-like turn ``k`` (``d``: that turn's
        distances of all images)."""
        turned = [imgs] + [[turn_back(im, k) for im in imgs] for k in (1, 2, 3)]
        ds = [d0] + [self.distances(t, regions=False) for t in turned[1:]]
        k = np.stack([d["whole"].min(1) for d in ds]).argmin(0)
        if accept is not None:
            k = np.array([k[i] if k[i] and accept(i, k[i], ds[k[i]]) else 0
                          for i in range(len(imgs))], int)
        n = range(len(imgs))
        return [turned[k[i]][i] for i in n], k, _gather([(ds[k[i]], i) for i in n])

    def turn_back_uncertain(self, imgs: list[np.ndarray], d: dict):
        """:meth:`upright` for the images that come out farther from every plate than the
        index's ``uncertain_distance`` upright, in every reading (``d``: their
        :meth:`distances` upright), where the most plate-like of the four turns is not the
        upright one and is nearer its nearest plate than :data:`TURN_FRACTION` times
        ``uncertain_distance``; the others stay as they are. Returns what
        :meth:`upright` returns, for all the images.

        Only doubtful images pay (three more turns each), and only a clearly plate-like turn
        is taken: a small piece of a section can look more plate-like in another turn
        (``--any-orientation`` turned 60 % centre crops, MAE 6.5 -> 40). Measured with
        ``python benchmarks/plates_orientation.py`` (pieces of the sections, upright and
        turned): upright pieces turned wrongly 3 of 336 on train, 0 of 84 on val_1, 1 of 70
        on val_2 (all three already outside the top 5 or nearly); whole sections that came
        turned, turned back 127 of 144 (train), 24 of 36 (val_1), 20 of 30 (val_2)."""
        n = len(imgs)
        if not self.turn_uncertain or self.uncertain_distance is None:
            return list(imgs), np.zeros(n, int), d
        # doubtful: far from every plate in every reading (a piece read well as a part of a
        # section is not, though its whole-section reading may be "uncertain")
        doubtful = np.flatnonzero(d["whole"].min(1) > self.uncertain_distance)
        if not len(doubtful):
            return list(imgs), np.zeros(n, int), d
        limit = TURN_FRACTION * self.uncertain_distance
        turned, k, dt = self._upright([imgs[i] for i in doubtful],
                                      _gather([(d, i) for i in doubtful]),
                                      accept=lambda j, _k, dk: dk["as_section"][j] <= limit)
        at = {i: j for j, i in enumerate(doubtful) if k[j]}  # image -> its row in the turned
        return ([turned[at[i]] if i in at else im for i, im in enumerate(imgs)],
                np.array([k[at[i]] if i in at else 0 for i in range(n)], int),
                _gather([(dt, at[i]) if i in at else (d, i) for i in range(n)]))

    def rank(self, imgs: list[np.ndarray], regions: bool | None = None,
             prepped: np.ndarray | None = None, any_orientation: bool = False,
             boxes: list | None = None) -> list[dict]:
        """For each image: ``ranking`` (all plates, best first), ``distances`` (ascending) and,
        with regions, ``regions`` (plate per region, its distance, tissue fraction) and
        ``tilt`` (dorsal-ventral and left-right plate differences and angles in degrees).
        With ``any_orientation`` a section may come turned by quarter turns (:meth:`upright`,
        four times the network time). Without it, a section far from every plate upright may
        still be turned back (:meth:`turn_back_uncertain`). ``turned_degrees`` says how each
        came (0: upright, or ranked as it came). A piece of
        tissue ranked best as a part of a section (:meth:`distances`) has ``read_as`` (e.g.
        ``"ventral part"``). Without :attr:`hemisections`, an image whose tissue box is
        narrower than any whole section's (:func:`narrow_box`) has ``may_be_hemisphere``.
        Arrays are taken as :func:`as_sections` makes them (16-bit, float, RGB: grayscale
        uint8; brightfield inverted; too small or empty refused with :class:`SamriMLError`)."""
        return self._rank(as_sections(imgs), regions, prepped, any_orientation, boxes)

    def _rank(self, imgs: list[np.ndarray], regions: bool | None = None,
              prepped: np.ndarray | None = None, any_orientation: bool = False,
              boxes: list | None = None) -> list[dict]:
        """:meth:`rank` of sections made already (:func:`as_sections`, or
        :func:`~samri_ml.plates.data.read_image`'s files): not made twice."""
        if not imgs:
            return []
        if any_orientation:
            imgs, turns, d = self.upright(imgs)
        else:
            d = self.distances(imgs, False, prepped, boxes=boxes)
            imgs, turns, d = self.turn_back_uncertain(imgs, d)
        use_regions = (self.region_weight > 0) if regions is None else regions
        if use_regions and self.region_embeddings is not None:
            # the regions of the sections as they were ranked (their whole distances known)
            d = self.distances(imgs, regions, known=d)
        results = self._results(d)
        for res, k in zip(results, turns, strict=True):
            res["turned_degrees"] = int(90 * k)  # 0: ranked as it came
        return results

    def _results(self, d: dict) -> list[dict]:
        """:meth:`rank`'s dictionaries from :meth:`distances`' arrays."""
        results = []
        for i in range(len(d["overall"])):
            order = np.argsort(d["overall"][i], kind="stable")
            res = {
                "ranking": [int(p) for p in self.plates[order]],
                "distances": [float(x) for x in d["overall"][i][order]],
            }
            if d["read_as"][i] is not None:
                res["read_as"] = d["read_as"][i]
            if not self.hemisections and narrow_box(d["boxes"][i]):
                # ranked at twice its scale if it is one hemisphere: the CLI's line says so
                res["may_be_hemisphere"] = True
            if self.uncertain_distance is not None and \
                    d["as_section"][i] > self.uncertain_distance:
                # farther from every plate than any validation section was: a turned, partial
                # or unusual section (an audit: 90-100 % of quarter-turned sections whose true
                # plate fell out of the top 5, none of the untransformed ones)
                res["uncertain"] = True
            if "regions" in d:
                res["regions"] = {}
                near = np.abs(self.plates - res["ranking"][0]) <= REGION_WINDOW
                for r, name in enumerate(REGIONS):
                    j = int(np.argmin(np.where(near, d["regions"][i, r], np.inf)))
                    res["regions"][name] = {
                        "plate": int(self.plates[j]),
                        "distance": float(d["regions"][i, r, j]),
                        "tissue_fraction": round(float(d["tissue"][i, r]), 3),
                    }
                res["tilt"] = self._tilt(res["regions"], res["ranking"][0],
                                         whole=not (res.get("read_as")
                                                    or res.get("may_be_hemisphere")))
            results.append(res)
        return results

    def _tilt(self, regions: dict, best: int, whole: bool = True) -> dict:
        """Cutting angle from the plates matched by opposite regions.

        With ``dp`` plates of difference between regions whose centres lie ``c`` of the
        tissue's height (width) apart (:data:`REGION_CENTRES_APART`: 0.5 dorsal to ventral,
        0.45 left to right): ``angle = atan(dp * 0.1 mm / (c * extent_mm))``. The extent is
        the brain height/width at the best plate (CCF), or 6/10 mm when unknown (NaN in the
        index: the CCF has no tissue at plate 1, the olfactory bulb's tip). Plates are
        numbered from anterior to posterior, so a positive ``dorsoventral_degrees`` means the
        dorsal part of the section lies posterior to its ventral part, and a positive
        ``mediolateral_degrees`` that the image's left half lies posterior to its right half.
        ``whole``: False for a piece of a section (ranked as a part, or as narrow as one
        hemisphere): its bands are not the brain's, and ``"whole_section": false`` says the
        angles assume what it is not.
        """
        hmm, wmm = 6.0, 10.0
        if self.height_mm is not None and best in set(self.plates.tolist()):
            k = int(np.flatnonzero(self.plates == best)[0])
            hmm = _extent_or(self.height_mm[k], hmm)
            if self.width_mm is not None:
                wmm = _extent_or(self.width_mm[k], wmm)
        dv = regions["dorsal"]["plate"] - regions["ventral"]["plate"]
        lr = regions["left"]["plate"] - regions["right"]["plate"]
        apart_dv, apart_lr = REGION_CENTRES_APART
        out = {
            "dorsal_minus_ventral_plates": int(dv),
            "left_minus_right_plates": int(lr),
            "dorsoventral_degrees": round(
                math.degrees(math.atan(dv * PLATE_SPACING_MM / (apart_dv * hmm))), 1
            ),
            "mediolateral_degrees": round(
                math.degrees(math.atan(lr * PLATE_SPACING_MM / (apart_lr * wmm))), 1
            ),
        }
        if not whole:
            out["whole_section"] = False
        return out



#: the folder, under :func:`samri_ml.paths.cache_dir`, of the atlas indexes
#: :meth:`PlateIdentifier.reindex` keeps
ATLAS_INDEX_CACHE = "atlas_index"

#: the code that turns plates into an index: its files are part of the cache key, so that an
#: atlas index made by other preprocessing or embedding code is not read back
_INDEXING_CODE = ("plates/identify.py", "plates/data.py", "plates/train.py",
                  "models/inference.py")


def atlas_index_path(ident: PlateIdentifier, atlas) -> Path | None:
    """The file that holds (or will hold) the index of ``atlas`` made by ``ident``:
    ``$XDG_CACHE_HOME/samri_ml/atlas_index/<key>.npz`` (else ``~/.cache/...``). The key is the
    atlas' :func:`~samri_ml.plates.data.atlas_signature` (its plate files' names and content:
    a plate rewritten at its size and time, ``cp -p``, ``rsync -a``, an archive, is seen),
    the model file's size and sha256 when the model was loaded (the index is that network's,
    whatever the file holds later), the precision, the preprocessing settings, samri_ml's
    indexing code and the versions of Keras, its backend, OpenCV, NumPy and SimpleITK
    (:func:`~samri_ml.models.inference.embedding_library_versions`). None where the folder
    cannot be listed or read, there is no home folder for a cache, or the network was set in
    memory (no file tells which it is)."""
    import hashlib
    import json

    import samri_ml
    from samri_ml.models.inference import (
        embedding_library_versions,
        file_checksum,
        inference_precision,
    )
    from samri_ml.paths import cache_dir
    from samri_ml.plates.data import atlas_signature

    package = Path(samri_ml.__file__).parent
    try:
        plates = atlas_signature(atlas)
        ident.model  # noqa: B018 - loaded: its file's checksum as loaded is the key's
        if ident._model_checksum is None:  # a network set in memory: no file tells which
            return None
        key = {"plates": plates, "model": ident._model_checksum,
               "code": [file_checksum(package / f) for f in _INDEXING_CODE],
               "version": samri_ml.__version__, "libraries": embedding_library_versions(),
               "precision": ident.precision or inference_precision(), "size": ident.size,
               "crop": ident.crop, "crop_threshold": ident.crop_threshold,
               "equalise": ident.equalise, "flip_tta": ident.flip_tta}
        folder = cache_dir(ATLAS_INDEX_CACHE)
    except (OSError, SamriMLError):
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return folder / f"{digest[:32]}.npz"


#: the atlas indexes kept in the cache: the most recently used (made or read) this many
#: (about 0.6 MB each for 132 plates); a lab re-indexing edited atlases, or after upgrades,
#: grew the folder for ever
ATLAS_INDEXES_KEPT = 16

#: a temporary file of :func:`_write_atlas_index` older than this (s) is a writer's that was
#: killed: it is removed with the indexes pruned
ATLAS_INDEX_TEMPORARY_S = 24 * 3600


def _read_atlas_index(path: Path) -> dict | None:
    """A kept atlas index, or None where there is none (or not a whole one: it is made
    again). Its modification time is set to now: it was used (:func:`_prune_atlas_indexes`
    keeps the most recently used). A reader that may not set it (a cache folder another
    user writes) leaves its access time, which the pruning reads too."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            index = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    wanted = {"plates", "embeddings", "region_embeddings", "notes"}
    if not wanted <= set(index):
        return None
    n = len(index["plates"])
    if index["plates"].ndim != 1 or len(index["embeddings"]) != n or \
            len(index["region_embeddings"]) != n:
        # arrays of different atlases (a file written over by hand): the run stopped with a
        # numpy broadcasting error; made again instead
        return None
    try:
        os.utime(path)
    except OSError:  # pruned by another process meanwhile, or a read-only cache: read anyway
        pass
    return index


def _write_atlas_index(path: Path, **arrays) -> None:
    """Keep an atlas index: written beside its name, then renamed onto it
    (:func:`samri_ml.bids.atomic_target`), so that parallel nodes indexing one atlas never
    read a half-written file (the last rename wins; both wrote the same index); then the
    folder is pruned (:func:`_prune_atlas_indexes`). A cache that cannot be written costs the
    next run the embedding, nothing more."""
    from samri_ml.bids import atomic_target

    try:
        with atomic_target(path, ".npz") as tmp:
            np.savez(tmp, **arrays)
    except OSError as err:
        import warnings

        # said: a MapNode of IdentifyPlate embedded the atlas again in every node (40 s
        # each), nothing telling why
        why = err.strerror or str(err)
        warnings.warn(f"the atlas index could not be kept in {path.parent} ({why}): the next "
                      "run embeds this atlas again; hint: set XDG_CACHE_HOME to a writable "
                      "folder", SamriMLNote, stacklevel=2)
        return
    _prune_atlas_indexes(path.parent)


def _atlas_indexes_to_prune(entries: dict, now: float, kept: int = ATLAS_INDEXES_KEPT,
                           temporary_s: float = ATLAS_INDEX_TEMPORARY_S) -> list[str]:
    """The files of the atlas index cache to remove, from ``{name: modification time}``:
    the indexes (``<key>.npz``) after the ``kept`` most recently used (newest time first;
    ties by name, so that parallel writers agree), and temporary files (``.<key>.npz.*``,
    being written) older than ``temporary_s`` seconds at ``now``."""
    indexes = sorted((n for n in entries if not n.startswith(".") and n.endswith(".npz")),
                     key=lambda n: (-entries[n], n))
    stale = [n for n in entries if n.startswith(".") and now - entries[n] > temporary_s]
    return indexes[kept:] + sorted(stale)


def _prune_atlas_indexes(folder: Path) -> None:
    """Remove what :func:`_atlas_indexes_to_prune` says from the atlas index cache. Another
    process may be writing, reading or pruning it at the same time: a file gone meanwhile, or
    one that cannot be removed, is passed over (a reader of a removed index makes it again).

    An index was last used at its modification time (set by each read) or its access time,
    whichever is later: a reader of a cache it may not write (another user's, a lab's
    shared one) cannot set the first, so the index it used every day was removed by the
    writers as unused, and embedded again by each of its runs (which cannot keep it). Its
    read sets the access time where the file system records it (Linux' default
    ``relatime``: at the first read after the file's modification, then at most daily)."""
    import time

    entries = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        try:
            st = os.stat(folder / name)
        except OSError:  # removed or renamed by another process since the listing
            continue
        # a temporary file is never read: its age is its writer's
        entries[name] = st.st_mtime if name.startswith(".") else max(st.st_mtime, st.st_atime)
    for name in _atlas_indexes_to_prune(entries, time.time()):
        try:
            os.unlink(folder / name)
        except OSError:
            pass


def _is_embedding(model) -> bool:
    """Whether a Keras model maps one grey image (``(None, H, W, 1)``) to one vector
    (``(None, L)``), as the plate embeddings do."""
    shape_in, shape_out = model.input_shape, model.output_shape
    return (isinstance(shape_in, tuple) and isinstance(shape_out, tuple) and len(shape_in) == 4
            and shape_in[-1] == 1 and len(shape_out) == 2)


def plate_thumbnails(imgs: list[np.ndarray], size: int = 128) -> np.ndarray:
    """The index's ``thumbnails`` (uint8, ``(P, size, size)``), for montages: each plate cut
    to its whole tissue (the triangle threshold, whatever box the model uses: the Otsu box
    drops the brainstem of plates 100-131), equalised as the network sees it."""
    return np.stack([(preprocess(im, size, crop_threshold="triangle") * 255).round()
                     .astype(np.uint8) for im in imgs])


def brain_extent_mm(plates: np.ndarray, ccf_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Brain height and width (mm) at each plate from the CCF annotation (25 um voxels);
    plate N is at axis-1 index ``527 - 4 (N - 1)``. NaN where the CCF is unavailable."""
    from samri_ml.plates.data import shared_data_dir

    ccf = Path(ccf_dir) if ccf_dir else shared_data_dir() / "ccf"
    h = np.full(len(plates), np.nan)
    w = np.full(len(plates), np.nan)
    f = ccf / "annotation_25_reoriented_2017.nrrd"
    if not f.exists():
        return h, w
    import SimpleITK as sitk

    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))  # (z=IS, y=AP, x=LR)
    vol = np.transpose(vol, (2, 1, 0))  # -> (LR, AP, IS) as in the README
    for i, n in enumerate(plates):
        k = 527 - 4 * (int(n) - 1)
        if 0 <= k < vol.shape[1]:
            sl = vol[:, k, :] > 0
            if sl.any():
                xs, zs = np.nonzero(sl)
                w[i] = (xs.max() - xs.min() + 1) * 0.025
                h[i] = (zs.max() - zs.min() + 1) * 0.025
    return h, w


def export_model(
    model_path,
    atlas_dir,
    out_dir,
    *,
    size: int,
    smooth: float = 0.0,
    region_weight: float = 0.0,
    flip_tta: bool = True,
    crop_threshold: str = "otsu",
) -> Path:
    """Write ``plates_embedding.keras`` and ``plates_index.npz`` into ``out_dir``.

    ``crop_threshold``: the tissue box the model was trained with (its run's
    ``config.json``); the index keeps it, so sections are cut as the plates were.

    All or nothing: the atlas and the model are checked first, both files are made in a
    temporary folder beside ``out_dir`` and moved into it at the end; on failure ``out_dir``
    is left as it was (:func:`samri_ml.bids.atomic_folder`).
    """
    import shutil

    from samri_ml.bids import atomic_folder
    from samri_ml.models.inference import file_checksum

    _, imgs = load_atlas(atlas_dir)  # before anything is written: it may not load
    if not Path(model_path).is_file():
        raise SamriMLError(f"{model_path}: no such file; hint: check the path")
    with atomic_folder(out_dir) as out:
        shutil.copy(model_path, out / "plates_embedding.keras")
        idx = out / "plates_index.npz"
        np.savez(idx, plates=np.arange(1), embeddings=np.zeros((1, 1)), size=size,
                 crop_threshold=crop_threshold)  # bootstrap
        # the shipped index is float32 on every machine (sections may be embedded in bfloat16)
        ident = PlateIdentifier(out / "plates_embedding.keras", idx, precision="float32")
        ident.flip_tta = flip_tta
        ident.reindex(atlas_dir, cache=False)  # an export is made of its inputs alone
        h, w = brain_extent_mm(ident.plates)
        thumbs = plate_thumbnails(imgs)
        np.savez_compressed(
            idx,
            plates=ident.plates,
            embeddings=ident.embeddings,
            region_embeddings=ident.region_embeddings,
            regions=np.array(list(REGIONS)),
            size=size,
            crop=True,
            crop_threshold=crop_threshold,
            equalise=True,
            smooth=float(smooth),
            flip_tta=bool(flip_tta),
            region_weight=float(region_weight),
            height_mm=h,
            width_mm=w,
            thumbnails=thumbs,
            # which network the embeddings are of: a model given without its index is refused
            model_checksum=np.str_(file_checksum(out / "plates_embedding.keras")),
        )
    return Path(out_dir) / "plates_index.npz"


def _both_variants(name: str, kind):
    """A :class:`RoutedIdentifier` property that reads :class:`PlateIdentifier`'s setting
    ``name`` from the default variant and sets it on both."""

    def get(self):
        return getattr(self.default, name)

    def set_(self, value) -> None:
        for ident in (self.default, self._multimodal):
            if ident is not None:
                setattr(ident, name, kind(value))

    return property(get, set_, doc=f":attr:`PlateIdentifier.{name}` of both variants.")


class RoutedIdentifier(_Ranker):
    """``variant="auto"``: each section is ranked by the default model, or by the multimodal
    one where the modality router (:mod:`samri_ml.plates.modality`) is confident that it is
    not a confocal/Nissl section. Same ``rank``/``rank_files`` as :class:`PlateIdentifier`;
    each result also says which ``model`` ranked it and the router's ``other_modality``
    probability. The multimodal network is loaded only when a section needs it."""

    def __init__(self, atlas=None, router=None, hemisections: bool = False,
                 wide_aspect: float = WIDE_ASPECT, turn_uncertain: bool = True):
        from samri_ml.plates.modality import ROUTER_NAME, ModalityRouter

        self.default = PlateIdentifier(atlas=atlas, variant="default",
                                       hemisections=hemisections, wide_aspect=wide_aspect,
                                       turn_uncertain=turn_uncertain)
        self._atlas, self._multimodal = atlas, None
        path = Path(router) if router else default_model_dir("default") / ROUTER_NAME
        if not path.exists():
            raise SamriMLError(f"{path}: model file missing; hint: reinstall samri_ml or use "
                               "--variant default")
        self.router = ModalityRouter.load(path)
        if self.router.size != self.default.size:
            raise SamriMLError(f"{path}: router made for {self.router.size} px inputs, the "
                               f"model takes {self.default.size} px")
        # what callers read from an identifier (the plate list, the preprocessing size)
        self.plates, self.size = self.default.plates, self.default.size

    @property
    def multimodal(self) -> PlateIdentifier:
        """The multimodal identifier, built (and, with an atlas, its index made) on first use."""
        if self._multimodal is None:
            self._multimodal = PlateIdentifier(
                atlas=self._atlas, variant="multimodal", hemisections=self.hemisections,
                wide_aspect=self.wide_aspect, turn_uncertain=self.turn_uncertain)
        return self._multimodal

    hemisections = _both_variants("hemisections", bool)
    wide_aspect = _both_variants("wide_aspect", float)
    turn_uncertain = _both_variants("turn_uncertain", bool)

    def rank(self, imgs: list[np.ndarray], regions: bool | None = None,
             any_orientation: bool = False) -> list[dict]:
        """:meth:`PlateIdentifier.rank` by the variant the router picks for each image, with
        ``model`` and ``other_modality`` (the router's probability) in each result."""
        return self._rank(as_sections(imgs), regions, any_orientation)

    def _rank(self, imgs: list[np.ndarray], regions: bool | None = None,
              any_orientation: bool = False) -> list[dict]:
        """:meth:`rank` of sections made already (as :meth:`PlateIdentifier._rank`)."""
        if not imgs:
            return []
        # the router's spectrum bands do not change under quarter turns: route first
        prepped, boxes = self.default.prepare(imgs)
        p = self.router.other_modality(prepped)
        other = p >= self.router.threshold
        results: list = [None] * len(imgs)
        for variant, chosen in (("default", ~other), ("multimodal", other)):
            idx = np.flatnonzero(chosen)
            if not len(idx):
                continue
            ident = getattr(self, variant)
            same = all(getattr(ident, k) == getattr(self.default, k)
                       for k in ("size", "crop", "equalise", "crop_threshold"))
            reuse = same and not any_orientation
            ranked = ident._rank([imgs[i] for i in idx], regions,
                                prepped[idx] if reuse else None,
                                any_orientation=any_orientation,
                                boxes=[boxes[i] for i in idx] if reuse else None)
            for i, res in zip(idx, ranked, strict=True):
                results[i] = {**res, "model": variant, "other_modality": round(float(p[i]), 4)}
        return results



def make_identifier(model=None, index=None, atlas=None, variant: str = "auto",
                    hemisections: bool = False, turn_uncertain: bool = True):
    """The identifier a command line asks for: ``auto`` routes between the shipped variants
    (:class:`RoutedIdentifier`); a given ``model``/``index`` or another variant gives one
    :class:`PlateIdentifier`. ``hemisections``, ``turn_uncertain``: as
    :class:`PlateIdentifier`'s."""
    settings = {"hemisections": hemisections, "turn_uncertain": turn_uncertain}
    if variant == "auto" and model is None and index is None:
        return RoutedIdentifier(atlas=atlas, **settings)
    return PlateIdentifier(model, index, atlas, variant="default" if variant == "auto" else variant,
                           **settings)
