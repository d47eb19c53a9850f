"""Brain masking without the shipped model: U-Net layout, losses, seed preprocessing, synthesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samri_ml.errors import SamriMLError
from samri_ml.masking import preprocess as pp
from samri_ml.masking import synth
from samri_ml.metrics import dice


def _ellipsoid(shape, centre=None, radii=None):
    grid = np.indices(shape, dtype=float)
    centre = np.asarray(centre if centre is not None else [(n - 1) / 2 for n in shape])
    radii = np.asarray(radii if radii is not None else [n / 3 for n in shape])
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=False))
    return r2 <= 1


# ------------------------------------------------------------------------------------- model


def test_unet_has_the_seed_layout():
    from keras import layers

    from samri_ml.models.unet import build_unet

    model = build_unet(width=8)
    drops = [lay for lay in model.layers if isinstance(lay, layers.Dropout)]
    assert [d.rate for d in drops] == [0.5, 0.5]
    assert model.output_shape == (None, 64, 64, 1)
    convs = [lay for lay in model.layers if isinstance(lay, layers.Conv2D)]
    # 2 per level x 9 levels (4 down, bottleneck, 4 up) + 4 up-convolutions + 2-filter + 1x1
    assert len(convs) == 9 * 2 + 4 + 2
    assert convs[0].filters == 8 and max(c.filters for c in convs) == 8 * 16
    # width 64 is zhixuhao's U-Net (the seed): 31,031,685 parameters
    assert build_unet(width=64).count_params() == 31_031_685


def test_losses_behave():
    from samri_ml.models.unet import bce_dice_loss, dice_coefficient, dice_loss

    a = np.zeros((2, 64, 64, 1), np.float32)
    a[:, 10:40, 10:40] = 1
    b = np.zeros_like(a)
    b[:, 45:60, 45:60] = 1
    assert float(dice_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(a, b)) == pytest.approx(1.0, abs=1e-3)
    assert float(dice_coefficient(a, a)) == pytest.approx(1.0)
    half = a * 0.5
    assert 0.2 < float(dice_loss(a, half)) < 0.5
    # BCE + Dice: near zero for a confident correct prediction, large for a wrong one
    assert float(bce_dice_loss(a, np.clip(a, 1e-4, 1 - 1e-4))) < 0.01
    assert float(bce_dice_loss(a, b)) > 5


# ----------------------------------------------------------------------------- preprocessing


def test_normalise_is_the_seeds_clipping():
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 10.0, size=(20, 20, 20)).astype(np.float32)
    out = pp.normalise(vol)
    p99 = np.percentile(vol, 99)
    np.testing.assert_allclose(out, np.clip(vol, vol.min(), p99) / p99, rtol=1e-5)
    assert out.max() == pytest.approx(1.0)
    with pytest.raises(SamriMLError, match="no positive"):
        pp.normalise(np.zeros((5, 5, 5)))
    vol[0, 0, 0] = np.nan
    with pytest.raises(SamriMLError, match="NaN"):
        pp.normalise(vol)


@settings(max_examples=60, deadline=None)
@given(offset=st.floats(0.0, 0.5), dark=st.floats(0.0, 0.05), seed=st.integers(0, 10_000))
def test_background_fraction_skips_the_low_percentile_only_where_it_is_dark(offset, dark, seed):
    """Above the note's fraction the value is the exact 1st / 99th percentile ratio; where the
    shortcut (a count of dark voxels) answers 0, the exact ratio is below the fraction too."""
    rng = np.random.default_rng(seed)
    vol = rng.gamma(2.0, 10.0, size=(16, 16, 16)).astype(np.float32) + offset * 60
    vol.reshape(-1)[: int(dark * vol.size)] = 0  # a share of black voxels
    lo, hi = np.percentile(vol, [1, 99])
    exact = lo / hi if lo > 0 else 0.0
    got = pp.background_fraction(vol)
    assert got == pytest.approx(pp.background_fraction(vol, pp.high_percentile(vol)))
    if got == 0:
        assert exact <= pp.BACKGROUND_NOTE_FRACTION
    else:
        assert got == pytest.approx(exact, rel=1e-5)
    np.testing.assert_array_equal(pp.normalise(vol, pp.high_percentile(vol)), pp.normalise(vol))


def test_large_dimensions_are_resized_small_ones_padded():
    vol = np.ones((100, 7, 30), np.float32)
    x = pp.volume_to_slices(vol)
    assert x.shape == (7, 64, 64, 1)
    # 100 -> resized to 64 rows (all of them non-zero); 30 columns zero-padded to 64 (17 + 17)
    assert np.all(x[0, :, 17:47, 0] == 1) and not x[0, :, :17].any() and not x[0, :, 47:].any()


def test_views_slice_along_their_ras_axis():
    vol = np.zeros((10, 20, 30), np.float32)
    vol[3, 5, 7] = 1.0
    for view, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        x = pp.volume_to_slices(vol, axis=pp.view_axis(view), normalised=True)
        assert pp.view_axis(view) == axis
        assert x.shape[0] == vol.shape[axis]
        assert np.flatnonzero(x.reshape(len(x), -1).any(axis=1)).tolist() == [(3, 5, 7)[axis]]
    with pytest.raises(SamriMLError, match="unknown view 'oblique'"):
        pp.view_axis("oblique")


def test_labels_zeroed_outside_image_and_holes_filled():
    shape = (40, 5, 40)
    image = _ellipsoid(shape).astype(np.float32)
    mask = _ellipsoid(shape, radii=[16, 10, 16])  # larger than the image
    mask[18:22, :, 18:22] = False  # a hole
    y = pp.mask_to_slices(mask, image)[..., 0]
    x = pp.volume_to_slices(image)[..., 0]
    assert not np.any(y[x == 0]), "labels must be zero where the image is zero"
    assert y[2, 12 + 20, 12 + 20] == 1, "the hole must be filled"


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(3, 140), st.integers(1, 30), st.integers(3, 140)),
    seed=st.integers(0, 1000),
    view=st.sampled_from(pp.ALL_VIEWS),
)
def test_preprocessing_round_trip(shape, seed, view):
    """Preprocess then invert (along any view) gives back the grid; exactly for dims <= 64."""
    rng = np.random.default_rng(seed)
    axis = pp.view_axis(view)
    shape = tuple(np.roll(shape, axis - 1))  # the thin dimension is the sliced one
    mask = _ellipsoid(shape, radii=[max(n / 2.5, 1) for n in shape])
    vol = np.where(mask, 1.0 + rng.random(shape), 0.0).astype(np.float32)
    x = pp.volume_to_slices(vol, axis=axis)
    assert x.shape == (shape[axis], 64, 64, 1)
    back = pp.slices_to_volume(x, vol.shape, axis=axis)
    assert back.shape == vol.shape
    norm = pp.normalise(vol)
    if max(n for i, n in enumerate(shape) if i != axis) <= 64:
        np.testing.assert_allclose(back, norm, atol=1e-6)
    elif mask.sum() > 50:
        assert dice(back > 0.5 * norm[mask].min(), mask) > 0.85


@settings(max_examples=25, deadline=None)
@given(perm=st.permutations([0, 1, 2]), flips=st.tuples(*[st.booleans()] * 3),
       zoom=st.sampled_from([0.1, 2.0, 0.3]))  # fmt: skip
def test_orientation_round_trip(perm, flips, zoom):
    """Any axis permutation/flip (and 10x voxel sizes) finds the same coronal axis and goes back."""
    rng = np.random.default_rng(0)
    ras = rng.random((6, 7, 8)).astype(np.float32)
    # build the same image stored with other axes: data = ras transposed/flipped, affine to match
    data = ras
    affine = np.diag([zoom, zoom, zoom, 1.0])
    for ax, f in enumerate(flips):
        if f:
            data = np.flip(data, ax)
            affine = affine @ _flip_matrix(ax, data.shape[ax])
    data = np.transpose(data, perm)
    p = np.eye(4)
    p[:3, :3] = np.eye(3)[:, perm]
    affine = affine @ p
    got, ornt = pp.to_ras(data, affine)
    np.testing.assert_array_equal(got, ras)
    np.testing.assert_array_equal(pp.from_ras(got, ornt), data)


def _flip_matrix(axis, n):
    m = np.eye(4)
    m[axis, axis] = -1
    m[axis, 3] = n - 1
    return m


def test_degenerate_affine_falls_back_to_array_axes():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got, ornt = pp.to_ras(data, np.zeros((4, 4)))
    np.testing.assert_array_equal(got, data)


# -------------------------------------------------------------------------------- synthesis


def test_stripped_rim_is_filled_with_the_nearest_brain_intensity():
    from samri_ml.masking.data import fill_stripped_rim

    z, y, x = np.mgrid[:20, :20, :20]
    r = np.sqrt((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2)
    mask = r <= 7  # the reference ("manual") brain
    image = np.where(r <= 6, 1.0 + (x / 20.0), 0.0).astype(np.float32)  # stripped 1 voxel tighter
    filled = fill_stripped_rim(image, mask)
    assert np.all(filled[mask] > 0)  # tissue wherever the reference says brain
    assert np.all(filled[~mask] == 0)  # nothing outside it
    assert np.array_equal(filled[r <= 6], image[r <= 6])  # the visible brain unchanged
    # the rim takes a neighbour's value: within the range of the brain next to it
    rim = mask & (r > 6)
    assert filled[rim].min() >= image[r <= 6].min() and filled[rim].max() <= image.max()
    unstripped = image + 1.0
    assert np.array_equal(fill_stripped_rim(unstripped, mask), unstripped)


def test_t1_muscle_is_darker_than_brain_and_at_times_nearly_as_bright():
    """T1-like heads: muscle 0.45-0.9 times the brain (synthetic heads v3), so that necks whose
    muscle is nearly as bright as the brain (the example phantom's T1w: 0.8) are in training."""
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(500):
        means = synth._class_means("t1", rng)
        ratios.append(means[synth.MUSCLE] / means[synth.BRAIN])
        assert means[synth.CSF] < means[synth.BRAIN] < means[synth.FAT]
    ratios = np.array(ratios)
    assert 0.45 <= ratios.min() and ratios.max() <= 0.9
    assert np.mean(ratios > 0.75) > 0.2


def test_synthetic_head_has_skull_and_tissue_around_the_brain():
    brain = _ellipsoid((40, 50, 30))
    labels = brain.astype(np.int32) + (np.indices(brain.shape)[0] > 20)
    src = synth.BrainSource(brain, (0.2, 0.2, 0.2), labels=labels)
    rng = np.random.default_rng(1)
    for contrast in synth.CONTRASTS:
        img, mask, zooms = synth.synth_volume(src, rng, contrast)
        assert img.shape == mask.shape and len(zooms) == 3
        assert 0.02 < mask.mean() < 0.6
        # skull on: plenty of signal outside the brain
        outside = img[~mask]
        assert (outside > 0.2 * np.median(img[mask])).mean() > 0.1
        assert np.isfinite(img).all()


def test_synthetic_heads_have_slices_with_head_but_no_brain():
    """Snout and neck: coronal slices with tissue and no brain, kept for training."""
    from samri_ml.masking.train import volume_slices

    brain = _ellipsoid((40, 50, 30))
    src = synth.BrainSource(brain, (0.2, 0.2, 0.2))
    rng = np.random.default_rng(0)
    classes, pad = synth.head_labels(brain, (0.2, 0.2, 0.2), rng, snout_neck=True)
    has_brain = (classes == synth.BRAIN).any(axis=(0, 2))
    has_head = (classes > 0).any(axis=(0, 2))
    assert (has_head & ~has_brain).sum() >= 10  # >= 2 mm of snout/neck at 0.2 mm
    n_headonly = 0
    for _ in range(6):
        img, mask, _ = synth.synth_volume(src, rng, "t2", snout_neck=True)
        x, y = volume_slices(img, mask, rng, empty_fraction=0.25, tissue_boost=True)
        no_brain = ~y.reshape(len(y), -1).any(axis=1)
        n_headonly += int(((x.reshape(len(x), -1) > 0.1).mean(axis=1) > 0.05)[no_brain].sum())
    assert n_headonly >= 6


def test_augmentation_moves_image_and_mask_together():
    from samri_ml.masking.train import augment_pair

    img = np.zeros((64, 64), np.float32)
    img[20:40, 15:35] = 1.0
    mask = (img > 0).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(10):
        xa, ya = augment_pair(img, mask, rng)
        assert dice(xa > 0.5, ya > 0.5) > 0.9


def test_a_label_map_is_told_from_scans_masks_and_8_bit_images():
    """An atlas' label map (the emory EPI atlas beside its template, the DSURQE labels) given
    to samri_ml-mask got a believable volume and a mask of nothing, without a word. A label
    map is integer patches of one value; a scan, a smooth template, their 8-bit copies and a
    mask are not."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:40, :48, :40]
    head = ((x - 20) / 16) ** 2 + ((y - 24) / 20) ** 2 + ((z - 20) / 13) ** 2 <= 1
    # regions: the head cut into numbered blocks (ids 1-48, as an atlas numbers them)
    labels = (1 + (x // 10) + 4 * (y // 12) + 16 * (z // 14)) * head
    assert pp.looks_like_label_map(labels.astype(np.int16))
    assert pp.looks_like_label_map(labels.astype(np.float32))  # a label map stored as float
    smooth = ndimage.gaussian_filter(labels.astype(np.float32), 2)  # a shaded template
    scan = smooth + rng.normal(0, 2, labels.shape) * head  # a noisy scan
    for image in (smooth, scan, np.round(smooth / smooth.max() * 255),  # 8 bits
                  np.round(np.clip(scan, 0, None) / scan.max() * 255).astype(np.uint8),
                  head.astype(np.uint8),  # a mask: samri_ml-mask names it itself
                  head.astype(np.uint8) * 255,  # a 0/255 mask too (it was a label map)
                  np.zeros(labels.shape)):
        assert not pp.looks_like_label_map(image)


def test_intensity_curves_keep_the_background_dark_and_change_the_contrast():
    from samri_ml.masking.train import remap_intensity

    x = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    x[:, :8] = 0  # background
    rng = np.random.default_rng(0)
    inverted = 0
    for _ in range(50):
        r = remap_intensity(x, rng)
        assert r.dtype == np.float32 and r.shape == x.shape
        assert (r[:, :8] == 0).all() and r.min() >= 0 and r.max() <= 1
        assert r.max() > 0.9  # the highest level is 1, at one of the knots
        inverted += r[0, 40] > r[0, 63]  # mid-grey brighter than the brightest input
    assert 10 < inverted < 40  # some curves invert the top of the range, some do not


def test_a_faint_background_fills_only_the_black_of_a_stripped_brain():
    from samri_ml.masking.train import FAINT_BACKGROUND_MAX, faint_background

    brain = _ellipsoid((64, 64, 3))[..., 1].astype(np.float32) * 0.8  # black around it
    rng = np.random.default_rng(0)
    levels = []
    for _ in range(20):
        out = faint_background(brain, rng)
        assert out.dtype == np.float32 and out.shape == brain.shape
        np.testing.assert_array_equal(out[brain > 0], brain[brain > 0])  # the brain untouched
        outside = out[brain == 0]
        assert outside.min() >= 0 and outside.max() <= FAINT_BACKGROUND_MAX
        levels.append(outside.max())
    assert np.ptp(levels) > 0.05  # faint and fainter backgrounds
    head = brain + 0.02  # no black pixel: air with noise already; unchanged
    assert faint_background(head, rng) is head


def test_snout_and_neck_are_opt_in():
    """Without ``snout_neck`` the head has version 1's antero-posterior room (2 mm each side of
    the brain: what the shipped model was trained on); with it, up to 6 + 5 mm more."""
    brain = _ellipsoid((30, 40, 24))
    lengths = {False: set(), True: set()}
    for seed in range(5):
        for flag in (False, True):
            c, _ = synth.head_labels(brain, (0.2, 0.2, 0.2), np.random.default_rng(seed), flag)
            lengths[flag].add(c.shape[1])
    assert lengths[False] == {40 + 2 * 10}
    assert max(lengths[True]) > 60 + 20


def test_crop_to_brain_fills_the_field_of_view():
    shape = (60, 70, 50)
    mask = _ellipsoid(shape, radii=[12, 15, 10])
    image = np.where(mask, 2.0, 1.0).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(10):
        img, msk = synth.crop_to_brain(image, mask, rng, margin=(-0.05, 0.15))
        assert img.shape == msk.shape and msk.sum() >= 0.8 * mask.sum()
        # the brain's extent is at least 1 / 1.3 of the cropped field of view on every axis
        for ax in range(3):
            extent = np.ptp(np.flatnonzero(msk.any(axis=tuple(i for i in range(3) if i != ax)))) + 1
            assert extent >= img.shape[ax] / 1.31


def test_far_islands_of_a_coronal_slice_are_dropped_near_or_large_ones_kept():
    """A patch of temporal muscle beside a skull-on brain goes; a paraflocculus-like piece next
    to the brain and a second large piece (the other olfactory bulb) stay; so do other slices,
    whatever the voxel size (the rule is scale-free)."""
    from samri_ml.masking.predict import clean_mask, drop_far_islands

    yy, xx = np.mgrid[:80, :80]
    brain = ((xx - 40) / 22.0) ** 2 + ((yy - 40) / 14.0) ** 2 <= 1  # about 970 voxels, r ~ 17.6
    far = (np.abs(xx - 75) <= 2) & (np.abs(yy - 40) <= 3)  # 15 voxels off the brain's edge
    near = (np.abs(xx - 64) <= 1) & (np.abs(yy - 40) <= 2)  # 2 voxels off the edge
    mask = np.zeros((80, 5, 80), bool)
    for j in range(5):
        mask[:, j, :] = brain
    mask[:, 2, :] |= far | near
    out = drop_far_islands(mask)
    assert not out[:, 2, :][far].any()
    assert out[:, 2, :][near].all() and out[:, 2, :][brain].all()
    np.testing.assert_array_equal(out[:, 0, :], mask[:, 0, :])
    # two large pieces (olfactory bulbs): both stay even far apart
    bulbs = np.zeros((80, 1, 80), bool)
    bulbs[5:25, 0, 30:50] = True
    bulbs[55:72, 0, 30:50] = True
    np.testing.assert_array_equal(drop_far_islands(bulbs), bulbs)
    # in the pipeline: the island joined to the brain through another slice is still dropped
    joined = mask.copy()
    joined[:, 3, :] |= (xx >= 40) & (np.abs(yy - 40) <= 3)  # a bridge slice out to the island
    joined[:, 2, :] &= ~near
    cleaned = clean_mask(joined)
    assert not cleaned[:, 2, :][far].any() and cleaned[:, 2, :][brain].all()


def test_a_cleaned_mask_is_one_piece():
    """Dropping far islands slice by slice could cut a patch of muscle from the brain it was
    joined to through that slice: it stayed as an island of its own (the nirodents T2w head:
    two of 57 and 62 mm^3 beside the skull; here 12 of 40 random masks). The largest
    component is kept again at the end."""
    from scipy import ndimage

    from samri_ml.masking.predict import clean_mask

    z, y, x = np.meshgrid(*[np.arange(40)] * 3, indexing="ij")
    ball = (z - 20) ** 2 + (y - 20) ** 2 / 1.5 + (x - 20) ** 2 < 100
    for seed in range(40):
        noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((40, 40, 40)), 2)
        cleaned = clean_mask(ball | (noise > 0.53))
        assert ndimage.label(cleaned)[1] == 1, seed
        assert cleaned[ball].mean() > 0.95


def test_high_percentile_of_a_mostly_zero_volume():
    """Under 1 % of non-zero voxels: the 99th percentile of those (the plain one is 0)."""
    vol = np.zeros((50, 50, 50), np.float32)
    vol[:4, :4, :4] = np.arange(64).reshape(4, 4, 4) + 1
    assert np.percentile(vol, 99) == 0
    assert pp.high_percentile(vol) == pytest.approx(np.percentile(np.arange(64) + 1, 99))
    ordinary = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    assert pp.high_percentile(ordinary) == np.percentile(ordinary, 99)
    assert pp.high_percentile(np.zeros((5, 5, 5))) == 0


def test_unknown_training_data_is_said():
    """A model without its _training.json: its sources are neither 'seen' nor 'unseen'."""
    from samri_ml.masking.evaluate import by_source, report

    rows = [{"scan": "emory/T2", "source": "emory", "reference": "template", "dice": 0.9,
             "r_image_reference": 0.8, "r_image_predicted": float("nan"),
             "r_reference_predicted": 0.9, "volume_reference": 10, "volume_predicted": 9,
             "seconds": 0.1, "error": ""}]
    assert by_source(rows, [], training_known=False)[0]["seen_in_training"] is None
    assert by_source(rows, [])[0]["seen_in_training"] is True
    assert by_source(rows, ["emory"], training_known=False)[0]["seen_in_training"] is False
    assert "unknown" in report(rows, [], training_known=False)


# ------------------------------------------------------------- headers samri_ml-mask reads


def _sammba_like(shape=(20, 24, 16)):
    import nibabel as nb

    data = _ellipsoid(shape).astype(np.float32) * 100
    return nb.Nifti1Image(data, np.diag([0.3, 0.3, 0.3, 1]))


def _zero_sform(img, path, row=(0, 0, 0, 0)):
    """``img`` written to ``path`` with an sform of zeros (``row`` its first row) in force, as
    a file can hold it (nibabel refuses such an affine given to its constructor); returns the
    file read back by nibabel."""
    import nibabel as nb

    header = img.header.copy()
    header["srow_x"], header["srow_y"], header["srow_z"] = row, [0] * 4, [0] * 4
    header["sform_code"] = 1
    nb.Nifti1Image(np.asarray(img.dataobj), None, header).to_filename(path)
    return nb.load(path)


def test_a_header_without_orientation_is_refused_in_one_line(tmp_path):
    """An sform of zeros or with a NaN: refused on loading (it used to be masked, then fail in
    the --png figure or when the mask was written), and by predict_mask for an image in
    memory; the mask would have had no orientation or voxel size."""

    from samri_ml.io import load_nifti
    from samri_ml.masking.predict import predict_mask

    img = _sammba_like()
    for name, row, words in (("zeros", [0, 0, 0, 0], "sform is singular"),
                             ("nan", [np.nan, 0, 0, 0], "sform is NaN or Inf")):
        path = tmp_path / f"{name}.nii.gz"
        in_memory = _zero_sform(img, path, row)
        with pytest.raises(SamriMLError, match=words) as err:
            load_nifti(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
        with pytest.raises(SamriMLError, match=f"^the image: the header's {words}"):
            predict_mask(in_memory)


def test_a_fine_grid_in_meters_is_not_singular(tmp_path):
    """A header counting in meters (which the QC converts to mm) with 40 um voxels has an
    affine determinant of 6.4e-14: it was refused as 'singular (e.g. all zeros)'."""
    import nibabel as nb

    from samri_ml.io import load_nifti

    img = _sammba_like()
    affine = np.diag([4e-5, 4e-5, 4e-5, 1])
    meters = nb.Nifti1Image(np.asarray(img.dataobj), affine)
    meters.header.set_xyzt_units("meter")
    meters.to_filename(tmp_path / "meters.nii.gz")
    np.testing.assert_allclose(load_nifti(tmp_path / "meters.nii.gz").affine, affine)
    # a rank-deficient one, whatever its scale, is still refused
    flat = affine.copy()
    flat[:3, 2] = flat[:3, 0]
    nb.Nifti1Image(np.asarray(img.dataobj), flat).to_filename(tmp_path / "flat.nii.gz")
    with pytest.raises(SamriMLError, match="sform is singular"):
        load_nifti(tmp_path / "flat.nii.gz")


def test_a_zero_voxel_size_is_a_note_not_a_nibabel_line(tmp_path, capfd):
    """nibabel printed ``pixdim[1,2,3] should be non-zero; setting 0 dims to 1`` raw and the
    mask's volume came out in unit voxels, unsaid."""
    import warnings

    import nibabel as nb

    from samri_ml.errors import SamriMLNote
    from samri_ml.io import load_nifti

    img = _sammba_like()
    for sform in (False, True):
        path = tmp_path / f"zero_pixdim_{sform}.nii"
        (img if sform else nb.Nifti1Image(np.asarray(img.dataobj), None)).to_filename(path)
        raw = bytearray(path.read_bytes())
        raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1:4] of the NIfTI-1 header
        path.write_bytes(bytes(raw))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            load_nifti(path)
        notes = [str(w.message) for w in seen if issubclass(w.category, SamriMLNote)]
        # without the sform, no form is coded: its orientation is said too
        assert len(notes) == 2 - sform, notes
        assert ("holds no orientation" in notes[-1]) != sform, notes
        assert "voxel size (pixdim) is zero" in notes[0], notes
        assert ("sform's (0.3 x 0.3 x 0.3) is used" in notes[0]) == sform, notes
        assert ("volumes in mm are unknown" in notes[0]) != sform, notes
    assert "pixdim" not in capfd.readouterr().err


