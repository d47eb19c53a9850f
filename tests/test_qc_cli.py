"""``samri_ml-qc scan`` and ``samri_ml-qc compare``: exit codes, JSON, statistics and plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from samri_ml.cli.qc import main

KEYS = {"vcf", "scf", "scf_normalised", "volume_processed", "volume_raw", "fwhm_processed",
        "fwhm_raw"}  # fmt: skip


def _brain(shape=(30, 32, 16), seed=0, n_t=None):
    """A smooth textured blob (intensity falling with the radius) on an empty background."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r2 = zz**2 + yy**2 + xx**2
    tex = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    img = np.where(r2 < 1, 100 * np.exp(-r2 / 0.5) + 5 * tex, 0.0)
    if n_t:
        img = img[..., None] + (r2 < 1)[..., None] * rng.standard_normal((*shape, n_t))
    return img.astype("float32")


@pytest.fixture
def images(tmp_path):
    raw = _brain(n_t=4)
    aff = np.diag([0.22, 0.25, 0.7, 1.0])
    raw_f = tmp_path / "sub-1_task-rest_bold.nii.gz"
    nb.save(nb.Nifti1Image(raw, aff), raw_f)
    # processed: on a finer isotropic "template" grid, trilinear resampling of the same space
    zoom = np.array([0.22, 0.25, 0.7]) / 0.2
    proc = np.stack([ndimage.zoom(raw[..., t], zoom, order=1) for t in range(4)], axis=-1)
    proc_f = tmp_path / "sub-1_task-rest_space-template_bold.nii.gz"
    nb.save(nb.Nifti1Image(proc, np.diag([0.2, 0.2, 0.2, 1.0])), proc_f)
    return proc_f, raw_f


