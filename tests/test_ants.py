"""The antspyx-backed ANTs executables behave like a system ANTs for Nipype."""

import os
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from nipype.interfaces.ants import ApplyTransforms, N4BiasFieldCorrection, Registration
from nipype.interfaces.ants.base import Info

from samri_ml.ants import PROGRAMS, ensure_ants_on_path, scripts_dir


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


def _system_ants(folder, body):
    """A system ANTs stand-in (none is installed here): the three programs as shell scripts."""
    folder.mkdir()
    for prog in PROGRAMS:
        (folder / prog).write_text(f"#!/bin/sh\n{body}\n")
        (folder / prog).chmod(0o755)
    return folder


def test_a_system_ants_behind_our_scripts_on_path_is_used(tmp_path, monkeypatch):
    """README: "a system ANTs on PATH is used instead when present". With the virtual
    environment activated (its bin/, our scripts, first on PATH) ours were used, and
    samri_ml-register said "antspyx ANTs"; now our scripts hand over to the system's."""
    system = _system_ants(tmp_path / "ants", 'echo "ANTs Version: 9.9.9 $(basename $0) $*"')
    monkeypatch.setenv("PATH", os.pathsep.join([str(scripts_dir()), str(system), "/usr/bin",
                                                "/bin"]))
    assert ensure_ants_on_path() == f"system ANTs ({system})"
    for prog in PROGRAMS:
        out = subprocess.run([prog, "--version"], capture_output=True, text=True, timeout=60)
        assert out.stdout == f"ANTs Version: 9.9.9 {prog} --version\n", out


