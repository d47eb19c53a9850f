"""Functional preprocessing in numpy: dummy scans, slice timing, temporal mean."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samri_ml.func import drop_dummy_volumes, n_dummy_to_drop, slice_time_correct, temporal_mean


@given(st.integers(1, 50), st.integers(0, 60))
def test_dummy_clamp_leaves_one_volume(n, requested):
    k = n_dummy_to_drop(n, requested)
    assert 0 <= k <= requested and n - k >= 1
    if requested < n:
        assert k == requested


def test_drop_dummy_warns_when_clamped():
    data = np.zeros((2, 2, 2, 3))
    with pytest.warns(UserWarning, match="dropping 2"):
        kept, n = drop_dummy_volumes(data, 10)
    assert kept.shape[3] == 1 and n == 2


def test_slice_timing_recovers_a_delayed_sinusoid():
    tr, n, f = 1.0, 80, 0.04
    times = np.array([0.0, 0.25, 0.5, 0.75])
    t = np.arange(n) * tr
    data = np.stack([np.sin(2 * np.pi * f * (t + s)) for s in times])[None, None]
    out = slice_time_correct(data, times, tr, reference_time=0.0)
    truth = np.sin(2 * np.pi * f * t)
    assert np.abs(out[0, 0, :, 5:-5] - truth[5:-5]).max() < 0.01
    assert np.abs(data[0, 0, 3, 5:-5] - truth[5:-5]).max() > 0.15


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 20), st.floats(0.5, 3.0))
def test_slice_timing_keeps_constant_series(n, tr):
    data = np.full((2, 2, 3, n), 7.0)
    out = slice_time_correct(data, [0, tr / 3, 2 * tr / 3], tr)
    assert np.allclose(out, 7.0)


def test_slice_timing_checks_slice_count():
    with pytest.raises(ValueError, match="slice times"):
        slice_time_correct(np.zeros((2, 2, 3, 5)), [0, 1], 2.0)


def test_temporal_mean():
    data = np.arange(24, dtype=float).reshape(1, 2, 3, 4)
    assert temporal_mean(data).shape == (1, 2, 3)
    assert temporal_mean(data)[0, 0, 0] == pytest.approx(1.5)


@pytest.mark.parametrize("direction", ["k", "k-", "i", "j-"])
def test_slice_timing_node_follows_the_slice_encoding_direction(tmp_path, direction):
    """The Nipype node on a file: the sidecar's SliceTiming lists the slices along
    SliceEncodingDirection, from the highest index where it ends in '-' (BIDS); every slice of
    a sinusoid sampled at its own time comes out at the middle of the repetition."""
    import nibabel as nb

    from samri_ml.interfaces.func import SliceTimeCorrection

    tr, n, f = 2.0, 60, 0.04
    axis = "ijk".index(direction[0])
    nz = 5
    acquired = np.array([0.0, 1.2, 0.4, 1.6, 0.8])  # interleaved, by slice index
    listed = acquired[::-1] if direction.endswith("-") else acquired  # as the sidecar gives it
    t = np.arange(n) * tr
    shape = [2, 2, 2]
    shape[axis] = nz
    data = np.zeros((*shape, n))
    for k in range(nz):
        index = [slice(None)] * 3
        index[axis] = k
        data[tuple(index)] = np.sin(2 * np.pi * f * (t + acquired[k]))
    src = tmp_path / "bold.nii.gz"
    nb.save(nb.Nifti1Image(data.astype(np.float32), np.eye(4)), str(src))
    node = SliceTimeCorrection(in_file=str(src), slice_timing=listed.tolist(),
                               repetition_time=tr, slice_encoding_direction=direction)
    res = node.run(cwd=str(tmp_path))
    out = np.asarray(nb.load(res.outputs.out_file).dataobj)
    truth = np.sin(2 * np.pi * f * (t + tr / 2))
    assert np.abs(out[..., 5:-5] - truth[5:-5]).max() < 0.01
    assert np.abs(data[..., 5:-5] - truth[5:-5]).max() > 0.1


def test_slice_times_in_milliseconds_are_refused_in_the_node_and_the_factories(tmp_path):
    """SliceTiming in milliseconds (0 to 941) against a repetition time in seconds (1) was
    taken by SliceTimeCorrection and by init_generic_wf(bold_metadata=...): each slice delayed
    by hundreds of repetitions, the run scrambled without a word (samri_ml-register refused
    such a sidecar); the node says so in one line, the factory before anything runs."""
    import nibabel as nb

    from samri_ml.errors import SamriMLError
    from samri_ml.interfaces.func import SliceTimeCorrection
    from samri_ml.workflows import init_generic_wf

    run = tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    run.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    nb.save(nb.Nifti1Image(rng.random((4, 4, 3, 6), dtype=np.float32), np.eye(4)), run)
    template = tmp_path / "tpl.nii.gz"  # 3D: a 4D template is refused
    nb.save(nb.Nifti1Image(np.ones((4, 4, 3), np.float32), np.eye(4)), template)
    seconds = [0.0, 0.66, 0.33]
    millis = [t * 1000 for t in seconds]
    said = ("slice times 0 to 660 are not within the repetition time, 0 to 1 s; hint: give "
            "both in seconds (BIDS: milliseconds / 1000)")
    node = SliceTimeCorrection(in_file=str(run), slice_timing=millis, repetition_time=1.0)
    with pytest.raises(SamriMLError) as err:
        node.run(cwd=str(tmp_path))
    assert str(err.value) == f"{run}: {said}"
    SliceTimeCorrection(in_file=str(run), slice_timing=seconds,
                        repetition_time=1.0).run(cwd=str(tmp_path))  # in seconds: taken
    with pytest.raises(SamriMLError) as err:
        init_generic_wf(template=str(template), template_mask=str(template),
                        bold_files=[str(run)],
                        bold_metadata=[{"RepetitionTime": 1.0, "SliceTiming": millis}],
                        flavour="fast")
    assert str(err.value) == f"bold_files[0] {run}: slice_timing: {said}"


def test_a_lab_workflow_of_the_run_interfaces_fails_in_one_line_per_node(tmp_path):
    """A lab's workflow of DropDummyScans -> SliceTimeCorrection with the wrong SliceTiming,
    and TemporalMean of a file that is no NIfTI: their crash files ended with 'ValueError: 2
    slice times for 6 slices along axis 2' (no file named) and nibabel's 'ImageFileError:
    File ... is not a gzip file'; repetition_time=0 was taken, to fail as ZeroDivisionError.
    Now each crash file ends with a SamriMLError line naming the file, and 0 is refused where
    it is set."""
    import nibabel as nb
    from nipype.pipeline import engine as pe
    from traits.api import TraitError

    from samri_ml.interfaces import DropDummyScans, SliceTimeCorrection, TemporalMean
    from samri_ml.report import failed_steps

    run = tmp_path / "sub-01_task-rest_bold.nii.gz"
    data = np.random.default_rng(0).random((8, 8, 6, 12), dtype=np.float32)
    nb.save(nb.Nifti1Image(data, np.eye(4)), run)
    junk = tmp_path / "sub-02_task-rest_bold.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(TraitError, match="repetition_time"):
        SliceTimeCorrection(repetition_time=0.0)

    wf = pe.Workflow("lab", base_dir=str(tmp_path / "work"))
    wf.config["execution"] = {"crashdump_dir": str(tmp_path / "crash"),
                              "crashfile_format": "txt"}
    dummy = pe.Node(DropDummyScans(in_file=str(run), dummy_scans=2), name="dummy")
    stc = pe.Node(SliceTimeCorrection(slice_timing=[0.0, 0.5], repetition_time=1.0),
                  name="stc")
    mean = pe.Node(TemporalMean(in_file=str(junk)), name="mean")
    wf.connect(dummy, "out_file", stc, "in_file")
    wf.add_nodes([mean])
    with pytest.raises(RuntimeError):
        wf.run()
    stc_in = tmp_path / "work/lab/dummy/sub-01_task-rest_bold_nodummy.nii.gz"
    assert {step["node"]: step["cause"] for step in failed_steps(tmp_path / "crash")} == {
        "stc": f"samri_ml.errors.SamriMLError: {stc_in}: 2 slice times for 6 slices along "
               "axis 2",
        "mean": f"samri_ml.errors.SamriMLError: {junk}: not a NIfTI image (File {junk} is "
                "not a gzip file); hint: give a .nii or .nii.gz file"}


def test_the_cause_of_a_step_failing_on_a_deeply_filed_run_keeps_its_hint(tmp_path):
    """A step's cause, as the run's last line and the reports give it, was cut at 300
    characters: a one-line error naming a run twice in a deep folder lost its end, the hint
    ('...; hint: give a .nii or'). A long cause now keeps its start and its end."""
    from nipype.pipeline import engine as pe

    from samri_ml.interfaces import TemporalMean
    from samri_ml.report import CAUSE_CHARACTERS, failed_steps, shorten_middle

    deep = tmp_path / "lab_data" / ("2026-12-03_cohort_b_" * 5) / "sub-02" / "func"
    deep.mkdir(parents=True)
    junk = deep / "sub-02_task-rest_bold.nii.gz"
    junk.write_text("not an image")
    wf = pe.Workflow("lab", base_dir=str(tmp_path / "work"))
    wf.config["execution"] = {"crashdump_dir": str(tmp_path / "crash"),
                              "crashfile_format": "txt"}
    wf.add_nodes([pe.Node(TemporalMean(in_file=str(junk)), name="mean")])
    with pytest.raises(RuntimeError):
        wf.run()
    (step,) = failed_steps(tmp_path / "crash")
    whole = (f"samri_ml.errors.SamriMLError: {junk}: not a NIfTI image (File {junk} is not a "
             "gzip file); hint: give a .nii or .nii.gz file")
    assert len(whole) > 300  # cut before
    if len(whole) <= CAUSE_CHARACTERS:
        assert step["cause"] == whole
    assert step["cause"].startswith(f"samri_ml.errors.SamriMLError: {junk}: ")
    assert step["cause"].endswith("; hint: give a .nii or .nii.gz file"), step["cause"]
    # longer than CAUSE_CHARACTERS: the middle gives way
    cut = shorten_middle("x" * 2000 + "; hint: give a .nii or .nii.gz file", CAUSE_CHARACTERS)
    assert len(cut) == CAUSE_CHARACTERS and " ... " in cut and cut.endswith(".nii.gz file")


def test_the_run_interfaces_read_each_run_once(tmp_path):
    """DropDummyScans, SliceTimeCorrection, TemporalMean and the QC interfaces read a run's
    data twice: once to check it (load_nifti), once to process it (the image's dataobj was
    still the file), decompressing a .nii.gz twice in every step. Now a step opens its run
    as often as loading it once does (header and data), and gives the same result."""
    import sys

    import nibabel as nb

    from samri_ml.interfaces import (
        DropDummyScans,
        SliceTimeCorrection,
        SmoothnessConservation,
        TemporalMean,
        VolumeConservation,
    )
    from samri_ml.io import load_nifti

    rng = np.random.default_rng(0)
    data = rng.random((8, 8, 6, 12), dtype=np.float32) + 1
    run, processed = tmp_path / "bold.nii.gz", tmp_path / "processed.nii.gz"
    nb.save(nb.Nifti1Image(data, np.diag([0.2, 0.2, 0.5, 1])), run)
    nb.save(nb.Nifti1Image(data[..., 2:], np.diag([0.2, 0.2, 0.5, 1])), processed)
    opened = []
    watching = [False]

    def hook(event, args):  # an audit hook stays for the process: idle outside this test
        if watching[0] and event == "open" and str(args[0]) == str(run):
            opened.append(args[0])

    sys.addaudithook(hook)

    def opens(call):
        opened.clear()
        watching[0] = True
        try:
            result = call()
        finally:
            watching[0] = False
        return len(opened), result

    once, _ = opens(lambda: load_nifti(run, squeeze=False))  # (nibabel: header 2x, data 1x)
    cwd = {"cwd": str(tmp_path)}
    steps = {
        "DropDummyScans": DropDummyScans(in_file=str(run), dummy_scans=2),
        "SliceTimeCorrection": SliceTimeCorrection(
            in_file=str(run), slice_timing=[0.5] * 6, repetition_time=1.0),
        "TemporalMean": TemporalMean(in_file=str(run)),
        "VolumeConservation": VolumeConservation(processed_file=str(processed),
                                                 raw_file=str(run), raw_dummy_scans=2),
        "SmoothnessConservation": SmoothnessConservation(
            processed_file=str(processed), raw_file=str(run), raw_dummy_scans=2, vcf=1.0),
    }
    counts, results = {}, {}
    for name, step in steps.items():
        counts[name], results[name] = opens(lambda step=step: step.run(**cwd).outputs)
    assert counts == dict.fromkeys(steps, once), counts
    # nor does a caller of load_nifti that reads the image's data
    twice, img = opens(lambda: load_nifti(run, squeeze=False).get_fdata())
    assert twice == once and np.array_equal(img, data)
    # and the same results as ever
    assert np.allclose(nb.load(results["DropDummyScans"].out_file).get_fdata(), data[..., 2:])
    assert np.allclose(nb.load(results["SliceTimeCorrection"].out_file).get_fdata(), data,
                       atol=1e-5)  # every slice at the middle of the TR: unchanged
    assert np.allclose(nb.load(results["TemporalMean"].out_file).get_fdata(),
                       data.mean(axis=3), atol=1e-6)
    assert results["VolumeConservation"].vcf == pytest.approx(1.0)
    assert results["SmoothnessConservation"].scf == pytest.approx(1.0, abs=0.05)


def test_the_metadata_rules_are_the_commands_and_the_factorys():
    """One rule each for samri_ml-register's sidecars and init_generic_wf's bold_metadata: a
    repetition time is a number of seconds above 0 (not "1.0", True, 0), slice times a list of
    numbers (numpy's too), a slice encoding direction one of BIDS' six."""
    from samri_ml.func import is_repetition_time, is_slice_timing, slice_axis

    assert [is_repetition_time(v) for v in (1.0, 2, np.float32(0.5), "1.0", True, 0, -1,
                                           None, float("nan"))] == [True] * 3 + [False] * 6
    assert is_slice_timing([0, 0.5]) and is_slice_timing((0, 1)) and is_slice_timing(np.ones(3))
    assert not any(is_slice_timing(v) for v in (["0", "0.5"], 0.5, [True], np.ones((2, 2)),
                                                "0.5"))
    assert [slice_axis(d) for d in ("i", "j-", "k", "z", "k+", None)] == [0, 1, 2, None, None,
                                                                          None]


@pytest.mark.parametrize("interface, kw, suffix", [
    ("DropDummyScans", dict(dummy_scans=2), "_nodummy"),
    ("TemporalMean", {}, "_mean"),
    ("SliceTimeCorrection", dict(slice_timing=[0, 0.3, 0.6], repetition_time=1.0), "_stc"),
])
def test_the_run_interfaces_cache_by_the_runs_path_and_content(tmp_path, interface, kw, suffix):
    """Nipype's cache key (its default hash_method, 'timestamp') holds a file's size and
    modification time, not its path: another run of one size and time (uncompressed runs
    written in one clock tick, or unpacked from an archive) got the first run's result, its
    data and its name, from a Node in the same folder; a renamed run kept its old name. Now
    each is run again, and an unchanged run stays cached."""
    import os
    from copy import deepcopy

    import nibabel as nb
    from nipype import config
    from nipype.pipeline import engine as pe

    from samri_ml.interfaces import func as interfaces

    def write(name, value):
        path = tmp_path / name
        nb.Nifti1Image(np.full((4, 4, 3, 6), value, np.float32), np.eye(4)).to_filename(path)
        os.utime(path, (1_700_000_000, 1_700_000_000))
        return str(path)

    def node(in_file):  # a script run again: a new Node in the same folder
        step = pe.Node(getattr(interfaces, interface)(in_file=in_file, **kw), name="step",
                       base_dir=str(tmp_path / "work"))
        step.config = deepcopy(config._sections)  # Nipype's default key, whatever is set
        step.config["execution"]["hash_method"] = "timestamp"
        return step

    def result(in_file):
        out = node(in_file).run().outputs.out_file
        return os.path.basename(out), float(np.asanyarray(nb.load(out).dataobj).mean())

    first = write("sub-01_bold.nii", 1.0)
    assert result(first) == (f"sub-01_bold{suffix}.nii", 1.0)
    assert node(first).is_cached()[1]  # unchanged: cached, up to date
    other = write("sub-02_bold.nii", 2.0)  # another run, of the same size and time
    assert not node(other).is_cached()[1]
    assert result(other) == (f"sub-02_bold{suffix}.nii", 2.0)
    os.rename(other, tmp_path / "sub-03_bold.nii")
    assert result(str(tmp_path / "sub-03_bold.nii")) == (f"sub-03_bold{suffix}.nii", 2.0)


def test_the_run_interfaces_write_a_nifti_pairs_result_as_one_nifti(tmp_path):
    """A run given as a NIfTI pair (.img/.hdr, which load_nifti and samri_ml-mask read) failed
    DropDummyScans, SliceTimeCorrection and TemporalMean after the work, in nibabel ('Filespec
    ".../run_mean.img" does not look right'): their result was named with the pair's extension.
    Now it is <name><suffix>.nii.gz, a NIfTI of the result; a .nii keeps its extension."""
    import nibabel as nb

    from samri_ml.interfaces import DropDummyScans, SliceTimeCorrection, TemporalMean

    data = np.random.default_rng(0).random((6, 5, 3, 8), dtype=np.float32) + 1
    run = tmp_path / "run.img"
    nb.Nifti1Pair(data, np.diag([0.2, 0.2, 0.5, 1])).to_filename(run)
    steps = [(DropDummyScans(in_file=str(run), dummy_scans=2), "run_nodummy", data[..., 2:]),
             (SliceTimeCorrection(in_file=str(run), slice_timing=[0.5] * 3,
                                  repetition_time=1.0), "run_stc", data),
             (TemporalMean(in_file=str(run)), "run_mean", data.mean(axis=3))]
    for step, name, expected in steps:
        out = step.run(cwd=str(tmp_path)).outputs.out_file
        assert out == str(tmp_path / f"{name}.nii.gz")
        img = nb.load(out)
        assert isinstance(img, nb.Nifti1Image) and np.allclose(img.affine, np.diag([0.2, 0.2, 0.5, 1]))
        assert np.allclose(img.get_fdata(), expected, atol=1e-5)
    nb.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "run.nii")
    out = TemporalMean(in_file=str(tmp_path / "run.nii")).run(cwd=str(tmp_path)).outputs.out_file
    assert out == str(tmp_path / "run_mean.nii")


def test_a_run_stored_5d_loses_its_dummy_volumes_not_its_fifth_axis(tmp_path):
    """A run stored as (x, y, z, t, 1), which samri_ml-register's checks take as 4D: the
    DropDummyScans node cut the 5th axis instead of the 4th, to (x, y, z, t, 0), and the run
    failed in the next step ("holds no voxels"). It comes out 4D, its first volumes dropped."""
    import nibabel as nb

    from samri_ml.interfaces.func import DropDummyScans

    series = np.random.default_rng(0).random((6, 6, 5, 12)).astype(np.float32)
    img = nb.Nifti1Image(series[..., None], np.diag([0.3, 0.3, 0.6, 1]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 1.5  # the repetition time
    nb.save(img, tmp_path / "sub-01_task-rest_bold.nii.gz")
    res = DropDummyScans(in_file=str(tmp_path / "sub-01_task-rest_bold.nii.gz"),
                         dummy_scans=10).run(cwd=str(tmp_path)).outputs
    out = nb.load(res.out_file)
    assert res.n_dropped == 10 and out.shape == (6, 6, 5, 2)
    np.testing.assert_array_equal(np.asarray(out.dataobj), series[..., 10:])
    assert out.header.get_zooms()[3] == 1.5