def test_scan_prints_and_writes_json(images, tmp_path, capsys):
    proc_f, raw_f = images
    out = tmp_path / "out" / "qc.json"
    assert main(["scan", str(proc_f), str(raw_f), "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert KEYS <= set(printed)
    assert json.loads(out.read_text()) == printed
    assert printed["modality"] == "func"
    # resampling the same field of view conserves volume to within a few percent
    assert printed["vcf"] == pytest.approx(1.0, abs=0.05)
    assert printed["fwhm_processed"] > 0 and printed["fwhm_raw"] > 0
    # the run's registered temporal mean, or the run cut to one volume: still the run's (it
    # was "anat", and compare paired it with no workflow's record of the run)
    img = nb.load(proc_f)
    for data in (np.asarray(img.dataobj).mean(axis=3), np.asarray(img.dataobj)[..., :1]):
        one = tmp_path / f"mean{data.ndim}.nii.gz"
        nb.save(nb.Nifti1Image(data, img.affine), one)
        assert main(["scan", str(one), str(raw_f)]) == 0
        assert json.loads(capsys.readouterr().out)["modality"] == "func"


def test_scan_errors_are_one_line(images, tmp_path, capsys):
    proc_f, raw_f = images
    # a missing input: a usage error (exit 2, argparse's synopsis above the line)
    assert main(["scan", str(tmp_path / "missing.nii.gz"), str(raw_f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("samri_ml-qc: error:") and "missing.nii.gz" in err
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image")
    assert main(["scan", str(proc_f), str(bad)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["scan", str(proc_f)]) == 2  # usage
    assert main(["frobnicate"]) == 2


@pytest.mark.parametrize("value, cause, raw_words", [
    # a registration that moved the scan off the template's grid: refused with "hint: check
    # the file (an empty export or a failed conversion?)", by samri_ml-qc scan and the QC
    # interfaces alike; it names the processing now
    (0, "the image is all zeros; hint: the processing left nothing in the image: a "
        "registration that moved the scan off the template's grid? check its transform",
     "hint: check the file (an empty export"),
    # one value everywhere: exit 0, "vcf": 0.0 (a number compare counted as measured) and a
    # null FWHM with a note blaming its axes; docs/errors.rst says a flat image is refused
    (7, "the image is constant (every voxel is 7): its volume and smoothness are undefined; "
        "hint: the processing left a constant image: a failed registration? check its "
        "transform", "constant (every voxel is 7)"),
])
def test_an_empty_or_constant_processed_image_points_at_the_registration(
        images, tmp_path, capsys, value, cause, raw_words):
    """A processed image of zeros or of one value is refused, by the command line and the QC
    interfaces, naming the file and the processing; as RAW, with the file's hint."""
    from samri_ml.interfaces import SmoothnessConservation, VolumeConservation

    proc_f, raw_f = images
    bad = tmp_path / "warped.nii.gz"
    img = nb.load(proc_f)
    nb.save(nb.Nifti1Image(np.full(img.shape, value, np.float32), img.affine), bad)
    assert main(["scan", str(bad), str(raw_f)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"samri_ml-qc: error: {bad}: {cause}", err
    for iface in (VolumeConservation, SmoothnessConservation):
        with pytest.raises(Exception, match=re.escape(f"{bad}: {cause.split(';')[0]}")):
            iface(processed_file=str(bad), raw_file=str(raw_f)).run(cwd=str(tmp_path))
    assert main(["scan", str(proc_f), str(bad)]) == 1
    assert raw_words in capsys.readouterr().err


def _deriv(root: Path, name: str, vcfs, scfs, modality="anat", describe=True,
           raw_dummy_scans=None):
    root.mkdir(parents=True)
    if describe:
        (root / "dataset_description.json").write_text(json.dumps({"Name": name}))
    for i, (v, s) in enumerate(zip(vcfs, scfs, strict=True)):
        d = root / f"sub-{i:02d}" / "ses-1" / modality
        d.mkdir(parents=True)
        rec = {"scan": f"sub-{i:02d}_ses-1_T2w", "modality": modality, "workflow": name,
               "vcf": v, "scf": s, "scf_normalised": s / v ** (1 / 3),
               "volume_processed": 400 * v, "volume_raw": 400.0, "fwhm_processed": 0.3 * s,
               "fwhm_raw": 0.3}  # fmt: skip
        if raw_dummy_scans is not None:  # None: a record of samri_ml 0.1.0 as first released
            rec["raw_dummy_scans"] = raw_dummy_scans
        (d / f"sub-{i:02d}_ses-1_desc-qc_metrics.json").write_text(json.dumps(rec))
    return root


def _compared_once(tmp_path):
    """``samri_ml-qc compare`` of two derivatives (A, B) run once into ``tmp_path/cmp`` as a
    real process: its argv, the --out folder and the files it wrote (name: bytes)."""
    rng = np.random.default_rng(1)
    a = _deriv(tmp_path / "a", "A", 1 + 0.02 * rng.standard_normal(12), np.full(12, 1.1))
    b = _deriv(tmp_path / "b", "B", 0.9 + 0.02 * rng.standard_normal(12), np.full(12, 1.1))
    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "samri_ml.cli.qc", "compare", str(a), str(b), "--out",
            str(out)]  # fmt: skip
    assert subprocess.run(argv, capture_output=True).returncode == 0
    return argv, out, {p.name: p.read_bytes() for p in out.iterdir()}


def test_compare_out_that_cannot_be_written_keeps_the_last_complete_files(tmp_path):
    """samri_ml-qc compare --out on a full disk stopped with a bare "OSError: [Errno 28] No
    space left on device" and left an empty (or cut short) qc_metrics.tsv beside the last run's
    other tables. Now one line names the file, and every file is renamed into place: the last
    complete ones stay as they were. A real process whose files may not grow past 3 kB."""
    from samri_ml.testing import file_size_limit

    argv, out, before = _compared_once(tmp_path)
    assert len(before["qc_metrics.tsv"]) > 3000
    run = subprocess.run(argv, capture_output=True, text=True, preexec_fn=file_size_limit(3000))
    err = run.stderr.strip().splitlines()
    assert run.returncode == 1 and err == [
        f"samri_ml-qc: error: cannot write {out / 'qc_metrics.tsv'} (File too large); hint: "
        "free some space, or give --out on another disk"], run.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no parts left either


def test_compare_stopped_half_way_keeps_the_last_complete_set(tmp_path):
    """A rerun of samri_ml-qc compare into the same --out stopped half-way (a full disk at the
    plots, Ctrl-C) left its new tables beside the earlier run's plots and stats: tables of
    workflows 'X' and 'Y', a violin plot of 'A' and 'B', without a word. Every file is now
    written first and renamed into place all together. A real process whose files may not
    grow past 20 kB (the tables fit, the plot does not)."""
    from samri_ml.testing import file_size_limit

    argv, out, before = _compared_once(tmp_path)
    assert len(before["qc_violin.png"]) > 20000 > len(before["qc_metrics.tsv"])
    run = subprocess.run(argv + ["--labels", "X", "Y"], capture_output=True, text=True,
                         preexec_fn=file_size_limit(20000))
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"samri_ml-qc: error: cannot write {out / 'qc_violin.png'} (File too large); hint: "
        "free some space, or give --out on another disk"], run.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_compare_sigterm_leaves_no_temporary_file(tmp_path):
    """SIGTERM (``kill``, a cluster's time limit) ended samri_ml-qc compare without a word
    and left a hidden, empty temporary file in --out (``.qc_violin.png.*.png``); it is
    Ctrl-C now: 'terminated', exit 143, the earlier run's files as they were. The signal is
    sent once the temporary files exist."""
    import signal
    import time

    argv, out, before = _compared_once(tmp_path)
    proc = subprocess.Popen(argv + ["--labels", "X", "Y"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not any(
            p.name.startswith(".") for p in out.iterdir()):
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    if proc.returncode == 0:  # all written before the signal came
        assert after.keys() == before.keys() and after != before, err
    else:
        assert proc.returncode == 143 and err.strip().splitlines() == [
            "samri_ml-qc: terminated"], err
        assert after == before


def test_compare_two_workflows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 12
    scf = 1.1 + 0.02 * rng.standard_normal(n)  # same smoothness in both workflows
    good = _deriv(tmp_path / "a", "Generic Masked", 1 + 0.02 * rng.standard_normal(n), scf)
    bad = _deriv(tmp_path / "b", "Generic", 0.8 + 0.05 * rng.standard_normal(n), scf,
                 describe=False)  # fmt: skip
    out = tmp_path / "cmp"
    assert main(["compare", str(good), str(bad), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Generic Masked" in printed and "| b |" in printed  # Name, else folder name
    assert "Caution" not in printed  # 12 scans each
    for name in ("qc_violin.png", "qc_violin.svg", "qc_metrics.tsv", "qc_pairwise.tsv",
                 "qc_summary.tsv", "qc_anova.tsv", "qc_stats.md"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "qc_violin.png").stat().st_size > 10_000
    assert (out / "qc_violin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "qc_violin.svg").read_text()[:2000]
    rows = (out / "qc_metrics.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2 * n

    summary = _read_tsv(out / "qc_summary.tsv")
    by_wf = {r["workflow"]: r for r in summary}
    assert float(by_wf["b"]["vcf_dev_mean"]) > 5 * float(by_wf["Generic Masked"]["vcf_dev_mean"])
    lo, hi = float(by_wf["b"]["vcf_dev_ci_low"]), float(by_wf["b"]["vcf_dev_ci_high"])
    assert lo < float(by_wf["b"]["vcf_dev_mean"]) < hi
    anova = {r["quantity"]: r for r in _read_tsv(out / "qc_anova.tsv")}
    assert float(anova["vcf_dev"]["p"]) < 0.05
    assert float(anova["scf_dev"]["p"]) > 0.05  # same SCF distribution
    pair = {r["quantity"]: r for r in _read_tsv(out / "qc_pairwise.tsv")}
    assert float(pair["vcf_dev"]["welch_p"]) < 0.05
    assert float(pair["vcf_dev"]["paired_p"]) < 0.05 and pair["vcf_dev"]["n_paired"] == str(n)
    assert float(pair["vcf_dev"]["rmse_ratio"]) < 0.3  # A (masked) conserves volume better


def test_compare_describes_the_columns_of_each_table_it_writes(tmp_path):
    """qc_summary.tsv's vcf_dev_ci_low, qc_pairwise.tsv's rmse_ratio, qc_metrics.tsv's volumes
    (mm^3, not the header's unit) were said nowhere a reader of the tables would look: each
    table has a JSON of its name describing every column, in its order, as BIDS describes a
    TSV."""
    a = _deriv(tmp_path / "a", "a", [1.0, 1.1, 0.9], [1.0, 1.1, 1.2])
    b = _deriv(tmp_path / "b", "b", [1.0, 1.2, 0.8], [1.0, 1.1, 1.2])
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    for table in ("qc_metrics", "qc_summary", "qc_anova", "qc_pairwise"):
        header = (out / f"{table}.tsv").read_text().splitlines()[0].split("\t")
        columns = json.loads((out / f"{table}.json").read_text())
        assert list(columns) == header, table
        assert all(columns[c]["Description"] for c in header), table
    columns = json.loads((out / "qc_metrics.json").read_text())
    assert columns["volume_raw"]["Units"] == "mm^3" and columns["fwhm_raw"]["Units"] == "mm"
    assert "--labels" in columns["workflow"]["Description"]  # the comparison's label
    summary = json.loads((out / "qc_summary.json").read_text())
    assert "95% bootstrap" in summary["vcf_dev_ci_low"]["Description"]
    anova = json.loads((out / "qc_anova.json").read_text())
    assert anova["quantity"]["Levels"]["vcf_dev"] == "abs(1-VCF)"


def test_compare_refuses_an_out_that_is_a_file_before_the_work(tmp_path, capsys):
    """``--out FILE`` was a raw FileExistsError (exit 1) after the statistics: a usage error
    with a hint, before anything runs; compare's usage errors begin ``samri_ml-qc: error:``,
    as its other errors do (they said ``samri_ml-qc compare: error:``)."""
    a = _deriv(tmp_path / "a", "a", [1.0, 1.1, 0.9], [1.0, 1.1, 1.2])
    b = _deriv(tmp_path / "b", "b", [1.0, 1.2, 0.8], [1.0, 1.1, 1.2])
    afile = tmp_path / "afile"
    afile.write_text("kept\n")
    for out, words in ((afile, f"--out {afile}: a file, not a folder; hint: give a folder"),
                       (afile / "cmp", f"--out {afile / 'cmp'}: {afile} is not a folder")):
        assert main(["compare", str(a), str(b), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing computed
        err = captured.err.strip().splitlines()
        assert err[-1].startswith("samri_ml-qc: error: ") and words in err[-1], err
    assert afile.read_text() == "kept\n"
    assert main(["compare", str(a), str(b), "--labels", "x"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "samri_ml-qc: error: --labels: 1 labels for 2 folders"
    assert main(["compare", str(a), str(b), "--modality", "dwi"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "samri_ml-qc: error: argument --modality: invalid choice")


def _anat_and_func(tmp_path: Path, name: str, rng, func_vcf: float = 1.0,
                   coverage=None) -> str:
    """A workflow's derivatives folder with 6 structural records (SCF about 0.77) and 6
    functional ones (SCF about 1.17, VCF about ``func_vcf``; ``brain_coverage`` from
    ``coverage``, one per functional scan, where given), as the example data gives them."""
    root = _deriv(tmp_path / name, name, 1 + 0.02 * rng.standard_normal(6),
                  0.77 + 0.02 * rng.standard_normal(6))
    func = _deriv(tmp_path / f"{name}_func", name, func_vcf + 0.02 * rng.standard_normal(6),
                  1.17 + 0.02 * rng.standard_normal(6), modality="func")
    for i, f in enumerate(sorted(func.rglob("*_desc-qc_metrics.json"))):
        rec = json.loads(f.read_text())
        if coverage is not None:
            rec["brain_coverage"] = coverage[i]
        target = root / f.relative_to(func)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(rec))
    return str(root)


def test_compare_says_when_structural_and_functional_scans_are_pooled(tmp_path, capsys):
    """They conserve smoothness differently (the example data: SCF about 0.77 and 1.15-1.2):
    pooled by default, said in a note, marked apart in the plot; --modality compares one."""
    rng = np.random.default_rng(3)
    folders = [_anat_and_func(tmp_path, name, rng) for name in ("a", "b")]
    assert main(["compare", *folders, "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "**Note:** anat and func scans are pooled" in printed, printed[:500]
    # records without brain_coverage (an older samri_ml's): a partial field of view among
    # them cannot be named, and that is said
    assert "**Note:** 12 functional scan(s) without `brain_coverage` in their QC record (a: " \
        "sub-00_ses-1_T2w; a: sub-01_ses-1_T2w; a: sub-02_ses-1_T2w; …): written by an older " \
        "samri_ml" in printed, printed[:1500]
    assert (tmp_path / "cmp" / "qc_violin.png").stat().st_size > 10_000
    assert main(["compare", *folders, "--modality", "func"]) == 0
    assert "pooled" not in capsys.readouterr().out


def test_compare_labels_and_errors(tmp_path, capsys):
    a = _deriv(tmp_path / "a", "X", [1.0, 0.9, 1.1], [1.0, 1.1, 1.2])
    b = _deriv(tmp_path / "b", "X", [0.9, 0.8, 1.0], [1.0, 1.1, 1.3])
    # the same Name twice (as every samri_ml-register output has): the folder names
    assert main(["compare", str(a), str(b)]) == 0
    assert "| a |" in (printed := capsys.readouterr().out) and "| b |" in printed
    assert printed.startswith("**Caution:** 3 scan(s) in the smallest workflow")
    # the same folder twice (also spelt otherwise) was compared with itself: F 0, p 1
    assert main(["compare", str(a), str(tmp_path / "a" / ".." / "a")]) == 1
    assert f"is given twice (also as {a})" in capsys.readouterr().err
    a2 = _deriv(tmp_path / "a2", "X", [1.0, 0.9, 1.1], [1.0, 1.1, 1.2])
    assert main(["compare", str(a), str(a2), "--labels", "one", "one"]) == 1
    assert "two folders are labelled 'one'; hint: give each its own label in --labels" \
        in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--labels", "masked", "plain"]) == 0
    assert "masked" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--labels", "one"]) == 2
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(a), str(empty), "--labels", "a", "e"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no *_desc-qc_metrics.json" in err and len(err.splitlines()) == 1
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2


@pytest.mark.shared_data
def test_scan_on_real_mouse_scans(shared_data, tmp_path, capsys):
    """A skull-stripped brain against its head scan (sammba): brain volume < head volume."""
    d = shared_data / "mri" / "scans" / "sammba"
    out = tmp_path / "qc.json"
    code = main(["scan", str(d / "brain.nii.gz"), str(d / "anat.nii.gz"), "--json", str(out)])
    assert code == 0
    rec = json.loads(out.read_text())
    assert 0.2 < rec["vcf"] < 0.9
    assert 0.1 < rec["fwhm_raw"] < 2.0 and 0.1 < rec["fwhm_processed"] < 2.0
    # the real 3-volume EPI against itself: everything conserved exactly
    capsys.readouterr()
    assert main(["scan", str(d / "func.nii.gz"), str(d / "func.nii.gz")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["modality"] == "func"
    assert rec["vcf"] == 1.0 and rec["scf"] == 1.0 and rec["scf_normalised"] == 1.0


def test_console_script_help():
    exe = Path(sys.executable).with_name("samri_ml-qc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "samri_ml.cli.qc"]
    res = subprocess.run([*cmd, "scan", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "PROCESSED" in res.stdout.upper()


def _read_tsv(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_compare_ignores_copies_outside_subject_folders(tmp_path):
    from samri_ml.qc.compare import compare_workflows

    a = _deriv(tmp_path / "a", "A", [1.0, 0.9, 1.1], [1.0, 1.1, 1.2])
    b = _deriv(tmp_path / "b", "B", [0.9, 0.8, 1.0], [1.0, 1.1, 1.3])
    work = a / "work" / "qc_wf" / "ds_qc"
    work.mkdir(parents=True)
    src = next((a / "sub-00").rglob("*_desc-qc_metrics.json"))
    (work / src.name).write_text(src.read_text())  # a Nipype node's copy
    res = compare_workflows([a, b])
    assert [row["n"] for row in res["summary"]] == [3, 3]


def test_compare_refuses_what_it_would_pool(tmp_path, capsys):
    """A folder above several workflows' outputs was read as one workflow; a folder with runs
    to two templates pooled them, and paired each scan with one of its two records."""
    rng = np.random.default_rng(1)
    a = _deriv(tmp_path / "all" / "a", "A", 1 + 0.02 * rng.standard_normal(6), np.ones(6))
    _deriv(tmp_path / "all" / "b", "B", 1 + 0.02 * rng.standard_normal(6), np.ones(6))
    assert main(["compare", str(tmp_path / "all"), str(a)]) == 1
    err = capsys.readouterr().err
    assert "holds 2 derivatives datasets (a, b); hint: give each one as its own DERIV_DIR" in err
    for qc in list(a.rglob("*_desc-qc_metrics.json")):
        rec = json.loads(qc.read_text())
        rec["vcf"] *= 1.5
        qc.with_name(qc.name.replace("_desc-qc", "_space-Other_desc-qc")).write_text(
            json.dumps(rec))
        qc.rename(qc.with_name(qc.name.replace("_desc-qc", "_space-Tpl_desc-qc")))
    b = tmp_path / "all" / "b"
    assert main(["compare", str(a), str(b)]) == 1
    assert "QC files of 2 templates (space Other, Tpl); hint: compare one at a time with " \
        "--space LABEL" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--space", "Tpl"]) == 1  # b has no space-Tpl
    assert "no QC files in space 'Tpl'" in capsys.readouterr().err
    for qc in list(b.rglob("*_desc-qc_metrics.json")):
        qc.rename(qc.with_name(qc.name.replace("_desc-qc", "_space-Tpl_desc-qc")))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--space", "Tpl", "--out", str(out)]) == 0
    pair = {r["quantity"]: r for r in _read_tsv(out / "qc_pairwise.tsv")}
    assert pair["vcf_dev"]["n_paired"] == "6"  # Tpl's records only
    assert {r["space"] for r in _read_tsv(out / "qc_metrics.tsv")} == {"Tpl"}
    # one label per folder: a's runs to Other against b's to Tpl (one label served all folders)
    out2 = tmp_path / "cmp2"
    assert main(["compare", str(a), str(b), "--space", "Other,Tpl", "--out", str(out2)]) == 0
    assert "registered to different templates (A: Other; B: Tpl)" in capsys.readouterr().out
    rows = _read_tsv(out2 / "qc_metrics.tsv")
    assert {(r["workflow"], r["space"]) for r in rows} == {("A", "Other"), ("B", "Tpl")}
    pair = {r["quantity"]: r for r in _read_tsv(out2 / "qc_pairwise.tsv")}
    assert pair["vcf_dev"]["n_paired"] == "6"
    for bad in ("Other,Tpl,Tpl", "Other,"):
        assert main(["compare", str(a), str(b), "--space", bad]) == 2
        assert f"--space {bad}: " in capsys.readouterr().err


def test_scan_of_analyze_images_measures_them_in_mm(images, tmp_path, capsys):
    """An Analyze 7.5 pair (no spatial unit in its header: mm by convention) ended in
    "AttributeError: 'Spm2AnalyzeHeader' object has no attribute 'get_xyzt_units'"."""
    proc_f, raw_f = images
    pairs = []
    for path in (proc_f, raw_f):
        img = nb.load(path)
        pair = tmp_path / (Path(path).name.split(".")[0] + ".hdr")
        nb.save(nb.AnalyzeImage(np.asarray(img.dataobj, np.float32), img.affine), pair)
        pairs.append(pair)
    assert main(["scan", str(proc_f), str(raw_f)]) == 0
    nifti = json.loads(capsys.readouterr().out)
    assert main(["scan", *map(str, pairs)]) == 0
    analyze = json.loads(capsys.readouterr().out)
    for key in ("vcf", "volume_processed", "volume_raw", "fwhm_raw"):
        assert analyze[key] == pytest.approx(nifti[key], rel=1e-4), key


def test_scan_guards_its_inputs_and_names_the_scan_after_its_source(images, tmp_path, capsys):
    """--json naming an input overwrote it; a series against a volume gave a meaningless SCF
    (its temporal mean is compared now);
    the record was named after the processed file, so compare never paired it with the
    workflow's own record of that scan (named after the raw one)."""
    import shutil

    proc_f, raw_f = images
    copy = tmp_path / "copy.nii.gz"
    shutil.copy(raw_f, copy)
    before = copy.read_bytes()
    assert main(["scan", str(proc_f), str(copy), "--json", str(copy)]) == 2
    assert "is one of the input images" in capsys.readouterr().err
    assert copy.read_bytes() == before
    assert main(["scan", str(proc_f), str(raw_f), "--json", str(tmp_path / "q.nii.gz")]) == 2
    capsys.readouterr()
    img = nb.load(raw_f)  # five copies of a volume against that volume: SCF 0.15 before
    volume = np.asanyarray(img.dataobj)[..., 0]
    nb.save(nb.Nifti1Image(volume, img.affine), tmp_path / "volume.nii.gz")
    nb.save(nb.Nifti1Image(np.stack([volume] * 5, -1), img.affine), tmp_path / "copies.nii.gz")
    assert main(["scan", str(tmp_path / "copies.nii.gz"), str(tmp_path / "volume.nii.gz")]) == 0
    assert json.loads(capsys.readouterr().out)["scf"] == pytest.approx(1.0, abs=1e-6)
    out = tmp_path / "sub-01_desc-qc_metrics.json"
    assert main(["scan", str(proc_f), str(raw_f), "--json", str(out)]) == 0
    capsys.readouterr()
    from samri_ml.qc.metrics import scan_name

    assert json.loads(out.read_text())["scan"] == scan_name(raw_f)


def test_compare_says_which_scans_a_statistic_left_out(tmp_path, capsys):
    """A scan whose SCF could not be measured (null in its record) was dropped from the SCF
    statistics without a word: the table said n=6 over a mean of 2 scans, and no caution
    came although the SCF test rested on 2 scans. Its n is now given beside the mean, the
    scans are named, and the caution counts the scans a statistic rests on."""
    from scipy import stats

    rng = np.random.default_rng(5)
    vcf_a, vcf_b = 1 + 0.02 * rng.standard_normal(6), 0.9 + 0.02 * rng.standard_normal(6)
    scf = 1.1 + 0.02 * rng.standard_normal(6)
    a = _deriv(tmp_path / "a", "a", vcf_a, scf)
    b = _deriv(tmp_path / "b", "b", vcf_b, scf)
    for i in range(4):  # b's first four scans: no measured smoothness
        f = b / f"sub-{i:02d}" / "ses-1" / "anat" / f"sub-{i:02d}_ses-1_desc-qc_metrics.json"
        rec = json.loads(f.read_text())
        rec.update(scf=None, scf_normalised=None, fwhm_raw=None)
        f.write_text(json.dumps(rec))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("**Caution:** 2 scan(s) in the smallest workflow"), printed[:300]
    assert ("**Note:** 4 scan(s) with a VCF or SCF that could not be measured" in printed
            and "b: sub-00_ses-1_T2w (scf, scf_normalised)" in printed), printed[:800]
    row_b = next(ln for ln in printed.splitlines() if ln.startswith("| b |"))
    cells = [c.strip() for c in row_b.strip("|").split("|")]
    assert cells[1] == "6" and "(n=" not in cells[2] and cells[3].endswith("(n=2)"), cells
    summary = {r["workflow"]: r for r in _read_tsv(out / "qc_summary.tsv")}
    assert summary["b"]["n"] == "6" and summary["b"]["vcf_dev_n"] == "6"
    assert summary["b"]["scf_dev_n"] == summary["b"]["scf_normalised_n"] == "2"
    assert float(summary["b"]["scf_dev_mean"]) == pytest.approx(np.abs(1 - scf[4:]).mean())
    # the tests are those of the measured scans: Welch on 6 and 2, paired on the 2 shared
    pair = {r["quantity"]: r for r in _read_tsv(out / "qc_pairwise.tsv")}
    welch = stats.ttest_ind(np.abs(1 - scf), np.abs(1 - scf[4:]), equal_var=False)
    assert float(pair["scf_dev"]["welch_p"]) == pytest.approx(welch.pvalue)
    assert pair["scf_dev"]["n_paired"] == "2" and pair["vcf_dev"]["n_paired"] == "6"


def test_a_closed_stdout_does_not_cost_the_json_or_the_exit_status(images, tmp_path):
    """``samri_ml-qc scan P R --json OUT | head -1`` stopped at the print with ``error:
    BrokenPipeError`` and exit 1, before OUT was written (the record was lost); compare
    likewise ended with exit 1 after its files. Now both go on quietly and exit 0."""
    proc_f, raw_f = images
    a = _deriv(tmp_path / "a", "a", [1.0, 1.1, 0.9], [1.0, 1.1, 1.2])
    b = _deriv(tmp_path / "b", "b", [1.0, 1.2, 0.8], [1.0, 1.1, 1.2])
    out, cmp_dir = tmp_path / "qc.json", tmp_path / "cmp"
    for argv in (["scan", str(proc_f), str(raw_f), "--json", str(out)],
                 ["compare", str(a), str(b), "--out", str(cmp_dir)]):
        err = tmp_path / "err.txt"
        with open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "samri_ml.cli.qc", *argv],
                                    stdout=subprocess.PIPE, stderr=stderr)
            proc.stdout.close()  # the reader is gone before the first line, as after head -1
            assert proc.wait(timeout=300) == 0, err.read_text()
        # nothing but notes (the fixture's raw run is white noise: no FWHM along L-R, said)
        assert all(": note: " in line for line in err.read_text().splitlines()), err.read_text()
    assert KEYS <= set(json.loads(out.read_text()))
    assert (cmp_dir / "qc_stats.md").read_text().startswith("**Caution:**")


def test_compare_cautions_when_the_matched_tests_rest_on_a_few_shared_scans(tmp_path, capsys):
    """Two folders of 12 scans with 2 subjects in common: the paired t-test and the
    repeated-measures F ran on those 2 and printed p-values (here p < 0.001 from noise) with
    no caution, as 12 scans per workflow are enough for the others. Now a caution says so."""
    rng = np.random.default_rng(0)
    a = _deriv(tmp_path / "a", "a", 1 + 0.05 * rng.standard_normal(12),
               1.1 + 0.05 * rng.standard_normal(12))
    b = tmp_path / "b"
    for i in range(10, 22):  # sub-10 and sub-11 are the only subjects a has too
        d = b / f"sub-{i:02d}" / "ses-1" / "anat"
        d.mkdir(parents=True)
        v, s = 1 + 0.05 * rng.standard_normal(), 1.1 + 0.05 * rng.standard_normal()
        (d / f"sub-{i:02d}_ses-1_desc-qc_metrics.json").write_text(json.dumps(
            {"scan": f"sub-{i:02d}_ses-1_T2w", "modality": "anat", "workflow": "b",
             "vcf": v, "scf": s, "scf_normalised": s / v ** (1 / 3)}))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("**Caution:** the workflows share 2 scan(s) (n_matched, "
                              "n_paired); with fewer than 5 the repeated-measures and paired "
                              "tests below say little."), printed[:300]
    pair = {r["quantity"]: r for r in _read_tsv(out / "qc_pairwise.tsv")}
    assert {r["n_paired"] for r in pair.values()} == {"2"}
    # the workflows sharing every scan (and 12 each): no caution
    shutil.copytree(a, tmp_path / "a_copy")
    assert main(["compare", str(a), str(tmp_path / "a_copy"), "--labels", "x", "y"]) == 0
    assert "Caution" not in capsys.readouterr().out
    # sharing none (other subjects, or scans named otherwise): the matched tests are n/a,
    # which came without a word
    c = tmp_path / "c"
    shutil.copytree(b, c)
    for f in c.rglob("*.json"):
        rec = json.loads(f.read_text())
        rec["scan"] = rec["scan"].replace("sub-1", "sub-3").replace("sub-2", "sub-4")
        f.write_text(json.dumps(rec))
    assert main(["compare", str(a), str(c)]) == 0
    assert ("**Note:** the workflows share 0 scan(s) (matched by source name and modality), "
            "so the repeated-measures and paired tests are n/a") in capsys.readouterr().out


def test_compare_of_three_names_the_pairs_whose_paired_tests_stand(tmp_path, capsys):
    """Three workflows, B and C on the same 8 scans, A on 8 of which B and C have 1 (or 3):
    the note said the paired tests were all n/a (or all said little) while B vs C's, on 8
    scans, printed p-values. The note now names the pairs it is about."""

    def deriv(name, subjects, seed):
        rng = np.random.default_rng(seed)
        vcfs = 1 + 0.03 * rng.standard_normal(len(subjects))
        root = _deriv(tmp_path / name, name, vcfs, 1.1 + 0.03 * rng.standard_normal(8))
        for i, sub in enumerate(subjects):  # renamed: sub-00.. to the given subjects
            for f in (root / f"sub-{i:02d}").rglob("*.json"):
                rec = json.loads(f.read_text())
                rec["scan"] = f"sub-{sub:02d}_ses-1_T2w"
                f.write_text(json.dumps(rec))
        return root

    b, c = deriv("B", range(8), 1), deriv("C", range(8), 2)
    for shared, seed in ((1, 3), (3, 4)):
        a = deriv(f"A{shared}", [*range(shared), *range(20, 28 - shared)], seed)
        out = tmp_path / f"out{shared}"
        assert main(["compare", str(a), str(b), str(c), "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        pairs = {(r["a"], r["b"]): r for r in _read_tsv(out / "qc_pairwise.tsv")
                 if r["quantity"] == "vcf_dev"}
        assert pairs[("B", "C")]["n_paired"] == "8" and pairs[("B", "C")]["paired_p"] != "n/a"
        assert pairs[(f"A{shared}", "B")]["n_paired"] == str(shared)
        said = {1: "**Note:** the workflows share 1 scan(s) (matched by source name and "
                   "modality), so the repeated-measures test is n/a, as are the paired tests "
                   "of A1 vs B, A1 vs C (those of B vs C stand); hint: check that they ran "
                   "on the same scans.",
                3: "**Caution:** the workflows share 3 scan(s) (n_matched); with fewer than 5 "
                   "the repeated-measures test and the paired tests of A3 vs B, A3 vs C below "
                   "say little."}[shared]
        assert said in printed.split("\n\n"), printed[:600]


def _in_unit(src: Path, dst: Path, unit: str, per_mm: float) -> Path:
    """The same image with its header counting space in ``unit`` (``per_mm`` units a mm)."""
    img = nb.load(src)
    aff = img.affine.copy()
    aff[:3] *= per_mm
    out = nb.Nifti1Image(np.asanyarray(img.dataobj), aff)
    out.header.set_xyzt_units(unit, "sec")
    nb.save(out, dst)
    return dst


def test_scan_values_are_in_mm_whatever_the_headers_unit(images, tmp_path, capsys):
    """A raw scan whose header counts in microns (the processed one in mm, a template's) gave
    its volume in um^3 and its FWHM in um, labelled mm: VCF 9e-10, SCF 1e-3. The QC nodes of
    samri_ml-register read the images the same way."""
    from samri_ml.interfaces.qc import SmoothnessConservation, VolumeConservation

    proc_f, raw_f = images
    assert main(["scan", str(proc_f), str(raw_f)]) == 0
    in_mm = json.loads(capsys.readouterr().out)
    for unit, per_mm in (("micron", 1000.0), ("meter", 0.001)):
        raw_u = _in_unit(raw_f, tmp_path / f"sub-1_task-rest_bold_{unit}.nii.gz", unit, per_mm)
        assert main(["scan", str(proc_f), str(raw_u)]) == 0
        got = json.loads(capsys.readouterr().out)
        for key in KEYS:
            assert got[key] == pytest.approx(in_mm[key], rel=1e-4), (unit, key)
        vol = VolumeConservation(processed_file=str(proc_f), raw_file=str(raw_u)).run().outputs
        smo = SmoothnessConservation(processed_file=str(proc_f), raw_file=str(raw_u),
                                     vcf=vol.vcf).run().outputs
        assert vol.volume_raw == pytest.approx(in_mm["volume_raw"], rel=1e-4)
        assert vol.vcf == pytest.approx(in_mm["vcf"], rel=1e-4)
        assert smo.fwhm_raw == pytest.approx(in_mm["fwhm_raw"], rel=1e-4)
        assert smo.scf == pytest.approx(in_mm["scf"], rel=1e-4)


def test_compare_reads_a_nan_as_not_measured_and_refuses_a_word(tmp_path, capsys):
    """A record with ``NaN`` (Python's json writes and reads it) was left out of the
    repeated-measures test but kept in the paired one, which came out n/a for all 8 scans
    (n_paired 8); it is now a scan not measured, as null is: paired on the 7 others, with the
    p-value of the repeated-measures test (the same test for two workflows). A word where a
    number belongs failed with a bare ``ValueError`` naming no file."""
    from scipy import stats

    rng = np.random.default_rng(7)
    vcf_a, vcf_b = 1 + 0.05 * rng.standard_normal(8), 0.95 + 0.05 * rng.standard_normal(8)
    scf = 1.1 + 0.02 * rng.standard_normal(8)
    a = _deriv(tmp_path / "a", "a", vcf_a, scf)
    b = _deriv(tmp_path / "b", "b", vcf_b, scf)
    f = b / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_desc-qc_metrics.json"
    rec = json.loads(f.read_text())
    rec.update(vcf=float("nan"), scf_normalised=float("inf"))
    f.write_text(json.dumps(rec))
    assert "NaN" in f.read_text()
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "b: sub-03_ses-1_T2w (vcf, scf_normalised)" in printed, printed[:800]
    pair = {r["quantity"]: r for r in _read_tsv(out / "qc_pairwise.tsv")}
    anova = {r["quantity"]: r for r in _read_tsv(out / "qc_anova.tsv")}
    keep = np.arange(8) != 3
    paired = stats.ttest_rel(np.abs(1 - vcf_a[keep]), np.abs(1 - vcf_b[keep]))
    assert pair["vcf_dev"]["n_paired"] == "7" and anova["vcf_dev"]["n_matched"] == "7"
    assert float(pair["vcf_dev"]["paired_p"]) == pytest.approx(paired.pvalue)
    assert float(anova["vcf_dev"]["p_rm"]) == pytest.approx(paired.pvalue)
    assert pair["scf_normalised"]["n_paired"] == "7"
    assert pair["scf_normalised"]["paired_p"] != "n/a"

    rec.update(vcf="n/a")
    f.write_text(json.dumps(rec))
    assert main(["compare", str(a), str(b)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"samri_ml-qc: error: {f}: vcf \"n/a\" is not a number; hint: give "
                           "a number, or null where it could not be measured"), err


def test_compare_pairs_the_scans_of_workflows_on_two_templates(tmp_path, capsys):
    """Two workflows that registered the same scans to two templates (which template is
    better?) shared no scan, as the pairing took the template for part of a scan's name: the
    paired and repeated-measures tests came out n/a (n_paired 0) without a word."""
    from scipy import stats

    from samri_ml.qc.compare import compare_workflows

    rng = np.random.default_rng(2)
    vcf_a, vcf_b = 1 + 0.02 * rng.standard_normal(6), 1.1 + 0.02 * rng.standard_normal(6)
    a = _deriv(tmp_path / "a", "a", vcf_a, np.ones(6))
    b = _deriv(tmp_path / "b", "b", vcf_b, np.ones(6))
    for root, space in ((a, "DSURQE"), (b, "Abi")):
        for qc in list(root.rglob("*_desc-qc_metrics.json")):
            qc.rename(qc.with_name(qc.name.replace("_desc-qc", f"_space-{space}_desc-qc")))
    res = compare_workflows([a, b])
    pair = {r["quantity"]: r for r in res["pairwise"]}["vcf_dev"]
    paired = stats.ttest_rel(np.abs(1 - vcf_a), np.abs(1 - vcf_b))
    assert pair["n_paired"] == 6 and pair["paired_p"] == pytest.approx(paired.pvalue)
    anova = {r["quantity"]: r for r in res["anova"]}["vcf_dev"]
    assert anova["n_matched"] == 6 and anova["p_rm"] == pytest.approx(paired.pvalue)
    assert ("**Note:** the workflows registered to different templates (a: DSURQE; b: Abi); "
            "their scans are paired by the name of their source.") in res["markdown"]


def test_compare_refuses_two_records_of_one_scan_in_a_workflow(tmp_path, capsys):
    """An older run's record kept in a subfolder was read as a second scan: the workflow's n,
    mean and Welch test counted the scan twice, the paired tests once."""
    a = _deriv(tmp_path / "a", "a", [1.0, 1.1, 0.9], np.ones(3))
    b = _deriv(tmp_path / "b", "b", [1.0, 1.2, 0.8], np.ones(3))
    src = a / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-qc_metrics.json"
    old = src.parent / "old" / src.name
    old.parent.mkdir()
    old.write_text(src.read_text())
    assert main(["compare", str(a), str(b)]) == 1
    err = capsys.readouterr().err
    first, second = sorted([src, old])  # read in sorted order
    assert err.strip() == (f"samri_ml-qc: error: {second}: a second QC record of "
                           f"sub-01_ses-1_T2w (anat) in {a}, beside {first}; hint: keep one"), err


def test_scan_leaves_the_dummy_scans_out_of_a_raw_run(tmp_path, capsys):
    """As samri_ml-register's QC does: a run cut by its dummy scans against the raw run gets
    VCF and SCF 1 with --dummy-scans; without, the bright first volumes lower both."""
    rng = np.random.default_rng(4)
    t = np.arange(30)
    raw = (_brain()[..., None] + rng.normal(0, 1.0, (30, 32, 16, t.size))) \
        * (1 + 0.6 * np.exp(-t / 3))
    aff = np.diag([0.2, 0.2, 0.4, 1.0])
    raw_f, proc_f = tmp_path / "sub-1_task-rest_bold.nii.gz", tmp_path / "proc.nii.gz"
    nb.save(nb.Nifti1Image(raw.astype("float32"), aff), raw_f)
    nb.save(nb.Nifti1Image(raw[..., 10:].astype("float32"), aff), proc_f)
    got = {}
    for n in ("0", "10", "40"):
        assert main(["scan", str(proc_f), str(raw_f), "--dummy-scans", n]) == 0
        out, err = capsys.readouterr()
        rec = json.loads(out)
        # more than the run has: said, as samri_ml-register says it (it was silent)
        assert ("30 volumes, not more than --dummy-scans 40: 29 dropped, 1 kept" in err) \
            is (n == "40"), err
        got[n] = rec["vcf"], rec["scf"]
        # the record says how it took the raw run (compare tells records made otherwise apart);
        # more dummy scans than volumes: all but the last, as the workflow drops them
        assert rec["raw_dummy_scans"] == min(int(n), t.size - 1), rec
    assert got["10"] == pytest.approx((1.0, 1.0), abs=1e-6)
    assert got["0"][0] < 0.97, got
    assert main(["scan", str(proc_f), str(raw_f), "--dummy-scans", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("\nsamri_ml-qc: error: --dummy-scans -1: must be 0 or more"), err


def test_compare_cautions_when_functional_records_took_the_raw_run_differently(tmp_path, capsys):
    """A lab's folder from the first release (functional VCF/SCF against the whole raw run, no
    raw_dummy_scans in its records) compared with one of today's (the run's dummy scans left
    out): the difference was silent, part of it the method's. Now a caution names how each
    workflow took the raw run; records that took it alike (the whole run both ways, or the same
    dummy scans) draw none, nor do structural ones (the method did not change for them)."""
    rng = np.random.default_rng(5)

    def folder(name, dummies, modality="func"):
        return str(_deriv(tmp_path / name, name, 0.8 + 0.02 * rng.standard_normal(6),
                          1.2 + 0.02 * rng.standard_normal(6), modality=modality,
                          raw_dummy_scans=dummies))

    old, new = folder("old", None), folder("new", 10)
    assert main(["compare", old, new, "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    # and each record's in the table of records (n/a: a record without it)
    rows = _read_tsv(tmp_path / "cmp" / "qc_metrics.tsv")
    assert sorted({(r["workflow"], r["raw_dummy_scans"]) for r in rows}) == [("new", "10"),
                                                                             ("old", "n/a")]
    assert ("**Caution:** the functional scans' VCF and SCF were not computed alike (old: the "
            "whole raw run, as an older samri_ml took it (no raw_dummy_scans); new: the raw run "
            "without its first 10 volumes)") in printed, printed[:800]
    assert "`samri_ml-qc scan PROCESSED RAW --dummy-scans N`" in printed
    for a, b in ((folder("new0", 0), old), (new, folder("new10", 10)),
                 (folder("old_anat", None, "anat"), folder("new_anat", 0, "anat"))):
        assert main(["compare", a, b]) == 0
        assert "not computed alike" not in capsys.readouterr().out, (a, b)
    # a rerun of some subjects only into the old folder: one workflow holds both kinds
    mixed = Path(folder("mixed", 10))
    for f in sorted(mixed.rglob("*_desc-qc_metrics.json"))[:3]:
        rec = json.loads(f.read_text())
        del rec["raw_dummy_scans"]
        f.write_text(json.dumps(rec))
    assert main(["compare", str(mixed), new]) == 0
    assert ("(mixed: the whole raw run, as an older samri_ml took it (no raw_dummy_scans) and "
            "the raw run without its first 10 volumes; new: the raw run without its first 10 "
            "volumes)") in capsys.readouterr().out


def test_compare_names_a_damaged_record_with_a_way_on(tmp_path, capsys):
    """One truncated (or foreign) record among many stopped the comparison with the file
    named but no word of what to do: now a hint says how to write it again."""
    a = _deriv(tmp_path / "a", "a", [1.0, 1.1, 0.9], [1.1, 1.0, 1.2])
    b = _deriv(tmp_path / "b", "b", [0.9, 1.0, 1.1], [1.0, 1.1, 1.2])
    f = b / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-qc_metrics.json"
    f.write_text(f.read_text()[:20])  # cut short
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"samri_ml-qc: error: {f}: not a readable JSON "
                                               "file ("), err
    assert "hint: write it again (rerun the samri_ml-register command" in err[0], err
    assert not out.exists()
    f.write_text(json.dumps({"scan": "sub-01_ses-1_T2w"}))
    assert main(["compare", str(a), str(b)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"samri_ml-qc: error: {f}: not a QC record (no 'vcf' key); hint: "), err


def _anisotropic_noise(shape, vox, fwhm_mm, seed=0):
    """1000 + white noise smoothed by a Gaussian of ``fwhm_mm`` per axis (mm)."""
    sig = [f / np.sqrt(8 * np.log(2)) / v for f, v in zip(fwhm_mm, vox, strict=True)]
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sig,
                                    mode="wrap")
    return (1000 + 10 * noise / noise.std()).astype("float32")


def test_scf_compares_the_same_axes_when_one_has_no_correlation_along_one(tmp_path, capsys):
    """A raw scan whose neighbouring slices are anticorrelated (ringing across thick slices: no
    FWHM along that axis) against a processed volume (on a grid stored in another axis order)
    as smooth in-plane, blurred across slices: the raw FWHM averaged 2 axes, the processed 3,
    the blurred one included, so the SCF came out 1.42. Now both leave that axis out, the
    record and a note say which, and the SCF is 1."""
    vox = (0.2, 0.2, 0.6)
    slices = _anisotropic_noise((48, 48, 9), vox, (0.5, 0.5, 0.0)) - 1000
    raw = 1000 + slices[..., 1:] - 0.5 * slices[..., :-1]  # lag-1 correlation -0.4 across
    raw_f, proc_f = tmp_path / "sub-1_T2w.nii.gz", tmp_path / "sub-1_space-t_T2w.nii.gz"
    nb.save(nb.Nifti1Image(raw.astype("float32"), np.diag([*vox, 1.0])), raw_f)
    # the processed volume stored (z, x, y): its voxel axis 0 is the world's I-S
    proc = _anisotropic_noise((48, 48, 8), vox, (0.5, 0.5, 1.5), seed=1).transpose(2, 0, 1)
    perm = np.zeros((4, 4))
    perm[2, 0], perm[0, 1], perm[1, 2], perm[3, 3] = 0.6, 0.2, 0.2, 1.0
    nb.save(nb.Nifti1Image(proc, perm), proc_f)
    out = tmp_path / "qc.json"
    assert main(["scan", str(proc_f), str(raw_f), "--json", str(out)]) == 0
    captured = capsys.readouterr()
    rec = json.loads(out.read_text())
    assert rec["scf_axes_left_out"] == ["I-S"]
    assert rec["scf"] == pytest.approx(1.0, abs=0.1)
    assert rec["scf"] == pytest.approx(rec["fwhm_processed"] / rec["fwhm_raw"])
    assert rec["fwhm_processed"] == pytest.approx(0.5, rel=0.1)  # the in-plane axes only
    note = [line for line in captured.err.splitlines() if "note:" in line]
    assert note == ["samri_ml-qc: note: the FWHMs and SCF leave out the I-S axis, without a "
                    "neighbour correlation in one image or both (a single slice?), on both "
                    "sides; scf_axes_left_out in the record says so"]
    # two volumes measured along every axis: nothing left out, no note
    assert main(["scan", str(proc_f), str(proc_f)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["scf_axes_left_out"] == []
    assert "note:" not in captured.err


def test_scan_says_in_one_line_which_image_cannot_be_measured(tmp_path):
    """The console script, in a subprocess, given an image whose FWHM cannot be measured: the
    QC functions' ValueError came out as ``cannot compute QC: only 2 voxels in the mask;
    cannot estimate smoothness``, naming neither the image nor a way on. Now the image is
    named, with a hint, on one line, exit 1; a ValueError is still what Python code catches."""
    from samri_ml.errors import SamriMLError
    from samri_ml.qc.smoothness import estimate_smoothness

    aff = np.diag([0.2, 0.2, 0.2, 1.0])
    good = tmp_path / "sub-1_T2w.nii.gz"
    nb.save(nb.Nifti1Image(_anisotropic_noise((20, 20, 10), (0.2,) * 3, (0.4,) * 3), aff), good)
    spike = np.zeros((20, 20, 10), "float32")
    spike[10, 10, 5] = 100  # one bright voxel: the automask has nothing else
    spike_f = tmp_path / "spike.nii.gz"
    nb.save(nb.Nifti1Image(spike, aff), spike_f)
    small = np.zeros((20, 20, 10), "uint8")
    small[5, 5, 5:7] = 1
    mask_f = tmp_path / "mask.nii.gz"
    nb.save(nb.Nifti1Image(small, aff), mask_f)
    exe = Path(sys.executable).with_name("samri_ml-qc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "samri_ml.cli.qc"]
    for argv, message in (
        ([good, good, "--mask", mask_f],
         f"{good}: only 2 voxels in the mask; cannot estimate smoothness; hint: give a mask "
         "of the brain"),
        ([good, spike_f],
         f"{spike_f}: only 1 voxel in the automask; cannot estimate smoothness; hint: the "
         "image is flat or nearly empty (no foreground for the automask); give a mask of the "
         "brain"),
    ):
        run = subprocess.run([*cmd, "scan", *map(str, argv)], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 1
        assert run.stderr.splitlines() == [f"samri_ml-qc: error: {message}"]
        assert run.stdout == ""
    with pytest.raises(ValueError, match="only 2 voxels") as err:
        estimate_smoothness(np.asarray(nb.load(good).dataobj), (0.2,) * 3, mask=small)
    assert isinstance(err.value, SamriMLError)
    # qc_from_arrays' names begin its errors: a NaN in the raw image said "raw image: ..."
    from samri_ml.qc.metrics import qc_from_arrays

    data = np.asarray(nb.load(good).dataobj, dtype=np.float32)
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(SamriMLError) as err:
        qc_from_arrays(data, np.eye(4), bad, np.eye(4), names=("proc.nii.gz", "raw.nii.gz"))
    assert str(err.value) == ("raw.nii.gz: 1 voxel(s) are NaN or Inf; hint: fix or zero them "
                              "first")


def test_compare_says_which_scfs_compare_fewer_axes(tmp_path, capsys):
    """A record whose SCF left an axis out (``scf_axes_left_out``: one image had no
    neighbour correlation along it) was pooled with three-axis SCFs without a word, and the
    key was not in qc_metrics.tsv. Now a note names the scans, and the table has the column
    ("none" where none was left out, n/a for a record that predates the key)."""
    a = _deriv(tmp_path / "a", "a", [1.0, 1.1, 0.9], [1.0, 1.1, 1.2])
    b = _deriv(tmp_path / "b", "b", [1.0, 1.2, 0.8], [1.0, 0.9, 1.1])
    path = b / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-qc_metrics.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "scf_axes_left_out": ["I-S"]}))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert ("**Note:** the SCF of 1 scan(s) compares fewer axes than the others' (an axis "
            "without neighbour correlation in one image, `scf_axes_left_out` in its QC "
            "record): b: sub-01_ses-1_T2w (without I-S).") in printed, printed[:1500]
    rows = _read_tsv(tmp_path / "cmp" / "qc_metrics.tsv")
    assert sorted((r["workflow"], r["scan"], r["scf_axes_left_out"]) for r in rows)[3:5] == [
        ("b", "sub-00_ses-1_T2w", "n/a"), ("b", "sub-01_ses-1_T2w", "I-S")]
    c = _deriv(tmp_path / "c", "c", [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert main(["compare", str(a), str(c)]) == 0  # every SCF over the same axes: no note
    assert "compares fewer axes" not in capsys.readouterr().out
    # every record without I-S: the note said "fewer axes than the others'", of no others
    for path in [*a.rglob("*_desc-qc_metrics.json"), *b.rglob("*_desc-qc_metrics.json")]:
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "scf_axes_left_out": ["I-S"]}))
    assert main(["compare", str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert "compares fewer axes" not in printed
    assert ("**Note:** every scan's SCF leaves out the I-S axis (no neighbour correlation "
            "along it in one image or both, `scf_axes_left_out` in the QC records): the SCFs "
            "compare with one another, not with SCFs over three axes.") in printed
    # a record of today's with no axis left out: "none" in qc_metrics.tsv, as in its own TSV
    # (it was n/a, as for a record without the key: not known)
    for path in a.rglob("*_desc-qc_metrics.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "scf_axes_left_out": []}))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp2")]) == 0
    rows = _read_tsv(tmp_path / "cmp2" / "qc_metrics.tsv")
    assert {(r["workflow"], r["scf_axes_left_out"]) for r in rows} == {("a", "none"),
                                                                       ("b", "I-S")}


def test_scan_records_the_template_brain_it_covers(images, tmp_path, capsys):
    """--template-mask: the record's brain_coverage, the fraction of the template's brain the
    processed scan covers, measured on the mask's grid (the brain beyond the scan's grid is not
    covered); null without it."""
    proc_f, raw_f = images
    img = nb.load(proc_f)
    inside = np.asarray(img.dataobj).mean(axis=3) != 0
    # the template's brain: the scan's, and as much again beyond its last slice
    mask_f = tmp_path / "tpl_desc-brain_mask.nii.gz"
    nb.save(nb.Nifti1Image(np.concatenate([inside, inside], axis=2).astype("uint8"),
                           img.affine), mask_f)
    assert main(["scan", str(proc_f), str(raw_f), "--template-mask", str(mask_f)]) == 0
    assert json.loads(capsys.readouterr().out)["brain_coverage"] == pytest.approx(0.5, abs=0.02)
    assert main(["scan", str(proc_f), str(raw_f)]) == 0
    assert json.loads(capsys.readouterr().out)["brain_coverage"] is None
    # the same mask with a header counting in microns (as the Allen CCF's NIfTIs do; ANTs
    # writes the registered scan in mm): it lay 1000x away from the scan, coverage 0.0001
    um = nb.load(mask_f)
    um_img = nb.Nifti1Image(np.asanyarray(um.dataobj), np.diag([1000.0] * 3 + [1.0]) @ um.affine)
    um_img.header.set_xyzt_units("micron")
    mask_um = tmp_path / "tpl_um_desc-brain_mask.nii.gz"
    nb.save(um_img, mask_um)
    assert main(["scan", str(proc_f), str(raw_f), "--template-mask", str(mask_um)]) == 0
    assert json.loads(capsys.readouterr().out)["brain_coverage"] == pytest.approx(0.5, abs=0.02)


def test_compare_names_the_scans_of_a_partial_field_of_view(tmp_path, capsys):
    """A functional scan covering 72 % of the template's brain (the sammba EPI, VCF 0.51) was
    pooled with the others without a word: the subject's report said it, the comparison did
    not. It now names such scans (brain_coverage below 0.9 in their records), and --modality
    anat where they are all functional; records without the key (older, or no template mask)
    are not named."""
    rng = np.random.default_rng(5)
    # the first two functional scans of each cover 72 % of the brain
    folders = [_anat_and_func(tmp_path, name, rng, func_vcf=0.5,
                              coverage=[0.72, 0.72, 0.98, 0.98, 0.98, 0.98])
               for name in ("a", "b")]
    out = tmp_path / "cmp"
    assert main(["compare", *folders, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (note,) = [p for p in printed.split("\n\n") if "partial field of view" in p]
    assert note.startswith("**Note:** 4 scan(s) cover less than 90% of the template's brain"), note
    assert "a: sub-00_ses-1_T2w (72%); a: sub-01_ses-1_T2w (72%); b: sub-00" in note, note
    assert note.endswith("(`--modality anat` leaves them out)."), note
    rows = _read_tsv(out / "qc_metrics.tsv")
    assert sorted(r["brain_coverage"] for r in rows if r["modality"] == "func")[:4] == [
        "0.72"] * 4
    assert {r["brain_coverage"] for r in rows if r["modality"] == "anat"} == {"n/a"}
    assert main(["compare", *folders, "--modality", "anat"]) == 0
    assert "partial field of view" not in capsys.readouterr().out
    # the plot draws them hollow, and says so: a VCF of 0.5 read as half the volume lost
    from samri_ml.qc.compare import read_qc_folder, violin_figure

    groups = {name: read_qc_folder(folder, name) for name, folder in zip("ab", folders,
                                                                          strict=True)}
    fig = violin_figure(groups)
    assert "Hollow points: a partial field of view" in fig._suptitle.get_text()
    from matplotlib.collections import PathCollection

    hollow = [c for ax in fig.axes for c in ax.collections  # scatter points without a face
              if isinstance(c, PathCollection) and len(c.get_facecolor()) == 0]
    # in each of the 5 func panels, 2 of each workflow's 6 scans
    assert sorted(c.get_offsets().shape[0] for c in hollow) == [2] * 10, hollow


def test_scan_refuses_a_mask_of_the_same_shape_on_another_grid(tmp_path, capsys):
    """--mask and --raw-mask were checked by shape only: another scan's mask of the same shape,
    its grid 3 mm away, measured the FWHM of whatever it covered here (SCF 3.9 for a copy
    smoothed to 1.1). It is refused in one line, naming both files; the same mask with a header
    counting in microns lies on the same grid and is taken."""
    vox = (0.2, 0.2, 0.4)
    aff = np.diag([*vox, 1.0])
    raw = _anisotropic_noise((32, 32, 16), vox, (0.5,) * 3)
    raw_f, proc_f = tmp_path / "raw.nii.gz", tmp_path / "proc.nii.gz"
    nb.save(nb.Nifti1Image(raw, aff), raw_f)
    nb.save(nb.Nifti1Image(ndimage.gaussian_filter(raw, 1.0), aff), proc_f)
    mask = np.zeros(raw.shape, "uint8")
    mask[4:28, 4:28, 2:14] = 1
    moved = aff.copy()
    moved[:3, 3] += (3.0, 2.0, 0.0)
    um = nb.Nifti1Image(mask, np.diag([1000.0] * 3 + [1.0]) @ aff)
    um.header.set_xyzt_units("micron")
    other_f, um_f, ok_f = (tmp_path / n for n in ("other.nii.gz", "um.nii.gz", "ok.nii.gz"))
    nb.save(nb.Nifti1Image(mask, moved), other_f)
    nb.save(um, um_f)
    nb.save(nb.Nifti1Image(mask, aff), ok_f)
    for option in ("--mask", "--raw-mask"):
        image = proc_f if option == "--mask" else raw_f
        assert main(["scan", str(proc_f), str(raw_f), option, str(other_f)]) == 1
        err = capsys.readouterr().err
        assert err.splitlines() == [
            f"samri_ml-qc: error: brain mask {other_f} is not on the grid of {image}: same "
            "shape (32, 32, 16), but its affine puts the grid 3 mm away; hint: give a mask of "
            "that image, or resample it onto the image first"]
    scf = {}
    for name, path in (("um", um_f), ("mm", ok_f)):
        assert main(["scan", str(proc_f), str(raw_f), "--mask", str(path), "--raw-mask",
                     str(path)]) == 0
        scf[name] = json.loads(capsys.readouterr().out)["scf"]
    assert scf["um"] == scf["mm"] > 1.0


def test_scan_of_a_saturated_head_has_a_vcf(shared_data, tmp_path, capsys):
    """The sammba head clipped at its 60th percentile (40 % of it at the top, a saturated
    scan) and shifted by half a voxel: samri_ml-qc scan said 'no voxel is above the 66th
    percentile (a flat image?)' and exited 1; the workflow's record had VCF null."""
    img = nb.load(shared_data / "mri/scans/sammba/anat.nii.gz")
    data = np.asanyarray(img.dataobj).astype(np.float32)
    sat = np.minimum(data, np.percentile(data, 60))
    raw_f, proc_f = tmp_path / "sat.nii.gz", tmp_path / "sat_shift.nii.gz"
    nb.save(nb.Nifti1Image(sat, img.affine), raw_f)
    nb.save(nb.Nifti1Image(ndimage.shift(sat, (0.5, 0, 0), order=1), img.affine), proc_f)
    assert main(["scan", str(proc_f), str(raw_f)]) == 0
    assert json.loads(capsys.readouterr().out)["vcf"] == pytest.approx(1.0, abs=0.02)


def test_scan_takes_a_soft_mask_as_its_voxels_above_half(shared_data, tmp_path, capsys):
    """--mask and --raw-mask took a soft mask's voxels above 0 (the sammba brain mask blurred
    into probabilities: 4x the brain, its whole halo), brain_coverage those above 0.5."""
    folder = shared_data / "mri/scans/sammba"
    mask = nb.load(folder / "mask.nii.gz")
    soft = ndimage.gaussian_filter(np.asanyarray(mask.dataobj).astype(np.float32), 1.5)
    soft_f, hard_f = tmp_path / "soft.nii.gz", tmp_path / "hard.nii.gz"
    nb.save(nb.Nifti1Image(soft, mask.affine), soft_f)
    nb.save(nb.Nifti1Image((soft > 0.5).astype(np.uint8), mask.affine), hard_f)
    fwhm = {}
    for name, path in (("soft", soft_f), ("hard", hard_f)):
        assert main(["scan", str(folder / "anat.nii.gz"), str(folder / "anat.nii.gz"),
                     "--mask", str(path), "--raw-mask", str(path)]) == 0
        fwhm[name] = json.loads(capsys.readouterr().out)["fwhm_raw"]
    assert fwhm["soft"] == fwhm["hard"]
