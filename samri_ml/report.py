"""Per-subject HTML QC reports (one self-contained, offline-viewable page per subject).

Each page shows, for every registered scan, SAMRI's "operator overview" (the registered scan
slice by slice under the template's brain contour), the functional mean under the registered
structural scan's contour, brain-mask overlays where masks were predicted, the VCF/SCF values,
a coherence view across sessions and the workflow graph. Pictures are also written to
``sub-*/figures/`` as PNG and SVG.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import nibabel as nb
import numpy as np

from samri_ml.bids import atomic_write_text, derivative_path
from samri_ml.masks import largest_component


def _coronal_axis(img) -> int:
    """Index of the array axis closest to anterior-posterior."""
    codes = nb.aff2axcodes(img.affine)
    return next((i for i, c in enumerate(codes) if c in "AP"), 1)


def _display_slice(data, axis, index):
    """A coronal slice shown as radiologists expect (superior up)."""
    sl = np.take(data, index, axis=axis)
    return np.rot90(sl)


def mosaic(image, contour=None, *, n_slices: int = 8, out_base=None, title: str = "",
           contour_colour: str = "#ff3b30", overlay=None) -> dict:
    """Coronal slices of ``image`` with ``contour`` (a mask) drawn on top; returns saved paths.

    ``image``/``contour``/``overlay`` are nibabel images on the same grid (4D images are
    averaged over time). Writes ``out_base.png`` and ``out_base.svg``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canonical = nb.as_closest_canonical(image)
    data = np.asanyarray(canonical.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data.mean(axis=3)
    axis = 1  # RAS: axis 1 is anterior-posterior
    cdata = None
    if contour is not None:
        cdata = np.asanyarray(nb.as_closest_canonical(contour).dataobj) > 0
        cdata = cdata.reshape(cdata.shape[:3])
    odata = None
    if overlay is not None:
        odata = np.asanyarray(nb.as_closest_canonical(overlay).dataobj) > 0
    ref = cdata if cdata is not None and cdata.any() else data > np.percentile(data, 60)
    extent = np.flatnonzero(ref.any(axis=(0, 2)))
    lo, hi = (extent[0], extent[-1]) if extent.size else (0, data.shape[axis] - 1)
    indices = np.unique(np.linspace(lo, hi, n_slices + 2).astype(int)[1:-1])
    vmax = np.percentile(data, 99.5) or 1.0
    fig, axes = plt.subplots(1, len(indices), figsize=(1.9 * len(indices), 2.3), facecolor="black")
    axes = np.atleast_1d(axes)
    for ax, k in zip(axes, indices, strict=True):
        ax.imshow(_display_slice(data, axis, k), cmap="gray", vmin=0, vmax=vmax,
                  interpolation="nearest")
        if odata is not None:
            sl = _display_slice(odata, axis, k)
            ax.imshow(np.ma.masked_where(~sl, sl), cmap="autumn", alpha=0.35, interpolation="nearest")
        if cdata is not None:
            sl = _display_slice(cdata, axis, k).astype(float)
            if sl.any():
                ax.contour(sl, levels=[0.5], colors=contour_colour, linewidths=0.9)
        ax.set_axis_off()
        ax.set_title(f"y={k}", color="white", fontsize=7)
    if title:
        fig.suptitle(title, color="white", fontsize=9)
    fig.tight_layout()
    paths = {}
    if out_base is not None:
        out_base = Path(out_base)
        out_base.parent.mkdir(parents=True, exist_ok=True)
        for ext in ("png", "svg"):
            path = out_base.with_name(out_base.name + f".{ext}")
            fig.savefig(path, dpi=90, facecolor="black")
            paths[ext] = path
    plt.close(fig)
    return paths


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;max-width:1400px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1em;margin-bottom:.3em} img{max-width:100%;display:block;margin:.3em 0 1em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} .note{color:#666;font-size:.85em}
"""


def structural_outline(data: np.ndarray) -> np.ndarray:
    """The head/brain of a registered structural scan, for the contour drawn on the
    functional mean: voxels above the half-maximum level of :func:`samri_ml.qc.smoothness.
    head_level`, opened once, the largest connected piece, holes filled (a bare threshold also
    outlined noise speckles). The 66th percentile used before fell inside the brain where the
    brain fills more than a third of the template grid, and the contour cut across it (the
    sammba EPI looked as if it spilled below its structural scan)."""
    from scipy import ndimage

    from samri_ml.qc.smoothness import head_level

    data = np.asarray(data, dtype=np.float32)
    mask = ndimage.binary_opening(data > head_level(data))
    mask = largest_component(mask)
    return ndimage.binary_fill_holes(mask)


def _derivative(output_dir, raw, **entities) -> Path:
    """The derivative of ``raw`` that exists: with the source's own extension (a ``.nii``
    scan's derivatives are ``.nii``), else ``.nii.gz``, else ``.nii`` (the first if none)."""
    candidates = [derivative_path(output_dir, raw, **entities)]
    candidates += [derivative_path(output_dir, raw, extension=ext, **entities)
                   for ext in (".nii.gz", ".nii")]
    return next((c for c in candidates if c.exists()), candidates[0])


def failed_steps(log_dir, since: float | None = None) -> list[dict]:
    """The crash files (Nipype's, text) in ``log_dir`` written at or after ``since``: for each,
    ``file``, the failed ``node`` (its name from the file's ``Node:`` line) and ``cause`` (its
    last line)."""
    out = []
    for path in sorted(Path(log_dir).glob("crash-*")):
        try:
            if since is not None and path.stat().st_mtime < since:
                continue
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                     if ln.strip()]
        except OSError:
            continue
        node = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Node:")),
                    "?")
        out.append({"file": path, "node": node.split(".")[-1],
                    "cause": (lines[-1] if lines else "")[:300]})
    return out


