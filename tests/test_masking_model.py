"""The shipped masking model on images a user would give it, the CLI and the Nipype node."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import nibabel as nb
import numpy as np
import pytest

from samri_ml.errors import SamriMLError
from samri_ml.masking.predict import default_model_path, predict_mask
from samri_ml.metrics import dice


@pytest.fixture(scope="module")
def phantom():
    """The project's mouse-head phantom (skull, muscle, CSF) in T2, T1 and EPI, with its mask."""
    from samri_ml.example import make_template

    return make_template(0, contrasts=("t2", "t1", "epi"), supersample=1)


def test_shipped_model_is_small_and_documented():
    path = default_model_path()
    assert path.is_file()
    assert path.stat().st_size < 20e6
    card = path.with_suffix(".md")
    assert "samri_ml-train-masker" in card.read_text()


@pytest.mark.parametrize("contrast", ["T2w", "T1w", "bold"])
def test_shipped_model_masks_a_skull_on_head(phantom, contrast):
    truth = np.asarray(phantom["mask"].dataobj) > 0
    mask = predict_mask(phantom[contrast])
    assert mask.shape == truth.shape and np.allclose(mask.affine, phantom[contrast].affine)
    assert mask.get_data_dtype() == np.uint8
    # measured with the shipped model (three views): T2w 0.949, T1w 0.900, bold 0.918; the
    # model before: 0.945, 0.889, 0.938; the G+H soup (not shipped) failed T1w: 0.849
    assert dice(np.asarray(mask.dataobj) > 0, truth) >= 0.88


def test_three_views_beat_the_seeds_coronal_slices(phantom):
    """Averaging sagittal, coronal and axial predictions removes the neck and snout blobs."""
    truth = np.asarray(phantom["mask"].dataobj) > 0
    scores = {}
    for views in (("coronal",), ("sagittal", "coronal", "axial")):
        mask = predict_mask(phantom["T2w"], views=views)
        scores[views] = dice(np.asarray(mask.dataobj) > 0, truth)
    coronal, three = scores.values()
    assert three > coronal + 0.02, scores
    with pytest.raises(SamriMLError, match="unknown view"):
        predict_mask(phantom["T2w"], views=("oblique",))


def test_a_masker_file_replaced_with_its_time_is_loaded_again(tmp_path):
    """``load_model`` kept the networks it loaded per file and modification time: a model file
    replaced by another and put back with its time (``cp -p``, ``rsync -a``) ran the network
    loaded before. Now they are kept per content."""
    import os

    from samri_ml.masking.predict import load_model
    from samri_ml.models.unet import build_unet

    path = tmp_path / "m.keras"
    first = build_unet(width=2, depth=2)
    first.save(path)
    st = path.stat()
    x = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 1)).astype(np.float32)
    assert np.allclose(load_model(path).predict(x, verbose=0), first.predict(x, verbose=0))
    second = build_unet(width=3, depth=2)  # other weights, another file
    second.save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    got = load_model(path).predict(x, verbose=0)
    assert np.allclose(got, second.predict(x, verbose=0), atol=1e-5)
    assert not np.allclose(got, first.predict(x, verbose=0), atol=1e-3)


def test_flip_augmentation_makes_the_prediction_mirror_equivariant(phantom):
    """With the left-right test-time augmentation a mirrored head gets exactly the mirrored
    probabilities; without it the network alone is not symmetric."""
    from samri_ml.masking import preprocess as pp
    from samri_ml.masking.predict import LEFT_RIGHT_AXIS, load_model, predict_volume

    model = load_model()
    ras, _ = pp.to_ras(np.asarray(phantom["bold"].dataobj, np.float32), phantom["bold"].affine)
    ras = ras[2:]  # the phantom is symmetric; this crop makes its mirror another image
    mirrored = np.flip(ras, LEFT_RIGHT_AXIS)
    for flip in (True, False):
        p = predict_volume(model, ras, flip=flip)
        q = np.flip(predict_volume(model, mirrored, flip=flip), LEFT_RIGHT_AXIS)
        gap = np.abs(p - q).max()
        if flip:
            assert gap < 1e-4, gap
        else:
            assert gap > 1e-3, gap
    # with max_slices too: the slices kept along the left-right axis (61 here, 33 kept, a
    # step that rounds differently from either end) are symmetric about the middle
    p = predict_volume(model, ras, flip=True, max_slices=33)
    q = np.flip(predict_volume(model, mirrored, flip=True, max_slices=33), LEFT_RIGHT_AXIS)
    assert np.abs(p - q).max() < 1e-4


def test_the_mirror_is_the_models_own_default(phantom, tmp_path):
    """Without ``flip`` a single network predicts the mirror too and an ensemble (the shipped
    masker: two U-Nets whose mean replaces the mirror, in as many passes) does not; an
    ensemble written by ``ensemble`` predicts the mean of its members' probabilities."""
    from samri_ml.masking import preprocess as pp
    from samri_ml.masking.predict import load_model, mirrors_by_default, predict_volume
    from samri_ml.models.unet import build_unet, ensemble, ensemble_size, unet_width

    shipped = load_model(precision="float32")
    assert ensemble_size(shipped) == 2 and not mirrors_by_default(shipped)
    assert unet_width(shipped) == 8
    ras, _ = pp.to_ras(np.asarray(phantom["bold"].dataobj, np.float32), phantom["bold"].affine)
    ras = ras[2:]
    np.testing.assert_array_equal(predict_volume(shipped, ras),
                                  predict_volume(shipped, ras, flip=False))
    a, b = build_unet(width=2), build_unet(width=4)
    assert mirrors_by_default(a)
    np.testing.assert_array_equal(predict_volume(a, ras), predict_volume(a, ras, flip=True))
    both = ensemble([a, b])
    assert ensemble_size(both) == 2 and not mirrors_by_default(both)
    assert a.name != "member_0"  # the members were copied, not renamed
    x = np.random.default_rng(0).random((4, 64, 64, 1), dtype=np.float32)
    mean = (np.asarray(a(x)) + np.asarray(b(x))) / 2
    np.testing.assert_allclose(np.asarray(both(x)), mean, atol=1e-6)
    both.save(tmp_path / "e.keras")  # and back, as samri_ml-mask --model loads it
    again = load_model(tmp_path / "e.keras", "float32")
    assert ensemble_size(again) == 2
    np.testing.assert_allclose(np.asarray(again(x)), mean, atol=1e-6)


def test_max_slices_predicts_fewer_slices_and_interpolates(phantom):
    """``max_slices`` predicts evenly spaced slices per view and interpolates linearly between
    them: a linear ramp is rebuilt exactly, a mask stays close to the full prediction, and a
    limit above every side gives the full prediction itself."""
    from samri_ml.masking.predict import _interpolate_slices, _slice_positions

    pos = _slice_positions(96, 32)
    assert len(pos) == 32 and pos[0] == 0 and pos[-1] == 95
    ramp = np.broadcast_to(np.arange(96, dtype=np.float32)[None, :, None], (3, 96, 2))
    np.testing.assert_allclose(_interpolate_slices(ramp[:, pos], pos, 96, 1), ramp, atol=1e-4)
    img = phantom["T2w"]  # 63 x 96 x 48
    full = np.asarray(predict_mask(img).dataobj)
    assert np.array_equal(np.asarray(predict_mask(img, max_slices=96).dataobj), full)
    assert dice(np.asarray(predict_mask(img, max_slices=40).dataobj), full) > 0.98


def test_cli_refuses_too_few_slices(tmp_path, phantom, capsys):
    """``--max-slices 2`` used to run and blame the input ("no brain found")."""
    from samri_ml.cli.mask import MIN_MAX_SLICES, main

    src = tmp_path / "in.nii.gz"
    nb.save(phantom["T2w"], src)
    assert main([str(src), str(tmp_path / "m.nii.gz"), "--max-slices", "8"]) == 2
    assert f"--max-slices must be at least {MIN_MAX_SLICES}" in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists()


def test_same_mask_for_any_axis_order(phantom):
    img = phantom["T2w"]
    ref = np.asarray(predict_mask(img).dataobj)
    # the same image stored with axes permuted and one flipped (header adjusted): same mask
    data = np.asarray(img.dataobj)
    flipped = np.flip(data, 0).transpose(2, 0, 1)
    fl = np.eye(4)
    fl[0, 0], fl[0, 3] = -1, data.shape[0] - 1
    perm = np.eye(4)
    perm[:3, :3] = np.eye(3)[:, [2, 0, 1]]
    other = nb.Nifti1Image(flipped, img.affine @ fl @ perm)
    got = np.asarray(predict_mask(other).dataobj)
    np.testing.assert_array_equal(got, np.flip(ref, 0).transpose(2, 0, 1))


def test_4d_series_is_masked_through_its_temporal_mean(phantom):
    img = phantom["bold"]
    data = np.asarray(img.dataobj)
    rng = np.random.default_rng(0)
    series = np.stack([data * (1 + 0.02 * rng.standard_normal()) for _ in range(3)], axis=-1)
    mask4d = predict_mask(nb.Nifti1Image(series.astype(np.float32), img.affine))
    assert mask4d.shape == data.shape
    # the mean as predict_mask takes it (in float64): a float32 mean differs in the last bit,
    # and a bfloat16 network (SAMRI_ML_PRECISION) may round such inputs apart
    mean = nb.Nifti1Image(series.mean(-1, dtype=np.float64).astype(np.float32), img.affine)
    np.testing.assert_array_equal(
        np.asarray(mask4d.dataobj), np.asarray(predict_mask(mean).dataobj)
    )


def test_never_an_empty_mask(phantom):
    # the hint names the threshold where one other than the default was given
    with pytest.raises(SamriMLError, match=r"no brain .*hint: lower the threshold "
                       r"\(--threshold; 0.99999 given, default 0.5\)"):
        predict_mask(phantom["T2w"], threshold=0.99999)
    # one that is no probability is refused before the network runs (0 was blamed on a
    # bright background, 1.5 and NaN on the image), as samri_ml-mask --threshold is
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(SamriMLError, match=r"threshold .*: must be between 0 and 1"):
            predict_mask(phantom["T2w"], threshold=bad)


# ----------------------------------------------------------------------------------------- CLI


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "samri_ml.cli.mask", *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_masks_a_head(tmp_path, phantom):
    from samri_ml.report import PREDICTED_MASK_COLOUR
    from samri_ml.testing import colour_pixels

    src = tmp_path / "head.nii.gz"
    nb.save(phantom["T1w"], src)
    out, masked, png = tmp_path / "mask.nii.gz", tmp_path / "brain.nii.gz", tmp_path / "qc.png"
    r = _cli(src, out, "--masked", masked, "--png", png)
    assert r.returncode == 0, r.stderr
    mask = nb.load(out)
    # one line says what was written, with the mask's volume (mm^3 from the voxel size)
    n = int((np.asarray(mask.dataobj) > 0).sum())
    mm3 = n * float(np.prod(mask.header.get_zooms()[:3]))
    assert r.stderr.strip().splitlines() == [
        f"samri_ml-mask: {out}: brain mask of {n} voxels, {mm3:.0f} mm^3, "
        f"{100 * n / mask.get_fdata().size:.1f} % of the image; masked image {masked}",
        f"samri_ml-mask: figure {png}"], r.stderr
    # the mask's outline is drawn; nothing but the PNG is left beside it
    assert colour_pixels(png, PREDICTED_MASK_COLOUR) > 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain.nii.gz", "head.nii.gz",
                                                            "mask.nii.gz", "qc.png"]
    assert mask.get_data_dtype() == np.uint8
    assert dice(np.asarray(mask.dataobj) > 0, np.asarray(phantom["mask"].dataobj) > 0) > 0.75
    assert not np.asarray(nb.load(masked).dataobj)[np.asarray(mask.dataobj) == 0].any()


def test_cli_masks_many_scans_with_one_model(tmp_path, phantom):
    """A lab looping samri_ml-mask over its scans loaded the model for each (5-10 s of 6-20):
    ``IN [IN ...] --out-dir DIR`` loads it once, writes DIR/<name>_mask.nii.gz (and, with
    --figures, a picture) the same as IN OUT, and a scan that cannot be masked is said while
    the others are masked (exit 1)."""
    from samri_ml.cli.mask import main

    scans = []
    for contrast in ("T2w", "bold"):
        scans.append(tmp_path / "in" / f"head_{contrast}.nii.gz")
        scans[-1].parent.mkdir(exist_ok=True)
        nb.save(phantom[contrast], scans[-1])
    single = tmp_path / "single.nii.gz"
    assert main([str(scans[0]), str(single)]) == 0
    out = tmp_path / "masks"  # created
    r = _cli(*scans, "--out-dir", out, "--figures")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "head_T2w_mask.nii.gz", "head_T2w_mask.png", "head_bold_mask.nii.gz",
        "head_bold_mask.png"]
    np.testing.assert_array_equal(np.asarray(nb.load(out / "head_T2w_mask.nii.gz").dataobj),
                                  np.asarray(nb.load(single).dataobj))
    assert f"[2/2] {scans[1]}" in r.stderr and f"2 masks in {out}" in r.stderr
    # one scan refused: the others are masked, the failure named, exit 1
    constant = tmp_path / "in" / "constant.nii.gz"
    nb.save(nb.Nifti1Image(np.full((40, 40, 20), 5.0, np.float32), np.eye(4)), constant)
    again = tmp_path / "again"
    r = _cli(constant, scans[1], "--out-dir", again)
    assert r.returncode == 1
    assert f"samri_ml-mask: error: {constant}: the image is constant" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"samri_ml-mask: error: 1 of 2 scans could not be masked: {constant}")
    assert sorted(p.name for p in again.iterdir()) == ["head_bold_mask.nii.gz"]
    # refused before anything runs: two scans of one name, the options of one file, IN OUT
    twin = tmp_path / "other" / "head_bold.nii.gz"
    twin.parent.mkdir()
    nb.save(phantom["bold"], twin)
    for argv, said in (([scans[1], twin, "--out-dir", again], "would both be masked into "
                        "head_bold_mask.nii.gz"),
                       ([scans[0], "--out-dir", again, "--png", tmp_path / "q.png"],
                        "--masked and --png name one file"),
                       ([scans[0], single, "--figures"], "--figures is for --out-dir"),
                       ([scans[0], single, "--overwrite"], "--overwrite is for --out-dir"),
                       ([scans[0], single, "--skip-existing"],
                        "--skip-existing is for --out-dir"),
                       ([*scans, "--out-dir", out, "--skip-existing", "--overwrite"],
                        "--overwrite and --skip-existing: give one"),
                       # the first run's masks there: replaced with --overwrite only, kept
                       # with --skip-existing
                       ([*scans, "--out-dir", out], "--out-dir: 2 of the masks exist already "
                        f"({out / 'head_T2w_mask.nii.gz'}, ...); hint: --skip-existing to "
                        "keep them and mask the others (an interrupted batch), --overwrite"),
                       # the first run's masks among the inputs of a rerun (a glob of DIR)
                       ([scans[0], out / "head_T2w_mask.nii.gz", "--out-dir", out],
                        f"{out / 'head_T2w_mask.nii.gz'} is one of the inputs; it would be "
                        "overwritten; hint: an earlier run's mask? leave the *_mask.nii.gz "
                        "out of IN"),
                       ([scans[0], scans[1], single], "give IN and OUT (got 3 path(s))")):
        r = _cli(*argv)
        assert r.returncode == 2 and said in r.stderr, r.stderr
    # resumed with --figures: a mask whose picture is missing (stopped while it was drawn)
    # was kept without it; it is masked again, with its picture
    (out / "head_bold_mask.png").unlink()
    r = _cli(*scans, "--out-dir", out, "--figures", "--skip-existing")
    assert r.returncode == 0, r.stderr
    assert (f"1 of the 2 masks are in {out} already, kept: head_T2w_mask.nii.gz" in r.stderr
            and f"[1/1] {scans[1]}" in r.stderr), r.stderr
    assert (out / "head_bold_mask.png").is_file()
    # the same command again, as the interrupted run's note says, where --out-dir is the
    # scans' folder: its glob takes the masks written before, refused as inputs it would
    # overwrite; with --skip-existing they are the earlier run's outputs, kept
    r = _cli(scans[1], out / "head_bold_mask.nii.gz", "--out-dir", out, "--skip-existing")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"samri_ml-mask: note: 1 of the 1 masks are in {out} already, kept: "
        "head_bold_mask.nii.gz", f"samri_ml-mask: 1 masks in {out}, none left to mask"]


def test_cli_many_scans_take_a_pairs_hdr_and_img_as_one_scan(tmp_path, phantom):
    """``samri_ml-mask scans/* --out-dir DIR`` on a folder of Analyze/NIfTI pairs gives each
    pair's .hdr and .img: they were refused as two scans masked into one name ('hint: ...
    rename one', which breaks the pair); one scan, masked once."""
    img = phantom["T2w"]
    pair = tmp_path / "scans" / "head.img"
    pair.parent.mkdir()
    nb.save(nb.Nifti1Pair(np.asarray(img.dataobj), img.affine), pair)
    given = sorted(pair.parent.iterdir())  # head.hdr, head.img
    out = tmp_path / "masks"
    r = _cli(*given, "--out-dir", out)
    assert r.returncode == 0, r.stderr
    assert "[1/1]" in r.stderr and "[2/" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["head_mask.nii.gz"]


def test_cli_many_scans_stop_at_a_model_that_cannot_be_loaded(tmp_path, capsys):
    """A wrong --model with --out-dir was tried again for every scan (a broken file: TensorFlow
    each time), each scan named as failed, and the closing line blamed the scans ('3 of 3 scans
    could not be masked'): the run stops at the model's error, which names it."""
    from samri_ml.cli.mask import main

    scans = []
    for name in ("a", "b", "c"):
        scans.append(tmp_path / f"{name}.nii.gz")
        data = np.zeros((20, 20, 20), np.float32)
        data[5:15, 5:15, 5:15] = 100 + np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
        nb.save(nb.Nifti1Image(data, np.diag([0.2, 0.2, 0.2, 1])), scans[-1])
    model = tmp_path / "broken.keras"
    model.write_bytes(b"not a model")
    out = tmp_path / "masks"
    assert main([*map(str, scans), "--out-dir", str(out), "--model", str(model)]) == 1
    err = capsys.readouterr().err
    assert err.count("cannot load the model") == 1 and f"{model}: cannot load the model" in err
    assert "[2/3]" not in err and "could not be masked" not in err
    assert not list(out.iterdir())
    # a missing one is a usage error, before any scan (test_cli_common)
    assert main([*map(str, scans), "--out-dir", str(out), "--model", str(tmp_path / "no.keras")]) == 2
    assert "[1/3]" not in capsys.readouterr().err


