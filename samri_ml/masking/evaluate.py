"""Evaluating a masking model on real scans: Dice per scan and per source, correlation tables.

For every scan with a reference mask ``R`` (manual, template or registration-derived) the predicted
mask ``P`` is scored with

* Dice ``D = 2 |P & R| / (|P| + |R|)`` (0 where R is empty: nothing to find);
* the seed's correlation table (its Fig. 2): voxel-wise Pearson correlations
  ``r(a, b) = cov(a, b) / (sd(a) sd(b))`` between the image ``I`` and ``R``, ``I`` and ``P``, and
  ``R`` and ``P`` (masks as 0/1); a good mask correlates with the image as much as the reference does;
* the volumes ``|P|`` and ``|R|`` in voxels and their ratio;
* the prediction time (model loaded, TensorFlow warm).
"""

from __future__ import annotations

import time

import numpy as np

from samri_ml.masking.preprocess import ALL_VIEWS


def pearson(a, b) -> float:
    """Pearson correlation of two arrays (flattened); NaN when one is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def evaluate_scan(scan, model, views=ALL_VIEWS, flip: bool | None = None, figure=None) -> dict:
    """Scores of one :class:`samri_ml.masking.data.Scan` (RAS arrays) with ``model``; with
    ``figure`` (a ``.png`` path) the predicted and the reference mask are also drawn on the
    scan there (:func:`samri_ml.report.mask_figure`; not timed)."""
    import warnings

    import nibabel as nb

    from samri_ml.errors import SamriMLError, SamriMLNote
    from samri_ml.masking.predict import predict_mask
    from samri_ml.metrics import dice

    img = nb.Nifti1Image(scan.image.astype(np.float32), np.diag([*scan.zooms, 1.0]))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pred = np.asarray(predict_mask(img, model, views=views, flip=flip).dataobj) > 0
            error = ""
        except SamriMLError as err:
            pred = np.zeros(scan.mask.shape, bool)
            error = str(err)
    seconds = time.perf_counter() - t0
    for note in caught:  # said again with the scan's name: "the mask fills 76 % ..." of which?
        message = f"{scan.name}: {note.message}" if issubclass(note.category, SamriMLNote) \
            else note.message
        warnings.warn_explicit(message, note.category, note.filename, note.lineno)
    ref = scan.mask > 0
    score = dice(pred, ref)
    if not ref.any():
        # nothing to overlap: 0 whatever the prediction (two empty masks, a prediction that
        # failed, made 1.0); a lab's empty reference had stopped the whole evaluation
        score = 0.0
        error = "; ".join(filter(None, ["its reference mask is empty (no voxel above 0.5), "
                                        "scored Dice 0; hint: give its brain mask", error]))
    if figure is not None:
        from samri_ml.masking.data import scan_affine
        from samri_ml.report import mask_figure

        # in the scan's own positions (mm): from 0 the panels' "y = ... mm" were not those of
        # samri_ml-mask --png of the same file (sammba/anat: 0.3 to 15.6 against -8.2 to 7.1)
        affine = scan_affine(scan)

        def as_image(data):
            return nb.Nifti1Image(data.astype(np.uint8), affine)

        mask_figure(nb.Nifti1Image(img.dataobj, affine), as_image(pred), figure,
                    reference=as_image(ref),
                    # "Dice 0.847 with the anat mask, rigidly registered reference"
                    title=f"{scan.name}: Dice {score:.3f} against the reference mask "
                    f"({scan.label_origin})")
    return {
        "scan": scan.name,
        "source": scan.source,
        "reference": scan.label_origin,
        "dice": score,
        "r_image_reference": pearson(scan.image, ref),
        "r_image_predicted": pearson(scan.image, pred),
        "r_reference_predicted": pearson(ref, pred),
        "volume_reference": int(ref.sum()),
        "volume_predicted": int(pred.sum()),
        "seconds": seconds,
        "error": error,
    }


def evaluate(scans, model, views=ALL_VIEWS, flip: bool | None = None, figures=None) -> list[dict]:
    """:func:`evaluate_scan` for every scan (the first call also warms TensorFlow up); with
    ``figures`` (a folder) a picture of each, named after the scan (:func:`figure_name`)."""
    from pathlib import Path

    from samri_ml.masking.predict import predict_probabilities

    predict_probabilities(model, np.zeros((4, 64, 64, 1), np.float32))  # warm-up, not timed
    names = figure_names([s.name for s in scans])
    return [evaluate_scan(s, model, views, flip,
                          None if figures is None else Path(figures) / name)
            for s, name in zip(scans, names, strict=True)]


def figure_name(scan_name: str) -> str:
    """The file name of a scan's picture: its name with ``/`` as ``_``, without an image
    extension: ``dama/tg4510_tp3_1`` -> ``dama_tg4510_tp3_1.png``,
    ``sub-01/anat/sub-01_T2w.nii.gz`` -> ``sub-01_anat_sub-01_T2w.png`` (it was
    ``..._T2w.nii.gz.png``)."""
    from samri_ml.io import image_stem

    return image_stem(scan_name, (".nii.gz", ".nii")).replace("/", "_") + ".png"


def figure_names(scan_names) -> list[str]:
    """:func:`figure_name` of each scan, in order, made unique: a name a scan before it took
    (``a/b_c`` and ``a_b/c``, or names that differ in case only, one file on macOS) gets
    ``_2``, ``_3``... (the second picture replaced the first)."""
    taken: set[str] = set()
    out = []
    for scan_name in scan_names:
        stem = figure_name(scan_name)[: -len(".png")]
        name, n = stem, 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}_{n}"
        taken.add(name.casefold())
        out.append(f"{name}.png")
    return out


#: reference kinds that the issue's target counts ("manual or template masks")
TRUSTED_REFERENCES = ("manual", "template")


def by_source(rows, held_out=(), training_known: bool = True) -> list[dict]:
    """Median Dice (and count, min) per source, over the held-out (unseen) sources, and over
    the unseen scans whose reference is a manual or template mask (:data:`TRUSTED_REFERENCES`:
    not an algorithmic, registered or phantom one). ``seen_in_training`` is None for a source
    not in ``held_out`` when the model's training data is not known (``training_known``)."""
    out = []
    sources = sorted({r["source"] for r in rows})
    groups = [(s, [r for r in rows if r["source"] == s]) for s in sources]
    unseen = [r for r in rows if r["source"] in held_out]
    if unseen:
        # named after the held-out sources actually scored (``--sources`` may leave some out)
        names = sorted({r["source"] for r in unseen})
        groups.append(("unseen sources (" + ", ".join(names) + ")", unseen))
        trusted = [r for r in unseen if r["reference"] in TRUSTED_REFERENCES]
        if trusted and len(trusted) < len(unseen):
            groups.append(("unseen, manual or template masks only", trusted))
    for name, rs in groups:
        d = np.array([r["dice"] for r in rs])
        out.append({
            "source": name, "n": len(rs), "median_dice": float(np.median(d)),
            "min_dice": float(d.min()),
            "seen_in_training": False if name in held_out or name.startswith("unseen")
            else (True if training_known else None),
            "median_seconds": float(np.median([r["seconds"] for r in rs])),
        })  # fmt: skip
    return out


