"""Nipype interfaces for registration QC: Volume and Smoothness Conservation, and their record.

Thin wrappers: the maths lives in :mod:`samri_ml.qc`.

>>> from samri_ml.interfaces.qc import VolumeConservation
>>> VolumeConservation().inputs.percentile
66.0
"""

from __future__ import annotations

import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    TraitedSpec,
    isdefined,
    traits,
)

from samri_ml.interfaces._base import SimpleInterface
from samri_ml.interfaces._paths import File


def _load(path, processed: bool = False):
    """An image's data and its affine in mm; a ``processed`` one that is all zeros is refused
    with a hint at the registration (it blamed the file's export)."""
    from samri_ml.io import ZERO_HINT, load_nifti
    from samri_ml.qc.volume import EMPTY_PROCESSED_HINT, affine_mm

    img = load_nifti(path, allow_4d=True,
                     zero_hint=EMPTY_PROCESSED_HINT if processed else ZERO_HINT)
    return np.asanyarray(img.dataobj), affine_mm(img)  # mm, as the record's units


def _require_varying(processed, raw, inputs) -> None:
    """Refuse a constant processed or raw image, naming its file (a constant processed image
    gave VCF 0.0, and a null FWHM with a note blaming its axes)."""
    from samri_ml.qc.smoothness import _require_varying as refuse_constant

    refuse_constant(np.asarray(processed), inputs.processed_file, processed=True)
    refuse_constant(np.asarray(raw), inputs.raw_file)


def _load_raw(inputs):
    """The raw image of a QC interface and its affine, without the dummy volumes its processing
    dropped, and how many volumes were left out
    (``raw_dummy_scans``, clamped as :func:`samri_ml.func.n_dummy_to_drop` clamps them): the
    bright volumes before the steady state lowered a run's VCF and inflated its raw FWHM (a
    run of 70 volumes, the first 10 up to 1.6 times as bright, only cut: VCF 0.977, SCF 0.785)."""
    from samri_ml.func import n_dummy_to_drop

    raw, affine = _load(inputs.raw_file)
    left_out = 0
    if raw.ndim == 4 and inputs.raw_dummy_scans:
        left_out = n_dummy_to_drop(raw.shape[3], inputs.raw_dummy_scans)
        raw = raw[..., left_out:]
    return raw, affine, left_out


def _raw_dummy_scans():
    return traits.Range(
        low=0, value=0, usedefault=True,
        desc="volumes at the start of a 4D raw series that the processing dropped (dummy "
        "scans): left out of the raw image too",
    )


class _VolumeConservationInputSpec(BaseInterfaceInputSpec):
    processed_file = File(
        exists=True, mandatory=True, desc="processed (e.g. registered) image, 3D or 4D"
    )
    raw_file = File(exists=True, mandatory=True, desc="unprocessed source image, 3D or 4D")
    # a Range: 200 was taken, and the run failed in numpy without naming the input
    # below 100: at 100 nothing is above the threshold, and the VCF was NaN without a word
    percentile = traits.Range(
        low=0.0, high=100.0, value=66.0, usedefault=True, exclude_high=True,
        desc="percentile of the raw image used as foreground threshold (0 <= p < 100)",
    )
    raw_dummy_scans = _raw_dummy_scans()
    reference_mask = File(
        exists=True,
        desc="the template's brain mask (the processed image's space, any grid): gives "
        "brain_coverage, the fraction of it the processed image covers",
    )


class _VolumeConservationOutputSpec(TraitedSpec):
    vcf = traits.Float(desc="volume conservation factor V_processed / V_raw")
    volume_processed = traits.Float(desc="processed volume above threshold (mm^3)")
    volume_raw = traits.Float(desc="raw volume above threshold (mm^3)")
    raw_dummy_scans = traits.Int(desc="volumes at the start of the raw run left out (clamped "
                                 "raw_dummy_scans; 0 for a single volume), for the QC record")
    brain_coverage = traits.Float(desc="fraction of reference_mask where the processed image "
                                  "holds data (only when reference_mask is given): below 0.9 "
                                  "a partial field of view, whose VCF is not expected to be 1")