def _garbage(tmp_path):
    aff = np.diag([0.2, 0.2, 0.2, 1])
    zeros = tmp_path / "zeros.nii.gz"
    nb.save(nb.Nifti1Image(np.zeros((20, 20, 20), np.float32), aff), zeros)
    nan = tmp_path / "nan.nii.gz"
    data = np.ones((20, 20, 20), np.float32)
    data[3, 3, 3] = np.nan
    nb.save(nb.Nifti1Image(data, aff), nan)
    flat = tmp_path / "flat.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((20, 20), np.float32), aff), flat)
    text = tmp_path / "text.nii.gz"
    text.write_text("not an image\n")
    rgb = tmp_path / "rgb.nii.gz"  # RGB24: a record per voxel (numpy's isfinite failed on it)
    nb.save(nb.Nifti1Image(np.zeros((20, 20, 20), [("R", "u1"), ("G", "u1"), ("B", "u1")]),
                           aff), rgb)
    return {"all zero": zeros, "NaN": nan, "2D": flat, "not an image": text,
            "missing": tmp_path / "missing.nii.gz", "RGB": rgb}  # fmt: skip


def test_cli_refuses_garbage_with_one_line(tmp_path):
    from samri_ml.cli.mask import main

    for what, path in _garbage(tmp_path).items():
        out = tmp_path / f"out_{path.stem}.nii.gz"
        code = main([str(path), str(out)])
        assert code == (2 if what == "missing" else 1), what  # a missing IN: a usage error
        assert not out.exists(), f"{what}: no mask may be written"


def test_noise_that_the_network_fills_gets_a_note(tmp_path, phantom, capsys):
    """Noise gave a mask of 89 % of the image, written without a word (masks over 90 % are
    refused); a mask over 70 %, more than any brain fills of its grid, is now noted. A brain
    cut to its own bounding box (37 % here) is not. (The shipped ensemble fills 90-91 % of
    this noise at the default threshold, refused; at 0.6 it fills 81 %, noted.)"""
    from samri_ml.cli.mask import main

    rng = np.random.default_rng(1)
    noise = np.abs(rng.normal(0, 1, (48, 40, 56))).astype(np.float32)
    truth = np.asarray(phantom["mask"].dataobj) > 0
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(truth))
    brain = (np.asarray(phantom["T2w"].dataobj, np.float32) * truth)[box]
    for name, data, noted in (("noise", noise, True), ("brain", brain, False)):
        src = tmp_path / f"{name}.nii.gz"
        nb.save(nb.Nifti1Image(data, phantom["T2w"].affine), src)
        extra = ["--threshold", "0.6"] if noted else []
        assert main([str(src), str(tmp_path / f"{name}_mask.nii.gz"), *extra]) == 0
        err = capsys.readouterr().err
        assert ("% of the image, more than a brain fills of a box around it; hint: check that "
                "the image holds a brain" in err) is noted, (name, err)
    # at the default threshold the noise is never a silent mask: refused in one line (over
    # 90 %; bfloat16 here) or noted (a float32 CPU may land just under)
    out = tmp_path / "noise_default_mask.nii.gz"
    rc = main([str(tmp_path / "noise.nii.gz"), str(out)])
    err = capsys.readouterr().err
    if rc == 1:
        assert err.strip().count("\n") == 0 and "which no brain does" in err, err
        assert not out.exists()
    else:
        assert rc == 0 and "more than a brain fills of a box around it" in err, err


