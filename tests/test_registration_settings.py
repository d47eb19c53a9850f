"""Registration flavours are data (JSON) and turn into valid antsRegistration command lines."""

import pytest
from nipype.interfaces.ants import Registration
from nipype.interfaces.base import isdefined

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

    settings = json.loads(json.dumps(load_flavour("samri")))  # every stage masked
    settings["phases"]["s_translation"]["moving_mask"] = False
    flavour = tmp_path / "custom.json"
    flavour.write_text(json.dumps(settings))
    use = moving_mask_stages(str(flavour), "structural")
    assert use == [False, True, True, True]
    # the seed's Generic Masked masks every stage; default and fast their SyN stage only (the
    # linear stages masked shrank a real skull-on head: docs/results.rst, "Masked registration of a real
    # head")
    assert all(moving_mask_stages("samri", "structural"))
    for name in ("default", "fast"):
        assert moving_mask_stages(name, "structural") == [False, False, False, True]
        assert moving_mask_stages(name, "functional_to_template") == [False, False, False, True]
        assert moving_mask_stages(name, "functional_to_structural") == [True]
    for name in ("f.nii.gz", "m.nii.gz", "fm.nii.gz", "mm.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    reg = Registration(**registration_inputs(str(flavour), "structural"))
    reg.inputs.fixed_image = str(tmp_path / "f.nii.gz")
    reg.inputs.moving_image = str(tmp_path / "m.nii.gz")
    reg.inputs.fixed_image_masks = _replicate(str(tmp_path / "fm.nii.gz"), [True] * 4)
    reg.inputs.moving_image_masks = _replicate(str(tmp_path / "mm.nii.gz"), use)
    masks = [part.split("]")[0] for part in reg.cmdline.split("--masks [ ")[1:]]
    assert masks[0].endswith(", NULL ") and all(m.endswith("mm.nii.gz ") for m in masks[1:])


def test_the_subject_mask_is_grown_before_it_restricts_the_metric(tmp_path, monkeypatch):
    """``moving_mask_dilation``: the subject's mask (not the template's) grows by N voxels, so
    the brain's edge stays inside the metric; the seed's ``samri`` flavour keeps it tight."""
    import json

    import nibabel as nb
    import numpy as np

    from samri_ml.registration import mask_dilation
    from samri_ml.workflows.registration import _replicate, init_functional_wf, init_structural_wf

    assert mask_dilation("fast") == mask_dilation("default") == 8
    assert mask_dilation("samri") == 0
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[8:12, 8:12, 8:12] = 1
    src = tmp_path / "mask.nii.gz"
    nb.save(nb.Nifti1Image(mask, np.diag([0.2, 0.2, 0.2, 1])), str(src))
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    monkeypatch.chdir(node_dir)  # a Nipype Function node runs in its own folder
    out = _replicate(str(src), [False, True, True], dilation=2)
    assert out[0] == "NULL" and out[1] == out[2] and out[1].startswith(str(node_dir))
    grown = np.asarray(nb.load(out[1]).dataobj)
    assert grown.dtype == np.uint8 and grown[mask > 0].all()
    assert grown[8:12, 8:12, 6].all() and not grown[8:12, 8:12, 5].any()  # 2 voxels, no more
    assert grown[6, 6, 6] == 0  # 6-connected steps: diagonal corners stay out
    assert _replicate(str(src), [True], dilation=0) == [str(src)]
    # wiring where the images go in whole (fast without its brain-to-brain streams): moving
    # masks and the structural mask used as fixed mask are grown, the template mask is not
    settings = load_flavour("fast")
    del settings["brain_extracted"]
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(settings))
    s = init_structural_wf(flavour=str(whole), masking="unet")
    grow = mask_dilation("fast")
    assert s.get_node("s_moving_masks").inputs.dilation == grow
    assert s.get_node("s_fixed_masks").inputs.dilation == 0
    f = init_functional_wf(flavour=str(whole), masking="unet", method="composite")
    assert f.get_node("f_moving_masks").inputs.dilation == grow
    assert f.get_node("f_fixed_masks").inputs.dilation == grow
    tpl = init_functional_wf(flavour=str(whole), masking="unet", method="functional")
    assert tpl.get_node("f_fixed_masks").inputs.dilation == 0