class VolumeConservation(SimpleInterface):
    """Volume Conservation Factor of a processed image (see
    :func:`samri_ml.qc.volume.volume_conservation`)."""

    input_spec = _VolumeConservationInputSpec
    output_spec = _VolumeConservationOutputSpec

    def _run_interface(self, runtime):
        from samri_ml.qc.volume import volume_conservation

        proc, proc_aff = _load(self.inputs.processed_file, processed=True)
        raw, raw_aff, left_out = _load_raw(self.inputs)
        _require_varying(proc, raw, self.inputs)
        res = volume_conservation(proc, proc_aff, raw, raw_aff, percentile=self.inputs.percentile)
        self._results["vcf"] = res.vcf
        self._results["volume_processed"] = res.volume_processed
        self._results["volume_raw"] = res.volume_raw
        self._results["raw_dummy_scans"] = left_out
        if isdefined(self.inputs.reference_mask):
            import nibabel as nb

            from samri_ml.report import brain_coverage

            # the data read above (a registered run read again was a second decompression
            # of the largest file of the run), in mm as _load gives it; the mask's voxels
            # and its unit are brain_coverage's to read
            self._results["brain_coverage"] = brain_coverage(
                nb.Nifti1Image(proc, proc_aff, dtype=np.float32),  # (any data type in memory)
                nb.load(self.inputs.reference_mask))
        return runtime


class _SmoothnessConservationInputSpec(BaseInterfaceInputSpec):
    processed_file = File(
        exists=True, mandatory=True, desc="processed (e.g. registered) image, 3D or 4D"
    )
    raw_file = File(exists=True, mandatory=True, desc="unprocessed source image, 3D or 4D")
    mask_file = File(
        exists=True,
        desc="mask on the processed image's grid (default: automask of each image)",
    )
    vcf = traits.Float(desc="volume conservation factor, to compute the normalised SCF")
    raw_dummy_scans = _raw_dummy_scans()


class _SmoothnessConservationOutputSpec(TraitedSpec):
    scf = traits.Float(desc="smoothness conservation factor FWHM_processed / FWHM_raw")
    scf_normalised = traits.Float(desc="SCF / VCF^(1/3) (only when vcf is given)")
    fwhm_processed = traits.Float(desc="combined FWHM of the processed image (mm)")
    fwhm_raw = traits.Float(desc="combined FWHM of the raw image (mm)")
    scf_axes_left_out = traits.List(
        traits.Str, desc="world axes (L-R, P-A, I-S) left out of both FWHMs, measured in one "
        "image only or in neither (a single slice): the SCF compares the same axes")


class SmoothnessConservation(SimpleInterface):
    """Smoothness Conservation Factor of a processed image (3dFWHMx-style FWHM, see
    :func:`samri_ml.qc.smoothness.estimate_smoothness`)."""

    input_spec = _SmoothnessConservationInputSpec
    output_spec = _SmoothnessConservationOutputSpec

    def _run_interface(self, runtime):
        from nibabel.affines import voxel_sizes

        from samri_ml.errors import SamriMLError
        from samri_ml.qc.smoothness import (
            comparable_fwhm,
            estimate_smoothness,
            same_kind,
            smoothness_conservation,
        )

        proc, proc_aff = _load(self.inputs.processed_file, processed=True)
        raw, raw_aff, _ = _load_raw(self.inputs)
        _require_varying(proc, raw, self.inputs)
        proc, raw = same_kind(proc, raw)  # a run cut to one volume: its source's mean
        mask = None
        if isdefined(self.inputs.mask_file):
            from types import SimpleNamespace

            from samri_ml.io import check_same_grid
            from samri_ml.masks import mask_inside

            mask, mask_aff = _load(self.inputs.mask_file)
            mask = mask_inside(mask)  # a soft mask as brain_coverage takes one
            if mask.shape != proc.shape[:3]:
                raise SamriMLError(
                    f"{self.inputs.mask_file}: mask shape {mask.shape} differs from the processed "
                    f"image's {proc.shape[:3]}"
                )
            # the same shape is not the same grid (another scan's mask): their grids, in mm
            # (what check_same_grid reads of an image: its shape and affine)
            check_same_grid(SimpleNamespace(shape=mask.shape, affine=proc_aff),
                            SimpleNamespace(shape=mask.shape, affine=mask_aff),
                            self.inputs.processed_file, self.inputs.mask_file)
        s_p = estimate_smoothness(proc, voxel_sizes(proc_aff), mask=mask, acf=False,
                                  name=self.inputs.processed_file)
        s_r = estimate_smoothness(raw, voxel_sizes(raw_aff), acf=False, name=self.inputs.raw_file)
        vcf = self.inputs.vcf if isdefined(self.inputs.vcf) else None
        fwhm_p, fwhm_r, left_out = comparable_fwhm(s_p.fwhm_axes, proc_aff, s_r.fwhm_axes, raw_aff)
        scf, scf_n = smoothness_conservation(fwhm_p, fwhm_r, vcf)
        self._results["scf"] = scf
        if vcf is not None:
            self._results["scf_normalised"] = scf_n
        self._results["fwhm_processed"] = fwhm_p
        self._results["fwhm_raw"] = fwhm_r
        self._results["scf_axes_left_out"] = list(left_out)
        return runtime


