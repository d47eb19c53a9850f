"""Per-scan QC records: computing them from images, naming and writing them (JSON + one-row TSV).

A scan's record is ``<entities>_desc-qc_metrics.json`` (:data:`QC_SUFFIX`), its one-row table
``<entities>_desc-qctable_metrics.tsv`` (:data:`QC_TABLE_SUFFIX`): under one name, BIDS tools
(pybids, the validator's inheritance rule) read the JSON as the TSV's sidecar, its data
dictionary, and gave the TSV ``vcf``, ``scf``... as metadata.

The record is the contract shared by ``samri_ml-qc scan``, the Nipype interfaces and
``samri_ml-qc compare``::

    {"scan": ..., "modality": "anat"|"func", "workflow": ...,
     "vcf": ..., "scf": ..., "scf_normalised": ...,
     "volume_processed": mm^3, "volume_raw": mm^3, "fwhm_processed": mm, "fwhm_raw": mm,
     "raw_dummy_scans": volumes left out at the start of a raw run,
     "scf_axes_left_out": world axes the FWHMs and SCF left out, e.g. ["I-S"],
     "brain_coverage": fraction of the template's brain the processed image covers}

``raw_dummy_scans`` says how a record was computed: records written before the raw run's dummy
scans were left out (samri_ml 0.1.0 as first released) have no such key, and their functional
VCF and SCF compared the registered run with the whole raw run. ``scf_axes_left_out`` names
the world axes (``L-R``, ``P-A``, ``I-S``) without a FWHM in one of the two images (a single
slice), left out of both FWHMs so that the SCF compares the same axes; a record without it
predates it, and its FWHMs may have averaged 3 axes on one side and 2 on the other.
``brain_coverage`` is null where no template mask was given (and absent from older records);
below :data:`PARTIAL_FOV` the scan is a partial field of view, whose VCF is not expected to be 1.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes

from samri_ml.qc.smoothness import (
    _require_finite,
    _require_varying,
    comparable_fwhm,
    estimate_smoothness,
    same_kind,
    smoothness_conservation,
)
from samri_ml.qc.volume import volume_conservation

#: The numeric keys of a QC record, in output order.
VALUE_KEYS = (
    "vcf",
    "scf",
    "scf_normalised",
    "volume_processed",
    "volume_raw",
    "fwhm_processed",
    "fwhm_raw",
)
#: The descriptive keys of a QC record.
LABEL_KEYS = ("scan", "modality", "workflow")
#: The key saying how many volumes at the start of the raw run the values left out (a run's
#: dummy scans, as the processing dropped them; 0 for a single volume). A record without it
#: predates it, and a functional one was then computed against the whole raw run.
METHOD_KEY = "raw_dummy_scans"
#: The key naming the world axes the FWHMs (and so the SCF) left out, measured in one image
#: only or in neither (:func:`~samri_ml.qc.smoothness.comparable_fwhm`); empty for none.
AXES_KEY = "scf_axes_left_out"
#: The key of the fraction of the template's brain mask where the processed image holds data
#: (:func:`samri_ml.report.brain_coverage`); null where no template mask was given.
COVERAGE_KEY = "brain_coverage"
#: a scan covering less of the template's brain than this is a partial field of view: its raw
#: volume and its registered copy (cut by the template's grid) hold different parts of the head
PARTIAL_FOV = 0.9


#: a structural scan covering less of the template's brain than this probably failed to
#: register: a head scan holds the whole brain; one cut at the olfactory bulb and the
#: cerebellum covers most of it (the emory T2 template, well registered to DSURQE: 0.80; the
#: nirodents head registered off it: 0.40)
STRUCTURAL_MIN_COVERAGE = 0.6


def structural_off_template(record: dict) -> float | None:
    """The template brain coverage of a structural scan's record (``brain_coverage``, or the
    report's own ``_coverage``) where it is below :data:`STRUCTURAL_MIN_COVERAGE`, else None.
    A functional scan of a few slices covers part of the brain; a structural scan holds the
    whole brain or most of it as a rule, so its registration probably failed (a head
    registered off the template, 40 % of its brain covered, was called a partial field of
    view)."""
    cov = record.get("_coverage", record.get(COVERAGE_KEY))
    if record.get("modality") != "anat" or isinstance(cov, bool) \
            or not isinstance(cov, (int, float)) or not cov < STRUCTURAL_MIN_COVERAGE:
        return None
    return float(cov)


def off_template_text(coverage: float) -> str:
    """Why a structural scan's low coverage (:func:`structural_off_template`) points to a
    failed registration, in one phrase."""
    return (f"the registered structural scan covers only {coverage:.0%} of the template's "
            "brain: the registration probably failed, unless the scan is a slab of part of "
            "the brain")


#: Suffix (and extension-less) of per-scan QC records (JSON).
QC_SUFFIX = "desc-qc_metrics"
#: Suffix (and extension-less) of a QC record's one-row table (TSV): another ``desc`` than the
#: record's, which BIDS would otherwise take for the table's sidecar
QC_TABLE_SUFFIX = "desc-qctable_metrics"
#: The columns of a record's one-row table, in order (:func:`write_qc_record`)
TABLE_COLUMNS = (*LABEL_KEYS, *VALUE_KEYS, METHOD_KEY, AXES_KEY, COVERAGE_KEY)
#: The BIDS data dictionary of the QC columns (each one's ``Description``, ``Units``,
#: ``Levels``): ``samri_ml-register`` writes those of :data:`TABLE_COLUMNS` as
#: :data:`QC_TABLE_DICTIONARY`, ``samri_ml-qc compare`` those of its ``qc_metrics.tsv``
COLUMN_DESCRIPTIONS = {
    "scan": {"Description": "The raw scan the values are of: its file name without "
             "extension"},
    "modality": {"Description": "Kind of scan",
                 "Levels": {"anat": "structural scan (one volume)",
                            "func": "functional run (a time series)"}},
    "workflow": {"Description": "Label of the workflow that processed the scan "
                 "(samri_ml-register: generic, or generic_masked with --masking unet)"},
    "vcf": {"Description": "Volume Conservation Factor: volume_processed / volume_raw (1: the "
            "registration kept the volume; n/a: not measured)"},
    "scf": {"Description": "Smoothness Conservation Factor: fwhm_processed / fwhm_raw (1: the "
            "registration added no smoothness; n/a: not measured)"},
    "scf_normalised": {"Description": "SCF / VCF^(1/3): the SCF without the share of a "
                       "change of scale (n/a: not measured)"},
    "volume_processed": {"Description": "Volume of the processed image above the raw "
                         "image's 66th intensity percentile (of a run: its temporal mean)",
                         "Units": "mm^3"},
    "volume_raw": {"Description": "Volume of the raw image above its 66th intensity "
                   "percentile (of a run: its temporal mean, without raw_dummy_scans)",
                   "Units": "mm^3"},
    "fwhm_processed": {"Description": "Smoothness of the processed image: the geometric mean "
                       "of its FWHMs along the world axes measured in both images, inside "
                       "its automask (of a run: the geometric mean over its volumes)",
                       "Units": "mm"},
    "fwhm_raw": {"Description": "Smoothness of the raw image, as fwhm_processed (of a run: "
                 "without raw_dummy_scans)", "Units": "mm"},
    METHOD_KEY: {"Description": "Number of volumes at the start of the raw run left out of "
                 "volume_raw and fwhm_raw (the dummy scans the processing dropped; 0 for a "
                 "structural scan; n/a: a record of samri_ml 0.1.0, which took the whole run)"},
    AXES_KEY: {"Description": "World axes (L-R, P-A, I-S; comma-separated) left out of both "
               "FWHMs, as one of the two images has no smoothness along them (a single "
               "slice); none: no axis left out"},
    COVERAGE_KEY: {"Description": "Fraction (0 to 1) of the template's brain mask the "
                   f"processed image covers; below {PARTIAL_FOV} a partial field of view, "
                   "whose VCF is not expected to be 1 (n/a: no template mask given)"},
}
#: The data dictionary of every scan's QC table: at the top of a derivatives folder the BIDS
#: inheritance principle applies it to each ``*_desc-qctable_metrics.tsv`` below (same
#: suffix, no entity the table lacks) and to nothing else
QC_TABLE_DICTIONARY = QC_TABLE_SUFFIX + ".json"

_ENTITY = re.compile(r"^[A-Za-z0-9]+-[A-Za-z0-9.+]+$")


def scan_name(path: str | Path) -> str:
    """File name of an image without folder and ``.nii``/``.nii.gz`` extension."""
    name = Path(str(path)).name
    for ext in (".nii.gz", ".nii", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def qc_basename(scan: str, suffix: str = QC_SUFFIX) -> str:
    """Derivative file stem for a scan: its BIDS entities, then ``suffix`` (``desc-qc``,
    suffix ``metrics``; :data:`QC_TABLE_SUFFIX` for the table).

    >>> qc_basename("sub-01_ses-1_task-rest_acq-EPI_bold.nii.gz")
    'sub-01_ses-1_task-rest_acq-EPI_desc-qc_metrics'
    >>> qc_basename("sub-01_ses-1_desc-brain_T2w")
    'sub-01_ses-1_desc-qc_metrics'

    The suffix (``bold``, ``T2w``) and any ``desc-`` entity are dropped; a name without BIDS
    entities is kept whole.
    """
    parts = scan_name(scan).split("_")
    entities = [p for p in parts if _ENTITY.match(p) and not p.startswith("desc-")]
    if not entities:
        entities = [scan_name(scan)]
    return "_".join(entities + [suffix])


def qc_relative_path(scan: str, modality: str, ext: str = ".json") -> Path:
    """Where a scan's QC file goes inside a derivatives folder (the record, or its table
    for ``ext=".tsv"``).

    >>> str(qc_relative_path("sub-01_ses-1_task-rest_bold.nii.gz", "func"))
    'sub-01/ses-1/func/sub-01_ses-1_task-rest_desc-qc_metrics.json'
    >>> str(qc_relative_path("sub-02_T2w", "anat", ".tsv"))
    'sub-02/anat/sub-02_desc-qctable_metrics.tsv'
    """
    parts = scan_name(scan).split("_")
    folders = [p for p in parts if p.startswith(("sub-", "ses-")) and _ENTITY.match(p)][:2]
    suffix = QC_TABLE_SUFFIX if ext == ".tsv" else QC_SUFFIX
    return Path(*folders, modality, qc_basename(scan, suffix) + ext)


def _clean(value):
    """JSON-safe float (NaN/Inf -> None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def qc_record(values: dict, *, scan: str = "", modality: str = "", workflow: str = "",
              raw_dummy_scans: int = 0, scf_axes_left_out=(),
              brain_coverage: float | None = None) -> dict:
    """Assemble a QC record with exactly the keys of :data:`LABEL_KEYS` + :data:`VALUE_KEYS`
    + :data:`METHOD_KEY` (the volumes at the start of the raw run left out of the values)
    + :data:`AXES_KEY` (the world axes the FWHMs left out, a list)
    + :data:`COVERAGE_KEY` (None where not measured).

    Missing or non-finite values become ``None`` (``null`` in JSON).
    """
    rec = {"scan": scan, "modality": modality, "workflow": workflow}
    for key in VALUE_KEYS:
        rec[key] = _clean(values.get(key))
    rec[METHOD_KEY] = int(raw_dummy_scans)
    rec[AXES_KEY] = list(axes_list(scf_axes_left_out))
    rec[COVERAGE_KEY] = _clean(brain_coverage)
    return rec


def axes_list(value) -> tuple[str, ...]:
    """World axis names from a list or a comma-separated string (a Nipype trait's, a TSV
    cell's); empty for none."""
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value or () if str(v).strip())