def test_a_negative_voxel_size_says_that_ants_reads_it_mirrored(tmp_path, capfd):
    """A negative pixdim (NIfTI allows none) is taken as positive by nibabel, which said only
    "setting to abs of pixdim values", while ANTs (ITK) mirrors that axis: a mask written with
    the sizes positive lay mirrored on its scan in ITK-SNAP and in the registration's tools.
    The note says so, for a qform and an sform alike."""
    import warnings

    from samri_ml.errors import SamriMLNote
    from samri_ml.io import load_nifti

    img = _sammba_like()
    for codes in ((1, 0), (0, 1), (1, 1)):
        path = tmp_path / f"negative_{codes[0]}{codes[1]}.nii"
        img.header.set_qform(img.affine, code=codes[0])
        img.header.set_sform(img.affine, code=codes[1])
        img.to_filename(path)
        raw = bytearray(path.read_bytes())
        raw[80:84] = np.array([-0.3], "<f4").tobytes()  # pixdim[1] of the NIfTI-1 header
        path.write_bytes(bytes(raw))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            load_nifti(path)
        notes = [str(w.message) for w in seen if issubclass(w.category, SamriMLNote)]
        assert notes == [f"{path}: the header's voxel size (pixdim) is negative, which NIfTI "
                         "does not allow: taken as positive (nibabel's reading, and the "
                         "outputs' headers), where ANTs and ITK-SNAP mirror that axis, so "
                         "outputs on the scan's grid lie mirrored on the scan there; hint: check "
                         "which way that axis runs, and make the header's pixdim positive"], notes
    assert "pixdim" not in capfd.readouterr().err


