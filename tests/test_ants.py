"""The antspyx-backed ANTs executables behave like a system ANTs for Nipype."""

import subprocess

import nibabel as nb
import numpy as np
from nipype.interfaces.ants import ApplyTransforms, N4BiasFieldCorrection, Registration
from nipype.interfaces.ants.base import Info

from samri_ml.ants import PROGRAMS, ensure_ants_on_path


def test_programs_answer_version():
    for prog in PROGRAMS:
        out = subprocess.run([prog, "--version"], capture_output=True, text=True, check=True)
        assert "ANTs Version" in out.stdout


def test_nipype_sees_a_version():
    assert Info.version() is not None
    for iface in (Registration(), ApplyTransforms(), N4BiasFieldCorrection()):
        assert iface.version and iface.version[0].isdigit()


def test_ensure_is_idempotent():
    assert ensure_ants_on_path() == ensure_ants_on_path()


def test_real_registration_recovers_a_shift(tmp_path):
    """antsRegistration through Nipype finds a known 1 mm translation of a blob."""
    grid = np.indices((40, 40, 40)).astype(float)
    blob = np.exp(-(((grid - 20) ** 2).sum(0)) / (2 * 5.0**2))
    blob += 0.5 * np.exp(-(((grid - np.array([14, 20, 24])[:, None, None, None]) ** 2).sum(0)) / 8)
    aff = np.diag([0.5, 0.5, 0.5, 1])
    moved = np.roll(blob, 2, axis=0)  # 2 voxels = 1 mm along x
    nb.Nifti1Image(blob.astype(np.float32), aff).to_filename(tmp_path / "fixed.nii.gz")
    nb.Nifti1Image(moved.astype(np.float32), aff).to_filename(tmp_path / "moving.nii.gz")
    reg = Registration(
        fixed_image=str(tmp_path / "fixed.nii.gz"), moving_image=str(tmp_path / "moving.nii.gz"),
        transforms=["Translation"], transform_parameters=[(0.5,)], number_of_iterations=[[100]],
        metric=["MeanSquares"], metric_weight=[1], radius_or_number_of_bins=[32],
        sampling_strategy=[None], sampling_percentage=[1.0], convergence_threshold=[1e-8],
        convergence_window_size=[10], smoothing_sigmas=[[0]], shrink_factors=[[1]],
        output_transform_prefix=str(tmp_path / "x_"), write_composite_transform=True,
        output_warped_image=str(tmp_path / "warped.nii.gz"))
    reg.terminal_output = "none"
    res = reg.run(cwd=str(tmp_path))
    warped = nb.load(res.outputs.warped_image).get_fdata()
    before = np.abs(moved - blob).mean()
    after = np.abs(warped - blob).mean()
    assert after < 0.1 * before
