"""BIDS-Derivatives names and atomic writes."""

import pytest

from samri_ml.bids import atomic_copy, derivative_path, parse_entities


def test_parse_entities():
    ent = parse_entities("/d/sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-ge_bold.nii.gz")
    assert ent["sub"] == "01" and ent["ses"] == "2" and ent["task"] == "rest"
    assert ent["acq"] == "ge" and ent["suffix"] == "bold" and ent["datatype"] == "func"
    assert ent["extension"] == ".nii.gz"


def test_derivative_names():
    src = "/d/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
    assert derivative_path("/o", src, space="Phantom", desc="preproc").as_posix() == \
        "/o/sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-preproc_T2w.nii.gz"
    assert derivative_path("/o", src, from_="native", to="Phantom", mode="image", suffix="xfm",
                           extension=".h5").name == \
        "sub-01_ses-1_from-native_to-Phantom_mode-image_xfm.h5"


def test_atomic_copy_leaves_no_temporary(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("x" * 1000)
    dst = atomic_copy(src, tmp_path / "out" / "b.txt")
    assert dst.read_text() == "x" * 1000
    assert [p.name for p in dst.parent.iterdir()] == ["b.txt"]


def test_derivative_names_keep_every_source_entity():
    """Two runs that differ only in an entity such as chunk-, inv- or proc- must not share a
    derivative (the second would overwrite the first)."""
    names = {derivative_path("/o", f"/d/sub-01/func/sub-01_task-rest_{e}_bold.nii.gz",
                             space="X", desc="preproc").name
             for e in ("chunk-1", "chunk-2", "inv-1", "proc-norm", "recording-x", "foo-1")}
    assert len(names) == 6
    assert derivative_path("/o", "/d/sub-01/func/sub-01_task-rest_run-1_echo-2_inv-1_bold.nii.gz",
                           space="X", desc="preproc").name == \
        "sub-01_task-rest_run-1_echo-2_inv-1_space-X_desc-preproc_bold.nii.gz"


def test_derivative_names_put_space_where_bids_orders_it():
    """space- came after chunk-/recording-/split-, which the BIDS entity table puts after it
    (a schema validator flags the order)."""
    src = "/d/sub-01/ses-1/anat/sub-01_ses-1_acq-hi_run-2_chunk-3_T2w.nii.gz"
    assert derivative_path("/o", src, space="Phantom", desc="preproc").name == \
        "sub-01_ses-1_acq-hi_run-2_space-Phantom_chunk-3_desc-preproc_T2w.nii.gz"
    assert derivative_path("/o", src, desc="brain", suffix="mask").name == \
        "sub-01_ses-1_acq-hi_run-2_chunk-3_desc-brain_mask.nii.gz"
    assert derivative_path("/o", src, from_="native", to="Phantom", mode="image",
                           suffix="xfm", extension=".h5").name == \
        "sub-01_ses-1_acq-hi_run-2_chunk-3_from-native_to-Phantom_mode-image_xfm.h5"
    # a source that already has a space: the given one replaces it, once
    assert derivative_path("/o", "/d/sub-01/anat/sub-01_space-orig_T2w.nii.gz", space="X",
                           desc="preproc").name == "sub-01_space-X_desc-preproc_T2w.nii.gz"


def test_stale_files_names_what_a_run_did_not_write(tmp_path):
    """Derivatives (and report pictures the run did not draw) in the folders of this run's
    scans that it did not write are named; its own files, their sidecars, other subjects'
    folders and hidden files are not; nothing is deleted."""
    from samri_ml.bids import stale_files

    out = tmp_path / "out"
    anat = out / "sub-01" / "ses-1" / "anat"
    figs = out / "sub-01" / "figures"
    other = out / "sub-02" / "ses-1" / "anat"
    for folder in (anat, figs, other):
        folder.mkdir(parents=True)
    mine = anat / "sub-01_ses-1_space-T_desc-preproc_T2w.nii.gz"
    names = [mine, anat / "sub-01_ses-1_space-T_desc-preproc_T2w.json",
             anat / "sub-01_ses-1_desc-brain_mask.nii.gz", anat / ".tmp", figs / "sub-01_ses-1_T2w_desc-old.png",
             figs / "sub-01_ses-1_T2w_desc-new.png", other / "sub-02_ses-1_desc-brain_mask.nii.gz"]
    for f in names:
        f.write_text("x")
    source = "/data/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
    assert stale_files(out, [mine], [source]) == [anat / "sub-01_ses-1_desc-brain_mask.nii.gz"]
    # by what the reports drew (a picture of the same bytes is not rewritten: its time is old)
    drawn = {figs / "sub-01_ses-1_T2w_desc-new.png"}
    assert stale_files(out, [mine], [source], figures_drawn=drawn) == [
        figs / "sub-01_ses-1_T2w_desc-old.png", anat / "sub-01_ses-1_desc-brain_mask.nii.gz"]
    assert all(f.exists() for f in names)


def test_old_figure_names_are_told_from_todays():
    """The first release named its pictures with the scan's suffix amid the entities; a rerun
    says them apart from the derivatives of other options (the note had hidden a stale mask
    behind them)."""
    from samri_ml.bids import old_figure_name

    for old in ("sub-01_ses-1_T2w_desc-overview.png", "sub-01_ses-1_task-rest_bold_desc-mask.svg",
                "sub-01_task-rest_run-2_cbv_desc-functostruct.png"):
        assert old_figure_name(f"/out/sub-01/figures/{old}"), old
    for new in ("sub-01_ses-1_desc-overview_T2w.png", "sub-01_task-rest_desc-mask_bold.svg",
                "workflow_graph.png"):
        assert not old_figure_name(f"/out/sub-01/figures/{new}"), new
    # only pictures: a derivative of that shape elsewhere is not one
    assert not old_figure_name("/out/sub-01/anat/sub-01_T2w_desc-overview.png")


def test_stale_figures_only_of_the_sessions_run(tmp_path):
    """A subject's figures folder is shared by its sessions: a rerun of ses-2 alone does not
    call ses-1's pictures stale."""
    from samri_ml.bids import stale_files

    figs = tmp_path / "out" / "sub-01" / "figures"
    figs.mkdir(parents=True)
    for name in ("sub-01_ses-1_desc-overview_T2w.png", "sub-01_ses-2_desc-mask_T2w.png"):
        (figs / name).write_text("x")  # neither drawn by this run
    source = "/data/sub-01/ses-2/anat/sub-01_ses-2_T2w.nii.gz"
    assert stale_files(tmp_path / "out", [], [source], figures_drawn=set()) == [
        figs / "sub-01_ses-2_desc-mask_T2w.png"]


def test_dataset_description_keeps_earlier_runs_commands(tmp_path):
    """A run into an existing OUTPUT_DIR used to replace GeneratedBy with its own command,
    although the other subjects' derivatives came from the earlier runs' options."""
    import json

    from samri_ml.bids import write_dataset_description

    out = tmp_path / "deriv"
    out.mkdir()
    for command in ("samri_ml-register bids out --participant-label 01",
                    "samri_ml-register bids out --participant-label 02 --masking unet",
                    "samri_ml-register bids out --participant-label 01"):
        path = write_dataset_description(out, tmp_path / "bids", "1.0", command)
    got = [g["Description"] for g in json.loads(path.read_text())["GeneratedBy"]]
    assert got == ["samri_ml-register bids out --participant-label 02 --masking unet",
                   "samri_ml-register bids out --participant-label 01"]
    path.write_text("{not json")  # a broken file is replaced, not a failure
    got = json.loads(write_dataset_description(out, tmp_path / "bids", "1.0", "x").read_text())
    assert [g["Description"] for g in got["GeneratedBy"]] == ["x"]


def test_dataset_description_of_a_rerun_is_left_untouched(tmp_path):
    """A rerun of the same command rewrote dataset_description.json with the same bytes, so
    its mtime moved although the derivatives beside it were left untouched."""
    import os

    from samri_ml.bids import write_dataset_description

    out = tmp_path / "deriv"
    out.mkdir()
    path = write_dataset_description(out, tmp_path / "bids", "1.0", "samri_ml-register a")
    os.utime(path, ns=(1, 1))
    text, inode = path.read_text(), path.stat().st_ino
    assert write_dataset_description(out, tmp_path / "bids", "1.0", "samri_ml-register a") == path
    assert path.stat().st_mtime_ns == 1 and path.stat().st_ino == inode
    assert path.read_text() == text
    write_dataset_description(out, tmp_path / "bids", "1.0", "samri_ml-register b")
    assert path.stat().st_mtime_ns != 1 and "samri_ml-register b" in path.read_text()


def test_atomic_writes_follow_the_umask_and_keep_an_existing_files_mode(tmp_path):
    """Outputs were always 0644 (a chmod in atomic_target), whatever the umask: a umask of
    077 still gave files the group and others could read. Now a new file gets what open()
    gives it (0o666 less the umask), a rewritten one keeps its mode."""
    import os
    import stat

    from samri_ml.bids import atomic_write_text, current_umask

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    old = os.umask(0o077)
    try:
        assert current_umask() == 0o077
        private = atomic_write_text("x", tmp_path / "private.txt")
        os.umask(0o002)
        shared = atomic_write_text("x", tmp_path / "shared.txt")
        (tmp_path / "kept.txt").write_text("old")
        (tmp_path / "kept.txt").chmod(0o640)
        kept = atomic_write_text("new", tmp_path / "kept.txt")
    finally:
        os.umask(old)
    assert mode(private) == 0o600 and mode(shared) == 0o664
    assert kept.read_text() == "new" and mode(kept) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt", "private.txt", "shared.txt"]


def test_a_name_that_disagrees_with_its_folders_is_named():
    """Derivatives are named from the file name: one that disagrees with its folders (a copy
    not renamed) sent them into another subject's or session's folder."""
    from samri_ml.bids import name_folder_mismatch

    assert name_folder_mismatch("/d/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz", "/d") is None
    assert name_folder_mismatch("/d/sub-01/anat/sub-01_T2w.nii", "/d") is None
    assert name_folder_mismatch("/d/sub-02/anat/sub-01_T2w.nii.gz", "/d") == \
        "its name says sub-01, its folder sub-02"
    assert name_folder_mismatch("/d/sub-01/ses-2/func/sub-01_ses-1_task-a_bold.nii", "/d") == \
        "its name says ses-1, its folder ses-2"
    assert name_folder_mismatch("/d/sub-01/anat/sub-01_ses-1_T2w.nii.gz", "/d") == \
        "its name says ses-1, but it is in no ses- folder"
    assert name_folder_mismatch("/d/sub-01/ses-2/anat/sub-01_T2w.nii.gz", "/d") == \
        "its name has no ses- label, its folder is ses-2"
    assert name_folder_mismatch("/d/sub-05/anat/T2w.nii.gz", "/d") == \
        "not a BIDS file name (no sub-<label> entity)"
    # a dataset under a folder whose own name looks like a label: only its own folders count
    assert name_folder_mismatch("/sub-x/d/sub-01/anat/sub-01_T2w.nii.gz", "/sub-x/d") is None


def test_atomic_writes_of_names_at_the_file_system_limit(tmp_path):
    """A file (or folder) whose name is 255 bytes, the limit, could not be written: its
    hidden temporary file beside it (``.NAME.`` and 8 random characters) was too long. The
    temporary name is cut now; the file itself keeps its whole name."""
    from samri_ml.bids import atomic_folder, atomic_write_text

    name = "é" + "n" * 248 + ".json"  # 2 + 248 + 5 bytes
    assert len(name.encode()) == 255
    atomic_write_text("{}", tmp_path / name)
    assert (tmp_path / name).read_text() == "{}"
    with atomic_folder(tmp_path / name[:-5]) as tmp:
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / name[:-5] / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, name[:-5]])