def test_a_scaled_image_of_an_invalid_intercept_is_not_called_corrupt(tmp_path):
    """int16 data whose scl_slope scales them but whose scl_inter is NaN or Inf: nibabel
    refuses to read it, and samri_ml-mask and samri_ml-qc called the whole file "truncated or
    corrupt". The header's field is named, with its fix."""
    import nibabel as nb

    from samri_ml.io import load_nifti

    img = nb.Nifti1Image(_ellipsoid((20, 24, 16)).astype(np.int16), np.diag([0.3, 0.3, 0.3, 1]))
    img.header.set_slope_inter(2.5, 0)
    for inter in (np.nan, np.inf):
        path = tmp_path / f"inter_{inter}.nii"
        img.to_filename(path)
        raw = bytearray(path.read_bytes())
        raw[116:120] = np.array([inter], "<f4").tobytes()  # scl_inter of the NIfTI-1 header
        path.write_bytes(bytes(raw))
        with pytest.raises(SamriMLError) as err:
            load_nifti(path)
        assert str(err.value) == (f"{path}: its header's scl_inter is {inter} where its "
                                  "scl_slope scales the voxel values, so they cannot be read; "
                                  "hint: set scl_inter to the offset meant, e.g. 0 (nibabel: "
                                  "img.header['scl_inter'] = 0)")


