"""Property-based tests (hypothesis) of the pure functions of samri_ml.func, .bids and .metrics
(issue 5, part 7). The QC and plate-ranking metrics have their own in their modules' tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from samri_ml.bids import (
    ENTITY_ORDER,
    atomic_copy,
    atomic_write_text,
    derivative_path,
    parse_entities,
)
from samri_ml.func import drop_dummy_volumes, slice_time_correct, temporal_mean
from samri_ml.metrics import dice, label_dice

FAST = settings(max_examples=60, deadline=None)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


def series(min_t=3, max_t=12, max_slices=4):
    """4D float arrays (x, y, slices, time) with small sizes."""
    shape = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, max_slices),
                      st.integers(min_t, max_t))
    return shape.flatmap(lambda s: arrays(np.float64, s, elements=finite))


# -- samri_ml.func --------------------------------------------------------------------------------
@FAST
@given(series(min_t=1), st.integers(0, 30))
def test_drop_dummy_keeps_the_tail(data, requested):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept, n = drop_dummy_volumes(data, requested)
    assert 0 <= n <= requested and kept.shape[3] >= 1
    assert n == min(requested, data.shape[3] - 1)
    np.testing.assert_array_equal(kept, data[..., n:])


@FAST
@given(arrays(np.float64, (2, 3, 4), elements=finite), st.integers(0, 5))
def test_drop_dummy_leaves_3d_alone(data, requested):
    kept, n = drop_dummy_volumes(data, requested)
    assert n == 0 and kept is data


@FAST
@given(series(), st.floats(0.5, 3.0))
def test_slice_timing_at_the_reference_time_is_identity(data, tr):
    times = np.full(data.shape[2], tr / 2)  # every slice acquired at the reference time
    out = slice_time_correct(data, times, tr)
    np.testing.assert_allclose(out, data, atol=1e-9 * (1 + np.abs(data).max()))


@FAST
@given(series(), st.floats(-3, 3), st.floats(-3, 3), st.floats(0.5, 3.0), st.data())
def test_slice_timing_is_linear(x, a, b, tr, data):
    y = data.draw(arrays(np.float64, x.shape, elements=finite))
    times = data.draw(arrays(np.float64, x.shape[2], elements=st.floats(0, tr * 0.99)))
    lhs = slice_time_correct(a * x + b * y, times, tr)
    rhs = a * slice_time_correct(x, times, tr) + b * slice_time_correct(y, times, tr)
    np.testing.assert_allclose(lhs, rhs, atol=1e-8 * (1 + np.abs(x).max() + np.abs(y).max()))


@FAST
@given(series(max_slices=4), st.floats(0.5, 3.0), st.data())
def test_slice_timing_treats_each_slice_by_its_own_time(data, tr, draw):
    """Swapping two slices together with their times swaps the corrected slices."""
    n = data.shape[2]
    assume(n >= 2)
    times = draw.draw(arrays(np.float64, n, elements=st.floats(0, tr * 0.99)))
    perm = np.random.default_rng(int(draw.draw(st.integers(0, 99)))).permutation(n)
    out = slice_time_correct(data, times, tr)
    out_perm = slice_time_correct(data[:, :, perm], times[perm], tr)
    np.testing.assert_allclose(out_perm, out[:, :, perm], atol=1e-9 * (1 + np.abs(data).max()))


@FAST
@given(series(min_t=1))
def test_temporal_mean_is_between_min_and_max(data):
    mean = temporal_mean(data)
    assert mean.shape == data.shape[:3]
    tol = 1e-9 * (1 + np.abs(data).max())
    assert np.all(mean >= data.min(axis=3) - tol) and np.all(mean <= data.max(axis=3) + tol)
    np.testing.assert_allclose(temporal_mean(np.repeat(mean[..., None], 3, axis=3)), mean)


# -- samri_ml.bids --------------------------------------------------------------------------------
label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                min_size=1, max_size=8)
raw_entities = st.fixed_dictionaries(
    {"sub": label},
    optional={"ses": label, "task": label, "acq": label, "run": label, "echo": label})
suffixes = st.sampled_from(["T2w", "T1w", "bold", "cbv", "mask"])
extensions = st.sampled_from([".nii.gz", ".nii", ".json", ".h5", ".tsv"])
datatypes = st.sampled_from(["anat", "func"])


def bids_name(entities: dict, suffix: str, ext: str) -> str:
    return "_".join([f"{k}-{entities[k]}" for k in ENTITY_ORDER if k in entities] + [suffix]) + ext


@FAST
@given(raw_entities, suffixes, extensions, datatypes)
def test_parse_entities_round_trip(entities, suffix, ext, datatype):
    folder = Path(f"sub-{entities['sub']}") / datatype
    parsed = parse_entities(folder / bids_name(entities, suffix, ext))
    assert {k: parsed[k] for k in entities} == entities
    assert (parsed["suffix"], parsed["extension"], parsed["datatype"]) == (suffix, ext, datatype)


@FAST
@given(raw_entities, suffixes, datatypes, label, st.sampled_from([None, "brain", "preproc"]))
def test_derivative_path_keeps_the_source_entities(entities, suffix, datatype, space, desc):
    source = Path("/data") / datatype / bids_name(entities, suffix, ".nii.gz")
    out = derivative_path("/deriv", source, space=space, desc=desc)
    parsed = parse_entities(out)
    # every raw entity survives, in the specification's order, then the new ones
    assert {k: parsed[k] for k in entities} == entities
    assert parsed["space"] == space and parsed.get("desc") == desc
    assert parsed["suffix"] == suffix and parsed["extension"] == ".nii.gz"
    keys = [part.split("-")[0] for part in out.name.split("_")[:-1]]
    raw = [k for k in keys if k in ENTITY_ORDER]
    assert raw == sorted(raw, key=ENTITY_ORDER.index) and keys[: len(raw)] == raw
    expected = Path("/deriv") / f"sub-{entities['sub']}"
    if "ses" in entities:
        expected /= f"ses-{entities['ses']}"
    assert out.parent == expected / datatype


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300), st.binary(max_size=3000))
def test_atomic_writes_round_trip_and_leave_no_temporary(tmp_path, text, blob):
    dst = atomic_write_text(text, tmp_path / "a" / "x.json")
    assert dst.read_bytes() == text.encode()
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    copied = atomic_copy(src, tmp_path / "b" / "y.nii.gz")
    assert copied.read_bytes() == blob
    assert not [p for p in tmp_path.rglob(".*")]  # temporaries are renamed or removed


def test_atomic_copy_removes_its_temporary_on_failure(tmp_path):
    with pytest.raises(OSError):
        atomic_copy(tmp_path / "missing.nii.gz", tmp_path / "out" / "x.nii.gz")
    assert list((tmp_path / "out").iterdir()) == []


# -- samri_ml.metrics -----------------------------------------------------------------------------
masks = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4)).flatmap(
    lambda s: st.tuples(arrays(np.bool_, s), arrays(np.bool_, s)))


@FAST
@given(masks)
def test_dice_bounds_symmetry_and_identity(pair):
    a, b = pair
    d = dice(a, b)
    assert 0.0 <= d <= 1.0
    assert d == dice(b, a)
    assert dice(a, a) == 1.0
    if a.any() and not a.all():
        assert dice(a, ~a) == 0.0
    # the formula: 2 |A & B| / (|A| + |B|), and 1 for two empty masks
    total = a.sum() + b.sum()
    assert d == (1.0 if total == 0 else 2 * (a & b).sum() / total)


@FAST
@given(st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda s: st.tuples(arrays(np.int64, s, elements=st.integers(0, 4)),
                        arrays(np.int64, s, elements=st.integers(0, 4)))))
def test_label_dice_is_dice_per_label(pair):
    a, b = pair
    scores = label_dice(a, b)
    assert set(scores) == {int(v) for v in np.unique(a) if v != 0}
    for k, v in scores.items():
        assert v == dice(a == k, b == k)


def test_dice_of_images_paths_and_mismatched_masks(tmp_path):
    """``dice(predict_mask(img), ref_img)`` (nibabel images, as ``predict_mask`` returns) was
    1.0 for any two images (``np.asarray`` of an image is a 0-d object array, True), and
    masks of different shapes were broadcast (a (4, 4, 1) mask against a (4, 4, 4) one:
    1.33). Now images and NIfTI paths are read, and other shapes or things are refused."""
    import nibabel as nb

    from samri_ml.errors import SamriMLError

    a = np.zeros((4, 4, 4), np.uint8)
    a[:2] = 1
    b = np.zeros_like(a)
    b[1:3] = 1
    img_a, img_b = nb.Nifti1Image(a, np.eye(4)), nb.Nifti1Image(b, np.eye(4))
    nb.save(nb.Nifti1Image(b[..., None], np.eye(4)), str(tmp_path / "b.nii.gz"))  # 4D, 1 vol
    assert dice(a, b) == 0.5
    assert dice(img_a, img_b) == dice(img_a, tmp_path / "b.nii.gz") == dice(a, str(
        tmp_path / "b.nii.gz")) == 0.5
    assert label_dice(img_a, img_b) == {1: 0.5}
    with pytest.raises(SamriMLError, match=r"^dice: the masks differ in shape, \(4, 4, 4\) and "
                                           r"\(4, 4, 1\); hint: resample"):
        dice(a, np.ones((4, 4, 1)))
    with pytest.raises(SamriMLError, match=r"^label_dice: the second is a NoneType, not a mask"):
        label_dice(a, None)


def test_dice_refuses_two_images_of_one_shape_on_different_grids(tmp_path):
    """A reference mask stored in another orientation (the same brain, flipped L-R in its
    array and its affine: what a reorienting tool writes) has the prediction's shape, and was
    compared voxel by voxel: the dama manual mask against itself so stored, Dice 0.936, unsaid.
    Two images or paths must share the grid (to half a voxel); arrays carry none."""
    import nibabel as nb

    from samri_ml.errors import SamriMLError

    a = np.zeros((6, 4, 4), np.uint8)
    a[:2, 1:3, 1:3] = 1  # off-centre along x, so that the flip moves it
    img = nb.Nifti1Image(a, np.diag([0.2, 0.2, 0.2, 1.0]))
    flipped = img.as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))
    assert flipped.shape == img.shape and not np.array_equal(flipped.dataobj, a)
    nb.save(flipped, str(tmp_path / "ref.nii.gz"))
    with pytest.raises(SamriMLError, match=r"^dice: the first and .*ref\.nii\.gz have one "
                                           r"shape but not one grid .* 1 mm apart"):
        dice(img, tmp_path / "ref.nii.gz")
    # the same grid, to float32 rounding: scored; the arrays alone: scored as they are
    nudged = nb.Nifti1Image(a, img.affine + 1e-6)
    assert dice(img, nudged) == 1.0
    assert dice(a, np.asarray(flipped.dataobj)) == 0.0
    # two 2D images (one section each) have a grid too: scored, or refused where it moved (an
    # IndexError, the grid's third axis looked for in a shape of two)
    section = nb.Nifti1Image(a[:, :, 1], img.affine)
    assert dice(section, nb.Nifti1Image(a[:, :, 1], img.affine)) == 1.0
    moved = nb.Nifti1Image(a[:, :, 1], img.affine @ nb.affines.from_matvec(np.eye(3), [0, 0, 3]))
    with pytest.raises(SamriMLError, match="have one shape but not one grid"):
        dice(section, moved)


# -- samri_ml.masks ------------------------------------------------------------------------------
def _masks(max_side=12):
    shape = st.tuples(*[st.integers(1, max_side)] * 3)
    return shape.flatmap(lambda s: arrays(np.bool_, s))


@FAST
@given(_masks(), st.sampled_from([None, 0, 1, 2]))
def test_fill_holes_is_scipys_in_3d_and_slice_by_slice(mask, axis):
    """``masks.fill_holes`` (one labelling of the foreground's box) gives what
    ``binary_fill_holes`` gives on the volume, or on each slice across ``axis``."""
    from scipy import ndimage

    from samri_ml.masks import fill_holes

    if axis is None:
        expected = ndimage.binary_fill_holes(mask)
    else:
        expected = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)],
                            axis=axis)
    assert np.array_equal(fill_holes(mask, within_axis=axis), expected)
    # the masker's clean-up used to fill in 3D first; the slice-wise fill implies it
    if axis is not None:
        assert np.array_equal(fill_holes(fill_holes(mask), within_axis=axis), expected)