@pytest.mark.parametrize("flavour", ["fast", "default"])
def test_masked_streams_register_brain_to_brain_then_whole(flavour):
    """default and fast, with a brain mask, run their linear phases on the stripped scan and
    template (the fixed mask grown by 4 voxels, the only mask), then SyN on the whole images
    from that transform; samri does not (docs/results.rst, "Masked registration of a real head")."""
    from samri_ml.registration import brain_fixed_mask_dilation, brain_phases
    from samri_ml.workflows.registration import init_functional_wf, init_structural_wf

    linear = ["similarity", "affine"]
    assert brain_phases(flavour, "structural") == ["s_translation", *linear]
    assert brain_phases(flavour, "functional_to_template") == ["f_only_translation", *linear]
    assert brain_phases(flavour, "functional_to_structural") == ["f_translation"]
    for stream in ("structural", "functional_to_structural", "functional_to_template"):
        assert brain_phases("samri", stream) == []
    assert brain_fixed_mask_dilation(flavour) == 4
    s = init_structural_wf(flavour=flavour, masking="unet")
    brain, whole = s.get_node("s_register_brain"), s.get_node("s_register")
    assert brain.inputs.transforms == ["Translation", "Similarity", "Affine"]
    assert brain.inputs.initial_moving_transform_com == 1  # the first call starts as before
    assert whole.inputs.transforms == ["SyN"]
    assert not isdefined(whole.inputs.initial_moving_transform_com)  # it continues
    assert s.get_node("s_fixed_brain_masks").inputs.dilation == 4
    assert s.get_node("s_fixed_brain_masks").inputs.use == [True] * 3
    assert s.get_node("s_moving_masks").inputs.use == [True]  # SyN, the mask grown by 8
    f = init_functional_wf(flavour=flavour, masking="unet", method="functional")
    assert f.get_node("f_register").inputs.transforms == ["SyN"]
    # composite: the one translation to the structural scan, brain to brain, is the whole
    # registration (one call, the structural scan's mask grown by 4 the only mask)
    f = init_functional_wf(flavour=flavour, masking="unet", method="composite")
    assert f.get_node("f_register_brain") is None and f.get_node("f_moving_masks") is None
    assert f.get_node("f_register").inputs.transforms == ["Translation"]
    assert f.get_node("f_fixed_brain_masks").inputs.dilation == 4
    # unmasked: one call, every phase, on the whole images
    s = init_structural_wf(flavour=flavour, masking="none")
    assert s.get_node("s_register_brain") is None
    assert s.get_node("s_register").inputs.transforms[-1] == "SyN"


def test_brain_phases_must_come_first(tmp_path):
    import json

    settings = load_flavour("fast")
    settings["brain_extracted"]["structural"] = ["similarity"]
    flavour = tmp_path / "bad.json"
    flavour.write_text(json.dumps(settings))
    from samri_ml.registration import brain_phases

    with pytest.raises(SamriMLError, match="must be its first phases"):
        brain_phases(str(flavour), "structural")


@pytest.mark.parametrize("masking", ["none", "input"])
def test_a_flavour_without_a_stream_is_a_clear_error(tmp_path, masking):
    """Building the workflow (what samri_ml-register does before it writes anything) names
    the missing stream, with or without the brain-to-brain phases (it was a bare KeyError
    there)."""
    import json

    from samri_ml.workflows.registration import init_structural_wf

    settings = load_flavour("fast")
    del settings["streams"]["structural"]
    flavour = tmp_path / "no_structural.json"
    flavour.write_text(json.dumps(settings))
    with pytest.raises(SamriMLError, match="has no phase or stream 'structural'"):
        init_structural_wf(flavour=str(flavour), masking=masking)