def test_scaled_values_beyond_float32_are_named(tmp_path):
    """int16 data times an scl_slope of 3e38: finite in float64, Inf in float32 (the masker's
    type); it was called "NaN or Inf voxels", after a raw numpy overflow warning."""
    import warnings

    import nibabel as nb

    from samri_ml.io import load_nifti
    from samri_ml.masking.predict import predict_mask

    img = nb.Nifti1Image(_ellipsoid((20, 24, 16)).astype(np.int16) * 30000,
                         np.diag([0.3, 0.3, 0.3, 1]))
    img.header.set_slope_inter(3e38, 0)
    img.to_filename(tmp_path / "slope.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw RuntimeWarning on the way
        loaded = load_nifti(tmp_path / "slope.nii.gz")
        with pytest.raises(SamriMLError, match=r"values overflow float32 \(the header's "
                           r"scl_slope is 3e\+38\); hint: fix the header's scl_slope"):
            predict_mask(loaded)


def test_a_complex_image_is_read_as_its_magnitude():
    import nibabel as nb

    from samri_ml.io import image_data

    data = np.arange(1, 25, dtype=np.float32).reshape(2, 3, 4)
    phase = np.exp(1j * np.linspace(0, 3, data.size)).reshape(data.shape)
    img = nb.Nifti1Image((data * phase).astype(np.complex64), np.eye(4))
    got = image_data(img)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, data, rtol=1e-6)


def test_mask_volume_is_in_mm_whatever_the_headers_unit():
    """A correct header in microns was reported as 497583053101 mm^3 with a note that the
    voxel size may be off by a factor of ten."""
    import nibabel as nb

    from samri_ml.cli.mask import summary

    # 467 mm^3 at 0.5 mm, a mouse brain's volume (at 0.3 mm, 101 mm^3: a note of its own)
    mask = _ellipsoid((30, 40, 20)).astype(np.uint8)
    mm = nb.Nifti1Image(mask, np.diag([0.5, 0.5, 0.5, 1]))
    mm.header.set_xyzt_units("mm")
    want = f"{mask.sum() * 0.125:.0f} mm^3"
    for unit, scale in (("micron", 1000), ("meter", 1e-3)):
        img = nb.Nifti1Image(mask, np.diag([0.5 * scale, 0.5 * scale, 0.5 * scale, 1]))
        img.header.set_xyzt_units(unit)
        line = summary(img, "m.nii.gz")
        assert want in line and "note:" not in line, line
    assert want in summary(mm, "m.nii.gz")
    tenfold = nb.Nifti1Image(mask, np.diag([5000, 5000, 5000, 1]))
    tenfold.header.set_xyzt_units("micron")
    assert "voxel size (5 x 5 x 5 mm) may be off by a factor of ten" in summary(tenfold, "m")
    # micrometres in a header without units: 1000 times, not "ten" (the QA pass)
    micrometres = nb.Nifti1Image(mask, np.diag([500, 500, 500, 1]))
    micrometres.header.set_xyzt_units("mm")
    assert "voxel size (500 x 500 x 500 mm) may be off by a factor of 1,000;" in summary(
        micrometres, "m")


@pytest.mark.parametrize("mm3, hint", [
    (299, None),  # sammba's 12-slice EPI, the smallest real mouse mask here
    (500, None),  # the Allen CCFv3 template
    (775, None),  # the largest manual mask (dama, a wild type)
    (400 / 3, None), (1650, None),  # the bounds, a factor of 3 around 400-550
    (2102, "not a mouse (a rat's brain is about 2000 mm^3)? the whole head masked"),  # nirodents
    (1700, "the whole head masked"),
    (120, "only a few slices of the brain in the image"),
    (19_000, "or the header's voxel size (0.2 x 0.2 x 0.2 mm) too large?"),
    (6, "or the header's voxel size (0.2 x 0.2 x 0.2 mm) too small?"),
    (423_712, "voxel size (0.2 x 0.2 x 0.2 mm) may be off by a factor of ten;"),  # emory
    (0.41, "voxel size (0.2 x 0.2 x 0.2 mm) may be off by a factor of ten;"),  # 1000 x small
    (5e11, "may be off by a factor of 1,000;"),  # micrometres read as mm
])
def test_a_brain_volume_no_mouse_has_gets_a_note(mm3, hint):
    """A mask 2-5 times a mouse brain's volume (a rat, the whole head, a few slices, a voxel
    size off in one direction) got no word; only one 1000 times off did. The note names the
    volume, the range and what to check."""
    from samri_ml.masks import brain_volume_note, plausible_brain_mm3

    assert plausible_brain_mm3() == pytest.approx((133.3, 1650), abs=0.1)
    note = brain_volume_note(mm3, (0.2, 0.2, 0.2))
    if hint is None:
        assert note is None, note
        return
    said = f"{mm3:.0f}" if mm3 >= 10 else f"{mm3:.2g}"
    assert note.startswith(f"a brain mask of {said} mm^3, outside a mouse brain's 133-1650 "
                           "mm^3; hint: "), note
    assert hint in note, note