@pytest.mark.parametrize("generated_by", [5, "someone", {"Name": "fmriprep"}, None, [1, {"Name": "x"}]])
def test_dataset_description_of_odd_generated_by(tmp_path, generated_by):
    """``GeneratedBy`` that is not BIDS' list of objects (a number stopped the run with a
    TypeError; one object lost its entry): objects are kept, the rest dropped."""
    import json

    from samri_ml.bids import write_dataset_description

    (tmp_path / "dataset_description.json").write_text(json.dumps({"GeneratedBy": generated_by}))
    write_dataset_description(tmp_path, None, "9.9", "samri_ml-register x")
    got = json.loads((tmp_path / "dataset_description.json").read_text())["GeneratedBy"]
    kept = {"Name": "fmriprep"} if isinstance(generated_by, dict) else (
        {"Name": "x"} if isinstance(generated_by, list) else None)
    assert got[-1]["Description"] == "samri_ml-register x"
    assert got[:-1] == ([kept] if kept else [])


def test_dataset_description_names_no_code_url_that_does_not_exist(tmp_path):
    """GeneratedBy's CodeURL named https://pypi.org/project/samri_ml/, a page that does not
    exist (samri_ml is not on PyPI): derivatives recorded a dead link, or one anybody could
    register. It has none now; an older run's entry of the same command, with that CodeURL, is
    this run's (not kept as a second entry)."""
    import json

    from samri_ml.bids import write_dataset_description

    path = tmp_path / "dataset_description.json"
    path.write_text(json.dumps({"GeneratedBy": [
        {"Name": "samri_ml", "Version": "1.0", "CodeURL": "https://pypi.org/project/samri_ml/",
         "Description": "samri_ml-register bids out"}]}))
    write_dataset_description(tmp_path, tmp_path / "bids", "1.0", "samri_ml-register bids out")
    (entry,) = json.loads(path.read_text())["GeneratedBy"]
    assert entry == {"Name": "samri_ml", "Version": "1.0",
                     "Description": "samri_ml-register bids out"}