def test_swapped_arguments_keep_the_scan(tmp_path, phantom, capsys):
    """``samri_ml-mask mask.nii.gz scan.nii.gz`` (the order slipped) replaced the scan with a
    mask of the mask, exit 0. A mask as IN is noted; OUT that is an image but no mask is
    refused before anything is written; an earlier mask as OUT is still replaced."""
    from samri_ml.cli.mask import main

    scan, mask = tmp_path / "scan.nii.gz", tmp_path / "scan_mask.nii.gz"
    nb.save(phantom["T2w"], scan)
    before = scan.read_bytes()
    assert main([str(scan), str(mask)]) == 0
    capsys.readouterr()
    assert main([str(mask), str(scan)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"samri_ml-mask: note: {mask} holds only the values 0 and 1: a mask")
    assert err[-1] == (f"samri_ml-mask: error: {scan} exists and is no mask (values other than "
                       "0 and 1: a scan?); it would be overwritten; hint: check the order "
                       "(samri_ml-mask IN OUT), or remove it first")
    assert scan.read_bytes() == before
    assert main([str(scan), str(mask), "--threshold", "0.6"]) == 0  # a mask: rewritten
    # --out-dir names OUT itself: no order to check (the hint said to)
    other = tmp_path / "other"
    other.mkdir()
    (other / "scan_mask.nii.gz").write_bytes(before)
    capsys.readouterr()
    # a file of the mask's name: refused before anything runs without --overwrite (a lab's
    # own <scan>_mask.nii.gz was replaced without a word); with it, a scan still is not
    assert main([str(scan), "--out-dir", str(other)]) == 2
    assert (f"--out-dir: 1 of the masks exist already ({other / 'scan_mask.nii.gz'}); hint: "
            "--skip-existing to keep them") in capsys.readouterr().err
    for option in ("--overwrite", "--skip-existing"):  # nor kept as a mask
        assert main([str(scan), "--out-dir", str(other), option]) == 1
        err = capsys.readouterr().err
        assert (f"{other / 'scan_mask.nii.gz'} exists and is no mask (values other than 0 and "
                "1: a scan?); it would be overwritten; hint: remove it first, or give another "
                "--out-dir\n") in err and "check the order" not in err, err
        assert (other / "scan_mask.nii.gz").read_bytes() == before


def test_sigterm_leaves_no_temporary_file(tmp_path, phantom):
    """SIGTERM (``kill``, ``timeout``, a cluster's time limit) ended samri_ml-mask without a
    word and left its hidden temporary outputs; it is Ctrl-C now: 'terminated', exit 143,
    nothing left but the input. The signal is sent as the outputs are being written (the
    network's pass done: the run printed nothing yet, the temporary files exist)."""
    import signal
    import time

    src = tmp_path / "head.nii.gz"
    nb.save(phantom["T2w"], src)
    proc = subprocess.Popen([sys.executable, "-m", "samri_ml.cli.mask", str(src),
                             str(tmp_path / "m.nii.gz"), "--masked", str(tmp_path / "b.nii.gz")],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.name.startswith(".")
                                                  for p in tmp_path.iterdir()):
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    names = sorted(p.name for p in tmp_path.iterdir())
    if proc.returncode == 0:  # the writing was done before the signal came: all of it there
        assert names == ["b.nii.gz", "head.nii.gz", "m.nii.gz"], (names, err)
    else:
        assert proc.returncode == 143 and err.strip().splitlines()[-1] == \
            "samri_ml-mask: terminated", err
        assert names == ["head.nii.gz"], names


def _terminated_at(marker: str, *args):
    """``samri_ml-mask ARGS`` sent SIGTERM once it prints a line holding ``marker``: its exit
    status and all it said on stderr."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "samri_ml.cli.mask", *map(str, args)],
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            proc.send_signal(signal.SIGTERM)
            break
    err = "".join(lines) + proc.communicate(timeout=120)[1]
    return proc.returncode, err


def test_sigterm_in_many_scans_says_where_it_stopped(tmp_path, phantom):
    """``IN [IN ...] --out-dir DIR`` stopped by SIGTERM (a cluster's time limit) or Ctrl-C
    said 'terminated' alone: the closing line naming the scans that could not be masked was
    lost, and which were done was left to the log. A note says where it stopped, what failed
    before, and which scans are left."""

    scans = [tmp_path / "a.nii.gz", tmp_path / "notascan", tmp_path / "c.nii.gz",
             tmp_path / "d.nii.gz"]
    nb.save(phantom["T2w"], scans[0])
    scans[1].mkdir()
    nb.save(phantom["T1w"], scans[2])
    nb.save(phantom["bold"], scans[3])
    out = tmp_path / "masks"
    # the third scan begun: its prediction takes a second or more
    rc, err = _terminated_at("[3/4]", *scans, "--out-dir", out)
    assert rc == 143, err
    assert err.strip().splitlines()[-2:] == [
        f"samri_ml-mask: note: interrupted at [3/4] {scans[2]}: of the 2 scans before it, 1 "
        f"could not be masked ({scans[1]}), the others' masks are in {out}; hint: the same "
        f"command with --skip-existing masks {scans[2]} and the 1 after it",
        "samri_ml-mask: terminated"], err
    assert (out / "a_mask.nii.gz").is_file() and not (out / "d_mask.nii.gz").exists()
    # resumed: it was refused ('2 of the masks exist already') unless --overwrite, which
    # masked every scan again; --skip-existing keeps a's mask, untouched, and masks the rest
    # (the one there that is no mask is not kept: refused at its turn, as without the option)
    kept = (out / "a_mask.nii.gz").read_bytes()
    nb.save(phantom["bold"], out / "c_mask.nii.gz")  # a scan, not a mask
    r = _cli(scans[0], scans[2], scans[3], "--out-dir", out, "--skip-existing")
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[0] == (
        f"samri_ml-mask: note: 1 of the 3 masks are in {out} already, kept: a_mask.nii.gz")
    assert f"[1/2] {scans[2]}" in r.stderr and "exists and is no mask" in r.stderr
    assert (out / "a_mask.nii.gz").read_bytes() == kept and (out / "d_mask.nii.gz").is_file()
    (out / "c_mask.nii.gz").unlink()
    r = _cli(scans[0], scans[2], scans[3], "--out-dir", out, "--skip-existing")
    assert r.returncode == 0, r.stderr
    assert "2 of the 3 masks" in r.stderr and f"[1/1] {scans[2]}" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"samri_ml-mask: 3 masks in {out} (2 kept)"
    single = tmp_path / "c_single.nii.gz"
    assert _cli(scans[2], single).returncode == 0
    np.testing.assert_array_equal(np.asarray(nb.load(out / "c_mask.nii.gz").dataobj),
                                  np.asarray(nb.load(single).dataobj))


def test_an_interrupted_overwrite_batch_is_resumed_as_its_note_says(tmp_path, phantom):
    """A batch with --overwrite stopped by SIGTERM said 'the same command with
    --skip-existing', which with --overwrite is refused ('give one'): the hint says to give
    it instead of --overwrite, and that command resumes the batch, the mask done kept."""

    scans = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    nb.save(phantom["T2w"], scans[0])
    nb.save(phantom["T1w"], scans[1])
    out = tmp_path / "masks"
    command = [*map(str, scans), "--out-dir", str(out), "--overwrite"]
    rc, err = _terminated_at("[2/2]", *command)  # the second scan begun
    assert rc == 143, err
    assert err.strip().splitlines()[-2].endswith(
        f"hint: the same command with --skip-existing instead of --overwrite masks "
        f"{scans[1]}"), err
    kept = (out / "a_mask.nii.gz").read_bytes()
    r = _cli(*[a if a != "--overwrite" else "--skip-existing" for a in command])
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"samri_ml-mask: 2 masks in {out} (1 kept)"
    assert (out / "a_mask.nii.gz").read_bytes() == kept and (out / "b_mask.nii.gz").is_file()


def test_a_model_that_is_no_masker_is_refused_in_one_line(tmp_path, phantom, capsys):
    """The plate embedding given as --model used to fail deep in TensorFlow (a reshape of
    14912 values into 182672)."""
    from samri_ml.cli.mask import main
    from samri_ml.plates.identify import default_model_dir

    src = tmp_path / "t2.nii.gz"
    nb.save(phantom["T2w"], src)
    plate_model = default_model_dir() / "plates_embedding.keras"
    assert main([str(src), str(tmp_path / "m.nii.gz"), "--model", str(plate_model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a brain-masking model" in err[0] and "224" in err[0], err
    assert not (tmp_path / "m.nii.gz").exists()


def test_a_brain_in_a_large_zero_grid_is_masked(phantom):
    """A skull-stripped brain padded onto a grid 125 times its own: under 1 % of the voxels are
    not zero, so the 99th percentile (the seed's clip) was 0 and the image was refused as having
    "no positive intensities"; the 99th percentile of the positive voxels is used then."""
    truth = np.asarray(phantom["mask"].dataobj) > 0
    brain = np.asarray(phantom["T2w"].dataobj, np.float32) * truth
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(truth))
    brain, truth = brain[box], truth[box]
    pads = [(2 * n, 2 * n) for n in brain.shape]
    big = np.pad(brain, pads)
    assert np.percentile(big, 99) == 0
    mask = np.asarray(predict_mask(nb.Nifti1Image(big, phantom["T2w"].affine)).dataobj) > 0
    inner = tuple(slice(2 * n, 3 * n) for n in brain.shape)
    assert mask.sum() == mask[inner].sum()  # nothing outside the brain's box
    alone = np.asarray(predict_mask(nb.Nifti1Image(brain, phantom["T2w"].affine)).dataobj) > 0
    assert dice(mask[inner], alone) >= 0.95, dice(mask[inner], alone)


def test_cli_refuses_a_png_that_is_no_png(tmp_path, phantom, capsys):
    from samri_ml.cli.mask import main

    src = tmp_path / "t2.nii.gz"
    nb.save(phantom["T2w"], src)
    for bad in ("qc.jpg", str(src)):
        assert main([str(src), str(tmp_path / "m.nii.gz"), "--png", bad]) == 2
        assert f"--png must end in .png: {bad}" in capsys.readouterr().err
    folder = tmp_path / "qc.png"
    folder.mkdir()  # refused before the network runs, as OUT is
    assert main([str(src), str(tmp_path / "m.nii.gz"), "--png", str(folder)]) == 1
    assert "is a folder; hint: give a file name ending in .png" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qc.png", "t2.nii.gz"]


def test_cli_garbage_message_is_one_line(tmp_path):
    path = _garbage(tmp_path)["all zero"]
    r = _cli(path, tmp_path / "o.nii.gz")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samri_ml-mask: error:") and "zero" in lines[0]
    assert _cli().returncode == 2


# --------------------------------------------------------------------------------- interface


def test_maskbrain_node(tmp_path, phantom, monkeypatch):
    from samri_ml.interfaces.masking import MaskBrain

    src = tmp_path / "sub-1_T2w.nii"
    nb.save(phantom["T2w"], src)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = MaskBrain(in_file=str(src), report=True).run()
    out = res.outputs
    assert out.mask_list == [out.out_mask]
    assert not [w for w in caught if "a brain mask of" in str(w.message)]  # a mouse's volume
    from samri_ml.report import PREDICTED_MASK_COLOUR
    from samri_ml.testing import colour_pixels

    assert out.out_report.endswith("sub-1_T2w_mask.png")
    assert colour_pixels(out.out_report, PREDICTED_MASK_COLOUR) > 500
    mask = np.asarray(nb.load(out.out_mask).dataobj)
    assert dice(mask > 0, np.asarray(phantom["mask"].dataobj) > 0) > 0.75
    brain = np.asarray(nb.load(out.out_file).dataobj)
    assert not brain[mask == 0].any() and brain[mask > 0].any()


def test_maskbrain_says_when_its_mask_has_a_volume_no_mouse_brain_has(tmp_path, phantom):
    """The node gave a rat's mask, or that of a scan whose header's voxels are too large,
    without a word (``samri_ml-mask`` says it): a SamriMLNote now, as the command's note."""
    from samri_ml.errors import SamriMLNote
    from samri_ml.interfaces.masking import MaskBrain

    img = phantom["T2w"]
    src = tmp_path / "sub-1_T2w.nii.gz"
    # voxel edges twice as long: 8 times the phantom's brain, a rat's
    nb.save(nb.Nifti1Image(np.asanyarray(img.dataobj), np.diag([2, 2, 2, 1]) @ img.affine), src)
    with pytest.warns(SamriMLNote, match=r"sub-1_T2w.nii.gz: a brain mask of \d+ mm\^3, outside "
                      r"a mouse brain's 133-1650 mm\^3; hint: not a mouse") as caught:
        out = MaskBrain(in_file=str(src), views=["coronal"]).run(cwd=str(tmp_path)).outputs
    said = [w for w in caught if "a brain mask of" in str(w.message)]
    assert len(said) == 1 and str(src) in str(said[0].message)
    assert np.asarray(nb.load(out.out_mask).dataobj).any()  # the mask is still given


def test_trained_model_is_saved_compact_and_predicts_the_same(tmp_path):
    """What ``samri_ml-train-masker`` writes after its last epoch: a compiled model (custom
    loss, Adam state after a real step) saved without optimizer, loadable, same predictions."""
    import keras

    from samri_ml.masking.train import save_without_optimizer
    from samri_ml.models.unet import bce_dice_loss, build_unet, dice_coefficient

    model = build_unet(width=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_dice_loss,
                  metrics=[dice_coefficient])  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.random((4, 64, 64, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    save_without_optimizer(model, path)
    loaded = keras.saving.load_model(path, compile=False)
    assert not getattr(loaded, "compiled", False)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    full = tmp_path / "full.keras"
    model.save(full)
    assert path.stat().st_size < full.stat().st_size


def test_weight_average_of_two_models():
    """The model soup behind the shipped masker: weights are the members' mean, the average of
    a model with itself predicts as the model does, mismatched models are refused."""
    from samri_ml.errors import SamriMLError
    from samri_ml.masking.train import average_weights
    from samri_ml.models.unet import build_unet

    a, b = build_unet(width=2), build_unet(width=2)
    soup = average_weights([a, b])
    for wa, wb, ws in zip(a.get_weights(), b.get_weights(), soup.get_weights(), strict=True):
        np.testing.assert_allclose(ws, (wa + wb) / 2, rtol=1e-6, atol=1e-7)
    same = average_weights([a, a])
    x = np.random.default_rng(1).random((2, 64, 64, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(a(x)), atol=1e-6)
    with pytest.raises(SamriMLError, match=r"differs from model 1 in architecture \(widths 2 and 4\)"):
        average_weights([a, build_unet(width=4)])


@pytest.mark.parametrize("option", ["--average-of", "--ensemble-of"])
def test_train_masker_average_of_a_missing_model_is_a_clear_error(tmp_path, option):
    r = subprocess.run([sys.executable, "-m", "samri_ml.cli.train_masker", str(tmp_path / "o.keras"),
                        "--data-dir", str(tmp_path), option, str(tmp_path / "none.keras"),
                        str(tmp_path / "other.keras")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "none.keras: model file not found" in r.stderr
    assert not (tmp_path / "o.keras").exists()
    # one model makes no average or ensemble: a usage error before anything is loaded
    r = subprocess.run([sys.executable, "-m", "samri_ml.cli.train_masker", str(tmp_path / "o.keras"),
                        "--data-dir", str(tmp_path), option, str(tmp_path / "none.keras")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and f"{option}: give two or more models" in r.stderr, r.stderr


def test_a_repeated_view_counts_once(phantom):
    """``views=("axial", "axial")`` used to halve the probabilities (summed twice, divided as
    one view repeated): an empty mask, or another mask for ``coronal coronal axial``."""
    img = phantom["T2w"]
    for repeated, once in ((("axial", "axial"), ("axial",)),
                           (("coronal", "coronal", "axial"), ("coronal", "axial"))):
        a = np.asarray(predict_mask(img, views=repeated).dataobj)
        b = np.asarray(predict_mask(img, views=once).dataobj)
        assert np.array_equal(a, b), repeated


def test_a_label_map_given_as_the_scan_gets_a_note(phantom, tmp_path, capsys):
    """samri_ml-mask on an atlas' label map (the emory EPI atlas for its template) wrote a mask
    of believable volume, exit 0, without a word; now a note says it is a label map. The
    phantom's brain cut into numbered regions; the phantom scan itself gets no such note."""
    import warnings

    from samri_ml.cli.mask import main

    mask = np.asarray(phantom["mask"].dataobj) > 0
    i, j, k = np.indices(mask.shape)
    regions = (1 + i * 4 // mask.shape[0] + 4 * (j * 5 // mask.shape[1])) * mask
    nb.save(nb.Nifti1Image(regions.astype(np.int16), phantom["mask"].affine),
            tmp_path / "atlas.nii.gz")
    nb.save(phantom["T2w"], tmp_path / "T2w.nii.gz")
    words = "note: the image holds integer values in patches of one value: a label map"
    with warnings.catch_warnings():  # out of pytest's own recording, as in a command
        warnings.simplefilter("default")
        for name, noted in (("atlas", True), ("T2w", False)):
            assert main([str(tmp_path / f"{name}.nii.gz"), str(tmp_path / f"{name}_m.nii.gz"),
                         "--threads", "1"]) == 0
            err = capsys.readouterr().err
            assert (words in err) is noted, err


def test_a_mask_of_0_and_255_given_as_the_scan_is_called_a_mask(phantom, tmp_path, capsys):
    """samri_ml-mask on a brain mask stored 0/255 (the arguments' order slipped, as for a 0/1
    one) called it 'a label map (an atlas' regions)' and told the user to give the template
    rather than its labels; it is a mask, said as of a 0/1 one."""
    import warnings

    from samri_ml.cli.mask import main

    mask = tmp_path / "brain_mask.nii.gz"
    inside = np.asarray(phantom["mask"].dataobj) > 0
    nb.save(nb.Nifti1Image(inside.astype(np.uint8) * 255, phantom["mask"].affine), mask)
    with warnings.catch_warnings():  # out of pytest's own recording, as in a command
        warnings.simplefilter("default")
        assert main([str(mask), str(tmp_path / "out_mask.nii.gz"), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert (f"samri_ml-mask: note: {mask} holds only the values 0 and 255: a mask, not a scan? "
            "hint: give the scan first (samri_ml-mask IN OUT)") in err, err
    assert "label map" not in err, err


def test_negative_or_offset_backgrounds(phantom, tmp_path, capsys):
    """A z-scored image (negative background) gets the plain image's mask (it is shifted to a
    zero minimum first); an offset background is named in a note by samri_ml-mask, but not a
    constant one, which is subtracted (the note told the user to subtract it, of a mask the
    same as the plain image's)."""
    from samri_ml.cli.mask import main

    img = phantom["T2w"]
    data = np.asarray(img.dataobj, dtype=np.float32)
    plain = np.asarray(predict_mask(img).dataobj) > 0
    z = nb.Nifti1Image((data - data.mean()) / data.std(), img.affine)
    assert data.min() == 0 and dice(np.asarray(predict_mask(z).dataobj) > 0, plain) > 0.999
    import warnings

    high = np.percentile(data, 99)
    noise = np.random.default_rng(0).uniform(0, 0.05 * high, data.shape).astype(np.float32)
    src = tmp_path / "offset.nii.gz"  # an offset on a noisy background: kept, and named
    nb.save(nb.Nifti1Image(data + noise + 0.3 * high, img.affine), src)
    nb.save(nb.Nifti1Image(data + 0.3 * high, img.affine), tmp_path / "constant.nii.gz")
    nb.save(img, tmp_path / "plain.nii.gz")
    with warnings.catch_warnings():  # out of pytest's own recording, as in a command
        warnings.simplefilter("default")
        assert main([str(src), str(tmp_path / "m.nii.gz")]) == 0
        assert "note: the background is not dark" in capsys.readouterr().err
        assert main([str(tmp_path / "plain.nii.gz"), str(tmp_path / "m2.nii.gz")]) == 0
        assert "note:" not in capsys.readouterr().err
        assert main([str(tmp_path / "constant.nii.gz"), str(tmp_path / "m3.nii.gz")]) == 0
        assert "note:" not in capsys.readouterr().err
    np.testing.assert_array_equal(nb.load(tmp_path / "m3.nii.gz").get_fdata(),
                                  nb.load(tmp_path / "m2.nii.gz").get_fdata())


def test_a_voxel_size_ten_times_too_large_is_named(phantom, tmp_path, capsys):
    """The summary line gives the mask's volume; one of a thousand times a mouse brain's says
    that the header's voxel size may be off (the emory templates: 2 mm voxels)."""
    from samri_ml.cli.mask import main

    img = phantom["T2w"]
    big = nb.Nifti1Image(np.asarray(img.dataobj), np.diag([10, 10, 10, 1]) @ img.affine)
    nb.save(big, tmp_path / "big.nii.gz")
    assert main([str(tmp_path / "big.nii.gz"), str(tmp_path / "m.nii.gz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and " mm^3, " in err[0] and "of the image" in err[0], err
    assert err[1].startswith("samri_ml-mask: note: a brain mask of ") and "factor of ten" \
        in err[1], err
    nb.save(img, tmp_path / "plain.nii.gz")
    assert main([str(tmp_path / "plain.nii.gz"), str(tmp_path / "m2.nii.gz")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_brain_volume_no_mouse_has_is_named_and_the_mask_kept(phantom, tmp_path, capsys):
    """A mask whose volume is not a mouse brain's got no word unless it was a thousand times
    off: voxel sizes ten times too small in the header (0.45 mm^3), twice too large (a
    believable 3568 mm^3, a rat's or a whole head's), a slab of 10 slices (89 mm^3). Each
    is one note line naming the volume, the range and a hint; the exit code is 0 and, where
    only the header differs, the mask is the plain image's (the phantom's 446 mm^3: no note)."""
    from samri_ml.cli.mask import main

    img = phantom["T2w"]
    data = np.asarray(img.dataobj)
    nb.save(img, tmp_path / "plain.nii.gz")
    assert main([str(tmp_path / "plain.nii.gz"), str(tmp_path / "plain_mask.nii.gz")]) == 0
    assert "note:" not in capsys.readouterr().err
    plain = np.asarray(nb.load(tmp_path / "plain_mask.nii.gz").dataobj)
    cases = {
        "small": (data, np.diag([0.1, 0.1, 0.1, 1]) @ img.affine,
                  "may be off by a factor of ten; the mask does not depend on it"),
        "large": (data, np.diag([2, 2, 2, 1]) @ img.affine,
                  "hint: not a mouse (a rat's brain is about 2000 mm^3)? the whole head masked "
                  "(look at it on the image)? or the header's voxel size (0.4 x 0.4 x 0.4 mm) "
                  "too large?"),
        "slab": (data[:, 40:50, :], img.affine,
                 "hint: only a few slices of the brain in the image, or part of it masked"),
    }
    for name, (voxels, affine, hint) in cases.items():
        nb.save(nb.Nifti1Image(voxels, affine), tmp_path / f"{name}.nii.gz")
        out = tmp_path / f"{name}_mask.nii.gz"
        assert main([str(tmp_path / f"{name}.nii.gz"), str(out)]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2, err
        mm3 = err[0].split(" voxels, ")[1].split(" mm^3")[0]
        assert err[1].startswith(f"samri_ml-mask: note: a brain mask of {mm3}"), err
        assert "outside a mouse brain's 133-1650 mm^3; " in err[1] and hint in err[1], err
        mask = np.asarray(nb.load(out).dataobj)
        if name != "slab":  # the voxel size changes nothing of the mask
            np.testing.assert_array_equal(mask, plain)
    # the batch says it of each scan, and still succeeds
    assert main([str(tmp_path / "small.nii.gz"), str(tmp_path / "plain.nii.gz"),
                 "--out-dir", str(tmp_path / "batch")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: a brain mask of ") == 1 and "factor of ten" in err, err


def test_a_stack_of_a_few_slices_is_refused(phantom):
    img = phantom["T2w"]
    thin = nb.Nifti1Image(np.asarray(img.dataobj)[:, :, 20:24], img.affine)
    with pytest.raises(SamriMLError, match="only 4 slices along one axis"):
        predict_mask(thin)


def test_a_thin_slab_is_masked_with_a_note(phantom):
    """Slabs of 5-7 slices are masked (fewer are refused, above), but an audit measured Dice
    0.51-0.81 with the whole volume's mask at 5-6 slices: a note says so."""
    from samri_ml.errors import SamriMLNote

    img = phantom["T2w"]
    data = np.asarray(img.dataobj)
    with pytest.warns(SamriMLNote, match="only 6 slices along one axis: masks of slabs under 8 "
                      "slices are unreliable"):
        mask = predict_mask(nb.Nifti1Image(data[:, 45:51, :], img.affine))
    assert np.asarray(mask.dataobj).any()
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        predict_mask(nb.Nifti1Image(data[:, 44:52, :], img.affine))
    assert not [w for w in seen if "slices are unreliable" in str(w.message)]


def test_a_complex_image_is_masked_on_its_magnitude(tmp_path, phantom):
    """Complex data was cast to its real part (a phase ramp made it half negative: refused as
    "fills 100 %", with raw ComplexWarning lines); its magnitude is masked now, and --masked
    keeps the phase."""
    img = phantom["T2w"]
    magnitude = np.asarray(img.dataobj, dtype=np.float32)
    ramp = np.linspace(0, 1, magnitude.shape[0])[:, None, None]
    data = (magnitude * np.exp(1j * (1.3 + 3 * ramp))).astype(np.complex64)
    src, out, masked = tmp_path / "c.nii.gz", tmp_path / "m.nii.gz", tmp_path / "b.nii.gz"
    nb.save(nb.Nifti1Image(data, img.affine), src)
    r = _cli(src, out, "--masked", masked, "--png", tmp_path / "qc.png")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "samri_ml-mask: note: a complex image: its magnitude (abs) is masked"
    assert len(lines) == 3 and lines[1].startswith(f"samri_ml-mask: {out}: brain mask of "), lines
    mask = np.asarray(nb.load(out).dataobj)
    want = predict_mask(nb.Nifti1Image(np.abs(data), img.affine))
    assert np.array_equal(mask, np.asarray(want.dataobj))
    brain = nb.load(masked)
    assert brain.get_data_dtype() == np.complex64
    np.testing.assert_array_equal(np.asarray(brain.dataobj), data * (mask > 0))


def test_a_masks_header_is_a_masks(tmp_path, phantom, monkeypatch):
    """The mask kept the input's display range (cal_min 50, cal_max 800: viewers that honour
    it showed the 0/1 mask black) and intent (a z-score map's); its geometry stays."""
    from samri_ml.interfaces.masking import MaskBrain

    img = nb.Nifti1Image(np.asarray(phantom["T2w"].dataobj) * 1000, phantom["T2w"].affine)
    img.header["cal_min"], img.header["cal_max"] = 50, 800
    img.header.set_intent("z score")
    img.header.set_qform(img.affine, 1)
    img.header.set_sform(img.affine, 2)
    src = tmp_path / "z.nii.gz"
    nb.save(img, src)
    monkeypatch.chdir(tmp_path)
    node_mask = nb.load(MaskBrain(in_file=str(src)).run().outputs.out_mask)
    for mask in (predict_mask(src), node_mask):
        h = mask.header
        assert (h["cal_min"], h["cal_max"]) == (0, 1) and h.get_intent()[0] == "none"
        assert (int(h["qform_code"]), int(h["sform_code"])) == (1, 2)
        np.testing.assert_allclose(mask.affine, img.affine, atol=1e-6)


@pytest.mark.parametrize("pair", [nb.Nifti1Pair, nb.Nifti2Pair])
def test_a_pairs_mask_keeps_its_header_codes(tmp_path, phantom, capfd, pair):
    """The mask of a 3D .img/.hdr pair was written with a new header: qform_code 0 and
    sform_code 2 for the pair's 1 and 1 (a .nii kept them, a 4D pair too), and --masked of a
    NIfTI-2 pair printed nibabel's raw 'sizeof_hdr should be 348'."""
    from samri_ml.cli.mask import main

    img = phantom["T2w"]
    src = pair(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    src.header.set_qform(img.affine, 1)
    src.header.set_sform(img.affine, 1)
    nb.save(src, tmp_path / "pair.img")
    assert main([str(tmp_path / "pair.hdr"), str(tmp_path / "mask.nii.gz"),
                 "--masked", str(tmp_path / "brain.nii.gz")]) == 0
    assert "sizeof_hdr" not in capfd.readouterr().err
    for name in ("mask.nii.gz", "brain.nii.gz"):
        h = nb.load(tmp_path / name).header
        assert (int(h["qform_code"]), int(h["sform_code"])) == (1, 1), name
        np.testing.assert_allclose(h.get_qform(), img.affine, atol=1e-6)
        np.testing.assert_allclose(h.get_sform(), img.affine, atol=1e-6)
    assert nb.load(tmp_path / "mask.nii.gz").get_data_dtype() == np.uint8


def test_a_4d_image_of_one_volume_stays_4d_and_pairs_are_named_well(tmp_path, phantom,
                                                                     monkeypatch, capsys):
    """--masked and MaskBrain.out_file came back 3D for a 4D series of one volume; MaskBrain
    named the outputs of pair.img pair_mask.img.nii.gz; OUT in capitals was refused (IN is
    not); and the outputs were always mode 0644, whatever the umask."""
    import os
    import stat

    from samri_ml.cli.mask import main
    from samri_ml.interfaces.masking import MaskBrain

    img = phantom["T2w"]
    series = np.asarray(img.dataobj, dtype=np.float32)[..., None]
    nb.save(nb.Nifti1Pair(series, img.affine), tmp_path / "pair.img")
    monkeypatch.chdir(tmp_path)
    out = MaskBrain(in_file=str(tmp_path / "pair.img")).run().outputs
    assert (out.out_mask, out.out_file) == (str(tmp_path / "pair_mask.nii.gz"),
                                            str(tmp_path / "pair_masked.nii.gz"))
    assert nb.load(out.out_mask).shape == series.shape[:3]
    assert nb.load(out.out_file).shape == series.shape

    src = tmp_path / "v1.nii.gz"
    nb.save(nb.Nifti1Image(series, img.affine), src)
    old = os.umask(0o027)
    try:
        assert main([str(src), "V1_MASK.NII.GZ", "--masked", "V1_BRAIN.NII.GZ"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    brain = nb.load(tmp_path / "V1_BRAIN.NII.GZ")
    assert brain.shape == series.shape
    mask = np.asarray(nb.load(tmp_path / "V1_MASK.NII.GZ").dataobj)
    np.testing.assert_array_equal(np.asarray(brain.dataobj), series * (mask[..., None] > 0))
    for name in ("V1_MASK.NII.GZ", "V1_BRAIN.NII.GZ"):
        assert (tmp_path / name).read_bytes()[:2] == b"\x1f\x8b", name  # gzipped
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_cli_writes_nothing_where_an_output_cannot_be_written(tmp_path, phantom, capsys):
    """An unwritable --masked folder used to fail after the prediction, with OUT written."""
    from samri_ml.cli.mask import main
    from samri_ml.testing import read_only_folder

    src = tmp_path / "in.nii.gz"
    nb.save(phantom["T2w"], src)
    with read_only_folder(tmp_path / "ro") as locked:
        rc = main([str(src), str(tmp_path / "m.nii.gz"), "--masked", str(locked / "b.nii.gz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "output folder is not writable" in err[0], err
    assert not (tmp_path / "m.nii.gz").exists() and not list(locked.iterdir())


def test_maskbrain_refuses_end_thresholds_and_takes_max_slices(tmp_path, phantom, monkeypatch):
    from traits.api import TraitError

    from samri_ml.interfaces.masking import MaskBrain

    for t in (0.0, 1.0):
        with pytest.raises(TraitError):
            MaskBrain(threshold=t)
    src = tmp_path / "sub-1_T2w.nii.gz"
    nb.save(phantom["T2w"], src)
    monkeypatch.chdir(tmp_path)
    out = MaskBrain(in_file=str(src), max_slices=64).run().outputs
    want = predict_mask(phantom["T2w"], max_slices=64)
    assert np.array_equal(np.asarray(nb.load(out.out_mask).dataobj), np.asarray(want.dataobj))


# ------------------------------------------------------------------------ train-masker checks


#: the data options of the short training runs: the scans as they are (no synthetic heads, no
#: crops of them), so that the real data set builder takes a second
TINY_DATA = ("--synth-per-dama", "0", "--crops-per-scan", "0")


@pytest.fixture()
def tiny_slices(tmp_path):
    """``samri_ml-train-masker`` on four small dama-like scans written into ``tmp_path`` (the
    runs' ``--data-dir``), through the real data set builder (seconds per run). Returns the
    validation slices the runs are validated on."""
    from samri_ml.masking import train as mt

    _dama_like(tmp_path, ["s1", "s2", "s3", "s4"], 0)
    config = mt.TrainConfig(synth_per_dama=0, crops_per_scan=0)
    x, y, _, is_val, _ = mt.build_dataset(config, tmp_path, log=lambda m: None)
    assert 0 < is_val.sum() < len(x)  # a training and a validation side
    return x[is_val], y[is_val]


def _train_masker(tmp_path, *args):
    from samri_ml.cli.train_masker import main

    return main([str(tmp_path / "m" / "out.keras"), "--data-dir", str(tmp_path), "--width", "2",
                 "--epochs-plain", "3", "--epochs-augmented", "0", "--steps-per-epoch", "2",
                 "--batch-size", "4", *TINY_DATA, *map(str, args)])  # fmt: skip


@pytest.mark.parametrize("args, words", [
    (["--epochs-plain", "-1"], "argument --epochs-plain: -1: must be at least 0"),
    (["--epochs-augmented", "-2"], "argument --epochs-augmented: -2: must be at least 0"),
    (["--batch-size", "0"], "argument --batch-size: 0: must be at least 1"),
    (["--steps-per-epoch", "0"], "argument --steps-per-epoch: 0: must be at least 1"),
    (["--patience", "0"], "argument --patience: 0: must be at least 1"),
    (["--max-minutes", "0"], "argument --max-minutes: 0: must be above 0"),
    (["--max-minutes", "-5"], "argument --max-minutes: -5: must be above 0"),
    (["--holdout", "emroy"], "argument --holdout: invalid choice: 'emroy'"),
    (["--epochs-plain", "0"], "--epochs-plain and --epochs-augmented are both 0"),
])  # fmt: skip
def test_train_masker_refuses_settings_out_of_range(tmp_path, capsys, tiny_slices, args, words):
    """Negative epochs, zero batches or steps, no time: exit 0 with an untrained model (or a
    raw TensorFlow error); a misspelt --holdout source trained on it. Usage errors now."""
    assert _train_masker(tmp_path, *args) == 2
    assert words in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "m").exists()


def test_train_masker_checks_init_and_its_folder_first(tmp_path, capsys, monkeypatch):
    """A missing --init failed after the data set was built (Keras' ValueError), an
    unwritable folder after the training (PermissionError). Now before either."""
    from samri_ml.masking import train as mt
    from samri_ml.testing import read_only_folder

    def never(*a, **k):
        raise AssertionError("the data set was built")

    monkeypatch.setattr(mt, "cached_dataset", never)
    assert _train_masker(tmp_path, "--init", tmp_path / "none.keras") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.keras: model file not found" in err[0], err
    from samri_ml.cli.train_masker import main

    # --dataset-cache was written after the data set had been built: a bare PermissionError
    (tmp_path / "a file").write_text("")
    cache = tmp_path / "a file" / "ds"
    assert main([str(tmp_path / "m.keras"), "--data-dir", str(tmp_path), "--dataset-cache",
                 str(cache)]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"--dataset-cache {cache}: {tmp_path / 'a file'} is not a folder")
    with read_only_folder(tmp_path / "ro") as ro:
        assert main([str(ro / "sub" / "out.keras"), "--data-dir", str(tmp_path)]) == 2
        assert f"{ro} is not writable" in capsys.readouterr().err.strip().splitlines()[-1]
        assert main([str(tmp_path / "m.keras"), "--data-dir", str(tmp_path), "--dataset-cache",
                     str(ro / "ds")]) == 2  # fmt: skip
        assert (f"--dataset-cache {ro / 'ds'}: {ro} is not writable"
                in capsys.readouterr().err.strip().splitlines()[-1])
    assert main([str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err.strip().splitlines()[-1]


def test_train_masker_refuses_init_and_average_of_other_models_first(tmp_path, capsys,
                                                                      monkeypatch):
    """--init with the plate embedding failed after the data set was built ('ValueError: Input
    0 ... expected shape=(None, 224, 224, 1)'); --init of a width-2 U-Net with --width 16
    trained it and wrote width 16 into _training.json; --average-of models of two widths was
    refused only after the data set. Now each in one line, before the data set."""
    from samri_ml.masking import train as mt
    from samri_ml.models.unet import build_unet
    from samri_ml.plates.identify import default_model_dir

    def never(*a, **k):
        raise AssertionError("the data set was built")

    monkeypatch.setattr(mt, "cached_dataset", never)
    narrow, wide = tmp_path / "w2.keras", tmp_path / "w4.keras"
    build_unet(width=2).save(narrow)
    build_unet(width=4).save(wide)
    plates = default_model_dir("default") / "plates_embedding.keras"
    cases = [
        (["--init", plates], f"--init {plates}: not a brain-masking model"),
        (["--init", wide], f"--init {wide} is a U-Net of width 4, the run's --width is 2; "
                           "hint: pass --width 4"),
        (["--average-of", narrow, wide], f"--average-of: {wide} differs from {narrow} in "
                                         "architecture (widths 2 and 4)"),
    ]
    for args, words in cases:
        assert _train_masker(tmp_path, *args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "m").exists()


def test_train_masker_init_of_the_runs_width_trains(tmp_path, tiny_slices):
    """The fine-tuning the model card describes: --init of a U-Net of the run's width."""
    import keras

    from samri_ml.models.unet import build_unet

    init = build_unet(width=4)
    init.save(tmp_path / "w4.keras")
    assert _train_masker(tmp_path, "--init", tmp_path / "w4.keras", "--width", "4",
                         "--patience", "7") == 0
    out = tmp_path / "m" / "out.keras"
    summary = json.loads(out.with_name("out_training.json").read_text())
    assert summary["config"]["width"] == 4 and summary["config"]["patience"] == 7
    # one of the four scans validated, with its 3D Dice (the real data set's volumes)
    (val,) = summary["validation_groups"]
    assert val in ("dama/s1", "dama/s2", "dama/s3", "dama/s4"), val
    assert list(summary["validation_dice"]) == [f"{val}#0"]
    assert 0 <= summary["validation_dice"][f"{val}#0"] <= 1
    # the --init model on the same volumes, before training: the baseline a fine-tune beats
    assert list(summary["init_validation_dice"]) == [f"{val}#0"]
    trained = keras.saving.load_model(out, compile=False)
    assert [w.shape for w in trained.get_weights()] == [w.shape for w in init.get_weights()]


def test_a_fine_tune_worse_than_its_init_is_said():
    """Each phase restores its own best epoch, none the --init model: a lab's fine-tune could
    end worse than the model it started from on its validation volumes, unsaid."""
    import warnings

    from samri_ml.errors import SamriMLNote
    from samri_ml.masking.train import _note_worse_than_init

    init = {"a#0": 0.95, "b#0": 0.93}
    said = []
    for trained in ({"a#0": 0.90, "b#0": 0.92}, {"a#0": 0.95, "b#0": 0.929},
                    {"a#0": 0.97, "b#0": 0.96}):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _note_worse_than_init(trained, init, "lab_init.keras")
            _note_worse_than_init(trained, None, None)  # from random weights: no baseline
        said.append([str(w.message) for w in seen if issubclass(w.category, SamriMLNote)])
    assert said == [["the trained model's median validation Dice is 0.9100, its --init "
                     "model's 0.9400 on the same volumes (lab_init.keras): the training made it "
                     "worse there; hint: fewer epochs or a lower --learning-rate, or keep the "
                     "--init model"], [], []]  # within 0.002: no note


def test_init_and_average_of_models_of_another_split_get_a_note(tmp_path, capsys, tiny_slices):
    """--init or --average-of a model trained with another --seed or --holdout: its
    training subjects may be this run's validation subjects, and the validation Dice in
    _training.json (the number the card's choices rest on) came out too high without a
    word. Now a note names the model and the settings that differ; none where they agree."""
    import warnings

    from samri_ml.models.unet import build_unet

    same, other = tmp_path / "same.keras", tmp_path / "other.keras"
    # same: the templates are never split, so holding them out too changes no split
    for path, seed, holdout in ((same, 0, ["emory", "sammba", "templates"]),
                                (other, 1, ["sammba"])):
        build_unet(width=2).save(path)
        path.with_name(path.stem + "_training.json").write_text(json.dumps(
            {"config": {"seed": seed, "holdout": holdout, "val_fraction": 0.1}}))
    for args, noted in ((["--init", same], False), (["--init", other], True),
                        (["--average-of", same, other], True)):
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            assert _train_masker(tmp_path, *args) == 0
        err = capsys.readouterr().err
        option = args[0]
        words = (f"note: {option} {other} was trained on another split of the subjects "
                 "(holdout ['sammba'], here ['sammba', 'emory'], seed 1, here 0)")
        assert (words in err) is noted, err
        assert "same.keras was trained on another split" not in err


#: samri_ml-train-masker as a script (a prelude can add to it)
TINY_TRAINING = """
import sys
from samri_ml.cli.train_masker import main
sys.exit(main(sys.argv[1:]))
"""


def test_training_into_a_log_file_is_one_plain_line_per_epoch(tmp_path, tiny_slices):
    """Keras' progress bar takes any POSIX system for a terminal: samri_ml-train-masker with
    its output in a file (a cluster job's log) got the bar redrawn every 50 ms with
    backspaces and colour codes, NO_COLOR or not. Now one plain line per epoch there (a
    terminal keeps the bar). The epoch lines go to stderr with the other progress lines: on
    stdout, before the result's JSON, ``train-masker ... | python -m json.tool`` failed. A
    real process, on the scans of ``tiny_slices``."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(TINY_TRAINING)
    log = tmp_path / "train.log"
    with open(log, "w") as err:
        run = subprocess.run([sys.executable, str(script), str(tmp_path / "m" / "out.keras"),
                              "--width", "2", "--epochs-plain", "3", "--epochs-augmented", "0",
                              "--steps-per-epoch", "12", "--batch-size", "4",
                              "--data-dir", str(tmp_path), *TINY_DATA],
                             stdout=subprocess.PIPE, stderr=err, text=True,
                             env={**os.environ, "NO_COLOR": ""})  # fmt: skip
    text = log.read_text()
    assert run.returncode == 0, text
    assert not any(c in text for c in "\x1b\b\r"), repr(text[:300])
    epochs = [ln for ln in text.splitlines() if ln.startswith("12/12 - ")]
    assert len(epochs) == 3 and all("val_loss:" in ln for ln in epochs), text
    assert json.loads(run.stdout)["model"] == str(tmp_path / "m" / "out.keras"), run.stdout


#: TINY_TRAINING with a real SIGINT in the second batch of the second epoch (the main thread
#: gets the KeyboardInterrupt in the middle of the epoch, as with Ctrl-C)
CTRL_C_IN_AN_EPOCH = """
import os, signal, keras
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal


class CtrlC(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1 and self.model.history.epoch:
            os.kill(os.getpid(), signal.SIGINT)


fit = keras.Model.fit
keras.Model.fit = lambda self, *a, callbacks=(), **k: fit(self, *a,
                                                          callbacks=[*callbacks, CtrlC()], **k)
""" + TINY_TRAINING


def test_ctrl_c_inside_an_epoch_ends_with_the_interrupted_line(tmp_path, tiny_slices):
    """Ctrl-C inside an epoch left the training's data set iterator (TensorFlow's) to be
    finalized at the interpreter's exit, and TensorFlow said so after the 'interrupted' line:
    'Error occurred when finalizing GeneratorDataset iterator: FAILED_PRECONDITION: Python
    interpreter state is not initialized', read as a second failure (8 runs of 8 here with
    TensorFlow's warnings on). Now the run ends on its 'interrupted' line. A real process."""
    import os
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(CTRL_C_IN_AN_EPOCH)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "m" / "out.keras"),
                          "--width", "2", "--epochs-plain", "4", "--epochs-augmented", "0",
                          "--steps-per-epoch", "4", "--batch-size", "4",
                          "--data-dir", str(tmp_path), *TINY_DATA],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})  # fmt: skip
    assert run.returncode == 130, run.stderr
    err = run.stderr.strip().splitlines()
    assert err[-1] == "samri_ml-train-masker: interrupted", err[-3:]
    assert "note: interrupted after 1 epoch(s)" in err[-2], err[-3:]
    assert "GeneratorDataset" not in run.stderr, err[-3:]


def test_sigterm_inside_an_epoch_keeps_the_finished_epochs(tmp_path, tiny_slices):
    """SIGTERM (``kill``, a cluster's time limit: SLURM sends it before SIGKILL) ended
    samri_ml-train-masker at once: no model, no record, no word, the epochs done lost (Ctrl-C
    kept them). Now it is taken as Ctrl-C: the best weights so far are saved, marked
    interrupted, and the run ends 'terminated', exit 143. A real process, a real SIGTERM
    in the second batch of the second epoch."""
    import json
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(CTRL_C_IN_AN_EPOCH.replace("signal.SIGINT)\n\n\nfit",
                                                 "signal.SIGTERM)\n\n\nfit"))
    out = tmp_path / "m" / "out.keras"
    run = subprocess.run([sys.executable, str(script), str(out),
                          "--width", "2", "--epochs-plain", "4", "--epochs-augmented", "0",
                          "--steps-per-epoch", "4", "--batch-size", "4",
                          "--data-dir", str(tmp_path), *TINY_DATA],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    err = run.stderr.strip().splitlines()
    assert run.returncode == 143, run.stderr
    assert err[-1] == "samri_ml-train-masker: terminated", err[-3:]
    assert "note: interrupted after 1 epoch(s)" in err[-2], err[-3:]
    record = json.loads((tmp_path / "m" / "out_training.json").read_text())
    assert record["interrupted"] and record["history"]["phase"] == ["plain"]
    assert out.is_file()


def test_time_limit_before_the_first_epoch_is_an_error(tmp_path, capsys, tiny_slices):
    """A data set that took the whole --max-minutes gave an untrained model, saved as if
    trained; now one line and nothing written."""
    assert _train_masker(tmp_path, "--max-minutes", "1e-7") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the data set's log lines
    assert err.startswith("samri_ml-train-masker: error: the time limit (1e-07 min) was over "
                          "before the first epoch began"), err
    assert not (tmp_path / "m").exists()


def _ctrl_c_at_epoch(monkeypatch, epoch: int):
    """A real SIGINT as the training starts its ``epoch``-th epoch (0: the first); the main
    thread gets the KeyboardInterrupt there, as with Ctrl-C."""
    import os
    import signal

    import keras

    class CtrlC(keras.callbacks.Callback):
        def on_epoch_begin(self, index, logs=None):
            if index == epoch:
                os.kill(os.getpid(), signal.SIGINT)

    fit = keras.Model.fit

    def fit_then_ctrl_c(self, *args, callbacks=(), **kwargs):
        return fit(self, *args, callbacks=[*callbacks, CtrlC()], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_then_ctrl_c)


@pytest.mark.parametrize("trace", ["training step", "validation pass"])
def test_ctrl_c_while_tensorflow_traces_a_step_waits_for_its_end(tmp_path, capsys, tiny_slices,
                                                                  monkeypatch, trace,
                                                                  sigint_as_in_a_terminal):
    """Ctrl-C that came while TensorFlow traced the first training step (or the first
    validation pass) broke the trace at random: in 1 run of 8 with Ctrl-C at a random moment
    of it the run ended 'error: SystemError: Objects/listobject.c:338: bad argument to
    internal function' (exit 1), not 'interrupted'. Ctrl-C now waits for the step's end, as
    in train-plates: a real SIGINT at the first convolution traced leaves the trace whole
    (every convolution of the U-Net traced after it), then the run ends 'interrupted'."""
    import functools
    import os
    import signal
    import warnings

    import keras
    import tensorflow as tf

    from samri_ml.models.unet import build_unet

    n_conv = sum(isinstance(layer, keras.layers.Conv2D) for layer in build_unet(width=2).layers)
    state = {"armed": trace == "training step", "traced": 0}
    conv_call = keras.layers.Conv2D.call

    @functools.wraps(conv_call)
    def call(self, *args, **kwargs):  # the real convolution; Ctrl-C at the first one traced
        if state["armed"] and tf.inside_function():
            state["traced"] += 1
            if state["traced"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
        return conv_call(self, *args, **kwargs)

    class ArmAtValidation(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            state["armed"] = True

    fit = keras.Model.fit

    def fit_armed(self, *args, callbacks=(), **kwargs):
        return fit(self, *args, callbacks=[*callbacks, ArmAtValidation()], **kwargs)

    monkeypatch.setattr(keras.layers.Conv2D, "call", call)
    if trace == "validation pass":
        monkeypatch.setattr(keras.Model, "fit", fit_armed)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert _train_masker(tmp_path) == 130
    assert state["traced"] >= n_conv > 1  # (the training step traces the U-Net twice)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "samri_ml-train-masker: interrupted", err[-3:]
    assert "note: interrupted before the first epoch ended: nothing was saved" in err[-2]


def test_ctrl_c_keeps_the_best_weights_so_far(tmp_path, capsys, tiny_slices, monkeypatch,
                                              sigint_as_in_a_terminal):
    """Ctrl-C lost the whole training (the model was saved at the end only). Now the best
    weights so far are saved, marked interrupted, and the command still ends with its one
    ``interrupted`` line (exit 130)."""
    import warnings

    import keras

    from samri_ml.models.unet import bce_dice_loss

    _ctrl_c_at_epoch(monkeypatch, 2)
    with warnings.catch_warnings():  # out of pytest's own recording, as in a command
        warnings.simplefilter("default")
        assert _train_masker(tmp_path, "--learning-rate", "0.1") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "samri_ml-train-masker: interrupted", err
    assert "note: interrupted after 2 epoch(s)" in err[-2] and "best weights" in err[-2], err
    out = tmp_path / "m" / "out.keras"
    summary = json.loads(out.with_name("out_training.json").read_text())
    assert summary["interrupted"] is True and summary["history"]["phase"] == ["plain"] * 2
    # the best epoch's weights (at this learning rate the second epoch is worse than the first:
    # the last epoch's weights would not do)
    val_loss = summary["history"]["val_loss"]
    assert val_loss[1] > val_loss[0], val_loss
    model = keras.saving.load_model(out, compile=False)
    xv, yv = tiny_slices
    model.compile(loss=bce_dice_loss)
    loss = model.evaluate(xv, yv, batch_size=4, verbose=0)
    assert loss == pytest.approx(min(summary["history"]["val_loss"]), rel=1e-3)


def test_ctrl_c_does_not_replace_a_finished_model(tmp_path, capsys, tiny_slices, monkeypatch,
                                                  sigint_as_in_a_terminal):
    """A rerun into the name of a finished model (by mistake, or with other settings),
    stopped with Ctrl-C after two epochs, replaced that model with the two-epoch weights
    ('OUT holds the best weights so far'). Now they go to OUT_interrupted.keras and OUT is
    left as it was; an interrupted OUT is still replaced by the next interrupted run."""
    import warnings

    assert _train_masker(tmp_path) == 0
    out = tmp_path / "m" / "out.keras"
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    _ctrl_c_at_epoch(monkeypatch, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert _train_masker(tmp_path, "--learning-rate", "0.1") == 130
    err = capsys.readouterr().err.strip().splitlines()
    side = out.with_name("out_interrupted.keras")
    assert f"note: interrupted after 2 epoch(s): {side} holds the best weights" in err[-2], err
    assert f"{out}, a finished model, was left as it was" in err[-2], err
    assert {p.name: p.read_bytes() for p in out.parent.iterdir() if p.name in before} == before
    summary = json.loads(side.with_name("out_interrupted_training.json").read_text())
    assert summary["interrupted"] is True and summary["config"]["learning_rate"] == 0.1
    assert side.with_name("out_interrupted_loss.png").is_file()
    # an interrupted OUT is the run's own to replace
    interrupted_out = tmp_path / "m2" / "out.keras"
    for learning_rate in ("0.1", "0.2"):
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            assert _train_masker_into(interrupted_out, learning_rate) == 130
    capsys.readouterr()
    summary = json.loads(interrupted_out.with_name("out_training.json").read_text())
    assert summary["config"]["learning_rate"] == 0.2 and summary["interrupted"] is True
    assert not interrupted_out.with_name("out_interrupted.keras").exists()


def _train_masker_into(out, learning_rate, *args):
    from samri_ml.cli.train_masker import main

    return main([str(out), "--width", "2", "--epochs-plain", "3", "--epochs-augmented", "0",
                 "--steps-per-epoch", "2", "--batch-size", "4", "--learning-rate",
                 learning_rate, "--data-dir", str(out.parent.parent), *TINY_DATA, *args])


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(tmp_path, capsys, tiny_slices,
                                                          monkeypatch, sigint_as_in_a_terminal):
    import warnings

    _ctrl_c_at_epoch(monkeypatch, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert _train_masker(tmp_path) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2:] == ["samri_ml-train-masker: note: interrupted before the first epoch "
                        "ended: nothing was saved", "samri_ml-train-masker: interrupted"], err
    assert not (tmp_path / "m").exists()


def test_dataset_cache_without_npz_suffix_is_reused(tmp_path):
    """``--dataset-cache dcache`` was written as dcache.npz (np.savez adds it) and never read
    back; a .npz of something else failed with ``KeyError: 'settings ...'``. The real data set
    builder on scans written here."""
    from samri_ml.masking import train as mt

    data = _dama_like(tmp_path / "a", ["s1", "s2", "s3"], 0)
    config = mt.TrainConfig(synth_per_dama=0, crops_per_scan=0,
                            dataset_cache=str(tmp_path / "dcache"))
    assert mt.dataset_cache_path(config.dataset_cache) == tmp_path / "dcache.npz"
    logged, built = [], []
    for _ in range(2):
        built.append(mt.cached_dataset(config, data, log=logged.append))
    assert logged.count("building the data set ...") == 1, logged
    assert logged[-1] == f"data set read from {tmp_path / 'dcache.npz'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "dcache.npz"]
    (x, y, groups, is_val, _), (x2, y2, groups2, is_val2, _) = built
    assert len(x) > 0 and x2.shape == x.shape
    np.testing.assert_array_equal(x2, x)  # float16 values, built or read
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(groups2, groups)
    np.testing.assert_array_equal(is_val2, is_val)
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    (tmp_path / "text.npz").write_text("not an archive\n")
    for name in ("other.npz", "text.npz"):
        with pytest.raises(SamriMLError, match="not a data set cache of samri_ml-train-masker"):
            mt.cached_dataset(mt.TrainConfig(dataset_cache=str(tmp_path / name)), data)


def test_a_run_that_builds_the_dataset_cache_trains_as_one_that_reads_it(tmp_path, tiny_slices):
    """The model cards' commands all take ``--dataset-cache data.npz``: the first one built the
    data set and trained on its float32 slices, every later one on the float16 slices the cache
    stores, so the same command with the same seeds gave other numbers (a tiny real run: first
    validation Dice 0.175, then 0.145 and 0.145). The slices are float16 values in every run
    now: without a cache, building it or reading it, the same losses and Dice."""
    records = []
    for cache in (None, "dc.npz", "dc.npz"):
        out = tmp_path / "runs" / f"m{len(records)}.keras"  # the data: tmp_path
        args = ["--dataset-cache", str(tmp_path / cache)] if cache else []
        assert _train_masker_into(out, "1e-3", *args) == 0
        records.append(json.loads(out.with_name(f"{out.stem}_training.json").read_text()))
    assert (tmp_path / "dc.npz").is_file()
    for rec in records[1:]:
        assert rec["history"] == records[0]["history"]
        assert rec["validation_dice"] == records[0]["validation_dice"]


def _dama_like(folder, names, seed):
    """``folder/mri/scans/dama/{image,mask}/NAME.nii.gz``: small skull-stripped balls."""
    import nibabel as nb

    rng = np.random.default_rng(seed)
    grid = np.indices((24, 24, 24)).astype(np.float32) - 11.5
    for name in names:
        radius = rng.uniform(6, 10)
        mask = (np.sqrt((grid**2).sum(axis=0)) < radius).astype(np.uint8)
        image = (mask * rng.uniform(0.5, 1.0, mask.shape)).astype(np.float32)
        for sub, data in (("image", image), ("mask", mask)):
            (folder / "mri/scans/dama" / sub).mkdir(parents=True, exist_ok=True)
            nb.save(nb.Nifti1Image(data, np.diag([0.15, 0.15, 0.15, 1])),
                    folder / "mri/scans/dama" / sub / f"{name}.nii.gz")
    return folder


def test_dataset_cache_of_other_scans_is_rebuilt(tmp_path):
    """``--dataset-cache`` was keyed by the settings alone: a run with another --data-dir (a
    lab's own scans), or after a scan was replaced, trained on the cached slices of the old
    scans without a word. The real data set builder on scans written here."""
    from samri_ml.masking import train as mt

    a = _dama_like(tmp_path / "a", ["s1", "s2", "s3"], 0)
    b = _dama_like(tmp_path / "b", ["t1", "t2", "t3"], 1)
    config = mt.TrainConfig(holdout=("sammba", "emory", "templates"), synth_per_dama=0,
                            dataset_cache=str(tmp_path / "dc.npz"), val_fraction=0.34)

    def groups(data_dir):
        logged = []
        _, _, g, _, _ = mt.cached_dataset(config, data_dir, tmp_path / "masks", logged.append)
        return sorted({str(n).split("/")[1] for n in g}), logged

    assert groups(a)[0] == ["s1", "s2", "s3"]
    got, logged = groups(a)
    assert got == ["s1", "s2", "s3"] and logged == [f"data set read from {tmp_path / 'dc.npz'}"]
    got, logged = groups(b)  # another folder: its own scans, not the cached ones
    assert got == ["t1", "t2", "t3"], logged
    assert "holds a data set of other settings or scans" in logged[0]
    # a cache of the first release, whose key had no record of the scans: rebuilt, and said
    # so (it read as if the settings had changed)
    with np.load(tmp_path / "dc.npz") as f:
        arrays = {k: f[k] for k in f.files}
    first = json.loads(str(arrays["settings"]))
    del first["data"]
    np.savez(tmp_path / "dc.npz", **{**arrays, "settings": json.dumps(first, sort_keys=True)})
    got, logged = groups(b)
    assert got == ["t1", "t2", "t3"]
    assert logged[:2] == [f"{tmp_path / 'dc.npz'} was built by an older samri_ml, which did not "
                          "record its scans: rebuilt and replaced", "building the data set ..."]
    assert groups(b)[1] == [f"data set read from {tmp_path / 'dc.npz'}"]
    # a cache that other preprocessing code made (an upgrade; only the synthetic heads had a
    # version in the key): rebuilt, and said so
    with np.load(tmp_path / "dc.npz") as f:
        arrays = {k: f[k] for k in f.files}
    other_code = {**json.loads(str(arrays["settings"])), "code": "0" * 64}
    np.savez(tmp_path / "dc.npz", **{**arrays, "settings": json.dumps(other_code, sort_keys=True)})
    got, logged = groups(b)
    assert logged[0] == (f"{tmp_path / 'dc.npz'} was built by other preprocessing code (another "
                         "samri_ml version?): rebuilt and replaced"), logged
    assert groups(b)[1] == [f"data set read from {tmp_path / 'dc.npz'}"]
    _dama_like(tmp_path / "b", ["t1"], 5)  # a scan replaced under its name
    x_new = mt.build_dataset(config, b, tmp_path / "masks", log=lambda m: None)[0]
    x, *_ = mt.cached_dataset(config, b, tmp_path / "masks", lambda m: None)
    assert np.allclose(x, x_new, atol=1e-2)  # the cache stored float16


def test_dataset_cache_key_tells_a_scan_put_back_with_its_size_and_time(tmp_path):
    """The data part of ``--dataset-cache``'s key was the scans' sizes and modification times:
    a scan replaced by another of its size and put back with its time (``cp -p``,
    ``rsync -a``, an archive) was trained on as the cached slices of the scan it replaced."""
    import os

    from samri_ml.masking.data import data_fingerprint

    data = _dama_like(tmp_path / "a", ["s1", "s2"], 0)
    before = data_fingerprint(data)
    scan = data / "mri/scans/dama/image/s1.nii.gz"
    st = scan.stat()
    other = (data / "mri/scans/dama/image/s2.nii.gz").read_bytes()
    # another scan's bytes at this one's size (cut or padded), then its old times put back
    scan.write_bytes(other[:st.st_size].ljust(st.st_size, b"\0"))
    os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert scan.stat().st_size == st.st_size and scan.stat().st_mtime_ns == st.st_mtime_ns
    assert data_fingerprint(data) != before
    assert data_fingerprint(data) == data_fingerprint(data)  # the same state, the same key


def test_ctrl_c_while_the_dataset_cache_is_written_leaves_none(tmp_path, monkeypatch,
                                                                sigint_as_in_a_terminal):
    """Ctrl-C while the (hundreds of MB) cache was written left a truncated .npz, which the
    next run refused ('not a data set cache ...; hint: remove that file'). Now it is written
    under a temporary name and renamed: no cache, and the next run builds it."""
    import os
    import signal

    from samri_ml.masking import train as mt

    data = _dama_like(tmp_path / "a", ["s1", "s2", "s3"], 0)
    config = mt.TrainConfig(holdout=("sammba", "emory", "templates"), synth_per_dama=0,
                            dataset_cache=str(tmp_path / "dc.npz"), val_fraction=0.34)
    real_savez = np.savez

    def ctrl_c_while_writing(file, **arrays):  # the first array written, then Ctrl-C
        real_savez(file, x=arrays["x"])
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(np, "savez", ctrl_c_while_writing)
    with pytest.raises(KeyboardInterrupt):
        mt.cached_dataset(config, data, tmp_path / "masks", log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    monkeypatch.setattr(np, "savez", real_savez)
    logged = []
    mt.cached_dataset(config, data, tmp_path / "masks", log=logged.append)
    assert logged[0] == "building the data set ...", logged
    mt.cached_dataset(config, data, tmp_path / "masks", log=logged.append)
    assert logged[-1] == f"data set read from {tmp_path / 'dc.npz'}"


def test_a_head_in_a_large_zero_padded_grid_is_masked_as_in_its_own(phantom):
    """The slices are resized to 64 px, so a head in a grid several times its own size looked
    small and its mask ballooned (an audit: a head off-centre in a grid 2.5 times its own got
    Dice 0.33 with its own grid's mask); the padding is now cut off before the network (the
    box of the data plus a tenth), and the mask pasted back on the whole grid."""
    import nibabel as nb

    from samri_ml.masking.predict import padding_box

    img = phantom["T2w"]
    data = np.asarray(img.dataobj, dtype=np.float32)
    own = np.asarray(predict_mask(img).dataobj) > 0
    assert padding_box(data) == (slice(None),) * 3  # the head fills its grid: untouched
    # 3.5: the whole grid's 99th percentile, mostly padding, normalised the head at half its
    # own and the mask came out 2.3 times its volume (Dice 0.61), in silence
    for factor in (2.5, 3.5):
        big = np.zeros(tuple(int(factor * n) for n in data.shape), np.float32)
        at = tuple(n // 5 for n in data.shape)  # off-centre
        region = tuple(slice(a, a + n) for a, n in zip(at, data.shape, strict=True))
        big[region] = data
        padded = predict_mask(nb.Nifti1Image(big, img.affine))
        assert padded.shape == big.shape
        mask = np.asarray(padded.dataobj) > 0
        assert mask.sum() == mask[region].sum()  # nothing in the padding
        assert dice(mask[region], own) > 0.98, factor
        assert abs(mask.sum() / own.sum() - 1) < 0.02, factor


def test_the_mask_does_not_depend_on_how_much_zero_padding_the_scan_has(phantom):
    """The padding was cut off only where the data's box (grown by a tenth) filled under a
    quarter of the grid: an EPI stored in a grid 1.5-2 times its own per axis went through
    whole and its mask came out 1.7-2.5 times its volume (the sammba EPI: Dice 0.58 with its
    own grid's mask), while 3 times was cut and right. The box is now always cut out: the
    same mask whatever the padding beyond it, centred or not."""
    import nibabel as nb

    from samri_ml.masking.predict import padding_box

    head = np.asarray(phantom["bold"].dataobj, dtype=np.float32)
    margin = tuple(n // 5 for n in head.shape)  # a scan's grid with room around the head
    scan = np.pad(head, [(m, m) for m in margin])
    inner = tuple(slice(m, m + n) for m, n in zip(margin, head.shape, strict=True))
    assert padding_box(scan) != (slice(None),) * 3  # its box fills over a quarter of it
    own = np.asarray(predict_mask(nb.Nifti1Image(scan, phantom["bold"].affine)).dataobj)
    assert own[tuple(n // 2 for n in own.shape)] == 1  # the brain in the middle
    for factor, centred in ((1.25, True), (1.5, True), (2.0, True), (1.5, False)):
        extra = [int(n * (factor - 1) / 2) for n in scan.shape]
        pads = [(e, e) if centred else (2 * e, 0) for e in extra]
        big = np.pad(scan, pads)
        region = tuple(slice(b, b + n) for (b, _), n in zip(pads, scan.shape, strict=True))
        mask = np.asarray(predict_mask(nb.Nifti1Image(big, phantom["bold"].affine)).dataobj)
        assert mask.sum() == mask[region].sum(), (factor, centred)  # nothing in the padding
        assert np.array_equal(mask[region], own), (factor, centred, dice(mask[region] > 0,
                                                                         own > 0))
    # a brain mask still (0.82 with the truth; the EPI phantom in its own tight grid 0.92:
    # the network sees the head smaller with the tenth's frame around it)
    assert dice(own[inner] > 0, np.asarray(phantom["mask"].dataobj) > 0) > 0.8


def test_a_splines_undershoot_is_clipped_not_shifted(phantom):
    """A zero-background image resliced with a cubic spline has a few negative voxels at its
    edges; shifting the whole image by its minimum made the background an offset and shrank
    the mask (an audit: Dice 0.67-0.75 with the image's own mask). A few negative voxels are
    now clipped at 0; a demeaned image (most voxels negative) is still shifted."""
    import nibabel as nb

    img = phantom["T2w"]
    data = np.asarray(img.dataobj, dtype=np.float32)
    own = np.asarray(predict_mask(img).dataobj) > 0
    ringing = data.copy()
    edge = (data > 0) & (np.roll(data, 1, axis=0) == 0)  # voxels at the head's edge
    ringing[np.roll(edge, -1, axis=0)] = -0.4 * np.percentile(data, 99)
    assert 0 < np.mean(ringing < 0) < 0.25
    mask = np.asarray(predict_mask(nb.Nifti1Image(ringing, img.affine)).dataobj) > 0
    assert dice(mask, own) > 0.97
    demeaned = np.asarray(predict_mask(nb.Nifti1Image(data - data.mean(), img.affine)).dataobj)
    assert dice(demeaned > 0, own) > 0.97


def test_a_constant_background_offset_is_subtracted(phantom):
    """A skull-stripped brain with a constant added to it (1 % of its 99th percentile) got
    Dice 0.62-0.70 with its manual mask in an audit: the network learnt that outside is 0. A
    minimum above 0 shared by a fifth of the voxels or more is now subtracted: the same mask."""
    import nibabel as nb

    img = phantom["T2w"]
    data = np.asarray(img.dataobj, dtype=np.float32)
    assert data.min() == 0 and np.mean(data == 0) > 0.2  # a flat zero background
    own = np.asarray(predict_mask(img).dataobj)
    offset = data + 0.01 * np.percentile(data, 99)
    np.testing.assert_array_equal(
        np.asarray(predict_mask(nb.Nifti1Image(offset, img.affine)).dataobj), own)


def _a_previous_run(tmp_path) -> dict:
    """OUT's folder holding a complete earlier set (model, json, png); returns its bytes."""
    out = tmp_path / "m" / "out.keras"
    out.parent.mkdir()
    for name, data in (("out.keras", b"old model"), ("out_training.json", b'{"old": true}'),
                       ("out_loss.png", b"old png")):
        (out.parent / name).write_bytes(data)
    return {p.name: p.read_bytes() for p in out.parent.iterdir()}


def _ctrl_c_in(monkeypatch, module, name: str, calls: tuple[int, ...] = (1,)):
    """A real SIGINT inside the ``calls``-th calls (1: the first) of ``module.name``, after
    it ran (a rename done, a model written to its temporary file)."""
    import os
    import signal

    real, n = getattr(module, name), [0]

    def then_ctrl_c(*args, **kwargs):
        result = real(*args, **kwargs)
        n[0] += 1
        if n[0] in calls:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(module, name, then_ctrl_c)


def test_ctrl_c_while_the_model_is_saved_keeps_a_complete_set(tmp_path, capsys, tiny_slices,
                                                              monkeypatch,
                                                              sigint_as_in_a_terminal):
    """Ctrl-C just after the last epoch truncated OUT (saved in place, unloadable) or left
    the new model beside the old run's json and png. Now the trained model is kept, as one
    set with its json and png, and the note says so; beside OUT's earlier, finished set
    (OUT_interrupted.keras), which is left as it was."""
    import warnings

    import keras

    from samri_ml.masking import train as mt

    before = _a_previous_run(tmp_path)
    _ctrl_c_in(monkeypatch, mt, "save_without_optimizer")  # the first save: the normal one
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert _train_masker(tmp_path) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "samri_ml-train-masker: interrupted", err
    assert "note: interrupted after the last epoch (3 in all)" in err[-2], err
    out = tmp_path / "m" / "out_interrupted.keras"
    assert f"{tmp_path / 'm' / 'out.keras'}, a finished model, was left as it was" in err[-2]
    keras.saving.load_model(out, compile=False)
    summary = json.loads(out.with_name("out_interrupted_training.json").read_text())
    assert summary["interrupted"] is True and len(summary["history"]["phase"]) == 3
    assert out.with_name("out_interrupted_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([
        *before, "out_interrupted.keras", "out_interrupted_loss.png",
        "out_interrupted_training.json"])  # no temporary file
    assert {n: (out.parent / n).read_bytes() for n in before} == before


def test_ctrl_c_twice_while_saving_leaves_the_previous_set(tmp_path, capsys, tiny_slices,
                                                           monkeypatch, sigint_as_in_a_terminal):
    import warnings

    from samri_ml.masking import train as mt

    before = _a_previous_run(tmp_path)
    _ctrl_c_in(monkeypatch, mt, "save_without_optimizer", calls=(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert _train_masker(tmp_path) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "and again while saving: nothing was saved" in err[-2], err
    assert f"{tmp_path / 'm' / 'out.keras'}, a finished model, was left as it was" in err[-2]
    out = tmp_path / "m"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ctrl_c_during_the_renames_waits_for_all(tmp_path, capsys, tiny_slices, monkeypatch,
                                                 sigint_as_in_a_terminal):
    """SIGINT after the first of the three renames: the other two are done all the same
    (Ctrl-C deferred), so the set is this run's, complete, and not resaved as interrupted."""
    import os
    import warnings

    _a_previous_run(tmp_path)
    _ctrl_c_in(monkeypatch, os, "replace")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert _train_masker(tmp_path) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "note: interrupted while saving" in err[-2] and "complete" in err[-2], err
    out = tmp_path / "m" / "out.keras"
    summary = json.loads(out.with_name("out_training.json").read_text())
    assert "interrupted" not in summary and "old" not in summary
    assert out.read_bytes() != b"old model" and out.with_name("out_loss.png").read_bytes() != \
        b"old png"
    assert len(list(out.parent.iterdir())) == 3


def test_train_masker_refuses_out_that_is_an_input_model(tmp_path, capsys, monkeypatch):
    """``--average-of a1.keras a2.keras`` with OUT a1.keras replaced a member and its
    history with the average. Now a usage error before any work, also through a link or
    another relative path; and OUT equal to --init too."""
    from samri_ml.cli.train_masker import main

    monkeypatch.chdir(tmp_path)
    for name in ("a1.keras", "a2.keras"):
        (tmp_path / name).write_bytes(b"a member")
    (tmp_path / "link.keras").symlink_to(tmp_path / "a1.keras")
    (tmp_path / "sub").mkdir()
    data = ["--data-dir", str(tmp_path)]
    cases = [
        [str(tmp_path / "a1.keras"), "--average-of", "a1.keras", "a2.keras"],
        ["link.keras", "--average-of", str(tmp_path / "a2.keras"), "a1.keras"],
        ["sub/../a2.keras", "--average-of", "a1.keras", "a2.keras"],
        ["a1.keras", "--init", "./link.keras"],
    ]
    for argv in cases:
        assert main([*argv, *data]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "it would be overwritten" in err and "hint: name another OUT" in err, err
    assert all((tmp_path / n).read_bytes() == b"a member" for n in ("a1.keras", "a2.keras"))


def test_a_large_volume_is_predicted_with_few_copies_of_it(phantom):
    """Peak memory of the prediction: 408 x 408 x 392 voxels (261 MB in float32) took 2.9 GB,
    each view's probabilities held at once beside the normalised volume (about seven copies
    of the volume); now one view's at a time (1.9 GB, the same masks bit for bit). Measured
    with tracemalloc (numpy's allocations, exactly) on the phantom upsampled to 200^3: at most
    four volumes (the result, a view's total, the next prediction, the normalised volume while
    slicing) plus the 64 px slices and their probabilities."""
    import tracemalloc

    from scipy import ndimage

    from samri_ml.masking import preprocess as pp
    from samri_ml.masking.predict import load_model, predict_volume

    model = load_model()
    ras, _ = pp.to_ras(np.asarray(phantom["T2w"].dataobj, np.float32),
                        phantom["T2w"].affine)
    big = ndimage.zoom(ras, [200 / n for n in ras.shape], order=1).astype(np.float32)
    assert big.shape == (200, 200, 200)
    slices = 5 * 200 * 64 * 64 * 4  # three views and two mirrors, 64 px float32
    tracemalloc.start()
    try:
        prob = predict_volume(model, big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert prob.shape == big.shape and prob.dtype == np.float32
    assert peak < 4 * big.nbytes + 3 * slices, (peak / big.nbytes, peak / 1e6)


def test_evaluate_masker_refuses_a_model_of_the_other_kind_before_the_scans(tmp_path, capsys,
                                                                           monkeypatch):
    """``samri_ml-evaluate-masker --model`` with the plate embedding (or a missing file) read
    every scan first (40 s with the shared data, a registration on a fresh cache) and printed
    a note about the model's missing _training.json before the error. Now the one line at
    once."""
    from samri_ml.cli import evaluate_masker
    from samri_ml.masking import data
    from samri_ml.plates.identify import default_model_dir

    def never(*a, **k):
        raise AssertionError("the scans were read")

    monkeypatch.setattr(data, "real_scans", never)
    plates = default_model_dir("default") / "plates_embedding.keras"
    for model, words, rc in ((plates, "not a brain-masking model", 1),
                             (tmp_path / "none.keras", "no such file", 2)):  # a usage error
        assert evaluate_masker.main(["--model", str(model), "--data-dir", str(tmp_path)]) == rc
        err = capsys.readouterr().err.strip().splitlines()  # (a usage error: after the usage)
        assert (len(err) == 1 or rc == 2) and words in err[-1] and str(model) in err[-1], err


def test_a_model_trained_on_fewer_views_gets_a_note(tmp_path, capsys, phantom):
    """A lab's model trained with --views coronal (the seed's method) was run by samri_ml-mask
    --model, evaluate-masker and MaskBrain along all three views by default, on sagittal and
    axial slices it never saw, without a word. Now a note names the views and the option.
    (The shipped weights, recorded here as coronal-only.)"""
    import shutil
    import warnings

    from samri_ml.cli.mask import main as mask
    from samri_ml.errors import SamriMLNote
    from samri_ml.interfaces import MaskBrain

    model = tmp_path / "coronal.keras"
    shutil.copy(default_model_path(), model)
    (tmp_path / "coronal_training.json").write_text(json.dumps({"config": {"views":
                                                                           ["coronal"]}}))
    scan = tmp_path / "t2.nii.gz"
    nb.save(phantom["T2w"], scan)
    words = (f"note: {model} was trained on coronal slices only (its _training.json), not "
             "sagittal and axial; hint: predict along those alone (--views coronal)")
    for views, noted in (([], True), (["--views", "coronal"], False)):
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            assert mask([str(scan), str(tmp_path / "m.nii.gz"), "--model", str(model),
                         *views]) == 0
        assert (words in capsys.readouterr().err) is noted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MaskBrain(in_file=str(scan), model=str(model)).run(cwd=str(tmp_path))
    assert any(issubclass(w.category, SamriMLNote) and "trained on coronal slices only"
               in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_an_empty_shared_data_variable_counts_as_unset(tmp_path, monkeypatch):
    """``SAMRI_ML_SHARED_DATA= samri_ml-evaluate-masker`` (or ``export
    SAMRI_ML_SHARED_DATA=$UNSET``) searched the current folder: "no scans with masks found
    under .". An empty variable is now the default folder, as an unset one."""
    from samri_ml import paths

    monkeypatch.delenv("SAMRI_ML_SHARED_DATA", raising=False)
    default = paths.shared_data_dir()
    monkeypatch.setenv("SAMRI_ML_SHARED_DATA", "")
    monkeypatch.chdir(tmp_path)
    assert paths.shared_data_dir() == default and default.is_absolute()
    if default.is_dir():
        assert paths.existing_data_dir() == default
    else:
        with pytest.raises(SamriMLError, match=r"\(the default: ../shared/data beside a source"):
            paths.existing_data_dir()


def test_a_missing_data_folder_names_where_it_was_looked_for(tmp_path, capsys, monkeypatch):
    """From an installed package the default data folder is beside site-packages: the
    message named that path and hinted at --data-dir only, not SAMRI_ML_SHARED_DATA
    (samri_ml-evaluate-plates --method mi-affine: "…/plates/atlas: not a directory")."""
    from samri_ml.cli.evaluate_masker import main as evaluate
    from samri_ml.cli.train_masker import main as train

    missing = tmp_path / "no_data"
    hint = "data folder not found; hint: pass --data-dir DIR or set SAMRI_ML_SHARED_DATA"
    for main, argv in ((evaluate, []), (train, [str(tmp_path / "m.keras")])):
        assert main([*argv, "--data-dir", str(missing)]) == 1
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
            f"error: --data-dir {missing}: {hint}")
        monkeypatch.setenv("SAMRI_ML_SHARED_DATA", str(missing))
        assert main(argv) == 1
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
            f"error: SAMRI_ML_SHARED_DATA={missing}: {hint}")
        monkeypatch.delenv("SAMRI_ML_SHARED_DATA")
    assert sorted(tmp_path.iterdir()) == []
    # samri_ml-evaluate-plates --method mi-affine reads its atlas there unless --atlas is given
    import cv2

    from samri_ml.cli.evaluate_plates import main as evaluate_plates

    (tmp_path / "secs").mkdir()
    section = np.random.default_rng(0).integers(0, 40, (120, 160)).astype(np.uint8)
    cv2.ellipse(section, (80, 60), (50, 35), 0, 0, 360, 200, -1)
    cv2.imwrite(str(tmp_path / "secs" / "60.png"), section)
    monkeypatch.setenv("SAMRI_ML_SHARED_DATA", str(missing))
    assert evaluate_plates(["--images", str(tmp_path / "secs"), "--method", "mi-affine"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"error: SAMRI_ML_SHARED_DATA={missing}: data folder not found; hint: pass --atlas DIR "
        "or set SAMRI_ML_SHARED_DATA")


def test_predict_mask_arguments_a_notebook_gives(phantom):
    """``predict_mask(img, views="coronal")`` said ``unknown view 'c'`` (the string's letters
    taken for views); ``max_slices=3`` (refused by samri_ml-mask and MaskBrain) gave a mask
    from 3 slices per view in silence; a model object that is not a masker (the plate
    embedding) failed deep in TensorFlow (``InvalidArgumentError: Input to reshape ...``).
    Now one view is a view, and the others are refused with one line, before any work."""
    from samri_ml.masking.predict import load_model, predict_mask
    from samri_ml.models.inference import import_keras

    img = phantom["T2w"]
    one = predict_mask(img, views="coronal")
    np.testing.assert_array_equal(np.asarray(one.dataobj),
                                  np.asarray(predict_mask(img, views=("coronal",)).dataobj))
    assert dice(np.asarray(one.dataobj), np.asarray(phantom["mask"].dataobj) > 0) > 0.75
    # the shipped masker as an object: taken
    assert np.asarray(predict_mask(img, model=load_model()).dataobj).any()
    with pytest.raises(SamriMLError, match=r"^max_slices 3: must be at least 32$"):
        predict_mask(img, max_slices=3)
    with pytest.raises(SamriMLError, match=r"^unknown view 'front'; choose from"):
        predict_mask(img, views=("coronal", "front"))
    keras = import_keras()
    other = keras.Sequential([keras.Input((224, 224, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64)], name="embedding")
    with pytest.raises(SamriMLError, match=r"^model 'embedding': not a brain-masking model"):
        predict_mask(img, model=other)


def test_average_of_an_interrupted_run_is_refused_and_an_unrecorded_one_noted(
        tmp_path, capsys, tiny_slices, monkeypatch, sigint_as_in_a_terminal):
    """--average-of took a member that Ctrl-C had saved after two epochs (its _training.json:
    'interrupted') and averaged it in without a word. Now it is refused in one line, before
    anything is written; a member without a _training.json (a model copied from elsewhere)
    is averaged with a note that its run is unknown."""
    import shutil
    import warnings

    finished, stopped = tmp_path / "m" / "out.keras", tmp_path / "s" / "out.keras"
    assert _train_masker(tmp_path) == 0
    with monkeypatch.context() as m:
        _ctrl_c_at_epoch(m, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            assert _train_masker_into(stopped, "0.1") == 130
    assert json.loads(stopped.with_name("out_training.json").read_text())["interrupted"]
    copied = tmp_path / "copied.keras"
    shutil.copy(finished, copied)
    capsys.readouterr()

    from samri_ml.cli.train_masker import main

    soup = tmp_path / "soup.keras"
    assert main([str(soup), "--data-dir", str(tmp_path), *TINY_DATA, "--average-of",
                 str(finished), str(stopped)]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"samri_ml-train-masker: error: --average-of {stopped} is an interrupted run"), err
    assert f"hint: finish its training (samri_ml-train-masker ... --init {stopped})" in err[0]
    assert not soup.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main([str(soup), "--data-dir", str(tmp_path), *TINY_DATA, "--average-of",
                     str(finished), str(copied)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert (f"note: --average-of {copied} has no copied_training.json: whether its training "
            "finished, and on which subjects, is unknown") in err, err
    assert f"{finished} has no" not in err
    assert json.loads(soup.with_name("soup_training.json").read_text())["average_of"] == [
        str(finished), str(copied)]


def test_train_masker_ensemble_of_writes_one_model_of_several(tmp_path, capsys, tiny_slices):
    """``--ensemble-of A B`` (how the shipped masker was made) writes one model giving the mean
    of A's and B's probabilities (members of two widths too), not mirrored by default, with a
    record that holds the members' own records and its validation Dice; evaluate-masker
    follows the members for what the ensemble never saw."""
    from samri_ml.cli.evaluate_masker import _held_out
    from samri_ml.cli.train_masker import main
    from samri_ml.masking.predict import load_model, mirrors_by_default
    from samri_ml.models.unet import ensemble_size

    a, b = tmp_path / "m" / "out.keras", tmp_path / "b.keras"
    assert _train_masker(tmp_path) == 0
    assert main([str(b), "--data-dir", str(tmp_path), "--width", "4", "--epochs-plain", "1",
                 "--epochs-augmented", "0", "--steps-per-epoch", "2", "--batch-size", "4",
                 *TINY_DATA]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "ens.keras"
    assert main([str(out), "--data-dir", str(tmp_path), *TINY_DATA, "--ensemble-of", str(a),
                 str(b)]) == 0  # fmt: skip
    record = json.loads(out.with_name("ens_training.json").read_text())
    assert record["ensemble_of"] == [str(a), str(b)]
    assert [m["config"]["width"] for m in record["members"]] == [2, 4]
    assert record["validation_dice"] and all(0 <= d <= 1 for d in
                                             record["validation_dice"].values())
    assert not out.with_name("ens_loss.png").exists()  # nothing was trained
    model = load_model(out, "float32")
    assert ensemble_size(model) == 2 and not mirrors_by_default(model)
    x = tiny_slices[0][:4]
    mean = (load_model(a, "float32").predict(x, verbose=0)
            + load_model(b, "float32").predict(x, verbose=0)) / 2
    np.testing.assert_allclose(model.predict(x, verbose=0), mean, atol=1e-5)
    assert _held_out(out) == ["sammba", "emory"]  # the data options' --holdout, recorded


@pytest.fixture(scope="module")
def lab_scans_dir(tmp_path_factory):
    """A lab's own scans as ``--scans`` reads them: three phantom mice (about 65x96x50 T2w), each
    ``sub-0N/anat/sub-0N_T2w.nii.gz`` with ``sub-0N_desc-brain_mask.nii.gz`` beside it, and
    sub-01's one-volume EPI with its own mask (a second scan of one animal)."""
    from samri_ml.example import make_subject, make_template

    root = tmp_path_factory.mktemp("lab")
    tpl = make_template(0, supersample=1)
    for i in (1, 2, 3):
        subject = make_subject(tpl, [0, i], n_volumes=1)
        anat = root / f"sub-0{i}" / "anat"
        anat.mkdir(parents=True)
        nb.save(subject["T2w"], anat / f"sub-0{i}_T2w.nii.gz")
        nb.save(subject["mask"], anat / f"sub-0{i}_desc-brain_mask.nii.gz")
        if i == 1:
            nb.save(subject["bold"], anat / "sub-01_task-rest_bold.nii.gz")
            nb.save(subject["func_mask"], anat / "sub-01_task-rest_desc-brain_mask.nii.gz")
    return root


def test_train_masker_on_a_labs_own_scans(tmp_path, lab_scans_dir, capsys, monkeypatch):
    """Labs could not train or fine-tune the masker on their own scans (only the shared
    data's layout was read). ``--scans DIR`` trains on BIDS-like image/mask pairs with no
    shared data at all, keeps each animal's scans on one side of the validation split, and
    ``--init`` fine-tunes the result on them (reusing the data set cache of the same scans).
    An ``--init`` given relative was recorded as given, which names no file from another
    folder (evaluate-masker follows it): now resolved."""
    from samri_ml.cli.train_masker import main

    short = ["--width", "2", "--epochs-plain", "1", "--epochs-augmented", "0",
             "--steps-per-epoch", "2", "--batch-size", "4", "--views", "coronal",
             "--scans", str(lab_scans_dir), "--data-dir", str(tmp_path / "no shared data"),
             "--dataset-cache", str(tmp_path / "ds.npz")]
    out = tmp_path / "lab.keras"
    assert main([str(out), *short]) == 0, capsys.readouterr().err
    summary = json.loads(out.with_name("lab_training.json").read_text())
    assert summary["config"]["scans"] == str(lab_scans_dir.resolve())
    val = summary["validation_groups"]
    assert len(val) == 1 and val[0] in ("sub-01", "sub-02", "sub-03"), val
    # all of the validation animal's scans (sub-01: its T2w and its EPI), each with a Dice
    n_scans = 2 if val == ["sub-01"] else 1
    assert sorted(summary["validation_dice"]) == [f"{val[0]}#{i}" for i in range(n_scans)]
    assert all(0 <= d <= 1 for d in summary["validation_dice"].values())
    n_val = summary["n_val_slices"]
    assert 0 < n_val < summary["n_slices"]
    tuned = tmp_path / "tuned.keras"
    monkeypatch.chdir(tmp_path)  # --init given relative: recorded resolved
    assert main([str(tuned), *short, "--init", out.name]) == 0
    err = capsys.readouterr().err
    assert "trained on another split" not in err
    assert f"data set read from {tmp_path / 'ds.npz'}" in err  # the same scans: reused
    tuned_summary = json.loads(tuned.with_name("tuned_training.json").read_text())
    assert tuned_summary["config"]["init_model"] == str(out.resolve())
    assert tuned_summary["validation_groups"] == val  # the same --seed: the same animal
    # evaluate-masker took --holdout's default (sammba, emory) for what such a model never
    # saw and reported dama and the templates as seen in training; it saw none of them
    from samri_ml.cli.evaluate_masker import main as evaluate

    emory = tmp_path / "data" / "mri" / "scans" / "emory_templates"
    emory.mkdir(parents=True)
    sub = lab_scans_dir / "sub-02" / "anat"
    nb.save(nb.load(sub / "sub-02_T2w.nii.gz"), emory / "mouseT2tmp.nii")
    nb.save(nb.load(sub / "sub-02_desc-brain_mask.nii.gz"), emory / "mousebrainMask.nii")
    for model in (out, tuned):
        assert evaluate(["--model", str(model), "--data-dir", str(tmp_path / "data"),
                         "--views", "coronal", "--json", str(tmp_path / "e.json")]) == 0
        rows = json.loads((tmp_path / "e.json").read_text())
        assert rows["held_out"] == ["dama", "sammba", "emory", "templates"]
        assert {r["seen_in_training"] for r in rows["by_source"]} == {False}
    # fine-tuned from the shipped model: what that one never saw
    from samri_ml.cli.evaluate_masker import _held_out

    shipped = default_model_path()
    record = json.loads(shipped.with_name(shipped.stem + "_training.json").read_text())
    tuned.with_name("tuned_training.json").write_text(json.dumps(
        {"config": {**tuned_summary["config"], "init_model": str(shipped)}}))
    assert _held_out(tuned) == record["config"]["holdout"]



def test_evaluate_masker_says_when_a_fine_tuned_models_init_is_lost_or_loops(tmp_path, capsys):
    """A model fine-tuned on a lab's scans and renamed to its ``--init``'s name (its record's
    ``init_model`` is itself) made evaluate-masker recurse until 'error: RecursionError:
    maximum recursion depth exceeded'; an ``init_model`` not found from here said that the
    model itself had no _training.json. Now it is evaluated, what it saw unknown, with a
    note that says why. An average of such models (--average-of with --scans) counted every
    shared source as unseen, whatever its members had seen: now what none of them saw."""
    import shutil

    from samri_ml.cli.evaluate_masker import _held_out
    from samri_ml.cli.evaluate_masker import main as evaluate
    from samri_ml.example import make_subject, make_template

    model = tmp_path / "m.keras"
    shutil.copy(default_model_path(), model)
    record = tmp_path / "m_training.json"
    config = {"holdout": ["sammba", "emory"], "scans": str(tmp_path / "lab")}
    record.write_text(json.dumps({"config": {**config, "init_model": str(model)}}))
    emory = tmp_path / "data" / "mri" / "scans" / "emory_templates"
    emory.mkdir(parents=True)
    subject = make_subject(make_template(0, supersample=1), [0, 1], n_volumes=1)
    nb.save(subject["T2w"], emory / "mouseT2tmp.nii")
    nb.save(subject["mask"], emory / "mousebrainMask.nii")
    assert evaluate(["--model", str(model), "--data-dir", str(tmp_path / "data"),
                     "--views", "coronal", "--json", str(tmp_path / "e.json")]) == 0
    err = capsys.readouterr().err
    assert (f"samri_ml-evaluate-masker: note: {model} was fine-tuned from --init {model}, but "
            "its training record leads back to this model: which shared sources it saw is "
            "unknown; hint: give the sources it never saw with --held-out") in err
    assert "has no _training.json beside it" not in err  # it has one
    assert json.loads((tmp_path / "e.json").read_text())["held_out"] is None
    # an --init given relative to another folder: not found from here
    record.write_text(json.dumps({"config": {**config, "init_model": "gone/m0.keras"}}))
    assert _held_out(model) is None
    assert ("--init gone/m0.keras, but it has no _training.json here"
            in capsys.readouterr().err)
    # an average (--average-of) of models fine-tuned on the lab's scans from the shipped
    # one: its weights are the shipped model's descendants, not all shared sources unseen
    shipped = default_model_path()
    shipped_holdout = json.loads(shipped.with_name(shipped.stem + "_training.json")
                                 .read_text())["config"]["holdout"]
    record.write_text(json.dumps({"config": {**config, "init_model": str(shipped)}}))
    lab_only = tmp_path / "lab_only.keras"  # trained on the lab's scans from random weights
    lab_only.with_name("lab_only_training.json").write_text(json.dumps(
        {"config": {**config, "init_model": ""}}))
    soup = tmp_path / "soup.keras"
    soup.with_name("soup_training.json").write_text(json.dumps(
        {"config": config, "average_of": [str(model), str(lab_only)]}))
    assert _held_out(lab_only) == ["dama", "sammba", "emory", "templates"]
    assert _held_out(soup) == shipped_holdout != _held_out(lab_only)


def _lab_copy(src, dst, drop=(), add=()):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    for name, img in add:
        nb.save(img, dst / name)
    return dst


def test_evaluate_masker_scores_a_labs_own_scans(tmp_path, lab_scans_dir, capsys):
    """A lab could score the masker only on the shared data (``--data-dir`` of its layout; a
    folder of its own scans: 'no scans with masks found'), so not on its own scans without
    writing Python. ``--scans DIR`` reads the pairs ``samri_ml-train-masker --scans`` reads
    (one animal is enough here: no validation split) and gives each scan's Dice, the one
    ``dice(predict_mask(image), mask)`` gives, and their summary."""
    from samri_ml.cli import evaluate_masker

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", drop=["sub-02", "sub-03"])
    out = tmp_path / "rows.json"
    assert evaluate_masker.main(["--scans", str(lab), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    rows = {r["scan"]: r for r in json.loads(out.read_text())["rows"]}
    anat = "sub-01/anat/sub-01_"
    masks = {f"{anat}T2w.nii.gz": f"{anat}desc-brain_mask.nii.gz",
             f"{anat}task-rest_bold.nii.gz": f"{anat}task-rest_desc-brain_mask.nii.gz"}
    assert set(rows) == set(masks)
    for name, row in rows.items():
        image, mask = lab / name, lab / masks[name]
        assert row["dice"] == pytest.approx(dice(predict_mask(image), mask), abs=1e-3)
        assert row["dice"] > 0.8 and f"{row['dice']:.3f}" in table
    assert "scans" in table and "no" in table  # the summary: a lab's scans, never seen
    # a mask of another grid is refused before anything runs, naming it
    lab2 = _lab_copy(lab_scans_dir, tmp_path / "lab2", drop=["sub-02", "sub-03"])
    bold_mask = lab2 / "sub-01" / "anat" / "sub-01_task-rest_desc-brain_mask.nii.gz"
    nb.save(nb.load(lab2 / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz"), bold_mask)
    assert evaluate_masker.main(["--scans", str(lab2)]) == 1
    assert f"{bold_mask}" in capsys.readouterr().err


def test_evaluate_masker_scores_a_scan_with_an_empty_reference_and_goes_on(tmp_path,
                                                                          lab_scans_dir, capsys):
    """One empty reference mask under ``--scans`` (a failed export, a mask not drawn yet)
    stopped the whole evaluation ('--scans: ... is empty'), the other scans unscored. Now that
    scan is scored Dice 0 (nothing to overlap; two empty masks would have made 1.0), named
    in a note, its volume ratio 'n/a', and the others are scored as before; training still
    refuses it."""
    import numpy as np

    from samri_ml.cli import evaluate_masker
    from samri_ml.errors import SamriMLError
    from samri_ml.masking.data import lab_scans

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", drop=["sub-03"])
    empty = lab / "sub-02" / "anat" / "sub-02_desc-brain_mask.nii.gz"
    ref = nb.load(empty)
    nb.save(nb.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), empty)
    out = tmp_path / "rows.json"
    assert evaluate_masker.main(["--scans", str(lab), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    rows = {r["scan"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 3  # sub-01's T2w and EPI, sub-02's T2w
    assert rows["sub-02/anat/sub-02_T2w.nii.gz"]["dice"] == 0.0
    assert all(r["dice"] > 0.8 for name, r in rows.items() if "sub-02" not in name)
    assert ("note: sub-02/anat/sub-02_T2w.nii.gz: its reference mask is empty (no voxel "
            "above 0.5), scored Dice 0") in captured.err
    line = next(x for x in captured.out.splitlines() if x.startswith("sub-02/"))
    assert "0.000" in line and "n/a" in line
    with pytest.raises(SamriMLError, match="is empty"):  # no training on it
        lab_scans(lab)


def _out_dir_layout(lab_scans_dir, root):
    """``lab_scans_dir``'s images in a BIDS tree ``root/ds`` and their masks in one folder
    ``root/masks``, as ``samri_ml-mask ds/sub-*/anat/*.nii.gz --out-dir masks`` names them."""
    import shutil

    from samri_ml.masking.data import lab_pairs

    ds, masks = _lab_copy(lab_scans_dir, root / "ds"), root / "masks"
    masks.mkdir()
    pairs = lab_pairs(ds, min_subjects=1)
    for image, mask, _ in pairs:
        shutil.copy(mask, masks / image.name.replace(".nii.gz", "_mask.nii.gz"))
    for _, mask, _ in pairs:
        mask.unlink(missing_ok=True)
    return ds, masks


def test_lab_pairs_read_the_masks_of_an_out_dir(tmp_path, lab_scans_dir):
    """``samri_ml-mask ds/sub-*/anat/*.nii.gz --out-dir masks`` writes a BIDS tree's masks
    into one folder; evaluate-masker --scans read only masks beside their images, so a lab
    that corrected them there had to move each beside its image. ``masks_dir`` pairs them
    with the images of their names; a mask there of no image is named in a note, an image
    with a mask beside it and one there is refused."""
    from samri_ml.errors import SamriMLNote
    from samri_ml.masking.data import lab_pairs

    want = {(i.name, i.name.replace(".nii.gz", "_mask.nii.gz"), s)
            for i, _, s in lab_pairs(lab_scans_dir)}
    ds, masks = _out_dir_layout(lab_scans_dir, tmp_path)
    with pytest.raises(SamriMLError, match="no brain masks"):
        lab_pairs(ds)
    got = lab_pairs(ds, masks_dir=masks)
    assert {(i.name, m.name, s) for i, m, s in got} == want and len(got) == 4
    # --out-dir the images' own folder: the masks beside them are those in it, one mask each
    anat = ds / "sub-02" / "anat"
    assert lab_pairs(_lab_copy(anat, tmp_path / "own", add=[(
        "sub-02_T2w_mask.nii.gz", nb.load(masks / "sub-02_T2w_mask.nii.gz"))]), min_subjects=1,
        masks_dir=tmp_path / "own")[0][1].name == "sub-02_T2w_mask.nii.gz"
    assert all(m.parent == masks for _, m, _ in got)
    (masks / "sub-09_T2w_mask.nii.gz").write_bytes((masks / "sub-01_T2w_mask.nii.gz")
                                                   .read_bytes())
    with pytest.warns(SamriMLNote, match=r"--masks: 1 mask\(s\) in .* of no image under "
                      r"--scans, left out: sub-09_T2w_mask\.nii\.gz"):
        assert len(lab_pairs(ds, masks_dir=masks)) == 4
    beside = ds / "sub-02" / "anat" / "sub-02_T2w_mask.nii.gz"
    beside.write_bytes((masks / "sub-02_T2w_mask.nii.gz").read_bytes())
    with pytest.raises(SamriMLError, match=r"sub-02_T2w\.nii\.gz has two masks, "
                       r"sub-02_T2w_mask\.nii\.gz beside it and .*masks.* in --masks"):
        lab_pairs(ds, masks_dir=masks)


def test_evaluate_masker_scores_scans_against_the_masks_of_an_out_dir(tmp_path, lab_scans_dir,
                                                                      capsys):
    """``--masks DIR`` with ``--scans``: the same Dice as with the masks beside the images."""
    from samri_ml.cli import evaluate_masker

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", drop=["sub-02", "sub-03"])
    ds, masks = _out_dir_layout(lab, tmp_path)
    rows = {}
    for argv, out in ((["--scans", str(lab)], "beside.json"),
                      (["--scans", str(ds), "--masks", str(masks)], "out_dir.json")):
        assert evaluate_masker.main([*argv, "--json", str(tmp_path / out)]) == 0
        rows[out] = {r["scan"]: r["dice"]
                     for r in json.loads((tmp_path / out).read_text())["rows"]}
    assert rows["out_dir.json"] == pytest.approx(rows["beside.json"], abs=1e-6)
    assert len(rows["beside.json"]) == 2
    capsys.readouterr()
    assert evaluate_masker.main(["--masks", str(masks)]) == 2  # the shared data: no --masks
    assert "--masks is for --scans" in capsys.readouterr().err


def test_evaluate_masker_sigterm_says_terminated_and_leaves_no_temporary_file(tmp_path,
                                                                              lab_scans_dir):
    """SIGTERM (``kill``, a cluster's time limit) ended samri_ml-evaluate-masker without a
    word (exit -15) and could leave a figure's hidden temporary file in --figures; it is
    Ctrl-C now: 'terminated', exit 143, no temporary file. The signal is sent once the first
    scan's figure is there (the next scans still to score). A real process."""
    import signal
    import time

    figures = tmp_path / "figures"
    proc = subprocess.Popen([sys.executable, "-m", "samri_ml.cli.evaluate_masker", "--scans",
                             str(lab_scans_dir), "--views", "coronal", "--figures",
                             str(figures)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (
            figures.is_dir() and any(p.suffix == ".png" for p in figures.iterdir())):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "samri_ml-evaluate-masker: terminated", err
    assert not [p.name for p in figures.iterdir() if p.name.startswith(".")]


def test_evaluate_masker_reads_batch_masks_and_leaves_out_an_unmasked_image(tmp_path,
                                                                           lab_scans_dir,
                                                                           capsys):
    """A lab that masked its scans with ``samri_ml-mask IN... --out-dir`` (masks named
    ``<IN's name>_mask.nii.gz``) could not score them: ``--scans`` read only
    ``*_desc-brain_mask`` ('no brain masks found'); and one image without a mask stopped the
    whole evaluation. Now an image's own ``<name>_mask`` beside it is its mask, an image
    without one is left out with a note naming it (none with a mask: refused), and an image
    with both kinds is refused (which is the corrected one?)."""
    from samri_ml.cli import evaluate_masker, mask
    from samri_ml.masking.data import lab_pairs

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", drop=["*desc-brain_mask*", "sub-03",
                                                           "*bold*"])
    anat = lab / "sub-01" / "anat"
    assert mask.main([str(anat / "sub-01_T2w.nii.gz"), "--out-dir", str(anat)]) == 0
    assert (anat / "sub-01_T2w_mask.nii.gz").is_file()
    capsys.readouterr()
    out = tmp_path / "rows.json"
    assert evaluate_masker.main(["--scans", str(lab), "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("samri_ml-evaluate-masker: note: --scans: 1 image(s) without a mask beside them "
            "left out: sub-02/anat/sub-02_T2w.nii.gz") in err, err
    rows = json.loads(out.read_text())["rows"]
    # the model's own masks: scored against themselves
    assert [r["scan"] for r in rows] == ["sub-01/anat/sub-01_T2w.nii.gz"]
    assert rows[0]["dice"] == pytest.approx(1.0)
    # training still refuses an image without a mask
    with pytest.raises(SamriMLError, match="sub-02_T2w.nii.gz has no mask beside it"):
        lab_pairs(lab)
    shared = lab_scans_dir / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz"
    (anat / shared.name).write_bytes(shared.read_bytes())
    with pytest.raises(SamriMLError, match="sub-01_T2w.nii.gz has two masks beside it, "
                       "sub-01_desc-brain_mask.nii.gz and sub-01_T2w_mask.nii.gz"):
        lab_pairs(lab, min_subjects=1, skip_unmasked=True)
    for name in (shared.name, "sub-01_T2w_mask.nii.gz"):
        (anat / name).unlink()
    assert evaluate_masker.main(["--scans", str(lab)]) == 1
    assert "no brain masks" in capsys.readouterr().err


def test_evaluate_masker_on_a_labs_training_scans_says_so_plainly(tmp_path, lab_scans_dir,
                                                                   capsys):
    """A model fine-tuned with --scans LAB, scored with --scans LAB, got 'its --scans folder
    links to scans of scans' (a lab's folder is no shared source; the table says 'seen'
    already), and so did one scored on another folder of links to LAB's files. Now no note
    for its own folder, and one naming the other folder."""
    import shutil

    from samri_ml.cli import evaluate_masker
    from samri_ml.masking.predict import default_model_path

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", drop=["sub-02", "sub-03"])
    model = tmp_path / "ours.keras"
    shutil.copy(default_model_path(), model)
    (tmp_path / "ours_training.json").write_text(json.dumps({"config": {
        "scans": str(lab.resolve()), "holdout": [], "init_model": ""}}))
    other = tmp_path / "other" / "sub-01"
    other.parent.mkdir()
    other.symlink_to(lab / "sub-01", target_is_directory=True)
    for folder, note in ((lab, None), (other.parent, f"holds scans of {other.parent} (the "
                                                     "same files): trained on")):
        assert evaluate_masker.main(["--scans", str(folder), "--model", str(model)]) == 0
        captured = capsys.readouterr()
        assert "of scans" not in captured.err
        assert (note in captured.err) if note else "note:" not in captured.err, captured.err
        assert "scans   2      yes" in captured.out, captured.out


def test_evaluate_masker_figures_of_a_labs_scans_have_clean_unique_names(tmp_path, lab_scans_dir,
                                                                         capsys):
    """``--scans DIR --figures FIGS`` named a picture after the scan's path with its image
    extension (``sub-01_anat_sub-01_T2w.nii.gz.png``), and two scans whose paths differ only in
    where the ``/`` is (``a/b_c`` and ``a_b/c``) shared one: '2 figures', one file. Now the
    extension is dropped and the second gets ``_2``, named in a note."""
    import shutil

    from samri_ml.cli import evaluate_masker
    from samri_ml.report import PREDICTED_MASK_COLOUR, REFERENCE_MASK_COLOUR
    from samri_ml.testing import colour_pixels

    lab = tmp_path / "lab"
    for folder in ("a/b_c", "a_b/c"):
        (lab / folder).mkdir(parents=True)
        for name in ("sub-01_T2w.nii.gz", "sub-01_desc-brain_mask.nii.gz"):
            shutil.copy(lab_scans_dir / "sub-01" / "anat" / name, lab / folder / name)
    figures = tmp_path / "figures"
    assert evaluate_masker.main(["--scans", str(lab), "--figures", str(figures)]) == 0
    err = capsys.readouterr().err
    pngs = sorted(p.name for p in figures.iterdir())
    assert pngs == ["a_b_c_sub-01_T2w.png", "a_b_c_sub-01_T2w_2.png"], pngs
    assert ("note: a_b/c/sub-01_T2w.nii.gz: figure a_b_c_sub-01_T2w_2.png (a scan before it "
            "has the same picture name)") in err, err
    for png in pngs:
        assert colour_pixels(figures / png, PREDICTED_MASK_COLOUR) > 100, png
        assert colour_pixels(figures / png, REFERENCE_MASK_COLOUR) > 100, png


def test_evaluate_masker_with_a_closed_stdout_still_writes_its_json(tmp_path, lab_scans_dir):
    """``samri_ml-evaluate-masker --scans DIR --json OUT | head -1`` stopped at the table's
    print with 'error: BrokenPipeError', exit 1, and OUT (written after it) was lost, as
    samri_ml-qc and the plate commands once did. Now the table is dropped, OUT written, exit
    0. A real process whose reader is gone before the first line."""
    import subprocess
    import sys

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", drop=["sub-02", "sub-03", "*bold*",
                                                           "*task-rest_desc*"])
    out, err = tmp_path / "rows.json", tmp_path / "err.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "samri_ml.cli.evaluate_masker",
                                 "--scans", str(lab), "--json", str(out)],
                                stdout=subprocess.PIPE, stderr=stderr)
        proc.stdout.close()  # the reader is gone before the first line, as after head -1
        assert proc.wait(timeout=600) == 0, err.read_text()
    assert "Error" not in err.read_text(), err.read_text()
    assert [r["scan"] for r in json.loads(out.read_text())["rows"]] == [
        "sub-01/anat/sub-01_T2w.nii.gz"]


@pytest.mark.parametrize("case", ["unpaired image", "unpaired mask", "other grid",
                                  "other affine", "empty mask", "one subject", "no masks",
                                  "no entities"])
def test_train_masker_refuses_lab_scans_it_cannot_pair(tmp_path, lab_scans_dir, capsys, case):
    """An image without its mask, a mask without its image, a mask of another grid, an empty
    mask, one animal (no validation split), or a folder without masks: one line naming the
    file and the fix, exit 1, nothing written."""
    from samri_ml.cli.train_masker import main

    mask = nb.load(lab_scans_dir / "sub-02" / "anat" / "sub-02_desc-brain_mask.nii.gz")
    grid = np.asarray(mask.dataobj)
    anat = tmp_path / "lab" / "sub-02" / "anat"
    name = "sub-02_desc-brain_mask.nii.gz"
    setups = {
        "unpaired image": ({"drop": [name]},
                           f"{anat / 'sub-02_T2w.nii.gz'} has no mask beside it; hint: put "
                           f"its mask there as sub-02_desc-brain_mask.nii.gz"),
        "unpaired mask": ({"drop": ["sub-02_T2w.nii.gz"]},
                          f"{anat / name} has no image beside it; hint: put its image there "
                          "as sub-02_<suffix>.nii.gz"),
        "other grid": ({"drop": [name], "add": [(f"sub-02/anat/{name}", nb.Nifti1Image(
                         grid[:, :-4], mask.affine))]},
                       f"{anat / name} ({'x'.join(map(str, grid[:, :-4].shape))}) is not on "
                       f"the grid of {anat / 'sub-02_T2w.nii.gz'} "
                       f"({'x'.join(map(str, grid.shape))})"),
        # the same shape, another affine: two equal shapes were named, not the affine
        "other affine": ({"drop": [name], "add": [(f"sub-02/anat/{name}", nb.Nifti1Image(
                           grid, mask.affine @ np.diag([2.0, 1, 1, 1])))]},
                         f"{anat / name} has the shape of {anat / 'sub-02_T2w.nii.gz'} "
                         f"({'x'.join(map(str, grid.shape))}) but not its affine"),
        "empty mask": ({"drop": [name], "add": [(f"sub-02/anat/{name}", nb.Nifti1Image(
                         np.zeros_like(grid), mask.affine))]},
                       f"{anat / name} is empty (no voxel above 0.5)"),
        "one subject": ({"drop": ["sub-01", "sub-03"]},
                        "scans of one subject (sub-02); the validation split needs two"),
        "no masks": ({"drop": ["*_mask.nii.gz"]}, "no brain masks (*_desc-brain_mask.nii.gz, "
                     "or <image>_mask.nii.gz) found"),
        # named as the hint for an image without entities used to say: still no pair
        "no entities": ({"drop": ["sub-02_*"], "add": [
                            ("sub-02/anat/T2w.nii.gz", nb.Nifti1Image(grid, mask.affine)),
                            ("sub-02/anat/T2w_desc-brain_mask.nii.gz", mask)]},
                        f"{anat / 'T2w.nii.gz'} has no mask beside it, nor can one pair with "
                        "it: its name has no entities (sub-<label>_...); hint: rename it "
                        "<entities>_T2w, e.g. sub-01_T2w.nii.gz beside "
                        "sub-01_desc-brain_mask.nii.gz"),
    }
    kwargs, words = setups[case]
    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", **kwargs)
    out = tmp_path / "m.keras"
    assert main([str(out), "--width", "2", "--epochs-plain", "1", "--epochs-augmented", "0",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--scans", str(lab)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # all but the empty mask (its voxels are read with the data set) before TensorFlow starts
    assert err[-1].startswith("samri_ml-train-masker: error: --scans") and words in err[-1], err
    assert len(err) == 1 or case == "empty mask", err
    assert not out.exists()


def test_lab_scans_in_a_datalad_dataset_pair_as_without_it(tmp_path, lab_scans_dir):
    """A DataLad dataset given as --scans DIR keeps a copy of each scan in
    .git/annex/objects/.../MD5E-s<size>--<hash>.nii.gz: each was taken for an image and
    refused ('has no mask beside it'). Hidden folders are not read: the same pairs as the
    folder without them."""
    from samri_ml.masking.data import lab_pairs

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab")
    want = [(image.relative_to(lab), mask.relative_to(lab), subject)
            for image, mask, subject in lab_pairs(lab)]
    scan = lab / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    key = f"MD5E-s{scan.stat().st_size}--0123456789abcdef0123456789abcdef.nii.gz"
    annexed = lab / ".git" / "annex" / "objects" / "Xy" / "Zw" / key / key
    annexed.parent.mkdir(parents=True)
    annexed.write_bytes(scan.read_bytes())
    assert [(image.relative_to(lab), mask.relative_to(lab), subject)
            for image, mask, subject in lab_pairs(lab)] == want
    assert len(want) == 4 and {s for _, _, s in want} == {"sub-01", "sub-02", "sub-03"}


def test_lab_scans_there_by_name_only_are_named(tmp_path, lab_scans_dir):
    """A DataLad dataset not fetched (its scans links into .git/annex/objects, content not
    there), links to scans moved away, or to an animal's folder not there: the files were
    passed over (an animal left out of training and scoring, unsaid), and
    train-masker/evaluate-masker --scans said 'no brain masks found; hint: name each scan's
    mask like its image', of masks named so. They are named, with the way to fetch them."""
    from samri_ml.masking.data import lab_pairs

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab")
    for path in sorted(lab.rglob("*.nii.gz")):  # `datalad drop`: links to absent content
        path.unlink()
        path.symlink_to(f"../../.git/annex/objects/Xy/Zw/MD5E-s1--{path.name}/x.nii.gz")
    (lab / "README").symlink_to(".git/annex/objects/Xy/Zw/MD5E-s2--x/x")  # not a scan
    with pytest.raises(SamriMLError, match=r"--scans .*: 8 NIfTI file\(s\) or linked "
                       r"folder\(s\) without their content, e\.g\. .*sub-01_T2w.*datalad get"):
        lab_pairs(lab)
    mask = lab / "sub-02" / "anat" / "sub-02_desc-brain_mask.nii.gz"
    other = _lab_copy(lab_scans_dir, tmp_path / "other")
    (other / mask.relative_to(lab)).unlink()
    (other / mask.relative_to(lab)).symlink_to(tmp_path / "moved" / mask.name)
    with pytest.raises(SamriMLError, match=r"1 NIfTI file\(s\) .*sub-02_desc-brain_mask"
                       r".*a symbolic link to .*moved.*which does not exist"):
        lab_pairs(other)
    # an animal's folder linked from a drive not mounted: that animal was left out, unsaid
    third = _lab_copy(lab_scans_dir, tmp_path / "third")
    (third / "sub-04").symlink_to(tmp_path / "unmounted" / "sub-04", target_is_directory=True)
    with pytest.raises(SamriMLError, match=r"1 NIfTI file\(s\) or linked folder\(s\) .*"
                       r"sub-04: a symbolic link to .*unmounted.*which does not exist"):
        lab_pairs(third)


def test_lab_scans_in_linked_animal_folders_are_read(tmp_path, lab_scans_dir):
    """A --scans folder of links to the animals' folders (sub-02 -> /data/study/sub-02):
    ``Path.rglob`` did not follow them (Python < 3.13), so those animals were left out of the
    training and of evaluate-masker's table, unsaid (all linked: 'no brain masks found').
    Linked folders are read as the folders themselves, once each (a link loop ends), and a
    scan changed in one rebuilds the data set cache."""
    from samri_ml.masking.data import lab_pairs

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab")
    want = [(image.relative_to(lab), mask.relative_to(lab), subject)
            for image, mask, subject in lab_pairs(lab)]
    study = tmp_path / "study"
    study.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    for sub in ("sub-01", "sub-02", "sub-03"):
        (lab / sub).rename(study / sub)
        (linked / sub).symlink_to(study / sub, target_is_directory=True)
    (study / "sub-01" / "loop").symlink_to(study, target_is_directory=True)
    assert [(image.relative_to(linked), mask.relative_to(linked), subject)
            for image, mask, subject in lab_pairs(linked)] == want
    built = _cached_dataset_of(linked, tmp_path / "dc.npz")
    assert built()[0] == "building the data set ..."
    scan = study / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    img = nb.load(scan)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine, img.header), scan)
    assert built()[0].endswith("holds a data set of other settings or scans: rebuilt and "
                               "replaced")


def _cached_dataset_of(lab, cache):
    """A function that runs ``cached_dataset`` on ``--scans lab`` (coronal slices) with
    ``cache`` and returns what it logged."""
    from samri_ml.masking import train as mt

    config = mt.TrainConfig(scans=str(lab), views=("coronal",), dataset_cache=str(cache))

    def built():
        logged = []
        mt.cached_dataset(config, log=logged.append)
        return logged

    return built


def test_a_git_commit_in_the_scans_folder_keeps_its_data_set_cache(tmp_path, lab_scans_dir):
    """The --dataset-cache key of --scans DIR hashed every file under DIR, .git's too: a
    commit (or any git operation) in a DataLad dataset rebuilt the data set of unchanged
    scans ('holds a data set of other settings or scans: rebuilt'). Hidden files and folders
    are left out of the key; a changed scan still rebuilds it."""
    import os

    import nibabel as nb


    lab = _lab_copy(lab_scans_dir, tmp_path / "lab")
    (lab / ".git" / "objects").mkdir(parents=True)
    built = _cached_dataset_of(lab, tmp_path / "dc.npz")
    assert built()[0] == "building the data set ..."
    (lab / ".git" / "objects" / "ab12").write_bytes(b"a commit")
    (lab / ".git" / "index").write_bytes(b"git's index, rewritten by git status")
    (lab / ".datalad").mkdir()
    (lab / ".datalad" / "config").write_text("[datalad]")
    assert built() == [f"data set read from {tmp_path / 'dc.npz'}"]
    scan = lab / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    os.utime(scan, ns=(scan.stat().st_atime_ns, scan.stat().st_mtime_ns + 10**9))  # touched
    assert built() == [f"data set read from {tmp_path / 'dc.npz'}"]  # the same content
    img = nb.load(scan)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine, img.header), scan)
    assert built()[0].endswith("holds a data set of other settings or scans: rebuilt and "
                               "replaced")

def test_shared_data_options_keep_a_labs_data_set_cache(tmp_path, lab_scans_dir):
    """--holdout, --synth-per-dama and the other options of the shared data do nothing with
    --scans (the command says so), but they were part of the cache's key: given, the lab's
    data set was rebuilt and replaced. They are left out of a lab's key now."""
    from dataclasses import replace

    from samri_ml.masking import train as mt

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab")
    cache = tmp_path / "dc.npz"
    config = mt.TrainConfig(scans=str(lab), views=("coronal",), dataset_cache=str(cache))
    logged = []
    mt.cached_dataset(config, log=logged.append)
    assert logged[0] == "building the data set ..."
    other = replace(config, holdout=("templates",), synth_per_dama=3, stripped_rim="cut")
    logged = []
    mt.cached_dataset(other, log=logged.append)
    assert logged == [f"data set read from {cache}"], logged


def _read_since(path, atime_ns) -> bool:
    """Whether ``path`` was read since its access time was set to ``atime_ns`` (older than
    its modification time, which relatime updates on the next read); the test is skipped
    where the file system keeps no access times (noatime)."""
    return path.stat().st_atime_ns != atime_ns


def _old_atime(path) -> int:
    """Set ``path``'s access time a day before its modification time; returns it (skips
    where a read does not update it: a noatime mount)."""
    import os

    st = path.stat()
    atime = st.st_mtime_ns - 86400 * 10**9
    os.utime(path, ns=(atime, st.st_mtime_ns))
    with open(path, "rb") as f:
        f.read(1)
    if not _read_since(path, atime):
        pytest.skip("this file system does not record reads (noatime)")
    os.utime(path, ns=(atime, st.st_mtime_ns))
    return atime


def test_training_without_a_dataset_cache_reads_no_other_file_of_the_scans(tmp_path,
                                                                           lab_scans_dir):
    """The data set cache's key reads every file under --scans (their content): it was made
    on every run, with no --dataset-cache too, where nothing reads it. A lab's folder with
    its raw data beside the scans (sourcedata/, many GB: 13 s a 4 GiB file on this machine)
    paid that on each samri_ml-train-masker run for nothing. Now the key is made only for a
    cache."""
    from samri_ml.masking import train as mt

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab")
    raw = lab / "sourcedata" / "raw.tar"
    raw.parent.mkdir()
    raw.write_bytes(b"\1" * 4096)
    atime = _old_atime(raw)
    logged = []
    x, y, groups, _, _ = mt.cached_dataset(mt.TrainConfig(scans=str(lab), views=("coronal",)),
                                           log=logged.append)
    assert logged[0] == "building the data set ..." and len(x) == len(y) > 0
    assert {g.split("/")[0] for g in groups} >= {"sub-01", "sub-02", "sub-03"}
    assert not _read_since(raw, atime)


def test_a_dataset_cache_of_scans_reads_only_their_niftis(tmp_path, lab_scans_dir):
    """The --dataset-cache key of --scans DIR read every file under DIR: a lab's raw data
    beside its scans (sourcedata/, many GB: 13 s a 4 GiB file on this machine) was read on
    each run to find the cache it could read. Only the NIfTIs (what the data set is made of)
    are read now; a changed scan still rebuilds the data set."""
    import nibabel as nb


    lab = _lab_copy(lab_scans_dir, tmp_path / "lab")
    raw = lab / "sourcedata" / "raw.tar"
    raw.parent.mkdir()
    raw.write_bytes(b"\1" * 4096)
    built = _cached_dataset_of(lab, tmp_path / "dc.npz")
    assert built()[0] == "building the data set ..."
    atime = _old_atime(raw)
    assert built() == [f"data set read from {tmp_path / 'dc.npz'}"]
    assert not _read_since(raw, atime)
    scan = lab / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    img = nb.load(scan)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine, img.header), scan)
    assert built()[0].endswith("holds a data set of other settings or scans: rebuilt and "
                               "replaced")


def test_train_masker_says_shared_data_options_do_nothing_with_scans(tmp_path, lab_scans_dir,
                                                                      capsys):
    """--holdout, the synthetic heads' options and the shared data's folders did nothing
    with --scans, without a word (a lab asking for --synth-per-dama 8 got none); they are
    now named in one note before the run (here refused at once: one animal)."""
    from samri_ml.cli.train_masker import main

    lab = _lab_copy(lab_scans_dir, tmp_path / "lab", drop=["sub-01", "sub-03"])
    argv = [str(tmp_path / "m.keras"), "--width", "2", "--epochs-plain", "1",
            "--epochs-augmented", "0", "--steps-per-epoch", "1", "--batch-size", "2",
            "--scans", str(lab)]
    assert main([*argv, "--holdout", "sammba", "--synth-per-dama", "8", "--snout-neck"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ("samri_ml-train-masker: note: --holdout, --synth-per-dama, --snout-neck "
                      "left out: with --scans the data set is your scans alone (no shared "
                      "data, no synthetic heads)"), err
    assert main(argv) == 1  # the defaults: no note
    assert not [line for line in capsys.readouterr().err.splitlines() if "note:" in line]


def test_evaluate_masker_says_shared_data_options_do_nothing_with_scans(tmp_path, capsys):
    """--data-dir, --cache-dir and --stripped-rim are the shared data's: with --scans
    evaluate-masker took and ignored them, unsaid (train-masker named them); now one note
    before the run (here refused at once: a folder without masks)."""
    from samri_ml.cli.evaluate_masker import main

    empty = tmp_path / "lab"
    empty.mkdir()
    argv = ["--scans", str(empty)]
    assert main([*argv, "--data-dir", str(tmp_path), "--stripped-rim", "cut"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ("samri_ml-evaluate-masker: note: --data-dir, --stripped-rim left out: "
                      "with --scans only your scans are scored (no shared data)"), err
    assert main(argv) == 1  # the defaults: no note
    assert not [line for line in capsys.readouterr().err.splitlines() if "note:" in line]


def test_evaluate_masker_notes_name_their_scan():
    """A note of the masking (the mask filling most of the image, a bright background) in an
    evaluation of many scans did not say which scan it was about."""
    import warnings

    from samri_ml.errors import SamriMLNote
    from samri_ml.masking.data import Scan
    from samri_ml.masking.evaluate import evaluate_scan

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:40, :48, :40]
    brain = ((x - 20) / 14) ** 2 + ((y - 24) / 18) ** 2 + ((z - 20) / 11) ** 2 <= 1
    # a brain on a bright, noisy background: "the background is not dark" (a note)
    image = np.where(brain, 100.0, rng.uniform(20, 30, brain.shape)).astype(np.float32)
    scan = Scan("lab/offset", "lab", image, brain.astype(np.uint8), (0.2, 0.2, 0.2), "manual")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_scan(scan, None)
    notes = [str(w.message) for w in caught if issubclass(w.category, SamriMLNote)]
    assert notes and all(n.startswith("lab/offset: ") for n in notes), notes


def test_a_weight_average_far_below_its_members_is_noted():
    """--average-of two networks trained from random weights gave validation Dice 0.0 without
    a word (their weights average to another network); a soup of fine-tunes, no note."""
    import warnings

    from samri_ml.errors import SamriMLNote
    from samri_ml.masking.train import _note_worse_average

    members = [{"validation_dice": {"a#0": 0.98, "b#0": 0.97}},
               {"validation_dice": {"a#0": 0.96, "b#0": 0.99}}, {"model": "no record"}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _note_worse_average({"a#0": 0.0, "b#0": 0.01}, members)
        _note_worse_average({"a#0": 0.975, "b#0": 0.98}, members)
    notes = [str(w.message) for w in caught if issubclass(w.category, SamriMLNote)]
    assert len(notes) == 1 and notes[0].startswith(
        "the weight average's median validation Dice is 0.005, its members' 0.975-0.975"), notes


def test_shared_scans_linked_into_a_labs_scans_folder_count_as_seen(tmp_path):
    """A model trained with --scans on a folder that links to scans of the shared data: those
    sources were counted among those it never saw. linked_sources names them (links only;
    a folder no longer there gives none)."""
    import json
    from types import SimpleNamespace

    from samri_ml.cli.evaluate_masker import linked_sources

    shared = tmp_path / "shared"
    shared.mkdir()
    emory, dama = shared / "mouseT2tmp.nii", shared / "d1.nii.gz"
    for path in (emory, dama):
        path.write_bytes(b"x")
    lab = tmp_path / "lab" / "sub-07" / "anat"
    lab.mkdir(parents=True)
    (lab / "sub-07_T2w.nii").symlink_to(emory)
    (lab / "sub-08_T2w.nii.gz").write_bytes(b"a copy: not recognised")
    model = tmp_path / "m.keras"
    (tmp_path / "m_training.json").write_text(json.dumps({"config": {
        "scans": str(tmp_path / "lab"), "holdout": []}}))
    scans = [SimpleNamespace(source="emory", path=str(emory)),
             SimpleNamespace(source="dama", path=str(dama)),
             SimpleNamespace(source="phantom", path="")]
    assert linked_sources(model, scans) == ["emory"]
    (tmp_path / "m_training.json").write_text(json.dumps({"config": {
        "scans": str(tmp_path / "moved"), "holdout": []}}))
    assert linked_sources(model, scans) == []


def test_two_batches_into_one_out_dir_never_replace_each_others_masks(tmp_path, phantom):
    """Two ``--out-dir`` batches into one DIR (two cluster jobs of one study) both found no
    ``head_mask.nii.gz`` there and both wrote it: one scan's mask replaced by the other's
    without --overwrite, both saying they wrote it (exit 0). The mask is placed only where
    no file has its name by then: of two scans of one name, one run writes its mask and the
    other says it kept that one (exit 1); each run's other scans are masked, so jobs that mask
    different scans into one DIR run side by side. Two real processes, started together."""
    import re

    jobs = {}
    for job, contrast in (("a", "T2w"), ("b", "T1w")):
        (tmp_path / job).mkdir()
        scans = [tmp_path / job / f"other_{job}.nii.gz", tmp_path / job / "head.nii.gz"]
        nb.save(phantom["bold"], scans[0])
        nb.save(phantom[contrast], scans[1])
        jobs[job] = scans
    out = tmp_path / "masks"
    procs = {job: subprocess.Popen(
        [sys.executable, "-m", "samri_ml.cli.mask", *map(str, scans), "--out-dir", str(out)],
        stderr=subprocess.PIPE, text=True) for job, scans in jobs.items()}
    errs = {job: proc.communicate(timeout=600)[1] for job, proc in procs.items()}
    codes = sorted(proc.returncode for proc in procs.values())
    assert codes == [0, 1], errs
    loser = next(job for job, proc in procs.items() if proc.returncode == 1)
    winner = "b" if loser == "a" else "a"
    assert (f"samri_ml-mask: error: {out / 'head_mask.nii.gz'} was written by another run "
            "while this one masked it; kept, this run's mask not written; hint: --overwrite "
            "to replace it, or mask into another --out-dir") in errs[loser], errs[loser]
    voxels = int(re.search(r"head_mask\.nii\.gz: brain mask of (\d+) voxels",
                           errs[winner]).group(1))
    assert int((np.asarray(nb.load(out / "head_mask.nii.gz").dataobj) > 0).sum()) == voxels
    assert sorted(p.name for p in out.iterdir()) == [
        "head_mask.nii.gz", "other_a_mask.nii.gz", "other_b_mask.nii.gz"]