def write_qc_record(record: dict, out_json: str | Path, out_tsv: str | Path | None = None):
    """Write a QC record as JSON (indented) and, optionally, as a one-row TSV (``n/a`` for None;
    named with :data:`QC_TABLE_SUFFIX`, not the record's stem: see the module's docstring)."""
    out_json = Path(out_json)
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    if out_tsv is not None:
        keys = list(TABLE_COLUMNS)

        def cell(key):
            value = record.get(key)
            if key == AXES_KEY:  # a list: comma-separated, "none" for none left out
                return ",".join(axes_list(value)) or ("n/a" if value is None else "none")
            return "n/a" if value is None else value

        with open(out_tsv, "w", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
            writer.writerow(keys)
            writer.writerow([cell(k) for k in keys])


def data_dictionary(columns) -> dict:
    """The BIDS data dictionary of a table's ``columns`` (:data:`COLUMN_DESCRIPTIONS`), in
    their order."""
    return {key: dict(COLUMN_DESCRIPTIONS[key]) for key in columns}


def write_qc_table_dictionary(out_dir: str | Path) -> Path:
    """Write :data:`QC_TABLE_DICTIONARY`, the description of the columns of every scan's QC
    table (:data:`TABLE_COLUMNS`), into a derivatives folder; one that holds it already is
    left as it is, modification time included."""
    from samri_ml.bids import atomic_write_text

    text = json.dumps(data_dictionary(TABLE_COLUMNS), indent=2) + "\n"
    return atomic_write_text(text, Path(out_dir) / QC_TABLE_DICTIONARY, skip_identical=True)


def modality_of(data_ndim: int, n_volumes: int = 1) -> str:
    """'func' for a time series (4D with more than one volume), else 'anat'."""
    return "func" if data_ndim == 4 and n_volumes > 1 else "anat"


def qc_from_arrays(
    processed: np.ndarray,
    processed_affine: np.ndarray,
    raw: np.ndarray,
    raw_affine: np.ndarray,
    *,
    processed_mask: np.ndarray | None = None,
    raw_mask: np.ndarray | None = None,
    acf: bool = False,
    names: tuple[str, str] = ("processed image", "raw image"),
) -> dict:
    """VCF, SCF and normalised SCF of a processed image against its source (see
    :func:`~samri_ml.qc.volume.volume_conservation` and
    :func:`~samri_ml.qc.smoothness.smoothness_conservation`).

    .. math::

        \\mathrm{VCF} = V_{proc}/V_{raw},\\quad \\mathrm{SCF} = S_{proc}/S_{raw},\\quad
        \\mathrm{SCF}_{norm} = \\mathrm{SCF}/\\mathrm{VCF}^{1/3}

    Returns a dict with the keys of :data:`VALUE_KEYS` and :data:`AXES_KEY`: the FWHMs are
    over the world axes measured in both images (:func:`~samri_ml.qc.smoothness.comparable_fwhm`),
    and those left out are named.

    Where one image is a time series and the other a single volume, the SCF compares the
    series' temporal mean with the volume (:func:`~samri_ml.qc.smoothness.same_kind`).

    ``names`` (e.g. the two paths) begin the errors about either image (a
    :class:`~samri_ml.errors.SamriMLValueError`, a ``ValueError`` too).
    """
    # named here: volume_conservation's own checks say "raw image", not which
    for image, name in zip((processed, raw), names, strict=True):
        _require_finite(np.asarray(image), name)
    for image, name, is_processed in zip((processed, raw), names, (True, False), strict=True):
        _require_varying(np.asarray(image), name, processed=is_processed)
    vol = volume_conservation(processed, processed_affine, raw, raw_affine)
    zooms_p, zooms_r = voxel_sizes(processed_affine), voxel_sizes(raw_affine)
    processed, raw = same_kind(processed, raw)
    s_p = estimate_smoothness(processed, zooms_p, mask=processed_mask, acf=acf, name=names[0])
    s_r = estimate_smoothness(raw, zooms_r, mask=raw_mask, acf=acf, name=names[1])
    fwhm_p, fwhm_r, left_out = comparable_fwhm(s_p.fwhm_axes, processed_affine,
                                               s_r.fwhm_axes, raw_affine)
    scf, scf_n = smoothness_conservation(fwhm_p, fwhm_r, vol.vcf)
    return {
        "vcf": vol.vcf,
        "scf": scf,
        "scf_normalised": scf_n,
        "volume_processed": vol.volume_processed,
        "volume_raw": vol.volume_raw,
        "fwhm_processed": fwhm_p,
        "fwhm_raw": fwhm_r,
        AXES_KEY: list(left_out),
    }
