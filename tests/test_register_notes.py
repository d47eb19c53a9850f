"""samri_ml-register's notes (``note:`` lines) kept where a user finds them after the run:
each subject's report, ``index.html`` and ``OUTPUT_DIR/log/notes.txt``. They were printed on
the terminal only (on a cluster, a log file deleted with the job)."""

import contextlib
import io
import json
import shutil
import warnings

import pytest

from samri_ml.cli._notes import NOTES_LOG, Note, notes_of
from samri_ml.cli.register import main

NOTE = "samri_ml-register: note: "
#: the notes of a run of --participant-label 01 (a run of the whole dataset: NOTES_LOG)
LOG_01 = NOTES_LOG.with_name("notes_sub-01.txt")


def _register(bids, out, work, *extra, labels=("01",)) -> str:
    """The run's stderr; of ``--participant-label`` ``labels`` (none: the whole dataset)."""
    tpl = bids / "template"
    select = ["--participant-label", *labels] if labels else []
    argv = [str(bids), str(out), "participant", *select, "--fast",
            "--template", str(tpl / "tpl-Phantom_T2w.nii.gz"),
            "--template-mask", str(tpl / "tpl-Phantom_desc-brain_mask.nii.gz"),
            "-w", str(work), "--omp-nthreads", "1", *extra]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 0, err.getvalue()
    return err.getvalue()


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def two_runs(example_dataset, tmp_path_factory):
    """A run whose inputs make notes (a run's sidecar without RepetitionTime, which its header
    gives; a dataset_description.json without Name), then the same run, its steps reused,
    once the sidecar and the description are fixed: the reports and the log after each."""
    bids = tmp_path_factory.mktemp("notes") / "bids"
    shutil.copytree(example_dataset, bids)
    sidecar = bids / "sub-01" / "ses-1" / "func" / "sub-01_ses-1_task-rest_bold.json"
    tr = json.loads(sidecar.read_text())["RepetitionTime"]
    description = bids / "dataset_description.json"
    name = json.loads(description.read_text())["Name"]
    _edit_json(sidecar, RepetitionTime=None)
    _edit_json(description, Name=None)
    out, work = bids.parent / "out", bids.parent / "work"
    files = ("sub-01.html", "index.html", str(LOG_01))
    first = _register(bids, out, work, "--nprocs", "2")
    after_first = {f: (out / f).read_text() for f in files}
    _edit_json(sidecar, RepetitionTime=tr)
    _edit_json(description, Name=name)
    second = _register(bids, out, work, "--nprocs", "1")
    after_second = {f: (out / f).read_text() for f in files}
    return first, after_first, second, after_second


@pytest.mark.slow
def test_notes_of_a_run_are_in_its_reports_and_its_log(two_runs):
    stderr, files, _, _ = two_runs
    printed = [line.removeprefix(NOTE) for line in stderr.splitlines()
               if line.startswith(NOTE)]
    no_tr = next(n for n in printed if "no RepetitionTime in its sidecar" in n)
    no_name = next(n for n in printed if "dataset_description.json: no Name" in n)
    # the subject's note in its report, the dataset's in index.html
    report, index = files["sub-01.html"], files["index.html"]
    assert "<h2>Notes</h2>" in report and "sub-01_ses-1_task-rest_bold.nii.gz: no " \
        "RepetitionTime in its sidecar" in report
    assert "dataset_description.json: no Name" not in report
    assert "<h2>Notes</h2>" in index and "dataset_description.json: no Name" in index
    assert "no RepetitionTime" not in index and "1 note(s) in its report" in index
    assert f"href='{LOG_01.as_posix()}'" in report
    # every note printed, in the log as printed, once; how the run ended last
    log = files[str(LOG_01)].splitlines()
    assert [line for line in log if line.startswith(NOTE)] == [NOTE + n for n in printed]
    assert {NOTE + no_tr, NOTE + no_name} <= set(log)
    assert log[-1] == "# samri_ml-register: finished"


@pytest.mark.slow
def test_a_cached_rerun_replaces_the_notes_of_the_run_before(two_runs):
    _, _, stderr, files = two_runs
    assert "result of an earlier run reused" in stderr  # a rerun from the cache
    assert NOTE not in stderr
    assert "<h2>Notes</h2>" not in files["sub-01.html"]
    assert "<h2>Notes</h2>" not in files["index.html"]
    assert "note(s) in its report" not in files["index.html"]
    log = files[str(LOG_01)]
    # replaced, not appended to: one run's header, no note of the run before
    assert log.count("# samri_ml-register: the notes of the run started") == 1
    assert "RepetitionTime" not in log and "samri_ml-register: no notes" in log