def test_a_figure_that_fails_is_a_note_and_the_command_succeeds(tmp_path):
    """Whatever makes the --png picture fail after the mask is written (here an image in
    memory whose affine nibabel cannot reorient), it is one note, not an internal error."""
    import warnings

    import nibabel as nb

    from samri_ml.cli.mask import _draw
    from samri_ml.errors import SamriMLNote

    img = _sammba_like()
    mask = nb.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine)
    bad = _zero_sform(img, tmp_path / "zero_sform.nii")
    out = tmp_path / "out"
    out.mkdir()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert _draw(bad, mask, out / "qc.png", "in.nii.gz") is False
    notes = [str(w.message) for w in seen if issubclass(w.category, SamriMLNote)]
    assert len(notes) == 1 and notes[0].startswith(f"the figure {out / 'qc.png'} could not "
                                                    "be drawn (") and "mask is written" in notes[0]
    assert list(out.iterdir()) == []  # no PNG, no temporary file
    assert _draw(img, mask, out / "ok.png", "in.nii.gz") is True
    assert (out / "ok.png").stat().st_size > 1000


def test_out_of_memory_names_the_commands_own_options(capsys):
    """The shared handler said "use fewer --nprocs" to samri_ml-mask, which has none, and
    printed no traceback with -v. docs/errors.rst quotes the hint (it quoted an older one,
    "ten times IN's size ... 2.9 GB", after the code's had changed)."""
    from pathlib import Path

    from samri_ml.cli import mask
    from samri_ml.cli._common import run_cli

    def huge(argv):
        return np.ones(2**62, np.uint8)  # a real MemoryError (numpy cannot allocate it)

    assert run_cli(mask.PROG, huge, [], memory_hint=mask.MEMORY_HINT) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"samri_ml-mask: error: out of memory; hint: {mask.MEMORY_HINT}"], err
    assert "--nprocs" not in mask.MEMORY_HINT and "crop IN" in mask.MEMORY_HINT
    assert run_cli(mask.PROG, huge, ["-v"], memory_hint=mask.MEMORY_HINT) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith(mask.MEMORY_HINT)
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "errors.rst").read_text()
                   .split())
    assert f"``out of memory; hint: {mask.MEMORY_HINT}``" in doc


def test_maskbrain_refuses_too_few_max_slices_with_one_line(tmp_path):
    import nibabel as nb
    from traits.api import TraitError

    from samri_ml.interfaces.masking import MaskBrain

    src = tmp_path / "in.nii.gz"
    nb.save(_sammba_like(), src)
    # where it is set, before any work upstream (it was refused only when the node ran)
    with pytest.raises(TraitError, match="'max_slices' trait .* must be an integer >= 32, but "
                                         "a value of 10"):
        MaskBrain(in_file=str(src), max_slices=10)
    # MaskBrain.help() says the minimum before a run fails on it
    assert "(at least 32," in " ".join(MaskBrain.input_spec().trait("max_slices").desc.split())


