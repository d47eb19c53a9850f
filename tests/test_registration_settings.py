"""Registration flavours are data (JSON) and turn into valid antsRegistration command lines."""

import pytest
from nipype.interfaces.ants import Registration

from samri_ml.errors import SamriMLError
from samri_ml.registration import FLAVOURS, load_flavour, n_stages, registration_inputs


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("stream", ["structural", "functional_to_structural", "functional_to_template"])
def test_flavours_build_command_lines(flavour, stream, tmp_path):
    reg = Registration(**registration_inputs(flavour, stream))
    for name in ("f.nii.gz", "m.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    reg.inputs.fixed_image = str(tmp_path / "f.nii.gz")
    reg.inputs.moving_image = str(tmp_path / "m.nii.gz")
    cmd = reg.cmdline
    assert cmd.count("--transform ") == n_stages(flavour, stream)
    assert "--float 1" in cmd and "--write-composite-transform 1" in cmd
    lower = "0.005" if stream == "structural" else "0.05"
    assert f"--winsorize-image-intensities [ {lower}," in cmd


def test_samri_phases_are_samri_s():
    settings = load_flavour("samri")
    syn = settings["phases"]["syn"]
    assert syn["transform_parameters"] == [0.05, 1.0, 15]
    assert syn["metric"] == ["MI", "CC"] and syn["metric_weight"] == [0.25, 0.75]
    assert syn["radius_or_number_of_bins"] == [32, 5] and syn["sampling_percentage"] == [0.8, 0.8]
    assert syn["number_of_iterations"] == [50]
    assert settings["streams"]["structural"] == ["s_translation", "similarity", "affine", "syn"]
    assert settings["registration"]["interpolation"] == "BSpline"


def test_fast_has_the_same_phases_with_less_work():
    fast, default = load_flavour("fast"), load_flavour("default")
    assert fast["streams"] == default["streams"]
    for name, phase in fast["phases"].items():
        assert phase["transforms"] == default["phases"][name]["transforms"]
        assert sum(phase["number_of_iterations"]) <= sum(default["phases"][name]["number_of_iterations"])


def test_unknown_flavour_is_a_clear_error():
    with pytest.raises(SamriMLError, match="unknown registration flavour"):
        load_flavour("nonsense")


def test_a_phase_can_run_without_the_moving_mask(tmp_path):
    """``"moving_mask": false`` in a phase gives antsRegistration a NULL moving mask there."""
    import json

    from samri_ml.registration import moving_mask_stages
    from samri_ml.workflows.registration import _replicate

    settings = json.loads(json.dumps(load_flavour("fast")))
    settings["phases"]["s_translation"]["moving_mask"] = False
    flavour = tmp_path / "custom.json"
    flavour.write_text(json.dumps(settings))
    use = moving_mask_stages(str(flavour), "structural")
    assert use == [False, True, True, True]
    for name in FLAVOURS:  # the shipped flavours mask every stage (the seed's Generic Masked)
        assert all(moving_mask_stages(name, "structural"))
    for name in ("f.nii.gz", "m.nii.gz", "fm.nii.gz", "mm.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    reg = Registration(**registration_inputs(str(flavour), "structural"))
    reg.inputs.fixed_image = str(tmp_path / "f.nii.gz")
    reg.inputs.moving_image = str(tmp_path / "m.nii.gz")
    reg.inputs.fixed_image_masks = _replicate(str(tmp_path / "fm.nii.gz"), [True] * 4)
    reg.inputs.moving_image_masks = _replicate(str(tmp_path / "mm.nii.gz"), use)
    masks = [part.split("]")[0] for part in reg.cmdline.split("--masks [ ")[1:]]
    assert masks[0].endswith(", NULL ") and all(m.endswith("mm.nii.gz ") for m in masks[1:])