def test_masked_image_file(tmp_path):
    """The image times its mask, on the image's grid; a mask of another grid is refused."""
    import nibabel as nb
    import numpy as np

    from samri_ml.registration import masked_image_file

    rng = np.random.default_rng(0)
    data = rng.uniform(1, 2, (10, 12, 8)).astype(np.int16)
    mask = np.zeros(data.shape, np.uint8)
    mask[2:8, 3:9, 2:6] = 1
    affine = np.diag([0.3, 0.3, 0.5, 1])
    nb.save(nb.Nifti1Image(data, affine), str(tmp_path / "scan.nii.gz"))
    nb.save(nb.Nifti1Image(mask, affine), str(tmp_path / "mask.nii.gz"))
    out = masked_image_file(tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz", tmp_path)
    assert out == str(tmp_path / "scan_brain.nii.gz")
    img = nb.load(out)
    np.testing.assert_array_equal(img.get_fdata(), data * mask)
    np.testing.assert_allclose(img.affine, affine)
    nb.save(nb.Nifti1Image(mask[:-1], affine), str(tmp_path / "small.nii.gz"))
    with pytest.raises(SamriMLError, match="not on the grid of"):
        masked_image_file(tmp_path / "scan.nii.gz", tmp_path / "small.nii.gz", tmp_path)


def test_a_template_mask_saved_as_4d_of_one_volume(tmp_path):
    """A template mask of shape (x, y, z, 1), which samri_ml-register accepts, failed
    --masking unet in s_fixed_brain ('operands could not be broadcast together') and in the
    grown mask (IndexError): both take it as the 3D mask it is."""
    import nibabel as nb
    import numpy as np

    from samri_ml.registration import dilate_mask_file, masked_image_file

    rng = np.random.default_rng(0)
    data = rng.uniform(1, 2, (10, 12, 8)).astype(np.float32)
    mask = np.zeros(data.shape, np.uint8)
    mask[3:7, 4:8, 3:5] = 1
    affine = np.diag([0.3, 0.3, 0.5, 1])
    nb.save(nb.Nifti1Image(data, affine), str(tmp_path / "tpl.nii.gz"))
    nb.save(nb.Nifti1Image(mask[..., None], affine), str(tmp_path / "mask4d.nii.gz"))
    out = nb.load(masked_image_file(tmp_path / "tpl.nii.gz", tmp_path / "mask4d.nii.gz",
                                    tmp_path))
    assert out.shape == data.shape
    np.testing.assert_array_equal(out.get_fdata(), data * mask)
    grown = nb.load(dilate_mask_file(tmp_path / "mask4d.nii.gz", 1, tmp_path))
    assert grown.shape == data.shape and grown.get_data_dtype() == np.uint8
    want = np.zeros(data.shape, bool)
    want[2:8, 4:8, 3:5] = want[3:7, 3:9, 3:5] = want[3:7, 4:8, 2:6] = True
    np.testing.assert_array_equal(np.asarray(grown.dataobj) > 0, want)


@pytest.mark.parametrize(("where", "lacks"), [
    (("phases", "similarity", "use_histogram_matching"),
     "phases.similarity.use_histogram_matching"),
    (("winsorize", "functional"), "winsorize.functional"),
    (("n4", "structural"), "n4.structural"),
])
def test_a_flavour_lacking_a_setting_names_it(tmp_path, where, lacks):
    """A flavour JSON without a phase's setting, a stream's winsorisation or N4 settings
    ended samri_ml-register with a bare 'KeyError: 'use_histogram_matching''."""
    import json

    from samri_ml.workflows.registration import init_functional_wf, init_structural_wf

    settings = load_flavour("fast")
    section = settings
    for key in where[:-1]:
        section = section[key]
    del section[where[-1]]
    flavour = tmp_path / "lacking.json"
    flavour.write_text(json.dumps(settings))
    with pytest.raises(SamriMLError, match=f"^registration flavour .* lacks '{lacks}'; hint"):
        init_structural_wf(flavour=str(flavour))
        init_functional_wf(flavour=str(flavour), method="functional")