def test_a_system_wrapper_that_calls_ants_from_path_does_not_loop(tmp_path, monkeypatch):
    """A system "antsRegistration" that is itself a wrapper (a module system's shim) calling
    antsRegistration from PATH reaches ours again: ours then run antspyx's ANTs."""
    system = _system_ants(tmp_path / "ants", 'echo shim; exec $(basename $0) "$@"')
    monkeypatch.setenv("PATH", os.pathsep.join([str(scripts_dir()), str(system), "/usr/bin",
                                                "/bin"]))
    out = subprocess.run(["antsRegistration", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("shim\nANTs Version: v"), out


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


def test_warped_mask_dice_names_a_missing_file(tmp_path):
    """``warped_mask_dice('sub-01_mask.nii.gz', tpl_mask, xfm)`` with a path that is not there
    failed with Nipype's multi-line ``TraitError: The 'input_image' trait of an
    ApplyTransformsInputSpec instance must be ...``; now one line names the argument. A real
    antsApplyTransforms run through the identity keeps the mask (Dice 1; ``"identity"`` was
    made a path in the current folder)."""
    from samri_ml.errors import SamriMLError
    from samri_ml.evaluation import warped_mask_dice

    mask = np.zeros((12, 12, 12), np.uint8)
    mask[3:9, 4:8, 2:10] = 1
    nb.save(nb.Nifti1Image(mask, np.diag([0.2, 0.2, 0.2, 1])), str(tmp_path / "mask.nii.gz"))
    assert warped_mask_dice(tmp_path / "mask.nii.gz", tmp_path / "mask.nii.gz",
                            ["identity"]) == 1.0
    for args, what in [((tmp_path / "nope.nii.gz", tmp_path / "mask.nii.gz", "identity"),
                        "mask_file"),
                       ((tmp_path / "mask.nii.gz", tmp_path / "mask.nii.gz",
                         [str(tmp_path / "xfm.h5")]), r"transforms\[0\]")]:
        with pytest.raises(SamriMLError, match=rf"^{what} '.*': no such file; hint: check"):
            warped_mask_dice(*args)


def test_warped_mask_dice_takes_a_soft_template_mask_above_half(tmp_path):
    """A soft template mask (probabilities, a halo of 0.3 round the brain): its voxels above
    0.5 are the brain, as the registration and the QC take them; warped_mask_dice took them
    above 0, the halo counted (Dice 0.59 of a perfect registration)."""
    from samri_ml.evaluation import warped_mask_dice

    soft = np.zeros((12, 12, 12), np.float32)
    soft[2:10, 2:10, 2:10] = 0.3
    soft[3:9, 3:9, 3:9] = 0.9
    affine = np.diag([0.2, 0.2, 0.2, 1])
    nb.save(nb.Nifti1Image(soft, affine), str(tmp_path / "template_mask.nii.gz"))
    nb.save(nb.Nifti1Image((soft > 0.5).astype(np.uint8), affine),
            str(tmp_path / "subject_mask.nii.gz"))
    assert warped_mask_dice(tmp_path / "subject_mask.nii.gz", tmp_path / "template_mask.nii.gz",
                            "identity") == 1.0


def test_run_program_names_what_it_runs(tmp_path):
    """``run_program('antsApplyTransform', [...])`` (a typo) failed with antspyx's
    ``AttributeError: module 'ants.lib' has no attribute 'antsApplyTransform'``."""
    from samri_ml.ants import run_program
    from samri_ml.errors import SamriMLError

    with pytest.raises(SamriMLError, match=r"^antsApplyTransform: not an ANTs program samri_ml "
                                           r"runs; hint: one of antsRegistration, "):
        run_program("antsApplyTransform", ["--help"])
    assert run_program("antsRegistration", ["--version"]) == 0


@pytest.mark.parametrize("interface, inputs, split", [
    # N4 quotes its input, but names its output after it: '--output m a_corrected.nii.gz'
    ("N4BiasFieldCorrection", {"input_image": "d/m a.nii.gz"}, "input_image"),
    ("N4BiasFieldCorrection", {"input_image": "a b/m.nii.gz"}, None),
    ("ApplyTransforms", {"input_image": "a b/m.nii.gz", "reference_image": "a b/m.nii.gz",
                         "transforms": ["a b/t.h5"]}, "transforms"),
    ("Registration", {"fixed_image": ["a b/m.nii.gz"], "moving_image": ["d/m.nii.gz"],
                      "metric": ["MI"], "metric_weight": [1], "radius_or_number_of_bins": [32],
                      "transforms": ["Rigid"], "transform_parameters": [(0.1,)],
                      "number_of_iterations": [[10]], "smoothing_sigmas": [[0]],
                      "shrink_factors": [[1]]}, "fixed_image"),
])
def test_a_path_the_command_line_would_split_is_found(tmp_path, interface, inputs, split):
    """The paths with a space that Nipype puts on an ANTs command line unquoted (found on the
    real command lines of samri_ml's ANTs interfaces), and only those: a scan in a folder with
    a space, which Nipype quotes, runs."""
    from samri_ml.ants import unquoted_spaced_paths
    from samri_ml.interfaces import ants as ants_interfaces

    def real(value):
        if isinstance(value, list):
            return [real(v) for v in value]
        if isinstance(value, str) and "/" in value:
            path = tmp_path / value
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            return str(path)
        return value

    iface = getattr(ants_interfaces, interface)(**{k: real(v) for k, v in inputs.items()})
    found = unquoted_spaced_paths(iface.cmdline, ants_interfaces._path_inputs(iface.inputs))
    assert [name for name, _ in found][:1] == ([split] if split else [])


def test_a_program_that_fails_without_a_word_is_named_with_its_status(tmp_path, monkeypatch):
    """N4 with a shrink factor larger than the image exits 1 and prints nothing; Nipype checks
    the status after listing the outputs, so the step was reported as "FileNotFoundError: No
    such file or directory '..._corrected.nii.gz'". Now the program and its status."""
    from samri_ml.errors import SamriMLError
    from samri_ml.interfaces.ants import N4BiasFieldCorrection as OurN4

    ensure_ants_on_path()
    img = tmp_path / "img.nii.gz"
    nb.save(nb.Nifti1Image(np.random.default_rng(0).random((12, 12, 12), np.float32) + 1,
                           np.diag([0.2, 0.2, 0.2, 1])), img)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SamriMLError, match=r"^N4BiasFieldCorrection exited 1 without a word; "
                       r"hint: check its settings \(the registration flavour\) and inputs$"):
        OurN4(dimension=3, input_image=str(img), shrink_factor=100).run()
    out = OurN4(dimension=3, input_image=str(img), shrink_factor=2).run().outputs.output_image
    assert nb.load(out).shape == (12, 12, 12)


def test_an_environment_in_a_folder_with_a_space_runs_its_ants(tmp_path, monkeypatch):
    """samri_ml installed in ``~/Lab Projects/samri_ml/.venv`` (``make demo`` in a clone
    there): the workflows run ANTs by this environment's path (``program``), which the shell
    Nipype runs it through split at the space, and every ANTs step failed with ``No command
    "/home/me/Lab" found``. Here the environment's ``bin/`` as such a folder: links to this
    interpreter and its real scripts."""
    import sys

    from samri_ml.ants import program
    from samri_ml.interfaces.ants import N4BiasFieldCorrection as OurN4

    spaced = tmp_path / "Lab Projects" / "bin"
    spaced.mkdir(parents=True)
    for name in ("python", *PROGRAMS):
        (spaced / name).symlink_to(scripts_dir() / name if name != "python" else sys.executable)
    monkeypatch.setattr(sys, "executable", str(spaced / "python"))
    assert scripts_dir() == spaced
    img = tmp_path / "img.nii.gz"
    nb.save(nb.Nifti1Image(np.random.default_rng(0).random((12, 12, 12), np.float32) + 1,
                           np.diag([0.2, 0.2, 0.2, 1])), img)
    monkeypatch.chdir(tmp_path)
    node = OurN4(command=program("N4BiasFieldCorrection"), dimension=3, input_image=str(img),
                 shrink_factor=2)
    result = node.run()
    assert result.runtime.command_path == str(spaced / "N4BiasFieldCorrection")
    assert nb.load(result.outputs.output_image).shape == (12, 12, 12)


def test_a_user_install_runs_its_ants_from_where_pip_put_the_scripts(tmp_path):
    """``pip install --user samri_ml`` puts the scripts in ``~/.local/bin``, beside neither
    the interpreter (``/usr/bin/python3.11``) nor its ``sysconfig`` scripts folder, and pip
    warns that the folder is not on PATH: ``~/.local/bin/samri_ml-register`` then stopped on
    "no antsRegistration found: ... reinstall samri_ml so its antspyx-backed scripts are
    created". The scripts are found where the package's install record says. Here this
    environment's package from its base interpreter, as a user install's is (real
    interpreter, real install record, no ANTs on PATH)."""
    import site
    import sys

    base = getattr(sys, "_base_executable", sys.executable)
    ours = scripts_dir()
    if not (ours / "antsRegistration").exists() or Path(base).parent == ours:
        pytest.skip("samri_ml's scripts are beside this interpreter only")
    code = ("import site, sys; site.addsitedir(sys.argv[1]); "
            "from samri_ml.ants import ensure_ants_on_path, program; "
            "print(ensure_ants_on_path()); print(program('antsRegistration'))")
    packages = [p for p in site.getsitepackages() if Path(p, "samri_ml").exists()
                or list(Path(p).glob("samri_ml-*.dist-info"))]
    done = subprocess.run([base, "-I", "-c", code, packages[0]], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"antspyx ANTs ({ours})",
                                        str(ours / "antsRegistration")], done.stdout