def test_evaluate_masker_refuses_unknown_sources_and_a_foreign_training_record(tmp_path, capsys):
    """``--held-out bogus`` was taken (and sammba then reported as seen in training); a
    ``_training.json`` without ``config`` gave a bare ``KeyError: 'config'``."""
    from samri_ml.cli.evaluate_masker import main

    assert main(["--held-out", "bogus", "--data-dir", str(tmp_path)]) == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: the record beside it is refused first")
    (tmp_path / "m_training.json").write_text('{"epochs": 3}')
    assert main(["--model", str(model), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training record" in err[0] and "--held-out" in err[0], err


def _sammba_layout(root):
    """``root/mri/scans/sammba`` with a small func (4D), anat and mask: the one source whose
    reference mask :func:`~samri_ml.masking.data.real_scans` registers into its cache."""
    import nibabel as nb

    sam = root / "mri" / "scans" / "sammba"
    sam.mkdir(parents=True)
    brain = _ellipsoid((24, 24, 20), radii=(7, 8, 6))
    head = _ellipsoid((24, 24, 20), radii=(10, 11, 8))
    anat = (100.0 * head + 300.0 * brain).astype(np.float32)
    affine = np.diag([0.2, 0.2, 0.3, 1.0])
    nb.save(nb.Nifti1Image(anat, affine), sam / "anat.nii.gz")
    nb.save(nb.Nifti1Image(brain.astype(np.uint8), affine), sam / "mask.nii.gz")
    nb.save(nb.Nifti1Image(np.stack([anat] * 3, axis=-1), affine), sam / "func.nii.gz")
    return sam


def test_the_mask_cache_follows_xdg_and_an_unwritable_one_is_named(tmp_path, monkeypatch,
                                                                  capsys):
    """With HOME unwritable (a cluster account, a container) samri_ml-evaluate-masker and
    -train-masker died with the registration worker's traceback and 'CalledProcessError';
    XDG_CACHE_HOME was ignored. Now the cache follows XDG_CACHE_HOME (a relative one is
    ignored, as the XDG specification says), and one that cannot be written is one line."""
    import nibabel as nb

    from samri_ml import paths
    from samri_ml.cli.evaluate_masker import main
    from samri_ml.masking.data import real_scans

    _sammba_layout(tmp_path / "data")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert paths.cache_dir("masks") == tmp_path / "home" / ".cache" / "samri_ml" / "masks"
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    scans = {s.name: s for s in real_scans(tmp_path / "data", skip=("dama",))}
    [cached] = (xdg / "samri_ml" / "masks").iterdir()  # no parts left
    assert cached.name.startswith("sammba_func_mask_rigid-identity_")
    mask = np.asarray(nb.load(cached).dataobj)
    assert dice(mask > 0, scans["sammba/anat"].mask) > 0.9  # the same head, not moved
    assert not (tmp_path / "home" / ".cache" / "samri_ml").exists()

    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    argv = ["--data-dir", str(tmp_path / "data"), "--sources", "sammba"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"samri_ml-evaluate-masker: error: cannot write the cache folder {blocked}"
                   "/samri_ml/masks (Not a directory); hint: pass --cache-dir DIR or set "
                   "XDG_CACHE_HOME to a writable folder"], err
    assert main([*argv, "--cache-dir", str(blocked / "c")]) == 1
    assert f"cannot write the cache folder {blocked}/c (Not a directory)" in capsys.readouterr().err


def test_a_derived_mask_of_other_scans_is_not_read_from_the_cache(tmp_path):
    """The registration-derived reference mask (sammba/func) was cached under the scan's name
    and the recipe alone: another --data-dir (or a scan replaced) read the old scans' mask
    as its reference, in silence. The inputs' contents are now in the cache's name."""
    import nibabel as nb

    from samri_ml.masking.data import real_scans

    _sammba_layout(tmp_path / "a")
    _sammba_layout(tmp_path / "b")
    mask_b = tmp_path / "b/mri/scans/sammba/mask.nii.gz"
    half = np.asarray(nb.load(mask_b).dataobj).copy()
    half[12:] = 0  # another reference: the left half of the brain
    nb.save(nb.Nifti1Image(half, nb.load(mask_b).affine), mask_b)
    masks = tmp_path / "masks"
    func = {d: {s.name: s for s in real_scans(tmp_path / d, masks, skip=("dama",))}
            ["sammba/func"].mask for d in ("a", "b")}
    assert dice(func["b"], half > 0) > 0.9 and dice(func["a"], half > 0) < 0.8
    assert len(list(masks.iterdir())) == 2


def test_apply_mask_takes_paths_and_refuses_a_mask_of_another_grid(tmp_path):
    """``apply_mask('scan.nii.gz', mask)`` (``predict_mask`` takes paths) failed with
    ``AttributeError: 'str' object has no attribute 'get_data_dtype'``, a mask of another
    shape with numpy's ``operands could not be broadcast``, and a mask of another scan of
    the same shape (another affine) was applied in silence. Now paths are read, a 4D file of
    one volume stays 4D, and another grid is refused with one line naming the files."""
    import nibabel as nb

    from samri_ml.masking.predict import apply_mask

    rng = np.random.default_rng(0)
    data = rng.uniform(1, 100, (10, 12, 8, 1)).astype(np.float32)
    mask = np.zeros(data.shape[:3], np.uint8)
    mask[2:8, 3:9, 2:6] = 1
    affine = np.diag([0.3, 0.3, 0.5, 1])
    scan, mask_file = tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz"
    nb.save(nb.Nifti1Image(data, affine), str(scan))
    nb.save(nb.Nifti1Image(mask, affine), str(mask_file))
    want = data * mask[..., None]
    for img, m in [(str(scan), mask_file), (scan, nb.load(mask_file)), (nb.load(scan), str(mask_file))]:
        out = apply_mask(img, m)
        assert out.shape == data.shape  # the file's 4D of one volume
        np.testing.assert_array_equal(out.get_fdata(), want)
    # ITK's float32 rounding of the same affine is the same grid
    near = affine.copy()
    near[:3, 3] += 1e-6
    np.testing.assert_array_equal(
        apply_mask(scan, nb.Nifti1Image(mask, near)).get_fdata(), want)
    shifted = affine.copy()
    shifted[0, 3] += 1.0  # the same shape 1 mm away: 3 voxels
    nb.save(nb.Nifti1Image(mask, shifted), str(tmp_path / "other.nii.gz"))
    with pytest.raises(SamriMLError, match=r"^brain mask .*other.nii.gz is not on the grid of "
                                           r".*scan.nii.gz: same shape \(10, 12, 8\), but its "
                                           r"affine puts the grid 1 mm away; hint: "):
        apply_mask(scan, tmp_path / "other.nii.gz")
    # the distance in the header's unit (a scan in microns was said to be "mm" away)
    in_um = nb.Nifti1Image(data, affine * [[1000], [1000], [1000], [1]])
    in_um.header.set_xyzt_units("micron")
    um_shifted = in_um.affine.copy()
    um_shifted[0, 3] += 1000.0
    with pytest.raises(SamriMLError, match=r"affine puts the grid 1e\+03 um away; hint: "):
        apply_mask(in_um, nb.Nifti1Image(mask, um_shifted))
    # shapes only where asked (the registration's bias-corrected scan)
    assert apply_mask(scan, tmp_path / "other.nii.gz", check_affine=False).shape == data.shape
    with pytest.raises(SamriMLError, match=r"^brain mask the mask \(9, 12, 8\) is not on the "
                                           r"grid of the image \(10, 12, 8\); hint: "):
        apply_mask(nb.load(scan), nb.Nifti1Image(mask[:-1], affine))


def test_evaluate_masker_names_a_truncated_scan(tmp_path, capsys):
    """A truncated scan in the data folder stopped samri_ml-evaluate-masker with
    ``error: EOFError: Compressed file ended before the end-of-stream marker was reached``,
    naming no file among dozens; now the file is named, as every other command names it."""
    from samri_ml.cli.evaluate_masker import main

    sam = _sammba_layout(tmp_path / "data")
    anat = sam / "anat.nii.gz"
    anat.write_bytes(anat.read_bytes()[:1000])  # cut short
    argv = ["--data-dir", str(tmp_path / "data"), "--sources", "sammba",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "e.json")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"samri_ml-evaluate-masker: error: {anat}: truncated or corrupt image "
                   "(Compressed file ended before the end-of-stream marker was reached)"], err
    assert not (tmp_path / "e.json").exists()


def _held_at_the_network(tmp_path, monkeypatch, seed: int) -> tuple[float, float]:
    """samri_ml-mask on a scaled int16 4D run of 8 volumes: the bytes a voxel of the run that
    were held (tracemalloc) as the real network pass started, and the most held before it;
    asserts the mask, header included, is the one predict_mask makes of the whole run held in
    float64."""
    import tracemalloc

    import nibabel as nb

    from samri_ml.cli.mask import main
    from samri_ml.example import make_template
    from samri_ml.io import load_nifti
    from samri_ml.masking import predict

    head = make_template(0, contrasts=("t2",), supersample=1)["T2w"]
    rng = np.random.default_rng(seed)
    frames = [np.asarray(head.dataobj) * rng.uniform(0.95, 1.05) for _ in range(8)]
    raw = np.round(np.stack(frames, axis=-1) / np.max(frames) * 30000).astype(np.int16)
    run = nb.Nifti1Image(raw, head.affine)
    run.header.set_slope_inter(0.01, 2.0)
    run.header.set_xyzt_units("mm", "sec")
    nb.save(run, str(tmp_path / "run.nii"))
    predict.load_model()  # the shipped network loaded (and cached) before the count starts
    held = []
    network = predict.predict_volume

    def counted(*args, **kwargs):  # the real network pass; what is held as it starts
        held.append(tracemalloc.get_traced_memory())
        return network(*args, **kwargs)

    monkeypatch.setattr(predict, "predict_volume", counted)
    tracemalloc.start()
    try:
        assert main([str(tmp_path / "run.nii"), str(tmp_path / "mask.nii.gz")]) == 0
    finally:
        tracemalloc.stop()
    monkeypatch.setattr(predict, "predict_volume", network)
    nb.save(predict.predict_mask(load_nifti(tmp_path / "run.nii", squeeze=False)),
            str(tmp_path / "want.nii.gz"))
    got, want = nb.load(tmp_path / "mask.nii.gz"), nb.load(tmp_path / "want.nii.gz")
    assert got.shape == raw.shape[:3]
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.asanyarray(want.dataobj))
    assert got.header.binaryblock == want.header.binaryblock
    return held[0][0] / raw.size, held[0][1] / raw.size


def test_samri_ml_mask_does_not_hold_a_scaled_runs_float64_data_through_the_network(
        tmp_path, monkeypatch):
    """load_nifti holds a scaled int16 run's data as float64 (8 bytes a voxel), and
    samri_ml-mask kept that array through the network pass, beside the float32 values the
    network takes. Now the run is held as float32 from the start (the same values): 4 bytes a
    voxel held when the network starts, not 8; the same mask, header included."""
    per_voxel, _ = _held_at_the_network(tmp_path, monkeypatch, seed=4)
    assert per_voxel < 6, f"{per_voxel:.1f} bytes a voxel"


def test_samri_ml_mask_does_not_hold_a_4d_runs_volumes_through_the_network(tmp_path,
                                                                           monkeypatch):
    """samri_ml-mask without --masked or --png needs only a 4D run's temporal mean, yet it
    held the whole run (as float32: 4 bytes a voxel of the run) through the network pass. Now
    only the mean is held there (an eighth of that for 8 volumes); the same mask, header
    included, as the mask of the whole run."""
    per_voxel, _ = _held_at_the_network(tmp_path, monkeypatch, seed=5)
    assert per_voxel < 2, f"{per_voxel:.2f} bytes a voxel of the run"


def test_samri_ml_mask_reads_a_scaled_run_without_a_float64_copy(tmp_path, monkeypatch):
    """samri_ml-mask read a scaled int16 run as nibabel gives it, one float64 array (8 bytes a
    voxel beside the file's 2), then cast it to float32: 12 bytes a voxel of the run at the
    peak before the network (a 96 x 96 x 40 x 300 run: 1.34 GB for the whole command, 0.85 GB
    now). Now the file's integers are scaled into float32 a chunk at a time: the peak is the
    int16 and float32 arrays (6-7 bytes a voxel); the same mask, header included."""
    _, peak = _held_at_the_network(tmp_path, monkeypatch, seed=6)
    assert peak < 8, f"{peak:.1f} bytes a voxel of the run"


