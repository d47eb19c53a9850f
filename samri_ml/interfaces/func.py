"""Thin Nipype interfaces over :mod:`samri_ml.func` (functional-run preprocessing)."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    TraitedSpec,
    traits,
)

from samri_ml import func
from samri_ml.errors import SamriMLError
from samri_ml.interfaces._base import SimpleInterface
from samri_ml.interfaces._paths import File, InFileKeyedInputSpec


def _load(in_file):
    """The run, read as samri_ml reads every image: a file that is no NIfTI is one line
    naming it (it was nibabel's ImageFileError), its shape kept (4D of one volume too)."""
    from samri_ml.io import load_nifti

    return load_nifti(in_file, allow_4d=True, squeeze=False)


def _save_like(data, img, in_file, suffix, cwd):
    """``data`` as float32 on ``img``'s grid, named ``<in_file's name><suffix>`` in ``cwd``
    with in_file's extension, a .nii.gz for a pair's (.img/.hdr: nibabel's NIfTI cannot be
    written to such a name, and the node failed with 'Filespec ... does not look right')."""
    from samri_ml.io import image_stem

    name = os.path.basename(in_file)
    stem = image_stem(name)
    extension = name[len(stem):]
    if extension.lower() not in (".nii", ".nii.gz"):
        extension = ".nii.gz"
    out = os.path.join(cwd, stem + suffix + extension)
    hdr = img.header.copy()
    hdr.set_data_dtype(np.float32)
    nb.Nifti1Image(data.astype(np.float32), img.affine, hdr).to_filename(out)
    return out


class _DropDummyScansInputSpec(InFileKeyedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D functional run")
    dummy_scans = traits.Int(10, usedefault=True, desc="volumes to drop (clamped to leave one)")


class _DropDummyScansOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the run without its first volumes")
    n_dropped = traits.Int(desc="volumes actually dropped")


class DropDummyScans(SimpleInterface):
    """Drop the first (steady-state) volumes of a functional run."""

    input_spec = _DropDummyScansInputSpec
    output_spec = _DropDummyScansOutputSpec

    def _run_interface(self, runtime):
        img = _load(self.inputs.in_file)
        data, n = func.drop_dummy_volumes(np.asanyarray(img.dataobj), self.inputs.dummy_scans)
        self._results["out_file"] = _save_like(data, img, self.inputs.in_file, "_nodummy", runtime.cwd)
        self._results["n_dropped"] = n
        return runtime


class _SliceTimingInputSpec(InFileKeyedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D functional run")
    slice_timing = traits.List(traits.Float, mandatory=True, desc="acquisition time of each slice (s)")
    # above 0: 0 failed with ZeroDivisionError in the node
    repetition_time = traits.Range(low=0.0, exclude_low=True, mandatory=True,
                                   desc="repetition time (s), above 0")
    slice_encoding_direction = traits.Enum(
        "k", "k-", "i", "i-", "j", "j-", usedefault=True, desc="BIDS SliceEncodingDirection"
    )


class _SliceTimingOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="slice-timing corrected run")


class SliceTimeCorrection(SimpleInterface):
    """Slice timing correction by Fourier interpolation (see :func:`samri_ml.func.slice_time_correct`)."""

    input_spec = _SliceTimingInputSpec
    output_spec = _SliceTimingOutputSpec

    def _run_interface(self, runtime):
        img = _load(self.inputs.in_file)
        direction = self.inputs.slice_encoding_direction
        axis = "ijk".index(direction[0])
        times = list(self.inputs.slice_timing)
        if direction.endswith("-"):
            times = times[::-1]
        try:
            data = func.slice_time_correct(
                np.asanyarray(img.dataobj), times, self.inputs.repetition_time, slice_axis=axis
            )
        except ValueError as err:  # a 3D image, or a slice count the run does not have
            raise SamriMLError(f"{self.inputs.in_file}: {err}") from err
        self._results["out_file"] = _save_like(data, img, self.inputs.in_file, "_stc", runtime.cwd)
        return runtime


class _TemporalMeanInputSpec(InFileKeyedInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D or 4D image")


class _TemporalMeanOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="3D temporal mean")


class TemporalMean(SimpleInterface):
    """The temporal mean of a 4D run (the reference image SAMRI registers)."""

    input_spec = _TemporalMeanInputSpec
    output_spec = _TemporalMeanOutputSpec

    def _run_interface(self, runtime):
        img = _load(self.inputs.in_file)
        data = func.temporal_mean(np.asanyarray(img.dataobj, dtype=np.float32))
        self._results["out_file"] = _save_like(data, img, self.inputs.in_file, "_mean", runtime.cwd)
        return runtime
