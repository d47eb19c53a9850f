"""The example dataset (``samri_ml-example``): layout, determinism, ground truth, contrast, CLI."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from samri_ml import example as ex
from samri_ml.cli.example import main

N_SUB, N_VOL, SEED = 2, 6, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("example") / "ds"
    return ex.write_example_dataset(out, n_subjects=N_SUB, n_volumes=N_VOL, seed=SEED)


def _data(path):
    return np.asarray(nb.load(str(path)).dataobj)


def _dice(a, b):
    """Dice = 2 |A & B| / (|A| + |B|)."""
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _gt(root, sub, name):
    return root / "derivatives" / "groundtruth" / f"sub-{sub}" / "ses-1" / name


def test_layout_and_metadata(dataset):
    files = set(_files(dataset))
    expected = {"dataset_description.json", "participants.tsv", "README", ".bidsignore"}
    for tpl in ("T2w", "bold", "desc-brain_mask", "dseg"):
        expected.add(f"template/tpl-Phantom_{tpl}.nii.gz")
    expected.add("derivatives/groundtruth/dataset_description.json")
    for i in range(1, N_SUB + 1):
        s = f"sub-{i:02d}"
        stem = f"{s}/ses-1/anat/{s}_ses-1"
        expected |= {f"{stem}_T2w.nii.gz", f"{stem}_T2w.json"}
        stem = f"{s}/ses-1/func/{s}_ses-1_task-rest"
        expected |= {f"{stem}_bold.nii.gz", f"{stem}_bold.json"}
        g = f"derivatives/groundtruth/{s}/ses-1"
        expected |= {
            f"{g}/anat/{s}_ses-1_desc-brain_mask.nii.gz",
            f"{g}/anat/{s}_ses-1_dseg.nii.gz",
            f"{g}/func/{s}_ses-1_task-rest_desc-brain_mask.nii.gz",
            f"{g}/{s}_ses-1_pose.json",
        }
    assert expected <= files, sorted(expected - files)
    assert "sub-03" not in {f.split("/")[0] for f in files}

    desc = json.loads((dataset / "dataset_description.json").read_text())
    assert (desc["BIDSVersion"], desc["DatasetType"]) == ("1.8.0", "raw") and desc["Name"]
    gdesc = json.loads((dataset / "derivatives/groundtruth/dataset_description.json").read_text())
    assert gdesc["DatasetType"] == "derivative"
    assert (dataset / ".bidsignore").read_text().split() == ["template/", "derivatives/"]
    assert (dataset / "participants.tsv").read_text().splitlines()[1:] == [
        "sub-01\tMus musculus\tphantom", "sub-02\tMus musculus\tphantom"
    ]  # fmt: skip

    tpl = nb.load(str(dataset / "template/tpl-Phantom_T2w.nii.gz"))
    assert tpl.shape == (63, 96, 48) and nb.aff2axcodes(tpl.affine) == ("R", "A", "S")
    assert np.allclose(tpl.header.get_zooms(), 0.2)
    assert nb.load(str(dataset / "template/tpl-Phantom_bold.nii.gz")).shape == tpl.shape

    anat = nb.load(str(dataset / "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"))
    assert nb.aff2axcodes(anat.affine) == ("R", "A", "S")
    assert np.allclose(anat.header.get_zooms(), 0.2)
    assert all(abs(a - b) <= 12 for a, b in zip(anat.shape, tpl.shape, strict=True))

    bold = nb.load(str(dataset / "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz"))
    assert bold.ndim == 4 and bold.shape[3] == N_VOL
    assert np.allclose(bold.header.get_zooms(), (0.3, 0.3, 0.6, 1.0))
    assert bold.header.get_xyzt_units() == ("mm", "sec")
    side = json.loads((dataset / "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.json").read_text())
    assert side["RepetitionTime"] == 1.0 and side["TaskName"] == "rest"
    assert side["SliceEncodingDirection"] == "k"
    st = side["SliceTiming"]
    assert len(st) == bold.shape[2] and min(st) == 0 and max(st) < 1.0
    order = np.argsort(st, kind="stable")
    n = bold.shape[2]  # interleaved: even slices first, then odd ones
    assert order.tolist() == list(range(0, n, 2)) + list(range(1, n, 2))


def test_cli_writes_byte_identical_dataset_and_skips_when_current(dataset, tmp_path, capsys):
    out = tmp_path / "again"
    args = [str(out), "--subjects", str(N_SUB), "--volumes", str(N_VOL), "--seed", str(SEED)]
    assert main(args) == 0
    assert _files(out) == _files(dataset)
    for rel in _files(dataset):
        assert (out / rel).read_bytes() == (dataset / rel).read_bytes(), rel
    capsys.readouterr()

    stamp = (out / "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz").stat().st_mtime_ns
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert (out / "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz").stat().st_mtime_ns == stamp

    (out / "sub-02/ses-1/func/sub-02_ses-1_task-rest_bold.nii.gz").unlink()
    assert not ex.is_current_example(out, N_SUB, N_VOL, SEED)
    assert not ex.is_current_example(dataset, N_SUB, N_VOL, SEED + 1)


def test_cli_refuses_unrelated_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main([str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and "--force" in err
    assert "Traceback" not in err
    assert _files(out) == ["notes.txt"]
    assert main([str(out), "--subjects", "0"]) == 2  # usage error
    capsys.readouterr()


def test_a_write_that_fails_keeps_nothing_and_the_rerun_works(tmp_path):
    """On a full disk samri_ml-example stopped with a bare "OSError: [Errno 28] No space left
    on device", left an empty dataset_description.json behind, and the same command run again
    (space freed) refused the folder: "not empty and is not a samri_ml example dataset". Now
    one line names the file, nothing is kept, and the rerun writes the data set. A real
    process whose files may not grow past 100 kB."""
    import subprocess
    import sys

    from samri_ml.testing import file_size_limit

    out = tmp_path / "ex"
    argv = [sys.executable, "-m", "samri_ml.cli.example", str(out), "--subjects", "1",
            "--volumes", str(N_VOL)]
    run = subprocess.run(argv, capture_output=True, text=True,
                         preexec_fn=file_size_limit(100_000))
    err = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(err) == 1, run.stderr
    assert err[0].startswith(f"samri_ml-example: error: cannot write {out}/"), err
    assert err[0].endswith(" (File too large); nothing kept; hint: free some space, or give "
                           "OUT_DIR on another disk"), err
    assert not out.exists()
    run = subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert ex.is_current_example(out, 1, N_VOL, 0)


def test_an_interrupted_write_keeps_nothing_and_the_rerun_works(tmp_path):
    """SIGTERM (a cluster's time limit; Ctrl-C alike) ended samri_ml-example without a word,
    left the files written so far (the one being written cut short at its name), and the same
    command run again refused the folder: "not empty and is not a samri_ml example dataset".
    Now it says 'terminated' (exit 143), nothing is kept, and the rerun writes the data set.
    A real process, sent the signal once a subject's files are being written."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "ex"
    argv = [sys.executable, "-m", "samri_ml.cli.example", str(out), "--subjects", "2",
            "--volumes", str(N_VOL)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (out / "sub-01").is_dir():
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.strip().splitlines() == ["samri_ml-example: terminated"], err
    assert not out.exists()
    run = subprocess.run(argv, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert ex.is_current_example(out, 2, N_VOL, 0)


def test_masks_and_brain_volume(dataset):
    tm = nb.load(str(dataset / "template/tpl-Phantom_desc-brain_mask.nii.gz"))
    m = _data(dataset / "template/tpl-Phantom_desc-brain_mask.nii.gz")
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    vol = m.sum() * np.prod(tm.header.get_zooms())
    assert 400 <= vol <= 500, vol  # a mouse brain, olfactory bulbs and cerebellum included
    dseg = _data(dataset / "template/tpl-Phantom_dseg.nii.gz")
    assert set(np.unique(dseg)) == set(ex.LABELS)
    assert np.array_equal(m > 0, np.isin(dseg, ex.BRAIN_LABELS))
    # one connected brain, not touching the grid border
    assert ndimage.label(m)[1] == 1
    assert not (m[[0, -1]].any() or m[:, [0, -1]].any() or m[:, :, [0, -1]].any())
    for i in range(1, N_SUB + 1):
        s = f"{i:02d}"
        for name in (f"anat/sub-{s}_ses-1_desc-brain_mask.nii.gz",
                     f"func/sub-{s}_ses-1_task-rest_desc-brain_mask.nii.gz"):  # fmt: skip
            img = nb.load(str(_gt(dataset, s, name)))
            sm = np.asarray(img.dataobj)
            assert sm.dtype == np.uint8 and set(np.unique(sm)) == {0, 1}
            v = sm.sum() * np.prod(img.header.get_zooms()[:3])
            assert 0.8 * vol < v < 1.2 * vol, (name, v)  # scale is +-5 % per axis


def test_groundtruth_is_template_under_known_pose(dataset):
    tm = nb.load(str(dataset / "template/tpl-Phantom_desc-brain_mask.nii.gz"))
    t = np.asarray(tm.dataobj)
    tinv = np.linalg.inv(tm.affine)
    for i in range(1, N_SUB + 1):
        s = f"{i:02d}"
        pose = json.loads(_gt(dataset, s, f"sub-{s}_ses-1_pose.json").read_text())
        a = np.asarray(pose["template_to_subject"])
        assert np.allclose(a @ np.asarray(pose["subject_to_template"]), np.eye(4), atol=1e-9)
        assert max(abs(r) for r in pose["rotation_deg"]) <= 10
        assert max(abs(x) for x in pose["translation_mm"]) <= 1
        assert 0.15 <= pose["deformation"]["max_displacement_mm"] <= 0.45
        for modality, name, key in (
            ("anat", f"anat/sub-{s}_ses-1_desc-brain_mask.nii.gz", None),
            ("func", f"func/sub-{s}_ses-1_task-rest_desc-brain_mask.nii.gz", "func"),
        ):
            img = nb.load(str(_gt(dataset, s, name)))
            gt = np.asarray(img.dataobj) > 0
            ijk = np.indices(gt.shape).reshape(3, -1)
            world = img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]
            inv = np.asarray((pose[key] if key else pose)["subject_to_template"])

            def resample(points, shape=gt.shape):
                vox = tinv[:3, :3] @ points + tinv[:3, 3:4]
                return ndimage.map_coordinates(t, vox, order=0).reshape(shape) > 0

            affine_only = _dice(gt, resample(inv[:3, :3] @ world + inv[:3, 3:4]))
            exact = _dice(
                gt, resample(ex.subject_to_template_points(world, pose, modality=modality))
            )
            ignored = _dice(gt, resample(world))  # the pose matters: without it, no match
            assert affine_only > 0.95, (s, modality, affine_only)
            assert exact > 0.97, (s, modality, exact)
            assert ignored < 0.9, (s, modality, ignored)


def test_contrasts_follow_mr_physics(dataset):
    dseg = _data(dataset / "template/tpl-Phantom_dseg.nii.gz")
    t2 = _data(dataset / "template/tpl-Phantom_T2w.nii.gz")
    epi = _data(dataset / "template/tpl-Phantom_bold.nii.gz")

    def mean(img, name):
        (k,) = [i for i, n in ex.LABELS.items() if n == name]
        return float(np.median(img[dseg == k]))

    # T2: CSF bright, grey > white matter, brain > muscle > bone, air 0
    assert mean(t2, "ventricles") > mean(t2, "cortex") > mean(t2, "white_matter")
    assert mean(t2, "cortex") > mean(t2, "muscle") > mean(t2, "skull")
    assert mean(t2, "background") == 0
    # EPI: flatter grey/white contrast than T2
    assert mean(epi, "cortex") / mean(epi, "white_matter") < mean(t2, "cortex") / mean(
        t2, "white_matter"
    )
    # T1 (for training data): white > grey matter, CSF dark
    t1 = ex.make_template(0, contrasts=("t1",), supersample=1)
    t1d, t1l = np.asarray(t1["T1w"].dataobj), np.asarray(t1["dseg"].dataobj)
    wm, gm, csf = (float(np.median(t1d[t1l == k])) for k in (2, 1, 6))
    assert wm > gm > csf


def test_bold_run_has_noise_and_a_small_fluctuation(dataset):
    bold = _data(dataset / "sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz").astype(float)
    fm = _data(_gt(dataset, "01", "func/sub-01_ses-1_task-rest_desc-brain_mask.nii.gz")) > 0
    ts = bold[fm]  # (voxels, time)
    tsnr = np.median(ts.mean(1) / ts.std(1))
    assert 10 < tsnr < 60, tsnr
    brain_mean = ts.mean(0)
    rel = brain_mean.std() / brain_mean.mean()
    assert 0.0005 < rel < 0.05, rel  # a BOLD-like change, far above the averaged noise
    anat = _data(dataset / "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz").astype(float)
    am = _data(_gt(dataset, "01", "anat/sub-01_ses-1_desc-brain_mask.nii.gz")) > 0
    air = _data(_gt(dataset, "01", "anat/sub-01_ses-1_dseg.nii.gz")) == 0
    snr = anat[am].mean() / anat[air].std()  # Rician background: std = 0.655 sigma
    assert 10 < snr < 80, snr  # Rician noise at SNR ~ 20-30


def test_pybids_finds_the_dataset(dataset):
    from bids import BIDSLayout

    layout = BIDSLayout(str(dataset))
    assert layout.get_subjects() == ["01", "02"]
    t2 = layout.get(suffix="T2w", extension=".nii.gz")
    bold = layout.get(suffix="bold", task="rest", extension=".nii.gz")
    assert len(t2) == N_SUB and len(bold) == N_SUB
    meta = layout.get_metadata(bold[0].path)
    assert (
        meta["RepetitionTime"] == 1.0 and len(meta["SliceTiming"]) == bold[0].get_image().shape[2]
    )


def test_pose_matrix_and_deformation_are_pure():
    m = ex.pose_matrix((0, 0, 90), (1, 0, 0), (1, 1, 1), (0, 0, 0))
    assert np.allclose(m[:3, :3] @ [1, 0, 0] + m[:3, 3], [1, 1, 0])
    c = np.array([[0.0, 0.0, 0.0]])
    u = ex.deformation_displacement(np.zeros((3, 1)), c, 2.0, [[0.3, 0, 0]])
    assert np.allclose(u[:, 0], [0.3, 0, 0])
    far = ex.deformation_displacement(np.array([[20.0], [0], [0]]), c, 2.0, [[0.3, 0, 0]])
    assert np.allclose(far, 0)
    assert ex.slice_timing(4, 1.0) == [0.0, 0.5, 0.25, 0.75]


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(tmp_path, capsys):
    """Two samri_ml-example runs into one OUT_DIR: the second was refused as "not a samri_ml
    example dataset" (the first one's files); rewriting one, it failed on the files the first
    had removed ("give a writable OUT_DIR"), and a run stopped removed the other's files. The
    folder is locked while it is written: the second says who writes it (exit 1), the first
    finishes, and no lock file is left in the data set. Two real processes."""
    import subprocess
    import sys
    import time

    out = tmp_path / "ex"
    argv = [str(out), "--subjects", "1", "--volumes", str(N_VOL)]
    first = subprocess.Popen([sys.executable, "-m", "samri_ml.cli.example", *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None and not (
            out / "dataset_description.json").exists():
        time.sleep(0.002)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"samri_ml-example: error: another samri_ml run (pid {first.pid}) is "
                   f"writing to {out}; hint: wait for it, or use another OUT_DIR"], err
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert ex.is_current_example(out, 1, N_VOL, 0)
    assert ".samri_ml.lock" not in _files(out)
    assert main(argv) == 0 and "up to date" in capsys.readouterr().out