@pytest.mark.parametrize("name", ["minc1_4d.mnc", "minc2_4d.mnc"])
def test_samri_ml_mask_reads_a_minc_file_as_before(tmp_path, name, capsys):
    """load_nifti(float32=True) (4be71e2) asked every nibabel proxy for the NIfTI scaling
    factors: a MINC file, which load_nifti reads and MINC's own proxy scales, stopped
    samri_ml-mask and MaskBrain with ``AttributeError: 'MincImageArrayProxy' object has no
    attribute 'slope'``. It is read as before (nibabel's own MINC test files: their values
    as float32), and samri_ml-mask goes on to judge the image itself."""
    from pathlib import Path

    import nibabel as nb

    from samri_ml.cli.mask import main
    from samri_ml.io import load_nifti

    path = Path(nb.__file__).parent / "tests" / "data" / name
    if not path.is_file():
        pytest.skip(f"nibabel's test data are not installed ({path})")
    want = np.asanyarray(nb.load(path).dataobj).astype(np.float32)
    got = load_nifti(path, allow_4d=True, squeeze=False, float32=True)
    assert got.dataobj.dtype == np.float32 and np.array_equal(np.asanyarray(got.dataobj), want)
    assert main([str(path), str(tmp_path / "mask.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "AttributeError" not in err and "too few for a 3D brain mask" in err, err


def test_masking_a_scaled_4d_run_makes_one_array_beside_the_loaded_one(tmp_path):
    """``samri_ml-mask --masked`` and MaskBrain load the run (load_nifti: an image that holds
    its data, float64 for a scaled integer run), then apply the mask: that made three float32
    copies more (cast, product, its cast), 20 bytes a voxel held at once for a scaled int16
    run against the 12 of a proxy-backed image before. Now one float32 array, the same
    values (negative zeros and NaN outside the mask too)."""
    import tracemalloc

    import nibabel as nb

    from samri_ml.io import load_nifti
    from samri_ml.masking.predict import apply_mask

    raw = np.random.default_rng(1).integers(-3000, 3000, (32, 32, 16, 40)).astype(np.int16)
    raw[0, 0, 0, 0] = 0
    affine = np.diag([0.2, 0.2, 0.4, 1])
    run = nb.Nifti1Image(raw, affine)
    run.header.set_slope_inter(0.01, -1.5)
    nb.save(run, str(tmp_path / "run.nii"))
    mask = np.zeros(raw.shape[:3], np.uint8)
    mask[4:28, 6:26, 2:14] = 1
    nb.save(nb.Nifti1Image(mask, affine), str(tmp_path / "mask.nii"))
    img = load_nifti(tmp_path / "run.nii", allow_4d=True, squeeze=False)
    tracemalloc.start()
    try:
        out = apply_mask(img, tmp_path / "mask.nii")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5.5 * raw.size, f"{peak / raw.size:.1f} bytes a voxel"
    # as before: the file's scaled values cast to float32, then masked
    want = np.asarray(nb.load(tmp_path / "run.nii").dataobj, np.float32) * (mask[..., None] > 0)
    assert out.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), want)
    assert np.signbit(np.asanyarray(out.dataobj)).sum() == np.signbit(want).sum()


@pytest.mark.parametrize("nifti2", [False, True])
def test_a_nifti_named_for_the_other_compression_is_said_so(tmp_path, nifti2):
    """An uncompressed NIfTI named .nii.gz, and a gzipped one named .nii, were "not a NIfTI
    image … hint: give a .nii or .nii.gz file": the extension they had. Said what they are."""
    import gzip

    import nibabel as nb

    from samri_ml.io import load_nifti

    kind = nb.Nifti2Image if nifti2 else nb.Nifti1Image
    plain = tmp_path / "scan.nii"
    nb.save(kind(np.ones((8, 8, 8), np.float32), np.eye(4)), plain)
    raw = tmp_path / "raw.nii.gz"
    raw.write_bytes(plain.read_bytes())
    with pytest.raises(SamriMLError, match=r"raw.nii.gz: an uncompressed NIfTI named .gz; "
                       r"hint: rename it to .*raw.nii \(or gzip it\)$"):
        load_nifti(raw)
    packed = tmp_path / "packed.nii"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(SamriMLError, match=r"packed.nii: a gzip-compressed NIfTI named .nii; "
                       r"hint: rename it to .*packed.nii.gz$"):
        load_nifti(packed)
    text = tmp_path / "text.nii.gz"
    text.write_text("not an image\n")
    with pytest.raises(SamriMLError, match=r"not a NIfTI image"):
        load_nifti(text)


def test_a_voxel_type_nibabel_cannot_read_is_not_called_corrupt(tmp_path):
    """A valid 1-bit NIfTI (DT_BINARY, datatype 1, a mask format of some tools) was refused as
    "truncated or corrupt image (data code 1 not supported)"; an unknown code still is."""
    import struct

    import nibabel as nb

    from samri_ml.io import load_nifti

    plain = tmp_path / "mask.nii"
    nb.save(nb.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.eye(4)), plain)
    raw = bytearray(plain.read_bytes())
    for code, words in ((1, r"its voxel type \(NIfTI datatype 1, binary\) cannot be read; "
                            r"hint: save it as uint8, int16 or float32$"),
                        (9999, r"truncated or corrupt image \(data code 9999 not recognized\)$")):
        raw[70:72] = struct.pack("<h", code)  # the header's datatype
        path = tmp_path / f"code{code}.nii"
        path.write_bytes(bytes(raw))
        with pytest.raises(SamriMLError, match=f"^{path}: {words}"):
            load_nifti(path)


def test_a_scans_mask_in_an_out_dir_is_named_without_its_image_extension():
    """samri_ml-mask IN... --out-dir: an Analyze pair's mask was named scan.img_mask.nii.gz."""
    from samri_ml.cli.mask import batch_name

    for name in ("sub-01_T2w.nii.gz", "sub-01_T2w.nii", "sub-01_T2w.img", "sub-01_T2w.hdr",
                 "sub-01_T2w.img.gz", "sub-01_T2w.NII.GZ"):
        assert batch_name(f"/data/{name}").endswith("_T2w_mask"), name


def test_a_model_an_interrupted_training_saved_is_named_where_it_masks(tmp_path):
    """samri_ml-mask, MaskBrain and evaluate-masker used a model that Ctrl-C or a time limit
    saved mid-training (its record says 'interrupted') without a word; --average-of refused
    one. A finished run's model, or one without a record, gets no note."""
    import json
    import warnings

    from samri_ml.errors import SamriMLNote
    from samri_ml.masking.predict import model_record_notes

    model = tmp_path / "lab.keras"
    views = ["sagittal", "coronal", "axial"]
    said = {}
    for state, record in (("interrupted", {"interrupted": "interrupted after 1 epoch(s)",
                                           "config": {"views": views}}),
                          ("finished", {"config": {"views": views}}), ("none", None)):
        record_path = tmp_path / "lab_training.json"
        record_path.unlink(missing_ok=True)
        if record is not None:
            record_path.write_text(json.dumps(record))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            model_record_notes(model, views)
        said[state] = [str(w.message) for w in seen if issubclass(w.category, SamriMLNote)]
    assert said["interrupted"] == [f"{model} was saved by an interrupted training run (its "
                                   "_training.json says 'interrupted'): the best epochs before "
                                   "it stopped; hint: finish the training, or use it knowingly"]
    assert said["finished"] == said["none"] == []


def test_a_scan_of_one_volume_in_4d_is_named_in_its_refusal(tmp_path):
    """load_nifti made an (x, y, z, 1) scan 3D without its file name: a refusal of its data
    ("the image is constant"), in a batch of scans through MaskBrain, named no scan."""
    import nibabel as nb

    from samri_ml.io import load_nifti
    from samri_ml.masking.predict import check_maskable

    path = tmp_path / "sub-07_T2w.nii.gz"
    nb.save(nb.Nifti1Image(np.full((40, 40, 20, 1), 5.0, np.float32), np.eye(4)), path)
    img = load_nifti(path)
    assert img.shape == (40, 40, 20) and img.get_filename() == str(path)
    with pytest.raises(SamriMLError, match=f"^{path}: the image is constant"):
        check_maskable(img)