def write_subject_reports(output_dir, sessions, *, template, template_mask, template_name,
                          masking=None, qc=True, crashes_since: float | None = None):
    """Write ``OUTPUT_DIR/sub-<label>.html`` for every subject of ``sessions``; return the paths.

    ``masking="none"``: the run predicted no masks, so a ``desc-brain_mask`` left in
    OUTPUT_DIR by an earlier masked run is not shown as this run's; likewise ``qc=False``
    (a ``--no-qc`` run) shows no QC table from an earlier run's files. ``crashes_since`` (the
    run's start): the subject's crash files written since are listed (the failed step, its
    last line and the file), so the report says what failed, not only what is missing.
    """
    output_dir = Path(output_dir)
    tpl_mask = nb.load(str(template_mask))
    subjects: dict[str, list] = {}
    for item in sessions:
        subjects.setdefault(item["subject"], []).append(item)
    written = []
    graph = output_dir / "figures" / "workflow_graph.png"
    for subject, items in subjects.items():
        figures = output_dir / f"sub-{subject}" / "figures"
        body = [f"<h1>samri_ml report: sub-{html.escape(subject)}</h1>",
                f"<p class='note'>Template: {html.escape(str(template))} (space-"
                f"{html.escape(template_name)}). Red contours: the template's brain mask.</p>"]
        qc_rows = []
        registered_anats = []
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
            anat_warped = None
            scans = ([("anat", item["anat"])] if item["anat"] else []) + [
                ("func", b) for b in item["bold"]]
            for kind, raw in scans:
                deriv = _derivative(output_dir, raw, space=template_name, desc="preproc")
                if not deriv.exists():
                    body.append(f"<p>{html.escape(Path(raw).name)}: no registered output "
                                "(failed or not run).</p>")
                    continue
                img = nb.load(str(deriv))
                name = _stem(raw)
                paths = mosaic(img, tpl_mask, out_base=figures / f"{name}_desc-overview",
                               title=f"{name} in template space")
                body.append(f"<h3>{html.escape(Path(raw).name)}: registered, under the template "
                            "contour (operator overview)</h3>")
                body.append(_img_tag(paths["png"], f"{name} overview"))
                if kind == "anat":
                    anat_warped = img
                    registered_anats.append((tag, img))
                elif anat_warped is not None:
                    anat_mask = nb.Nifti1Image(
                        structural_outline(np.asanyarray(anat_warped.dataobj)).astype(np.uint8),
                        anat_warped.affine)
                    paths = mosaic(img, anat_mask, out_base=figures / f"{name}_desc-functostruct",
                                   title="functional mean under the structural scan's contour",
                                   contour_colour="#34c759")
                    body.append("<h3>Functional mean under the registered structural scan's "
                                "contour (green)</h3>")
                    body.append(_img_tag(paths["png"], f"{name} func vs struct"))
                mask = _derivative(output_dir, raw, desc="brain", suffix="mask")
                if mask.exists() and masking != "none":
                    raw_img = nb.load(str(raw))
                    mask_img = nb.load(str(mask))
                    paths = mosaic(raw_img, mask_img, out_base=figures / f"{name}_desc-mask",
                                   title="predicted brain mask (native space)",
                                   contour_colour="#ffcc00")
                    body.append("<h3>Predicted brain mask on the native scan</h3>")
                    body.append(_img_tag(paths["png"], f"{name} mask"))
                qc_file = derivative_path(output_dir, raw, space=template_name, desc="qc",
                                          suffix="metrics", extension=".json")
                if qc and qc_file.exists():
                    qc_rows.append(json.loads(qc_file.read_text()))
        if len(registered_anats) > 1:
            body.append("<h2>Coherence across sessions</h2><p class='note'>Each session's "
                        "registered structural scan with the first session's contour.</p>")
            first = registered_anats[0][1]
            ref = (np.asanyarray(first.dataobj) > np.percentile(np.asanyarray(first.dataobj), 66))
            ref_img = nb.Nifti1Image(ref.astype(np.uint8), first.affine)
            for tag, img in registered_anats[1:]:
                paths = mosaic(img, ref_img, out_base=figures / f"{tag}_desc-coherence",
                               title=f"{tag} vs {registered_anats[0][0]}", contour_colour="#34c759")
                body.append(_img_tag(paths["png"], f"{tag} coherence"))
        if qc_rows:
            keys = ["scan", "modality", "workflow", "vcf", "scf", "scf_normalised",
                    "volume_processed", "volume_raw", "fwhm_processed", "fwhm_raw"]
            body.append("<h2>Volume and smoothness conservation</h2>")
            body.append("<p class='note'>VCF = V(processed)/V(raw); SCF = FWHM(processed)/"
                        "FWHM(raw); normalised SCF = SCF / VCF<sup>1/3</sup>. 1 is ideal.</p>")
            body.append("<table><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
            for row in qc_rows:
                cells = []
                for k in keys:
                    v = row.get(k, "")
                    cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else
                                 f"<td>{html.escape(str(v))}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            body.append("</table>")
        if graph.exists():
            body.append("<h2>Workflow graph</h2>")
            body.append(_img_tag(graph, "workflow graph"))
        page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>samri_ml: sub-"
                f"{html.escape(subject)}</title><style>{CSS}</style></head><body>"
                + "\n".join(body) + "</body></html>\n")
        written.append(atomic_write_text(page, output_dir / f"sub-{subject}.html"))
    return written


def _stem(path) -> str:
    """BIDS file name without extension: ``sub-01_ses-1_T2w.nii.gz`` -> ``sub-01_ses-1_T2w``."""
    return Path(path).name.split(".")[0]
