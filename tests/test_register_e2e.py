"""End to end: samri_ml-register on the project's own example dataset, fast flavour.

The example subjects are the template under a known pose and deformation, so the registration
can be checked against the truth: the subject's brain mask warped with the written transform
must overlap the template's mask.
"""

import contextlib
import io
import json
import re
import shutil

import nibabel as nb
import numpy as np
import pytest

from samri_ml.bids import bidsignore_regex
from samri_ml.cli.register import main
from samri_ml.evaluation import warped_mask_dice


@pytest.fixture(scope="module")
def registered(example_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("deriv") / "samri_ml"
    work = tmp_path_factory.mktemp("work")
    tpl = example_dataset / "template"
    argv = [str(example_dataset), str(out), "participant", "--participant-label", "sub-01",
            "--fast", "--template", str(tpl / "tpl-Phantom_T2w.nii.gz"),
            "--template-mask", str(tpl / "tpl-Phantom_desc-brain_mask.nii.gz"),
            "-w", str(work), "--nprocs", "2", "--write-graph", "colored"]
    # a mask left by an earlier run with --masking unet: kept, and named as not from this run
    stale = out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-brain_mask.nii.gz"
    stale.parent.mkdir(parents=True)
    shutil.copy(tpl / "tpl-Phantom_desc-brain_mask.nii.gz", stale)
    # a QC table as samri_ml named it before it was *_desc-qctable_metrics.tsv
    (stale.parent / "sub-01_ses-1_space-Phantom_desc-qc_metrics.tsv").write_text("scan\n")
    # pictures of the first release's names (the suffix before desc-), more than the note shows:
    # they came first and the stale mask was one of "and N more"
    figures = out / "sub-01" / "figures"
    figures.mkdir(parents=True)
    for name in ("T2w_desc-mask", "T2w_desc-overview", "task-rest_bold_desc-functostruct"):
        for ext in (".png", ".svg"):
            (figures / f"sub-01_ses-1_{name}{ext}").write_bytes(b"an old picture")
    # crash files of earlier runs in OUTPUT_DIR/log (the top workflow's crash folder, where
    # an older samri_ml wrote every step's): of this run's session, and of sub-02 (not run)
    for subject in ("01", "02"):
        (out / "log").mkdir(exist_ok=True)
        (out / "log" / f"crash-20261120-101010-lab-s_register-{subject}.txt").write_text(
            f"Node: samri_ml_wf.sub_{subject}_ses_1.anat_wf.s_register\nWorking directory: "
            f"/old/work\n\nTraceback (most recent call last):\nRuntimeError: sub-{subject}\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 0
    (out.parent / "stderr.txt").write_text(err.getvalue())  # beside OUTPUT_DIR, not in it
    (out.parent / "argv.json").write_text(json.dumps(argv))
    return example_dataset, out


@pytest.mark.slow
def test_the_derivative_names_checked_before_the_run_are_the_ones_it_wrote(registered):
    """The check that refuses two scans with one derivative name (a bold and a cbv run) plans
    the names from the built workflow: they must be exactly the files the run wrote."""
    from samri_ml.cli._inputs import collect_sessions
    from samri_ml.cli.register import build_workflow, get_parser, validate
    from samri_ml.interfaces.bids import planned_derivatives

    _, out = registered
    parser = get_parser()
    args = parser.parse_args(json.loads((out.parent / "argv.json").read_text()))
    validate(args, parser)
    planned = {path for path, _ in planned_derivatives(build_workflow(args,
                                                                     collect_sessions(args)))}
    from samri_ml.bids import old_qc_table_name

    # (the fixture's files of an earlier run left out: a mask, a QC table of the old name)
    written = {str(p) for p in (out / "sub-01").rglob("*_*") if p.is_file()
               and p.parent.name in ("anat", "func") and "desc-brain_mask" not in p.name
               and not old_qc_table_name(p.name)
               and not (p.suffix == ".json" and "desc-preproc" in p.name)}  # sidecars
    assert len(planned) == 8 and planned == written, (planned ^ written)


@pytest.mark.slow
def test_files_an_earlier_run_left_are_named_and_kept(registered):
    bids, out = registered
    err = (out.parent / "stderr.txt").read_text().splitlines()
    note = [ln for ln in err if "not from this run" in ln]
    assert len(note) == 1, note
    assert "1 file(s) in OUTPUT_DIR" in note[0], note  # none of this run's own derivatives
    assert "sub-01/ses-1/anat/sub-01_ses-1_desc-brain_mask.nii.gz" in note[0]
    assert (out / "sub-01/ses-1/anat/sub-01_ses-1_desc-brain_mask.nii.gz").is_file()
    # the first release's pictures: said apart, as what they are, and kept
    renamed = [ln for ln in err if "report picture(s)" in ln]
    assert renamed == ["samri_ml-register: note: 6 report picture(s) in OUTPUT_DIR are named as "
                       "an earlier samri_ml named them (the scan's suffix before desc-; the "
                       "reports no longer show them), kept: "
                       "sub-01/figures/sub-01_ses-1_T2w_desc-mask.png, "
                       "sub-01/figures/sub-01_ses-1_T2w_desc-mask.svg, "
                       "sub-01/figures/sub-01_ses-1_T2w_desc-overview.png and 3 more; hint: "
                       "delete them"], err
    assert len(list((out / "sub-01" / "figures").glob("*_desc-mask.*"))) == 2
    # an earlier samri_ml's QC table: said as what it is (it was "an earlier run with other
    # options?"), and kept
    tables = [ln for ln in err if "QC table(s)" in ln]
    assert tables == ["samri_ml-register: note: 1 QC table(s) in OUTPUT_DIR are named as an "
                      "earlier samri_ml named them (*_desc-qc_metrics.tsv, now "
                      "*_desc-qctable_metrics.tsv: BIDS tools take the QC record beside one for "
                      "its sidecar), kept: sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-qc_"
                      "metrics.tsv; hint: delete them"], err
    assert (out / "sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-qc_metrics.tsv").is_file()


@pytest.mark.slow
def test_earlier_crash_files_in_output_dirs_own_log_are_moved_aside(registered):
    """A run that succeeded moved the earlier crash files of its sessions out of
    sub-XX/log, not those in OUTPUT_DIR/log, where an older samri_ml wrote every step's: the
    lab still saw them there. They are moved (kept, unchanged) to log/earlier/ as well, and
    said in the one note; one of a subject this run did not process stays."""
    _, out = registered
    err = (out.parent / "stderr.txt").read_text().splitlines()
    notes = [ln for ln in err if "crash file(s) of earlier runs" in ln]
    assert notes == ["samri_ml-register: note: 1 crash file(s) of earlier runs, of steps that "
                     "have now run through, moved (kept) to log/earlier (1)"], err[-5:]
    moved = out / "log" / "earlier" / "crash-20261120-101010-lab-s_register-01.txt"
    assert moved.read_text().endswith("RuntimeError: sub-01\n")
    assert [p.name for p in (out / "log").glob("crash-*")] == [
        "crash-20261120-101010-lab-s_register-02.txt"]


@pytest.mark.slow
def test_progress_of_a_clean_multiproc_run_says_every_step_is_done(registered):
    """MultiProc runs the data sinks in the main process and reports them as ended, never as
    started: they were said "not run (a step before it failed)" in a run that failed nowhere."""
    bids, out = registered
    err = (out.parent / "stderr.txt").read_text().splitlines()
    lines = [ln for ln in err if re.match(r"\[\d+/\d+ +\d+s\] ", ln)]
    sinks = [ln for ln in lines if ".ds_anat" in ln]
    assert lines and sinks, err[-20:]
    assert all("] done: samri_ml_wf." in ln for ln in lines), [
        ln for ln in lines if "] done: " not in ln]


@pytest.mark.slow
def test_structural_registration_is_accurate(registered):
    bids, out = registered
    anat = out / "sub-01" / "ses-1" / "anat"
    xfm = anat / "sub-01_ses-1_from-native_to-Phantom_mode-image_xfm.h5"
    truth = bids / "derivatives/groundtruth/sub-01/ses-1/anat/sub-01_ses-1_desc-brain_mask.nii.gz"
    tpl_mask = bids / "template" / "tpl-Phantom_desc-brain_mask.nii.gz"
    assert warped_mask_dice(truth, tpl_mask, xfm) >= 0.90
    warped = nb.load(anat / "sub-01_ses-1_space-Phantom_desc-preproc_T2w.nii.gz")
    assert warped.shape == nb.load(tpl_mask).shape


@pytest.mark.slow
def test_functional_run_reaches_template_space(registered):
    bids, out = registered
    func = out / "sub-01" / "ses-1" / "func"
    bold = nb.load(func / "sub-01_ses-1_task-rest_space-Phantom_desc-preproc_bold.nii.gz")
    tpl_mask = bids / "template" / "tpl-Phantom_desc-brain_mask.nii.gz"
    assert bold.shape[:3] == nb.load(tpl_mask).shape
    assert bold.shape[3] == 14 - 10  # ten dummy volumes dropped
    xfms = [out / "sub-01/ses-1/anat/sub-01_ses-1_from-native_to-Phantom_mode-image_xfm.h5",
            func / "sub-01_ses-1_task-rest_from-native_to-T2w_mode-image_xfm.h5"]
    truth = bids / "derivatives/groundtruth/sub-01/ses-1/func/sub-01_ses-1_task-rest_desc-brain_mask.nii.gz"
    assert warped_mask_dice(truth, tpl_mask, xfms) >= 0.85


@pytest.mark.slow
def test_derivatives_qc_report_and_graph(registered):
    bids, out = registered
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "samri_ml"
    for qc in (out / "sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-qc_metrics.json",
               out / "sub-01/ses-1/func/sub-01_ses-1_task-rest_space-Phantom_desc-qc_metrics.json"):
        values = json.loads(qc.read_text())
        assert 0.5 < values["vcf"] < 2 and 0.3 < values["scf"] < 3
        assert values["workflow"] == "generic"
        # how the raw scan was taken: the run's 10 dummy scans (of 14) left out; a structural
        # scan has none (samri_ml-qc compare tells records of the first release apart by it)
        assert values["raw_dummy_scans"] == (10 if "/func/" in str(qc) else 0), values
        # both scans cover the whole template brain: no partial field of view
        assert values["brain_coverage"] == pytest.approx(1.0, abs=0.02), values
        # the table's columns are described by the one data dictionary at the top
        header = qc.with_name(qc.name.replace("desc-qc_", "desc-qctable_")).with_suffix(
            ".tsv").read_text().splitlines()[0].split("\t")
        assert list(json.loads((out / "desc-qctable_metrics.json").read_text())) == header
    report = (out / "sub-01.html").read_text()
    assert report.count("<img") >= 3 and "Volume and smoothness conservation" in report
    assert (out / "figures" / "workflow_graph_sub-01.png").stat().st_size > 10000
    assert not (out / "sub-02").exists()  # --participant-label
    # no temporary files left by the atomic writes
    assert not [p for p in out.rglob(".*") if p.is_file()
                and p.name not in (".samri_ml.lock", ".bidsignore")]
    # what BIDS does not describe is left out of the validator's view, nothing more: the QC
    # record was its error 'a sidecar without a data file', the reports 'not included'
    ignore = [bidsignore_regex(line) for line in (out / ".bidsignore").read_text().splitlines()]
    ignored = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
               and any(i.search("/" + p.relative_to(out).as_posix()) for i in ignore)}
    assert "sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-qc_metrics.json" in ignored
    assert {"sub-01.html", "desc-qctable_metrics.json"} <= ignored
    assert not [p for p in ignored if p.endswith((".nii.gz", "_T2w.json", "_bold.json"))]
    # the source dataset gained nothing
    assert not list(bids.rglob("*desc-preproc*"))


@pytest.mark.slow
def test_report_names_the_flavour_that_ran(registered, tmp_path):
    """The reports read the flavour from the recorded command line: a repeated option
    (``--registration-flavour samri ... --registration-flavour fast``, argparse takes the
    last) or an abbreviated one (``--registration-fl``) put a flavour in the header that had
    not run."""
    _, out = registered
    copy = tmp_path / "samri_ml"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".samri_ml.lock"))
    argv = json.loads((out.parent / "argv.json").read_text())
    argv[argv.index(str(out))] = str(copy)
    argv = argv[:argv.index("--write-graph")]
    argv.remove("--fast")
    for flavour in (["--registration-flavour", "samri", "--registration-flavour", "fast"],
                    ["--registration-fl", "fast"]):
        with contextlib.redirect_stderr(io.StringIO()):
            assert main(argv + flavour) == 0  # every step cached
        for page in ("sub-01.html", "index.html"):
            assert "registration flavour <b>fast</b>" in (copy / page).read_text(), page


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
def test_report_renders_in_a_headless_browser(registered, tmp_path):
    """The report loads offline in Debian's Chromium and its pictures render (black mosaics)."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    _, out = registered
    shot = tmp_path / "report.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1400,1800", f"--screenshot={shot}",
                    (out / "sub-01.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1800, 1400)
    # the slice mosaics are drawn on black: a page whose images failed would be nearly all white
    assert (pixels < 30).mean() > 0.10
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                          "--dump-dom", (out / "sub-01.html").as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert "operator overview" in dom and dom.count("data:image/png;base64") >= 3


@pytest.mark.slow
def test_report_shows_this_runs_graph_not_an_earlier_ones(registered, tmp_path):
    """A rerun without --write-graph showed the graph an earlier run left in
    OUTPUT_DIR/figures as this run's (of another workflow, where the options changed); one
    with --graph-format svg showed the earlier PNG, not its SVG. The report now shows the
    graph this run drew, or none."""
    _, out = registered
    copy = tmp_path / "samri_ml"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".samri_ml.lock"))
    argv = json.loads((out.parent / "argv.json").read_text())
    argv[argv.index(str(out))] = str(copy)
    without = argv[:argv.index("--write-graph")]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(without) == 0  # every step cached
    report = (copy / "sub-01.html").read_text()
    assert (copy / "figures" / "workflow_graph_sub-01.png").exists()  # kept, not this run's
    # and named: no page links it any more (nothing said it was there)
    (note,) = [line for line in err.getvalue().splitlines() if "not from this run" in line]
    assert "figures/workflow_graph_sub-01.png" in note, note
    assert "Workflow graph" not in report and "Volume and smoothness conservation" in report
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(without + ["--write-graph", "flat", "--graph-format", "svg"]) == 0
    report = (copy / "sub-01.html").read_text()
    graph = report[report.index("<h2>Workflow graph</h2>"):]
    # linked, not embedded: the whole run's graph in every subject's report
    assert "<a href='figures/workflow_graph_sub-01.svg'>" in graph[:300], graph[:300]
    assert "<a href='figures/workflow_graph_sub-01.svg'>" in (copy / "index.html").read_text()