class _WriteQCMetricsInputSpec(BaseInterfaceInputSpec):
    scan = traits.String(
        minlen=1,  # "" wrote a file named _desc-qc_metrics.json
        mandatory=True,
        desc="scan name or path (its BIDS entities name the output, e.g. sub-01_ses-1_T2w)",
    )
    modality = traits.Enum("anat", "func", mandatory=True, desc="'anat' or 'func'")
    workflow = traits.Str("", usedefault=True, desc="workflow label (e.g. generic, masked)")
    vcf = traits.Float(desc="volume conservation factor")
    scf = traits.Float(desc="smoothness conservation factor")
    scf_normalised = traits.Float(desc="SCF / VCF^(1/3)")
    volume_processed = traits.Float(desc="processed volume (mm^3)")
    volume_raw = traits.Float(desc="raw volume (mm^3)")
    fwhm_processed = traits.Float(desc="FWHM of the processed image (mm)")
    fwhm_raw = traits.Float(desc="FWHM of the raw image (mm)")
    raw_dummy_scans = traits.Int(0, usedefault=True,
                                 desc="volumes at the start of the raw run the values left out "
                                 "(VolumeConservation's output of that name)")
    scf_axes_left_out = traits.List(traits.Str, [], usedefault=True,
                                    desc="world axes the FWHMs left out (SmoothnessConservation's "
                                    "output of that name)")
    brain_coverage = traits.Float(desc="fraction of the template's brain the processed image "
                                  "covers (VolumeConservation's output of that name)")


class _WriteQCMetricsOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="<entities>_desc-qc_metrics.json")
    out_tsv = File(exists=True, desc="<entities>_desc-qctable_metrics.tsv (one row; another "
                   "desc than the JSON's, which BIDS would read as its sidecar)")


class WriteQCMetrics(SimpleInterface):
    """Write one scan's QC values as ``<entities>_desc-qc_metrics.json`` and, one row,
    ``<entities>_desc-qctable_metrics.tsv``.

    JSON keys: ``scan``, ``modality``, ``workflow``, ``vcf``, ``scf``, ``scf_normalised``,
    ``volume_processed``, ``volume_raw`` (mm^3), ``fwhm_processed``, ``fwhm_raw`` (mm); values not
    given are ``null``; ``raw_dummy_scans``: the raw run's volumes the values left out;
    ``brain_coverage``: the fraction of the template's brain the processed image covers.
    """

    input_spec = _WriteQCMetricsInputSpec
    output_spec = _WriteQCMetricsOutputSpec

    def _run_interface(self, runtime):
        from samri_ml.qc.metrics import (
            QC_TABLE_SUFFIX,
            VALUE_KEYS,
            qc_basename,
            qc_record,
            scan_name,
            write_qc_record,
        )

        values = {}
        for key in VALUE_KEYS:
            val = getattr(self.inputs, key)
            values[key] = val if isdefined(val) else None
        record = qc_record(
            values,
            scan=scan_name(self.inputs.scan),
            modality=self.inputs.modality,
            workflow=self.inputs.workflow,
            raw_dummy_scans=self.inputs.raw_dummy_scans,
            scf_axes_left_out=self.inputs.scf_axes_left_out,
            brain_coverage=(self.inputs.brain_coverage if isdefined(self.inputs.brain_coverage)
                            else None),
        )
        self._results["out_json"] = os.path.join(runtime.cwd,
                                                 qc_basename(self.inputs.scan) + ".json")
        self._results["out_tsv"] = os.path.join(
            runtime.cwd, qc_basename(self.inputs.scan, QC_TABLE_SUFFIX) + ".tsv")
        write_qc_record(record, self._results["out_json"], self._results["out_tsv"])
        return runtime