def test_write_bidsignore_adds_what_is_missing_and_keeps_a_labs_lines(tmp_path):
    """samri_ml-register's derivatives the BIDS validator called errors (a QC record 'a
    sidecar without a data file', the reports 'not included') are listed in OUTPUT_DIR's
    .bidsignore; lines a lab wrote there stay, and a rerun changes nothing."""
    from samri_ml.bids import output_bidsignore, write_bidsignore

    path = tmp_path / ".bidsignore"
    path.write_text("extra/")  # a lab's own, without a last newline
    write_bidsignore(tmp_path, output_bidsignore())
    lines = path.read_text().splitlines()
    assert lines[0] == "extra/" and lines[1:] == list(output_bidsignore())
    assert "*_desc-qc_metrics.json" in lines and "*.html" in lines
    before = path.stat().st_mtime_ns
    write_bidsignore(tmp_path, output_bidsignore())
    assert path.stat().st_mtime_ns == before and path.read_text().splitlines() == lines


def test_a_bidsignore_class_of_characters_is_read_as_gitignore_reads_it():
    """``*_run-[2-9]_bold.nii.gz`` or ``sub-0[!1]/`` in a lab's .bidsignore matched nothing
    (the brackets were taken as letters): the scans it lists were registered."""
    from samri_ml.bids import bidsignore_regex

    runs = bidsignore_regex("sub-01/**/*_run-[2-9]_bold.nii.gz")
    assert runs.search("/sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz")
    assert not runs.search("/sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.nii.gz")
    others = bidsignore_regex("sub-0[!1]/")
    assert others.search("/sub-02/anat/sub-02_T2w.nii.gz")
    assert not others.search("/sub-01/anat/sub-01_T2w.nii.gz")
    assert bidsignore_regex("x[").search("/x[")  # no closing bracket: a letter


def test_a_set_of_files_stopped_while_its_temporary_files_are_made_leaves_none(tmp_path):
    """SIGTERM (a cluster's time limit; ``samri_ml-qc compare --out``) that came while
    atomic_targets made its temporary files left one behind, hidden and empty, beside the
    earlier files (10 times out of 10 here; test_qc_cli's SIGTERM test failed now and then).
    A real process making 2000, signalled once the first exists: exit 143, nothing left."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from samri_ml.bids import atomic_targets\n"
        "from samri_ml.cli._common import Terminated, terminate_as_interrupt\n"
        "out = Path(sys.argv[1])\n"
        "try:\n"
        "    with terminate_as_interrupt():\n"
        "        with atomic_targets([out / f'f{i:04d}.txt' for i in range(2000)]) as parts:\n"
        "            for p in parts:\n"
        "                p.write_text('x')\n"
        "except Terminated:\n"
        "    sys.exit(143)\n")
    for attempt in range(3):
        out = tmp_path / str(attempt)
        out.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", code, str(out)])
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not any(out.iterdir()):
            time.sleep(0.0005)
        time.sleep(0.002)  # among the 2000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        assert sorted(p.name for p in out.iterdir()) == [], attempt