def test_an_analyze_image_says_its_orientation_is_assumed(tmp_path):
    """An Analyze 7.5 pair (no orientation in its header) was read as LAS without a word: a
    scan stored right to left got a mirrored mask. It is named in a note now; a NIfTI pair and
    an Analyze image with SPM's .mat beside it (its affine known) are not."""
    import warnings

    import nibabel as nb

    from samri_ml.errors import SamriMLNote
    from samri_ml.io import load_nifti

    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    affine = np.diag([0.3, 0.3, 0.3, 1.0])
    cases = {"analyze.hdr": nb.AnalyzeImage, "pair.hdr": nb.Nifti1Pair,
             "spm.hdr": nb.Spm99AnalyzeImage}
    for name, kind in cases.items():
        nb.save(kind(data, affine), tmp_path / name)
    assert (tmp_path / "spm.mat").exists()  # SPM's affine beside it
    for name in cases:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            img = load_nifti(tmp_path / name)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
        notes = [str(w.message) for w in seen if issubclass(w.category, SamriMLNote)]
        if name == "analyze.hdr":
            assert notes == [f"{tmp_path / name}: an Analyze 7.5 image, whose header holds no "
                             "orientation: its x axis is taken to run from right to left "
                             "(nibabel's default); hint: check left and right in the output, "
                             "or convert the scan to NIfTI where its orientation is known"]
        else:
            assert notes == [], name


def test_a_nifti_without_orientation_codes_says_its_orientation_is_assumed(tmp_path):
    """A NIfTI whose qform_code and sform_code are both 0 holds no orientation: nibabel reads
    it as LAS, ANTs as LPS, and samri_ml-register registered such a scan from upside down
    (VCF 0.64, exit 0) without a word. It is named in a note now, in samri_ml-mask too; one
    code set is enough."""
    import warnings

    import nibabel as nb

    from samri_ml.errors import SamriMLNote
    from samri_ml.io import load_nifti

    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    said = {}
    for name, codes in {"none.nii": (0, 0), "qform.nii": (1, 0), "sform.nii.gz": (0, 1),
                        "pair.hdr": (0, 0)}.items():
        img = (nb.Nifti1Pair if name.endswith(".hdr") else nb.Nifti1Image)(data, None)
        img.header.set_zooms((0.3, 0.3, 0.3))
        img.header.set_qform(np.diag([0.3, 0.3, 0.3, 1]), code=codes[0])
        img.header.set_sform(np.diag([0.3, 0.3, 0.3, 1]), code=codes[1])
        nb.save(img, tmp_path / name)
        header = nb.load(tmp_path / name).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == codes  # as written
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            load_nifti(tmp_path / name)
        said[name] = [str(w.message) for w in seen if issubclass(w.category, SamriMLNote)]
    for name in ("none.nii", "pair.hdr"):
        assert said[name] == [f"{tmp_path / name}: its header holds no orientation (qform_code "
                              "and sform_code 0): nibabel, and so samri_ml, takes its axes as "
                              "LAS, ANTs as LPS; hint: set the header's sform/qform to the "
                              "scan's orientation (e.g. nibabel's img.set_sform(affine, "
                              "code=1))"]
    assert said["qform.nii"] == said["sform.nii.gz"] == []


def test_samri_ml_mask_refuses_an_image_before_loading_the_model(tmp_path):
    """A 2-slice image (or NaNs, a single slice, a constant image) is refused before the model
    is loaded: the command loaded the network first (TensorFlow's start, about 8 s) to say in
    one line that the image cannot be masked. In a fresh process the refusal leaves Keras and
    TensorFlow unimported."""
    import subprocess
    import sys

    import nibabel as nb

    rng = np.random.default_rng(0)
    cases = {"two_slices": rng.random((40, 40, 2)),
             "nan": np.where(rng.random((40, 40, 20)) > 0.5, np.nan, 1.0),
             "constant": np.full((40, 40, 20), 5.0), "one_slice_run": rng.random((40, 40, 1, 3))}
    for name, data in cases.items():
        path = tmp_path / f"{name}.nii.gz"
        nb.save(nb.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
        code = ("import sys\nfrom samri_ml.cli.mask import main\n"
                f"rc = main([{str(path)!r}, {str(tmp_path / 'out.nii.gz')!r}])\n"
                "print(rc, 'keras' in sys.modules, 'tensorflow' in sys.modules)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert proc.stdout.split() == ["1", "False", "False"], (name, proc.stdout, proc.stderr)
        # the file named, as the all-zero and not-a-NIfTI refusals name it (a constant image
        # or a 2-slice stack among many scans was not)
        assert f"samri_ml-mask: error: {path}: " in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "out.nii.gz").exists()


def test_a_masker_file_is_told_from_other_files_without_loading_it(tmp_path):
    """What samri_ml-register checks of --mask-model before its run (no TensorFlow): the
    shipped masker passes; the plate model, a model for other slices and a text file do not."""
    import json
    import zipfile

    from samri_ml.masking.predict import default_model_path, masker_file_problem
    from samri_ml.plates.identify import default_model_dir

    assert masker_file_problem(default_model_path()) is None
    assert masker_file_problem(default_model_dir() / "plates_embedding.keras").startswith(
        "a plate embedding model")
    text = tmp_path / "text.keras"
    text.write_text("x")
    assert masker_file_problem(text).startswith("not a Keras model file")
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("config.json", json.dumps({"config": {"name": "unet", "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 128, 128, 1]}}]}}))
    assert masker_file_problem(other) == ("not a brain-masking model (it takes (None, 128, 128, "
                                          "1) inputs; a masker takes 64x64x1 slices)")


@pytest.mark.parametrize("name", ["liar.nii", "liar.nii.gz"])
def test_a_small_file_whose_header_claims_a_huge_volume_is_refused_at_once(tmp_path, name):
    """A 4 KB .nii whose header said 1500^3 float32 voxels took 33 s and 13 GB before it was
    found truncated (5000^3: 'out of memory', with advice to crop the scan); the file's size is
    now weighed against the header before anything is allocated."""
    import gzip
    import time

    import nibabel as nb

    from samri_ml.errors import SamriMLError
    from samri_ml.io import load_nifti

    img = nb.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    img.header.set_data_shape((1500, 1500, 1500))
    raw = img.header.binaryblock + b"\0" * 4 + np.ones(1000, np.float32).tobytes()
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    start = time.perf_counter()
    with pytest.raises(SamriMLError, match=r"truncated or corrupt image \(its header gives "
                                           r"13,500,000,\d+ bytes"):
        load_nifti(path)
    assert time.perf_counter() - start < 5
    # whole files of every kind load: a pair's voxels are in its .img, not its .hdr
    data = np.random.default_rng(0).random((20, 22, 12)).astype(np.float32)
    for whole, kind in (("pair.hdr", nb.Nifti1Pair), ("pair_gz.hdr.gz", nb.Nifti1Pair),
                        ("two.nii", nb.Nifti2Image), ("two.nii.gz", nb.Nifti2Image)):
        nb.save(kind(data, np.eye(4)), tmp_path / whole)
        assert load_nifti(tmp_path / whole).shape == data.shape


def test_two_runs_filling_one_mask_cache_at_once_both_finish(example_dataset, tmp_path):
    """The registration-derived reference masks of ``samri_ml-evaluate-masker`` and
    ``samri_ml-train-masker`` (``register_mask``) saved the moving image under one name in
    the cache (``<mask>_moving.nii.gz``): two runs filling one cache at once (the two
    commands side by side, two jobs of a cluster) shared it, and the one that finished second
    ended in ``FileNotFoundError`` (the first had removed it). Two real processes at once:
    both finish, with the same mask, and the cache holds that mask alone."""
    import subprocess
    import sys

    import nibabel as nb

    tpl = example_dataset / "template"
    out = tmp_path / "cache" / "sub-01_mask_rigid.nii.gz"
    code = ("import sys; from samri_ml.masking.data import register_mask; "
            "register_mask(*sys.argv[1:5], transform='Rigid')")
    argv = [sys.executable, "-c", code,
            str(example_dataset / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz"),
            str(tpl / "tpl-Phantom_T2w.nii.gz"), str(tpl / "tpl-Phantom_desc-brain_mask.nii.gz"),
            str(out)]  # fmt: skip
    runs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errs
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert np.asarray(nb.load(out).dataobj).sum() > 1000
