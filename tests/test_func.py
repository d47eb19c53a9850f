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