def rst_table(header, rows) -> str:
    """A reStructuredText simple table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=False)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in cells[1:]]
    return "\n".join(lines + [rule])


def report(rows, held_out=(), training_known: bool = True) -> str:
    """Per-scan table (Dice, correlations, volumes, seconds) and per-source medians, as RST."""
    per_scan = rst_table(
        ["scan", "reference mask", "Dice", "r(I,R)", "r(I,P)", "r(R,P)", "vol P/R", "s"],
        [
            [r["scan"], r["reference"], f"{r['dice']:.3f}", f"{r['r_image_reference']:.3f}",
             f"{r['r_image_predicted']:.3f}", f"{r['r_reference_predicted']:.3f}",
             f"{r['volume_predicted'] / r['volume_reference']:.3f}" if r["volume_reference"]
             else "n/a", f"{r['seconds']:.2f}"]  # no ratio to an empty reference
            for r in rows
        ],
    )  # fmt: skip
    summary = rst_table(
        ["source", "scans", "seen in training", "median Dice", "min Dice", "median s"],
        [
            [s["source"], s["n"], {True: "yes", False: "no", None: "unknown"}[
                s["seen_in_training"]],
             f"{s['median_dice']:.3f}", f"{s['min_dice']:.3f}", f"{s['median_seconds']:.2f}"]
            for s in by_source(rows, held_out, training_known)
        ],
    )  # fmt: skip
    return per_scan + "\n\n" + summary + "\n"