def test_a_note_concerns_the_subjects_it_names_and_those_of_its_files():
    listed = ["sub-01_ses-1_task-rest_bold.nii.gz", "sub-02_task-rest_bold.nii.gz",
              "sub-03_task-rest_bold.nii.gz", "sub-04_task-rest_bold.nii.gz"]
    shown = Note("4 functional run(s) without SliceTiming: " + ", ".join(listed[:3])
                 + ", ... (4 in all)", listed)
    assert shown.subjects == {"01", "02", "03", "04"}
    assert Note(shown).subjects == shown.subjects  # printed again, as scan notes are
    assert Note("/data/bids/sub-07/ses-1/anat/sub-07_ses-1_T2w.nii.gz: ...").subjects == {"07"}
    mine, rest = notes_of([shown, Note("skipped 1 participant(s): sub-09 (no scan matches)"),
                           Note("--participant-label: 01 given more than once; taken once")],
                          ["01", "04", "05"])
    # a note of several subjects in each one's report; a subject not run, and none, the
    # dataset's
    assert mine == {"01": [shown], "04": [shown]}
    assert [n.split(":")[0] for n in rest] == ["skipped 1 participant(s)",
                                               "--participant-label"]


@pytest.mark.parametrize("ending, last", [
    (None, "finished"),
    ("error", "error: 1 step(s) failed (failed: sub-01); crash files are in /o/sub-*/log"),
    ("terminated", "terminated"),
])
def test_the_notes_log_says_how_the_run_ended(tmp_path, ending, last):
    """A run that failed or was stopped (a cluster's time limit) writes its notes too, with
    how it ended: what a user reads after the job's own log is gone."""
    from types import SimpleNamespace

    from samri_ml.cli._common import Terminated
    from samri_ml.cli._notes import keeping_notes, note
    from samri_ml.cli.register import _write_notes
    from samri_ml.errors import SamriMLError

    exc = {None: None, "terminated": Terminated(),
           "error": SamriMLError("1 step(s) failed (failed: sub-01);\n crash files are in "
                                 "/o/sub-*/log")}[ending]
    args = SimpleNamespace(output_dir=tmp_path, command="samri_ml-register /b /o participant")
    err = io.StringIO()
    with keeping_notes(), contextlib.redirect_stderr(err):
        note("samri_ml-register", "sub-01_T2w.nii.gz: a note")
        note("samri_ml-register", "sub-01_T2w.nii.gz: a note")  # said once
        _write_notes(args, 0.0, type(exc), exc, None)
    assert err.getvalue() == NOTE + "sub-01_T2w.nii.gz: a note\n"
    log = (tmp_path / NOTES_LOG).read_text().splitlines()
    assert log[1:] == ["# samri_ml-register /b /o participant",
                       NOTE + "sub-01_T2w.nii.gz: a note", f"# samri_ml-register: {last}"]


@pytest.mark.slow
def test_a_predicted_mask_of_no_mouse_brains_volume_is_a_note_of_the_run(example_dataset,
                                                                          tmp_path):
    """``--masking unet`` on a rat-sized brain (the example's sub-01 with voxel edges twice as
    long: 3000-4000 mm^3) registered without a word on it: the MaskBrain nodes ran in worker
    processes. One note per scan now, kept (report, log) as the others, and said once: not
    also as the node's own warning."""
    import nibabel as nb
    import numpy as np

    bids = tmp_path / "bids"
    shutil.copytree(example_dataset, bids)
    scans = sorted((bids / "sub-01").rglob("*.nii.gz"))
    for scan in scans:
        img = nb.load(scan)
        nb.save(nb.Nifti1Image(np.asanyarray(img.dataobj), np.diag([2, 2, 2, 1]) @ img.affine,
                               img.header), scan)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # in this process (Linear): a node's warning would be a note of its own
        err = _register(bids, tmp_path / "out", tmp_path / "work", "--masking", "unet",
                        "--plugin", "Linear")
    assert not [w for w in caught if "a brain mask of" in str(w.message)]
    said = [line for line in err.splitlines() if "a brain mask of" in line]
    assert len(said) == len(scans) == 2, err
    for scan, line in zip(scans, said, strict=True):  # anat, then func
        name = scan.name.replace("_T2w", "").replace("_bold", "")
        assert line.startswith(NOTE) and name.replace(".nii.gz", "_desc-brain_mask.nii.gz") \
            in line and f"(the predicted mask of {scan.name}): a brain mask of " in line
        assert "hint: not a mouse" in line
    report = (tmp_path / "out" / "sub-01.html").read_text()
    log = (tmp_path / "out" / LOG_01).read_text().splitlines()
    for line in said:
        assert line in log
        assert line.removeprefix(NOTE).replace("'", "&#x27;") in report


def test_a_subject_is_named_by_a_bids_name_not_by_the_folders_a_dataset_lies_in():
    """A note was filed under a subject wherever ``sub-<label>`` stood in it: a dataset under
    ``/data/sub-01_study`` (or in a folder ``sub-01``) had its own notes in sub-01's report."""
    from samri_ml.cli._notes import subjects_named

    description = Note("/data/sub-01_study/bids/dataset_description.json: no Name")
    assert description.subjects == set()
    in_folder = Note("/data/sub-01/bids/dataset_description.json: no Name")
    scan = Note("/data/sub-01/bids/sub-02/anat/sub-02_T2w.nii.gz: no RepetitionTime",
                ["/data/sub-01/bids/sub-02/anat/sub-02_T2w.nii.gz"])
    mine, rest = notes_of([description, in_folder, scan], ["01", "02"],
                          roots=["/data/sub-01/bids", "/data/sub-01/out/"])
    assert mine == {"02": [scan]} and rest == [description, in_folder]
    assert notes_of([in_folder], ["01"])[0] == {"01": [in_folder]}  # without the roots
    # folders sub-<label>, file names, words; a list without spaces; not sub-13-old/
    assert subjects_named("skipped: sub-09,sub-10 (no scan); sub-11.html shows; sub-12: x; "
                          "/d/sub-13-old/x; /o/sub-14_study/sub-15/anat/sub-15_T2w.nii") \
        == {"09", "10", "11", "12", "15"}


