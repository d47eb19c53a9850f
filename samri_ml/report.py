"""Per-subject HTML QC reports (one self-contained, offline-viewable page per subject), and an
``index.html`` that lists them.

Each page shows, for every registered scan, SAMRI's "operator overview": the registered scan
slice by slice under the template's brain mask (red) and the template's own anatomy (cyan:
the edges of its darkest and brightest regions inside the brain, e.g. ventricles and white
matter; a template without contrast there has none, and no legend or key lists it), above
the template itself at the same slices, so a scan registered to the wrong
place does not pass as good. A functional mean is shown above its registered structural scan,
brain masks where masks were predicted (in native space), the VCF/SCF values (a red banner
names each scan whose VCF says the registration failed, and each failed step), a coherence
view across sessions and a link to the run's workflow graph. Pictures are also written to
``sub-*/figures/`` as PNG and SVG.

Panels are coronal slices in the neurological convention (the subject's left on the left,
superior up, marked L/R and S/I), drawn with the physical voxel size, titled with their
position in mm along the posterior -> anterior axis, and chosen where the image has data.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
from pathlib import Path

import nibabel as nb
import numpy as np

from samri_ml.bids import atomic_write_bytes, atomic_write_text, derivative_path
from samri_ml.qc.metrics import PARTIAL_FOV, off_template_text, structural_off_template
from samri_ml.qc.volume import PLAUSIBLE_VCF, grid_volume

#: the report pictures this process drew (written, or found holding the same bytes): what
#: :func:`samri_ml.bids.stale_files` does not call stale
DRAWN: set[Path] = set()

#: colours of the pictures (and their legends)
TEMPLATE_MASK_COLOUR = "#ff3b30"
TEMPLATE_EDGES_COLOUR = "#32d2ff"
PREDICTED_MASK_COLOUR = "#ffcc00"
#: a slice of the brain is shown only where the image has data in at least this fraction of it
MIN_SLICE_COVERAGE = 0.5
#: what an ``n/a`` in the QC table means (a record's null: the computation gave NaN)
UNMEASURED = ("the value could not be measured: a FWHM where neighbouring voxels are not "
              "positively correlated (an image of noise only), a VCF where no voxel of the raw "
              "scan lies above its threshold (a flat image); the SCF and normalised SCF follow "
              "from them. samri_ml-qc compare leaves such a scan out of that quantity's "
              "statistics.")
DPI = 120
FONT = 10


def _coronal_axis(img) -> int:
    """Index of the array axis closest to anterior-posterior."""
    codes = nb.aff2axcodes(img.affine)
    return next((i for i, c in enumerate(codes) if c in "AP"), 1)


def _display_slice(data, axis, index):
    """A coronal slice of a RAS array, superior up and the subject's left on the left (the
    neurological convention)."""
    sl = np.take(data, index, axis=axis)
    return np.rot90(sl)


def _volume(img, dtype=np.float32) -> np.ndarray:
    """The RAS-canonical data of ``img`` (a complex image's magnitude), 4D images averaged
    over time, extra axes dropped."""
    from samri_ml.io import image_data

    return _time_mean(image_data(nb.as_closest_canonical(img), dtype))


def _time_mean(data: np.ndarray) -> np.ndarray:
    """``data`` averaged over every axis after the third (time, and a 5D image's trailing
    ones: (X, Y, Z, T, 1) failed to draw, a reshape error); 3D data as it is."""
    return data.reshape(*data.shape[:3], -1).mean(axis=3) if data.ndim > 3 else data


def _on_grid(img, like, order: int = 0):
    """``img`` resampled onto ``like``'s grid (itself where it already lies there)."""
    if img.shape[:3] == like.shape[:3] and np.allclose(img.affine, like.affine, atol=1e-4):
        return img
    from nibabel.processing import resample_from_to

    if len(img.shape) > 3:
        img = nb.Nifti1Image(_time_mean(np.asanyarray(img.dataobj, dtype=np.float32)),
                             img.affine)
    return resample_from_to(img, (like.shape[:3], like.affine), order=order)


def has_data(data: np.ndarray) -> np.ndarray:
    """Voxels where an image holds data (not the zeros outside a scan's field of view after
    resampling)."""
    data = np.abs(np.asarray(data, dtype=np.float32))
    top = float(np.percentile(data, 99.5)) if data.size else 0.0
    return data > 1e-3 * (top or 1.0)


def brain_coverage(image, brain_mask) -> float:
    """The fraction of ``brain_mask`` (a template's brain, on any grid) where
    ``image`` holds data: below 1 for a functional scan whose field of view covers only part of
    the brain. Measured on the mask's grid: the part of the brain outside ``image``'s grid
    is not covered. Both count in mm, whatever their headers' unit
    (:func:`~samri_ml.qc.volume.image_mm`)."""
    from samri_ml.masks import mask_inside
    from samri_ml.qc.volume import image_mm

    mask_img = nb.as_closest_canonical(image_mm(brain_mask))
    mask = mask_inside(_volume(mask_img))
    if not mask.any():
        return float("nan")
    data = _volume(_on_grid(nb.as_closest_canonical(image_mm(image)), mask_img))
    return float((has_data(data) & mask).sum() / mask.sum())


def choose_slices(data: np.ndarray, ref: np.ndarray, n_slices: int = 8, axis: int = 1,
                  min_coverage: float = MIN_SLICE_COVERAGE):
    """Coronal slices to show: spread evenly, ends included (where masks leak), over the
    slices of ``ref`` (a brain mask) where ``data`` has data in at least ``min_coverage`` of
    ``ref``'s voxels. Returns ``(indices, outside, n_outside)``: ``outside[i]`` is true for a
    slice shown although it lies outside the image's field of view (where no slice of ``ref``
    has data), ``n_outside`` the number of ``ref``'s slices outside the field of view."""
    other = tuple(a for a in range(3) if a != axis)
    ref = np.asarray(ref, dtype=bool)
    if not ref.any():
        ref = np.ones(ref.shape, dtype=bool)
    area = ref.sum(axis=other)
    covered = (ref & has_data(data)).sum(axis=other) / np.maximum(area, 1)
    inside = area >= max(1.0, 0.01 * area.max())
    good = inside & (covered >= min_coverage)
    pool = np.flatnonzero(good if good.any() else inside)
    pick = np.unique(np.round(np.linspace(0, pool.size - 1, min(n_slices, pool.size))).astype(int))
    indices = pool[pick]
    return indices, covered[indices] < min_coverage, int((inside & ~good).sum())


def template_edges(template: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """The template's own anatomy, to draw over a registered scan: the darkest and the
    brightest eighth of the (lightly smoothed) template inside its brain mask (white matter,
    ventricles, CSF), pieces under 8 voxels dropped. A registered scan whose own dark and
    bright structures do not follow these edges is misregistered, even where its head fills
    the brain mask's contour."""
    from scipy import ndimage

    brain = np.asarray(brain_mask, dtype=bool)
    core = ndimage.binary_erosion(brain)
    core = core if core.any() else brain
    template = np.asarray(template, dtype=np.float32)
    raw = template[core]
    if raw.size < 10 or np.ptp(raw) <= 0.05 * abs(float(np.median(raw))):
        return np.zeros(brain.shape, dtype=bool)  # no contrast: a mask, not an anatomy
    smooth = ndimage.gaussian_filter(template, 0.7)
    values = smooth[core]
    lo, hi = np.percentile(values, [12, 88])
    regions = ((smooth < lo) | (smooth > hi)) & core
    labels, n = ndimage.label(regions)
    if n == 0:
        return regions
    sizes = np.bincount(labels.ravel())
    keep = sizes >= 8
    keep[0] = False
    return keep[labels]


def _position_mm(affine, axis: int, index: int, shape) -> float:
    """World coordinate (mm) along ``axis`` of slice ``index`` of a RAS-canonical grid."""
    ijk = [(s - 1) / 2 for s in shape[:3]]
    ijk[axis] = index
    return float((affine @ [*ijk, 1.0])[axis])


#: :func:`head_box`: the margin around the head, a share of its extent each side
HEAD_MARGIN = 0.08


def head_box(data: np.ndarray, mask=None) -> tuple[slice, slice, slice]:
    """The box (x and z, every y) of a RAS volume's head: the voxels above a tenth of its
    99.5th percentile, with ``mask`` (a predicted brain mask, where it leaks out), grown by
    :data:`HEAD_MARGIN`; the whole extent along an axis where the head fills most of it. A
    skull-stripped brain in a large field of view filled 60 % of each panel's width, its
    outline too small to judge (found by a review of the figures)."""
    inside = data > 0.1 * (np.percentile(data, 99.5) or 1.0)
    if mask is not None:
        inside |= mask
    from samri_ml.masks import grown_extent

    box = [slice(None)] * 3
    if not inside.any():
        return tuple(box)
    for axis in (0, 2):
        lo, hi = grown_extent(inside, axis, HEAD_MARGIN, min_pad=1)
        if hi - lo < 0.9 * data.shape[axis]:
            box[axis] = slice(lo, hi)
    return tuple(box)


def mosaic(image, contour=None, *, n_slices: int = 8, out_base=None, title: str = "",
           contour_colour: str = TEMPLATE_MASK_COLOUR, overlay=None, edges=None,
           edges_colour: str = TEMPLATE_EDGES_COLOUR, reference=None, row_labels=None,
           legend=None, dpi: int = DPI, formats=("png", "svg"), crop: bool = False,
           span_edges: bool = False) -> dict:
    """Coronal slices of ``image`` with ``contour`` (a mask) drawn on top; returns saved paths.

    ``image``/``contour``/``overlay``/``edges``/``reference`` are nibabel images (``edges``
    and ``reference`` resampled to ``image``'s grid where they lie elsewhere; 4D images are
    averaged over time). ``edges`` (a mask) is outlined in ``edges_colour``; ``reference`` (an
    image: the template, a structural scan) is drawn as a second row at the same slices, under
    the same contours. ``row_labels`` names the rows, ``legend`` maps colours to what they
    show. Slices are chosen where ``image`` has data inside ``contour`` (see
    :func:`choose_slices`), drawn with the voxel size's aspect ratio, in the neurological
    convention (L/R, S/I marked) and titled with their position in mm. Writes
    ``out_base.<format>`` for each of ``formats``; the returned dict also holds ``indices`` and
    ``positions_mm`` (the slices shown) and ``outside_fov`` (which of them lie outside the
    image's field of view). With ``crop``, the panels show the head (:func:`head_box`), not
    the whole field of view. With ``span_edges``, the slices (and the crop) cover ``edges``
    too: a reference mask beside a predicted one, where the prediction missed part of it.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    canonical = nb.as_closest_canonical(image)
    data = _volume(canonical)
    axis = 1  # RAS: axis 1 is posterior -> anterior
    dx, dy, dz = (float(z) for z in canonical.header.get_zooms()[:3])
    grid = nb.Nifti1Image(np.zeros(data.shape, np.uint8), canonical.affine)

    def on_grid(img, order=0):
        return None if img is None else _volume(_on_grid(nb.as_closest_canonical(img), grid, order))

    def mask_on_grid(img):
        vol = on_grid(img)
        return None if vol is None else vol > 0.5

    cdata, odata, edata = mask_on_grid(contour), mask_on_grid(overlay), mask_on_grid(edges)
    rdata = on_grid(reference, order=1)
    if span_edges and edata is not None:  # the slices a predicted mask missed shown too
        span = edata if cdata is None else cdata | edata
    else:
        span = cdata
    ref = span if span is not None and span.any() else data > np.percentile(data, 60)
    indices, outside, n_outside = choose_slices(data, ref, n_slices, axis)
    positions = [_position_mm(canonical.affine, axis, int(k), data.shape) for k in indices]
    if crop:  # every volume cut to the head's box in x and z (the slices' positions kept)
        box = head_box(data, span)
        data, cdata, odata, edata, rdata = (None if v is None else v[box] for v in
                                            (data, cdata, odata, edata, rdata))
    if legend:
        # only what is drawn: a template without contrast (no anatomy to outline) left the
        # cyan "template anatomy" in the legend of a picture that has none
        drawn = {colour for mask, colour in ((edata, edges_colour), (cdata, contour_colour))
                 if mask is not None and any(_display_slice(mask, axis, k).any()
                                             for k in indices)}
        legend = {colour: label for colour, label in legend.items()
                  if colour not in (edges_colour, contour_colour) or colour in drawn}
    rows = [(data, np.percentile(data, 99.5) or 1.0)]
    if rdata is not None:
        rows.append((rdata, np.percentile(rdata, 99.5) or 1.0))
    # physical size of a panel: the slice is X voxels wide (dx) and Z tall (dz)
    aspect = dz / dx
    width = 1.6
    height = float(np.clip(width * data.shape[2] * dz / (data.shape[0] * dx), 0.7, 2.8))
    left, right, top, bottom, gap_w, gap_h = 0.45, 0.3, 0.85, 0.55, 0.12, 0.35
    ncol, nrow = len(indices), len(rows)
    fig_w = left + right + ncol * width + (ncol - 1) * gap_w
    fig_h = top + bottom + nrow * height + (nrow - 1) * gap_h
    heading = title + ("\n" if title else "") + "coronal slices, posterior \u2192 anterior"
    if n_outside:
        heading += (f"; {n_outside} slice(s) of the brain (mostly) outside the field of "
                    "view, not shown")
    # as wide as the heading and the legend: a scan with two slices in the brain got a figure
    # 4 in wide that cut its title and legend off at both ends (the panels keep their size)
    from samri_ml.graph import text_width

    need = max(text_width(line, FONT + 1) for line in heading.split("\n")) + 0.4
    if legend:  # each entry: its line (2 em), the gap (0.8 em) and the columns' (2 em)
        need = max(need, sum(text_width(label, FONT) + 4.8 * FONT / 72
                             for label in legend.values()) + 0.4)
    pad = max(0.0, (need - fig_w) / 2)
    left, right, fig_w = left + pad, right + pad, fig_w + 2 * pad
    # each row's label in lines as long as the panel is high, the left margin as wide as
    # they are: a BIDS name of a few entities (task-rest_acq-highres_run-01_bold) ran off the
    # top of the figure and over the next row's label
    from samri_ml.qc.compare import wrap_label

    labels = [wrap_label(label, height - 0.1, FONT) if label else label
              for label in (row_labels or [])]
    lines = max((label.count("\n") + 1 for label in labels if label), default=0)
    widen = max(0.0, 0.1 + lines * 1.25 * FONT / 72 + 0.06 - left)
    left, fig_w = left + widen, fig_w + widen
    # a Figure without pyplot: a notebook's backend and open figures are left alone
    fig = Figure(figsize=(fig_w, fig_h), facecolor="black")
    FigureCanvasAgg(fig)  # its renderer, whatever the backend
    axes = fig.subplots(nrow, ncol, squeeze=False)
    fig.subplots_adjust(left=left / fig_w, right=1 - right / fig_w, top=1 - top / fig_h,
                        bottom=bottom / fig_h, wspace=gap_w / width, hspace=gap_h / height)
    text = dict(color="white", fontsize=FONT)
    for r, (rows_data, vmax) in enumerate(rows):
        for c, k in enumerate(indices):
            ax = axes[r, c]
            ax.set_facecolor("black")
            ax.imshow(_display_slice(rows_data, axis, k), cmap="gray", vmin=0, vmax=vmax,
                      interpolation="nearest", aspect=aspect)
            if odata is not None and r == 0:
                sl = _display_slice(odata, axis, k)
                ax.imshow(np.ma.masked_where(~sl, sl), cmap="autumn", alpha=0.35,
                          interpolation="nearest", aspect=aspect)
            for mask, colour, lw in ((edata, edges_colour, 0.6), (cdata, contour_colour, 1.0)):
                if mask is not None:
                    sl = _display_slice(mask, axis, k).astype(float)
                    if sl.any():
                        ax.contour(sl, levels=[0.5], colors=colour, linewidths=lw)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(f"y = {positions[c]:.1f} mm", pad=3, **text)
            if r == 0 and outside[c]:
                ax.text(0.5, 0.5, "outside the\nfield of view", transform=ax.transAxes,
                        ha="center", va="center", color="#ffcc00", fontsize=FONT)
            # orientation: neurological convention (the subject's left on the left)
            small = dict(color="#bbbbbb", fontsize=FONT - 1, transform=ax.transAxes)
            ax.text(0.0, -0.02, "L", ha="left", va="top", **small)
            ax.text(1.0, -0.02, "R", ha="right", va="top", **small)
            if c == ncol - 1:
                ax.text(1.03, 1.0, "S", ha="left", va="top", **small)
                ax.text(1.03, 0.0, "I", ha="left", va="bottom", **small)
        if r < len(labels) and labels[r]:
            axes[r, 0].text(-0.06, 0.5, labels[r], rotation=90, ha="right", va="center",
                            multialignment="center", transform=axes[r, 0].transAxes, **text)
    fig.suptitle(heading, color="white", fontsize=FONT + 1, y=1 - 0.08 / fig_h, va="top")
    if legend:
        handles = [Line2D([], [], color=colour, lw=2, label=label)
                   for colour, label in legend.items()]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                   fontsize=FONT, labelcolor="white", bbox_to_anchor=(0.5, 0.0))
    paths: dict = {"indices": [int(k) for k in indices], "positions_mm": positions,
                   "outside_fov": [bool(o) for o in outside]}
    if out_base is not None:
        out_base = Path(out_base)
        out_base.parent.mkdir(parents=True, exist_ok=True)
        for ext in formats:
            path = out_base.with_name(out_base.name + f".{ext}")
            # the SVG keeps its text as text (searchable, smaller), not as glyph paths; with
            # a fixed salt for its ids and no date it is the same bytes for the same picture
            # (it got new random ids and the date on every draw). A picture that holds these
            # bytes already is left as it is, modification time included (a rerun rewrote
            # every one: rsync, make and DataLad saw them changed); DRAWN says it was drawn
            buf = io.BytesIO()
            with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "samri_ml"}):
                fig.savefig(buf, format=ext, dpi=dpi, facecolor="black",
                            metadata={"Date": None} if ext == "svg" else None)
            paths[ext] = atomic_write_bytes(buf.getvalue(), path, skip_identical=True)
            DRAWN.add(Path(path).resolve())
    return paths


#: the outline of a reference mask drawn beside a predicted one (:func:`mask_figure`)
REFERENCE_MASK_COLOUR = TEMPLATE_EDGES_COLOUR


def mask_figure(image, mask, out_png, *, reference=None, title: str = "",
                n_slices: int = 8) -> Path:
    """A PNG of ``mask`` (a predicted brain mask) outlined on coronal slices of ``image``
    (:func:`mosaic`; a 4D image is averaged over time), and of ``reference`` (another mask of
    that image, e.g. a manual one) outlined in :data:`REFERENCE_MASK_COLOUR` where given: what
    ``samri_ml-mask --png`` and ``samri_ml-evaluate-masker --figures`` write. Returns the
    PNG's path."""
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise ValueError(f"{out_png}: a PNG's name ends in .png")
    ext = out_png.suffix[1:]
    return _mask_mosaic(image, mask, out_png.with_suffix(""), reference=reference, title=title,
                        n_slices=n_slices, formats=(ext,))[ext]


def _mask_mosaic(image, mask, out_base, *, reference=None, title: str = "", n_slices: int = 8,
                 formats=("png", "svg")) -> dict:
    """:func:`mosaic` of a predicted mask (and a reference one) in the masks' colours and
    legend: the one drawing of :func:`mask_figure` and of the subject reports."""
    legend = {PREDICTED_MASK_COLOUR: "predicted brain mask"}
    if reference is not None:
        legend[REFERENCE_MASK_COLOUR] = "reference mask"
    # the slices over both masks: over the predicted one only, a prediction that missed the
    # posterior half of the brain was drawn on its anterior half, where it matched the
    # reference, and looked right
    return mosaic(image, mask, edges=reference, out_base=out_base, title=title,
                  contour_colour=PREDICTED_MASK_COLOUR, edges_colour=REFERENCE_MASK_COLOUR,
                  legend=legend, n_slices=n_slices, formats=formats, crop=True,
                  span_edges=True)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    kind = "svg+xml" if Path(path).suffix.lower() == ".svg" else "png"
    return f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}"/>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;max-width:1400px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1em;margin-bottom:.3em} img{max-width:100%;display:block;margin:.3em 0 1em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} .note{color:#666;font-size:.85em}
.banner{background:#c62828;color:#fff;padding:.7em 1em;border-radius:4px;margin:1em 0}
.banner ul{margin:.3em 0 0;padding-left:1.4em} td.bad{background:#ffd6d6;color:#a00;font-weight:bold}
td.text{text-align:left}
"""


def _derivative(output_dir, raw, **entities) -> Path:
    """The derivative of ``raw`` that exists: with the source's own extension (a ``.nii``
    scan's derivatives are ``.nii``), else ``.nii.gz``, else ``.nii`` (the first if none)."""
    candidates = [derivative_path(output_dir, raw, **entities)]
    candidates += [derivative_path(output_dir, raw, extension=ext, **entities)
                   for ext in (".nii.gz", ".nii")]
    return next((c for c in candidates if c.exists()), candidates[0])


#: what Nipype's ``report_crash`` appends to a crash file after the step's traceback (a
#: cluster job's always ends with the first: its plugin had renamed the node's result file)
CRASH_FILE_NOTES = ("When creating this crashfile, the results file",
                    "During the creation of this crashfile triggered by the above exception")


def registered_output(output_dir, raw, template_name) -> Path:
    """The registered (``space-<template_name>_desc-preproc``) derivative of the scan ``raw``
    in ``output_dir``, which need not exist: its report shows it, and a scan without one was
    not registered (failed or not run)."""
    return _derivative(output_dir, raw, space=template_name, desc="preproc")


def crash_cause(text: str) -> str:
    """The cause a Nipype crash file (its ``text``) gives: the last line of the traceback,
    before Nipype's notes of :data:`CRASH_FILE_NOTES` (a cluster job's crash was said to be
    "to the node could not be found.")."""
    for note in CRASH_FILE_NOTES:
        text = text.split(note)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def crash_node(text: str) -> str:
    """The full name of the step a Nipype crash file (its ``text``) is of, from its ``Node:``
    line (``samri_ml_wf.sub_01_ses_1.anat_wf.s_register``); ``"?"`` where it has none."""
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.strip().startswith("Node:")), "?")


def failed_steps(log_dir, since: float | None = None) -> list[dict]:
    """The crash files (Nipype's, text) in ``log_dir`` written at or after ``since``: for each,
    ``file``, the failed ``node`` (its name from the file's ``Node:`` line) and ``cause``
    (:func:`crash_cause`)."""
    out = []
    for path in sorted(Path(log_dir).glob("crash-*")):
        try:
            if since is not None and path.stat().st_mtime < since:
                continue
            text = path.read_text(errors="replace")
        except OSError:
            continue
        out.append({"file": path, "node": crash_node(text).split(".")[-1],
                    "cause": shorten_middle(crash_cause(text), CAUSE_CHARACTERS)})
    return out


#: the longest cause :func:`failed_steps` gives (a crash file's last line can be a whole
#: traceback's worth of repr); a longer one keeps its start and its end (the hint)
CAUSE_CHARACTERS = 600


def shorten_middle(text: str, limit: int) -> str:
    """``text``, or where longer than ``limit`` characters its start and its end around
    `` ... ``: a cut end took the hint of a one-line error that names two long paths
    ('...; hint: give a .nii or')."""
    if len(text) <= limit:
        return text
    tail = limit // 3
    return f"{text[:limit - tail - 5]} ... {text[-tail:]}"


def _earlier_than(path, since: float | None) -> str | None:
    """When ``path`` was written (``YYYY-MM-DD HH:MM``), where that is before ``since``."""
    if since is None:
        return None
    mtime = Path(path).stat().st_mtime
    if mtime >= since:
        return None
    return f"{datetime.datetime.fromtimestamp(mtime).astimezone():%Y-%m-%d %H:%M %Z}"


def report_warnings(qc_rows, failed=(), missing=(), earlier=(),
                    grid_mm3: float | None = None) -> list[str]:
    """The lines of a report's red banner: each QC record whose VCF lies outside
    :data:`samri_ml.qc.volume.PLAUSIBLE_VCF` (the registration probably failed) or whose VCF
    or SCF is null (it could not be measured), each failed step, each scan without a
    registered output and each (``earlier``: "name (date)") whose registered output predates
    a run that failed for its subject; each structural scan covering little of the
    template's brain (:func:`~samri_ml.qc.metrics.structural_off_template`)."""
    from samri_ml.qc.volume import uninformative_vcf_text, vcf_verdict

    lo, hi = PLAUSIBLE_VCF
    lines = []
    for row in qc_rows:
        vcf = row.get("vcf")
        verdict = vcf_verdict(row, grid_mm3)
        off = structural_off_template(row)
        if off is not None and verdict != "implausible":
            lines.append(f"{row.get('scan', '?')}: {off_template_text(off)}")
        elif verdict == "uninformative":  # (``grid_mm3``: the template's grid volume)
            lines.append(f"{row.get('scan', '?')}: {uninformative_vcf_text(row, grid_mm3)}: "
                         "judge it by the pictures")
        elif verdict == "implausible":
            lines.append(f"{row.get('scan', '?')}: VCF {vcf:.3g}, outside the plausible range "
                         f"{lo:g}-{hi:g} (the registered scan holds that fraction of its "
                         "source's volume): the registration probably failed")
        unmeasured = [k.upper() for k in ("vcf", "scf") if k in row and row[k] is None]
        if unmeasured:
            lines.append(f"{row.get('scan', '?')}: {' and '.join(unmeasured)} n/a (could not "
                         "be measured; see the QC table's note): look at the scan")
    lines += [f"step {c['node']} failed: {c['cause']}" for c in failed]
    lines += [f"{name}: no registered output (failed or not run)" for name in missing]
    lines += [f"{name}: the registered scan shown was written before this run, which failed "
              "for this subject: it may be an earlier run's result" for name in earlier]
    return lines


def _run_command(output_dir) -> str | None:
    """The command line of the last run into ``output_dir`` (``dataset_description.json``'s
    last ``GeneratedBy``), where it is recorded."""
    try:
        desc = json.loads((Path(output_dir) / "dataset_description.json").read_text())
        return str(desc["GeneratedBy"][-1]["Description"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _flavour_of(command: str | None) -> str | None:
    """The registration flavour a ``samri_ml-register`` command line asked for."""
    if not command or "samri_ml-register" not in command:
        return None
    words = command.split()
    for i, word in enumerate(words):
        if word == "--fast":
            return "fast"
        if word == "--registration-flavour" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--registration-flavour="):
            return word.split("=", 1)[1]
    return "default"


def _other_spaces(folder: Path, template_name: str) -> list[str]:
    """The ``space-`` labels other than ``template_name`` of the registered scans
    (``*_desc-preproc_*``) in a subject's derivatives folder."""
    from samri_ml.bids import parse_entities

    try:
        spaces = {parse_entities(path).get("space") for path in
                  folder.glob("**/*_desc-preproc_*.nii*")}
    except OSError:
        return []
    return sorted(s for s in spaces if s and s != template_name)


def _header(title, *, template, template_name, masking, flavour, command, started,
            anatomy: bool = True) -> list[str]:
    from samri_ml import __version__

    now = datetime.datetime.now().astimezone()
    facts = [f"samri_ml {__version__}",
             f"template {html.escape(str(template))} (space-{html.escape(template_name)})"]
    if flavour:
        facts.append(f"registration flavour <b>{html.escape(flavour)}</b>")
    if masking:
        facts.append(f"masking <b>{html.escape(masking)}</b>")
    if started is not None:
        run = datetime.datetime.fromtimestamp(started).astimezone()
        facts.append(f"run started {run:%Y-%m-%d %H:%M %Z}")
    facts.append(f"report written {now:%Y-%m-%d %H:%M %Z}")
    out = [f"<h1>{html.escape(title)}</h1>",
           "<p class='note'>" + "; ".join(facts) + ".</p>"]
    if command:
        out.append(f"<p class='note'>Command: <code>{html.escape(command)}</code></p>")
    out.append("<p class='note'>Pictures: coronal slices, posterior to anterior, the "
               "subject's left on the left (L/R, S/I marked), positions in mm. "
               "<span style='color:#d00'>Red</span>: the template's brain mask"
               # a template without contrast in its brain has no anatomy drawn
               + ("; <span style='color:#0aa'>cyan</span>: the template's anatomy (edges of "
                  "its darkest and brightest regions in the brain)" if anatomy else "")
               # none is drawn where the run predicted none (--masking none): no yellow then
               + ("" if masking == "none" else
                  "; <span style='color:#b90'>yellow</span>: a predicted brain mask") + ".</p>")
    return out


def write_subject_reports(output_dir, sessions, *, template, template_mask, template_name,
                          masking=None, qc=True, crashes_since: float | None = None,
                          flavour: str | None = None, workflow_graph=None,
                          confirmed=None, off_template: list | None = None,
                          notes: dict | None = None, dataset_notes=(), notes_log=None):
    """Write ``OUTPUT_DIR/sub-<label>.html`` for every subject of ``sessions``; return the paths.

    ``masking="none"``: the run predicted no masks, so a ``desc-brain_mask`` left in
    OUTPUT_DIR by an earlier masked run is not shown as this run's; likewise ``qc=False``
    (a ``--no-qc`` run) shows no QC table from an earlier run's files. ``crashes_since`` (the
    run's start): the subject's crash files written since are listed (the failed step, its
    last line and the file), so the report says what failed, not only what is missing; and
    where a subject has such a failure, its registered scans written before the run are marked
    as possibly an earlier run's (a failed rerun showed them as its own), but those among
    ``confirmed`` (paths this run's sink steps wrote, or found holding the bytes they would
    have written; ``None``: not known).
    A red banner at the top names each scan whose VCF is outside the plausible range, each
    failed step, each scan without output and each such older one. The header gives the
    samri_ml version, the template, the masking, the flavour (``flavour``, else read from the
    run's command line in ``dataset_description.json``) and the dates. ``workflow_graph``:
    the run's graph picture (PNG or SVG) to show, ``False`` for none (a run that drew none: a
    picture an earlier run left in ``OUTPUT_DIR/figures`` is not this run's), ``None`` for
    ``OUTPUT_DIR/figures/workflow_graph.png`` where it exists. ``off_template``: a list that
    gets the structural scans off the template that have no QC record to say so (``qc=False``):
    records of ``scan``, ``modality`` and ``_coverage``, for the run's end-of-run notes
    (:func:`samri_ml.cli.register.implausible_qc_notes`). ``notes``: subject label -> the
    notes the run printed of that subject's files, shown in a "Notes" section of its report
    (none without); ``dataset_notes``, the run's others, and ``notes_log``, the file (relative
    to ``output_dir``) that holds every note of the run, are shown in ``index.html``.
    """
    output_dir = Path(output_dir)
    tpl_mask = nb.load(str(template_mask))
    try:
        tpl_img = nb.load(str(template))
    except (OSError, ValueError, nb.filebasedimages.ImageFileError):
        tpl_img = None
    command = _run_command(output_dir)
    flavour = flavour or _flavour_of(command)
    subjects: dict[str, list] = {}
    for item in sessions:
        subjects.setdefault(item["subject"], []).append(item)
    written = []
    summaries: dict = {}
    facts = dict(template=template, template_name=template_name, masking=masking,
                 flavour=flavour, command=command, started=crashes_since)
    if workflow_graph is None:
        workflow_graph = output_dir / "figures" / "workflow_graph.png"
    graph = Path(workflow_graph) if workflow_graph else None
    lo, hi = PLAUSIBLE_VCF
    grid_mm3 = grid_volume(tpl_mask)  # the template's grid: what a registered scan can fill
    overview_legend = {TEMPLATE_MASK_COLOUR: "template brain mask",
                       TEMPLATE_EDGES_COLOUR: "template anatomy (dark/bright edges)"}
    grid_cache: dict = {}

    def on_template_grid(img):
        """The template, its brain mask and its anatomy's edges on ``img``'s grid."""
        key = (img.shape[:3], img.affine.tobytes())
        if key not in grid_cache:
            mask = _on_grid(tpl_mask, img)
            mask = nb.Nifti1Image((_volume(mask) > 0.5).astype(np.uint8),
                                  nb.as_closest_canonical(mask).affine)
            tpl = edges = None
            if tpl_img is not None:
                tpl = _on_grid(tpl_img, img, order=1)
                edges = nb.Nifti1Image(
                    template_edges(_volume(tpl), np.asanyarray(mask.dataobj) > 0)
                    .astype(np.uint8), mask.affine)
            grid_cache[key] = (mask, tpl, edges)
        return grid_cache[key]

    for subject, items in subjects.items():
        figures = output_dir / f"sub-{subject}" / "figures"
        body = []
        others = _other_spaces(output_dir / f"sub-{subject}", template_name)
        if others:
            # a second template's run rewrote sub-X.html and its pictures: the first one's
            # registrations stayed in the folder with nothing to review them by
            body.append("<p class='note'>This subject's folder also holds registrations to "
                        f"{', '.join(f'space-{html.escape(o)}' for o in others)}; this report "
                        f"shows space-{html.escape(template_name)} only (the report and its "
                        "pictures are rewritten by each run); hint: give each template an "
                        "OUTPUT_DIR of its own to keep a report of each.</p>")
        qc_rows = []
        missing = []
        earlier = []
        registered_anats = []
        unrecorded = []  # scans off the template without a QC record
        failed = failed_steps(output_dir / f"sub-{subject}" / "log", crashes_since) \
            if crashes_since is not None else []
        if failed:
            body.append("<h2>Failed steps</h2><ul>" + "".join(
                f"<li><b>{html.escape(c['node'])}</b>: {html.escape(c['cause'])} "
                f"(<a href='{html.escape(c['file'].relative_to(output_dir).as_posix())}'>"
                f"{html.escape(c['file'].name)}</a>)</li>" for c in failed) + "</ul>")
        for item in items:
            ses = item["session"]
            tag = f"sub-{subject}" + (f"_ses-{ses}" if ses else "")
            body.append(f"<h2>{html.escape(tag)}</h2>")
            if not item["anat"] and item["bold"]:
                # said on the command line only: the report showed the runs as usual
                body.append("<p class='note'><b>No structural scan in this session:</b> its "
                            "functional runs were registered straight to the template (as "
                            "<code>--registration-method functional</code>), without the "
                            "structural scan's guidance.</p>")
            anat_warped = None
            scans = ([("anat", item["anat"])] if item["anat"] else []) + [
                ("func", b) for b in item["bold"]]
            for kind, raw in scans:
                deriv = registered_output(output_dir, raw, template_name)
                if not deriv.exists():
                    missing.append(Path(raw).name)
                    body.append(f"<p>{html.escape(Path(raw).name)}: no registered output "
                                "(failed or not run).</p>")
                    continue
                img = nb.load(str(deriv))
                name = _stem(raw)
                # a failed rerun into an OUTPUT_DIR of an earlier run: its registered scans
                # were shown (pictures, QC) as this run's, under this run's options
                old = _earlier_than(deriv, crashes_since) if failed and not (
                    confirmed is not None and deriv.resolve() in confirmed) else None
                if old:
                    earlier.append(f"{Path(raw).name} ({old})")
                mask, tpl, edges = on_template_grid(img)
                coverage = brain_coverage(img, mask)
                paths = mosaic(img, mask, edges=edges, reference=tpl,
                               out_base=_figure(figures, raw, "overview"),
                               title=f"{name} registered (top), the template (bottom)",
                               row_labels=[name.replace(f"{tag}_", "") or name, "template"],
                               legend=overview_legend)
                body.append(f"<h3>{html.escape(Path(raw).name)}: registered, under the template "
                            "contour (operator overview), above the template</h3>")
                if old:
                    body.append(f"<p class='note'><b>Written {html.escape(old)}, before this "
                                "run, whose steps for this subject failed: this may be an "
                                "earlier run's result (and QC), not this run's.</b></p>")
                off = structural_off_template({"modality": kind, "_coverage": coverage})
                if off is not None:
                    # a head registered off the template was called a partial field of view
                    text = off_template_text(off)
                    body.append(f"<p class='note'><b>{text[0].upper() + text[1:]}</b>; judge "
                                "it by the pictures.</p>")
                elif coverage < PARTIAL_FOV:
                    body.append(f"<p class='note'>Partial field of view: the scan covers "
                                f"{coverage:.0%} of the template's brain.</p>")
                body.append(_img_tag(paths["png"], f"{name} overview"))
                if kind == "anat":
                    anat_warped = img
                    registered_anats.append((tag, img))
                elif anat_warped is not None:
                    # named, as the overview is: a session's runs had pictures of one title
                    # and headings of one text, told apart by their order only
                    paths = mosaic(img, mask, edges=edges, reference=anat_warped,
                                   out_base=_figure(figures, raw, "functostruct"),
                                   title=f"{name}: functional mean (top), its registered "
                                         "structural scan (bottom)",
                                   row_labels=["functional", "structural"],
                                   legend=overview_legend)
                    body.append(f"<h3>{html.escape(Path(raw).name)}: functional mean above the "
                                "registered structural scan, both under the template's brain "
                                "mask</h3>")
                    body.append(_img_tag(paths["png"], f"{name} func vs struct"))
                native_mask = _derivative(output_dir, raw, desc="brain", suffix="mask")
                if native_mask.exists() and masking != "none":
                    raw_img = nb.load(str(raw))
                    mask_img = nb.load(str(native_mask))
                    paths = _mask_mosaic(raw_img, mask_img, _figure(figures, raw, "mask"),
                                         title=f"{name}: predicted brain mask (native space)")
                    body.append("<h3>Predicted brain mask on the native scan: "
                                f"{html.escape(Path(raw).name)}</h3>")
                    body.append(_img_tag(paths["png"], f"{name} mask"))
                qc_file = derivative_path(output_dir, raw, space=template_name, desc="qc",
                                          suffix="metrics", extension=".json")
                if qc and qc_file.exists():
                    row = json.loads(qc_file.read_text())
                    row["_coverage"] = coverage
                    row["_earlier"] = bool(old)
                    qc_rows.append(row)
                elif off is not None:
                    # without a QC record (--no-qc) the banner and index.html said nothing of
                    # a structural scan registered off the template
                    unrecorded.append({"scan": name, "modality": kind, "_coverage": coverage})
        if off_template is not None:
            off_template.extend(unrecorded)
        if len(registered_anats) > 1:
            body.append("<h2>Coherence across sessions</h2><p class='note'>Each session's "
                        "registered structural scan above the first session's, both under "
                        "the template's brain mask.</p>")
            first_tag, first = registered_anats[0]
            for tag, img in registered_anats[1:]:
                mask, _, edges = on_template_grid(img)
                paths = mosaic(img, mask, edges=edges, reference=first,
                               out_base=figures / f"{tag}_desc-coherence",
                               title=f"{tag} (top) vs {first_tag} (bottom)",
                               row_labels=[tag, first_tag], legend=overview_legend)
                body.append(_img_tag(paths["png"], f"{tag} coherence"))
        if qc_rows:
            body.append(_qc_table(qc_rows, lo, hi, grid_mm3))
        if graph is not None and graph.exists():
            body.append(_graph_link(graph, output_dir))
        warnings = report_warnings(qc_rows + unrecorded, failed, missing, earlier, grid_mm3=grid_mm3)
        summaries[subject] = ([tag for tag in dict.fromkeys(
            f"ses-{item['session']}" for item in items if item["session"])], warnings)
        banner = []
        if warnings:
            banner = ["<div class='banner' role='alert'><b>Warning: sub-"
                      f"{html.escape(subject)}</b><ul>"
                      + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>"]
        # cyan in the key only where the template's anatomy was drawn (a template without
        # contrast in its brain, or one that cannot be read, has none)
        anatomy = any(edges is not None and np.asanyarray(edges.dataobj).any()
                      for _, _, edges in grid_cache.values())
        head = _header(f"samri_ml report: sub-{subject}", **facts, anatomy=anatomy)
        back = f"<p class='note'><a href='{INDEX}'>All subjects ({INDEX})</a></p>"
        said = _notes_section((notes or {}).get(subject, ()), notes_log,
                              "What the run said of this subject's files")
        page = _page(f"sub-{subject}", head[:1] + banner + head[1:] + [back] + said + body)
        written.append(atomic_write_text(page, output_dir / f"sub-{subject}.html"))
    write_index(output_dir, summaries, graph=graph, notes=dataset_notes, notes_log=notes_log,
                subject_notes={s: len(n) for s, n in (notes or {}).items()}, **facts)
    return written


def _notes_section(notes, notes_log, what: str) -> list[str]:
    """A report's "Notes" section: ``notes`` (the run's ``note:`` lines, printed on the
    terminal only before), and where the run wrote them all, ``notes_log``; none without
    notes."""
    if not notes:
        return []
    where = (f" (every note of the run: <a href='{html.escape(Path(notes_log).as_posix())}'>"
             f"{html.escape(Path(notes_log).as_posix())}</a>)" if notes_log else "")
    return [f"<h2>Notes</h2><p class='note'>{what}, as it printed them{where}:</p><ul>"
            + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>"]


#: the page of ``OUTPUT_DIR`` that lists every subject's report (:func:`write_index`)
INDEX = "index.html"


def _graph_link(graph: Path, output_dir: Path) -> str:
    """A link to the run's workflow graph, relative to ``output_dir`` where it lies there (the
    reports stay whole when the folder is moved). Not embedded: it is the whole run's graph,
    every subject's steps, and each subject's report carried a copy (30 subjects: 7.9 MB of
    PNG, 10.5 MB in each of the 30 reports)."""
    try:
        href = Path(graph).resolve().relative_to(Path(output_dir).resolve()).as_posix()
    except ValueError:
        href = Path(graph).resolve().as_uri()
    return ("<h2>Workflow graph</h2><p class='note'>The run's workflow graph (every "
            f"subject's steps): <a href='{html.escape(href)}'>{html.escape(href)}</a></p>")


#: the name a workflow graph of ``samri_ml-register --write-graph`` in ``OUTPUT_DIR/figures``
#: starts with (:func:`samri_ml.cli.register.graph_stem`)
GRAPH_PREFIX = "workflow_graph"


def _graph_group(name: str) -> str:
    """A graph's picture and the files Graphviz writes beside it (``.dot``, ``_detailed``)
    as one: ``workflow_graph_sub-02_detailed.png`` -> ``workflow_graph_sub-02``."""
    return name.split(".")[0].removesuffix("_detailed")


def unlinked_graphs(output_dir) -> list[Path]:
    """The workflow graphs in ``OUTPUT_DIR/figures`` (:data:`GRAPH_PREFIX`, with the files
    Graphviz wrote beside them) that no page of ``output_dir`` (``index.html``,
    ``sub-*.html``) links any more: an earlier run's, since replaced (a run of the whole
    dataset after one of ``--participant-label 02`` left ``workflow_graph_sub-02.png``,
    which nothing named), or ``--dry-run``'s preview."""
    import re

    output_dir = Path(output_dir)
    folder = output_dir / "figures"
    if not folder.is_dir():
        return []
    linked = set()
    for page in [output_dir / INDEX, *output_dir.glob("sub-*.html")]:
        try:
            text = page.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        linked |= {_graph_group(Path(html.unescape(href)).name)
                   for href in re.findall(r"href='([^']*)'", text)}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(GRAPH_PREFIX)
                  and _graph_group(p.name) not in linked)


def write_index(output_dir, summaries: dict, *, graph=None, notes=(), notes_log=None,
                subject_notes: dict | None = None, **facts) -> Path:
    """``OUTPUT_DIR/index.html``: a link to every ``sub-*.html`` in ``output_dir`` (this run's
    and earlier runs'), each of this run's subjects with its sessions and the lines of its
    red banner (``summaries``: subject label -> (session tags, warnings)), the run's facts
    (:func:`_header`'s ``facts``) and its workflow graph (``graph``, a link). A run of many
    subjects left as many pages side by side, with nothing to start from. ``notes``: the
    run's notes of no subject's files (the dataset's, skipped participants...), in a "Notes"
    section with ``notes_log`` (:func:`_notes_section`); ``subject_notes``: subject label ->
    the number of notes in its report."""
    output_dir = Path(output_dir)
    rows = []
    for page in sorted(output_dir.glob("sub-*.html")):
        subject = page.stem[4:]
        link = f"<a href='{html.escape(page.name)}'>sub-{html.escape(subject)}</a>"
        if subject in summaries:
            sessions, warnings = summaries[subject]
            n_notes = (subject_notes or {}).get(subject, 0)
            said = f"; {n_notes} note(s) in its report" if n_notes else ""
            status = ("<td class='bad text'>" + "<br>".join(html.escape(w) for w in warnings)
                      + f"{said}</td>") if warnings else f"<td class='text'>no warnings{said}</td>"
        else:
            sessions = []
            written = datetime.datetime.fromtimestamp(page.stat().st_mtime).astimezone()
            # its red banner (its run's warnings, or a later run interrupted) went unsaid;
            # and its notes (a run of --participant-label 02 listed sub-01 without them)
            try:
                text = page.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            warned = "<div class='banner" in text
            n_notes = _notes_shown(text)
            said = f"; {n_notes} note(s) in it" if n_notes else ""
            status = (f"<td class='{'bad ' if warned else ''}text'>an earlier run's report "
                      f"(written {written:%Y-%m-%d %H:%M %Z})"
                      f"{', with warnings: see it' if warned else ''}{said}</td>")
        rows.append(f"<tr><td class='text'>{link}</td>"
                    f"<td>{html.escape(', '.join(sessions))}</td>{status}</tr>")
    n_warned = sum(bool(w) for _, w in summaries.values())
    body = _header(f"samri_ml reports: {output_dir.name}", **facts)[:-1]  # no picture key
    body.append(f"<p>{len(rows)} subject report(s); this run: {len(summaries)} subject(s), "
                f"{n_warned} with warnings (in red).</p>")
    body.append("<table><tr><th>subject</th><th>sessions</th><th>warnings of this run"
                "</th></tr>" + "".join(rows) + "</table>")
    body += _notes_section(notes, notes_log, "What the run said of the dataset, of no "
                           "subject's files")
    if not notes and notes_log and subject_notes:
        log = html.escape(Path(notes_log).as_posix())
        body.append(f"<p class='note'>Every note of this run: <a href='{log}'>{log}</a></p>")
    if graph is not None and Path(graph).exists():
        body.append(_graph_link(graph, output_dir))
    return atomic_write_text(_page(output_dir.name, body), output_dir / INDEX)


def _notes_shown(page: str) -> int:
    """How many notes a report's text (``sub-X.html``) shows in its Notes section
    (:func:`_notes_section`); 0 without one."""
    _, found, rest = page.partition("<h2>Notes</h2>")
    return rest.split("</ul>", 1)[0].count("<li>") if found else 0


def _page(title: str, lines: list[str]) -> str:
    """A whole HTML page, ``samri_ml: <title>``, of the report's style and these lines."""
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>samri_ml: "
            f"{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(lines) + "</body></html>\n")


def mark_interrupted(report, rewritten: list[str], when: float) -> bool:
    """Put a banner at the top of ``report`` (an earlier run's ``sub-X.html``): a run started at
    ``when`` rewrote ``rewritten`` (file names) of the subject's derivatives before it was
    interrupted, so the report's pictures and QC may describe other files than those in the
    folder (a rerun with another ``--masking`` stopped half-way left the new registered scan
    beside the old QC record, under a report that said "masking none"). False where there
    is no such report or it is marked already."""
    report = Path(report)
    try:
        page = report.read_text(encoding="utf-8")  # as written (atomic_write_text)
    except (OSError, UnicodeDecodeError):
        return False
    if "class='banner interrupted'" in page or "<body>" not in page:
        return False
    stamp = f"{datetime.datetime.fromtimestamp(when).astimezone():%Y-%m-%d %H:%M %Z}"
    names = ", ".join(rewritten[:5]) + (f" and {len(rewritten) - 5} more"
                                       if len(rewritten) > 5 else "")
    banner = ("<div class='banner interrupted' role='alert'><b>A later run (started "
              f"{html.escape(stamp)}) was interrupted</b> after rewriting "
              f"{len(rewritten)} of this subject's files ({html.escape(names)}): this report "
              "is an earlier run's, and its pictures and QC may not match the files in the "
              "folder. Rerun that command (finished steps are reused) for a report of one "
              "run.</div>")
    atomic_write_text(page.replace("<body>", "<body>" + banner, 1), report)
    # index.html said "no warnings" of a subject whose report it links now warns
    index = report.parent / INDEX
    try:
        listing = index.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return True
    line = (f"<div class='banner interrupted' role='alert'><b>{html.escape(report.stem)}:</b> a "
            f"later run (started {html.escape(stamp)}) was interrupted after rewriting "
            f"{len(rewritten)} of its files: its report, and this page, are an earlier run's "
            "(see its report).</div>")
    if line not in listing and "<body>" in listing:
        # in the table's order, the subjects': each went first, so sub-02's came before
        # sub-01's (the run marks them in order)
        head, rest = listing.split("<body>", 1)
        banners = [line]
        while rest.startswith("<div class='banner interrupted'"):
            end = rest.index("</div>") + len("</div>")
            banners.append(rest[:end])
            rest = rest[end:]
        banners.sort(key=lambda b: b.split("<b>", 1)[1].split(":</b>", 1)[0])
        atomic_write_text(head + "<body>" + "".join(banners) + rest, index)
    return True


#: units of the QC table's columns (the record's keys, as in its JSON)
UNITS = {"volume_processed": " (mm&sup3;)", "volume_raw": " (mm&sup3;)",
         "fwhm_processed": " (mm)", "fwhm_raw": " (mm)"}


def _qc_table(qc_rows, lo, hi, grid_mm3: float | None = None) -> str:
    """The VCF/SCF table: VCFs outside ``lo``-``hi`` in red (but those that cannot reach the
    range on the template's grid of ``grid_mm3``, :func:`samri_ml.qc.volume.vcf_verdict`:
    marked), scans covering only part of the template's brain marked, with the caveat that
    their VCF is not expected to be 1."""
    from samri_ml.qc.volume import vcf_verdict

    keys = ["scan", "modality", "workflow", "vcf", "scf", "scf_normalised",
            "volume_processed", "volume_raw", "fwhm_processed", "fwhm_raw"]
    out = ["<h2>Volume and smoothness conservation</h2>",
           "<p class='note'>VCF = V(processed)/V(raw); SCF = FWHM(processed)/FWHM(raw); "
           "normalised SCF = SCF / VCF<sup>1/3</sup>. 1 is ideal for a scan that covers the "
           f"whole brain; a VCF outside {lo:g}-{hi:g} (red) means the registration probably "
           "failed.</p>",
           "<table><tr>" + "".join(f"<th>{k}{UNITS.get(k, '')}</th>" for k in keys)
           + "<th>template brain covered</th></tr>"]
    partial = partial_anat = unmeasured = earlier = capped = False
    for row in qc_rows:
        cells = []
        for k in keys:
            v = row.get(k, "")
            if k == "scan" and row.get("_earlier"):
                earlier = True
                cells.append(f"<td>{html.escape(str(v))} &Dagger;</td>")
                continue
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                # a record's null (NaN in the computation) read "None" here, like a value
                unmeasured = True
                cells.append("<td class='bad'>n/a</td>")
            elif k == "vcf" and vcf_verdict(row, grid_mm3) == "uninformative":
                capped = True
                cells.append(f"<td>{v:.4g} &sect;</td>")
            elif k == "vcf" and isinstance(v, (int, float)) and not lo <= v <= hi:
                cells.append(f"<td class='bad'>{v:.4g}</td>")
            else:
                cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else
                             f"<td>{html.escape(str(v))}</td>")
        cov = row.get("_coverage")
        if isinstance(cov, float) and np.isfinite(cov):
            mark = cov < PARTIAL_FOV
            partial |= mark
            structural = structural_off_template(row) is not None
            partial_anat |= structural
            cls = " class='bad'" if structural else ""
            cells.append(f"<td{cls}>{cov:.0%}{' &dagger;' if mark else ''}</td>")
        else:
            cells.append("<td></td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    if unmeasured:
        out.append(f"<p class='note'>n/a: {UNMEASURED}</p>")
    if capped:
        out.append("<p class='note'>&sect; The scan's field of view is wider than the "
                   "template's: the template's grid cannot hold a quarter of its volume above "
                   "threshold, so its VCF stays low however it is registered; judge it by the "
                   "pictures.</p>")
    if earlier:
        out.append("<p class='note'>&Dagger; Written before this run, which failed for this "
                   "subject: possibly an earlier run's values.</p>")
    if partial:
        out.append("<p class='note'>&dagger; Partial field of view: the scan covers only part "
                   "of the template's brain (a functional scan of a few slices). Its raw "
                   "volume and its registered copy (cut by the template's grid) hold different "
                   "parts of the head, so its VCF is not expected to be 1 and a VCF below 1 "
                   "does not by itself mean a failed registration: judge it by the pictures. "
                   "Its normalised SCF divides by VCF<sup>1/3</sup>, so it is skewed too (a "
                   "VCF below 1 raises it; the SCF itself is not).</p>")
    if partial_anat:
        out.append("<p class='note'>&dagger; in red: a structural scan holds the whole brain, "
                   "or most of it, as a rule; unless it was acquired as a slab of part of the "
                   "brain, covering so little of the template's brain means its registration "
                   "probably failed.</p>")
    return "\n".join(out)


def _figure(figures: Path, raw, desc: str) -> Path:
    """A report picture of the scan ``raw``, without extension, named as BIDS-Derivatives
    figures are (fMRIPrep's ``sub-01_task-rest_desc-carpetplot_bold.svg``): the scan's
    entities, ``desc-<desc>``, its suffix last (``sub-01_ses-1_desc-overview_T2w``; it was
    ``sub-01_ses-1_T2w_desc-overview``, the suffix amid the entities)."""
    return figures / derivative_path(figures, raw, desc=desc, extension="").name


def _stem(path) -> str:
    """BIDS file name without extension: ``sub-01_ses-1_T2w.nii.gz`` -> ``sub-01_ses-1_T2w``."""
    return Path(path).name.split(".")[0]