@pytest.mark.slow
def test_the_notes_of_an_output_dir_in_a_folder_named_as_a_subject_are_the_datasets(
        example_dataset, tmp_path):
    """OUTPUT_DIR in ``…/sub-01_study/`` (BIDS_DIR there is refused before the run): the
    dataset's note on it (made from a dataset since moved) was in sub-01's report, not in
    index.html."""
    bids = tmp_path / "bids"
    shutil.copytree(example_dataset, bids)
    out = tmp_path / "sub-01_study" / "out"
    out.mkdir(parents=True)
    gone = tmp_path / "sub-01_study" / "bids"  # where the dataset was before it was moved
    (out / "dataset_description.json").write_text(json.dumps({
        "Name": "samri_ml", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "samri_ml"}], "DatasetLinks": {"raw": gone.as_uri()}}))
    _register(bids, out, tmp_path / "work", "--no-qc")
    report, index = (out / "sub-01.html").read_text(), (out / "index.html").read_text()
    assert f"OUTPUT_DIR {out} was made from {gone}, which is gone" in index
    assert "which is gone" not in report


@pytest.mark.slow
def test_a_run_of_another_participant_keeps_the_notes_of_the_first(example_dataset,
                                                                   tmp_path):
    """A run of ``--participant-label 02`` replaced ``log/notes.txt``, sub-01's notes with it,
    and index.html listed sub-01 without its notes' count. Each selection's notes are a log of
    their own now (as its workflow graph), and index.html counts an earlier report's notes."""
    bids = tmp_path / "bids"
    shutil.copytree(example_dataset, bids)
    _edit_json(bids / "sub-01" / "ses-1" / "func" / "sub-01_ses-1_task-rest_bold.json",
               RepetitionTime=None)
    out, work = tmp_path / "out", tmp_path / "work"
    _register(bids, out, work, "--no-qc")
    first = (out / LOG_01).read_text()
    assert "no RepetitionTime in its sidecar" in first
    _register(bids, out, work, "--no-qc", "--participant-label", "02")
    assert (out / LOG_01).read_text() == first  # kept
    log_02 = NOTES_LOG.with_name("notes_sub-02.txt")
    assert "--participant-label 02" in (out / log_02).read_text()
    assert not (out / NOTES_LOG).exists()  # no run of the whole dataset yet
    index = (out / "index.html").read_text()
    row = index.split("<a href='sub-01.html'>", 1)[1].split("</tr>", 1)[0]
    assert "an earlier run's report" in row and "; 1 note(s) in it" in row
    assert "no RepetitionTime" in (out / "sub-01.html").read_text()
    # the whole dataset (every step reused): its notes in log/notes.txt, and the selections'
    # logs, which it supersedes, named with the files not from this run (kept, unsaid before)
    err = _register(bids, out, work, "--no-qc", labels=())
    assert "no RepetitionTime in its sidecar" in (out / NOTES_LOG).read_text()
    stale = [line for line in err.splitlines() if "are not from this run" in line]
    assert len(stale) == 1 and "log/notes_sub-01.txt" in stale[0] and \
        "log/notes_sub-02.txt" in stale[0], err
    assert (out / LOG_01).exists() and (out / log_02).exists()


def test_a_selections_notes_are_named_as_its_graph():
    from samri_ml.cli.register import notes_log_path

    sessions = [{"subject": f"{i:02d}", "session": "1"} for i in range(40)]
    assert notes_log_path(sessions, None, None) == NOTES_LOG
    assert notes_log_path(sessions[2:3], ["02"]).as_posix() == "log/notes_sub-02.txt"
    assert notes_log_path(sessions[2:3], ["02"], ["1"]).name == "notes_sub-02_ses-1.txt"
    many = notes_log_path(sessions, ["x"]).name
    assert len(many) <= 104 and many.startswith("notes_40-sessions_")



@pytest.mark.slow
def test_a_run_in_process_leaves_the_warning_filters_as_they_were(example_dataset, tmp_path):
    """samri_ml-register run in-process (a notebook, a test) added its warning filters for
    good: MaskBrain's note on a mask's volume and the dummy scans' note were hidden from any
    pipeline run later in that process."""
    before = list(warnings.filters)
    _register(example_dataset, tmp_path / "out", tmp_path / "work", "--no-qc",
              "--registration-method", "structural")
    assert warnings.filters == before
