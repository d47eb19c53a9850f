"""Real runs of ``samri_ml-register`` on the example dataset (issue 5, parts 2-5).

* the input folder is never touched (checksums, modes and mtimes of every file);
* a run on a read-only input folder works (``chattr +i`` as root, where permissions do not
  stop writes; ``chmod a-w`` otherwise) and gives the same outputs as the first run
  (determinism: two independent runs compared array by array);
* a run killed with SIGKILL part-way resumes with the same work dir, reuses the nodes that had
  finished and gives the outputs of an uninterrupted run; no half-written derivative is ever
  visible;
* a second run on the same OUTPUT_DIR while the first is running refuses with a clear message;
* an oblique scan (rotated affine) registers.

One uninterrupted reference run is shared with ``test_slurm.py``
(:func:`samri_ml.testing.runs.reference_run`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from samri_ml.cli.register import main
from samri_ml.testing.runs import (
    compare_outputs,
    derivative_files,
    end_run,
    load_arrays,
    reference_run,
    register_command,
    report,
    run_register,
    snapshot,
)

pytestmark = pytest.mark.slow

KILL_AFTER = "anat_wf/s_biascorrect"  # the most expensive node: reusing it is what matters


@pytest.fixture(scope="module")
def reference(example_dataset, tmp_path_factory):
    return reference_run(example_dataset, tmp_path_factory.mktemp("reference"))


def _results(work: Path) -> dict[str, int]:
    """Finished nodes: ``{node folder: mtime of its result_*.pklz}``."""
    return {str(p.parent.relative_to(work)): p.stat().st_mtime_ns
            for p in work.rglob("result_*.pklz")}


@pytest.fixture(scope="module")
def interrupted(example_dataset, tmp_path_factory):
    """Start a run, refuse a concurrent one, SIGKILL the first part-way, then resume it."""
    root = tmp_path_factory.mktemp("resume")
    out, work = root / "out", root / "work"
    cmd = register_command(example_dataset, out, work)
    log = open(root / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = {"out": out, "work": work}
    try:
        deadline = time.monotonic() + 900
        concurrent = None
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed:\n"
                            f"{(root / 'first.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("no node finished in 900 s")
            if concurrent is None and (out / ".samri_ml.lock").exists() and any(work.rglob(
                    "result_*.pklz")):
                # part 4: the same OUTPUT_DIR while the first run holds it
                stderr = io.StringIO()
                with contextlib.redirect_stderr(stderr):
                    rc = main(cmd[1:] + ["--dry-run"])
                concurrent = {"rc": rc, "stderr": stderr.getvalue()}
            done = _results(work)
            if concurrent is not None and any(k.endswith(KILL_AFTER) for k in done) and len(
                    done) >= 3:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let the next nodes start, so that one is killed mid-way
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    info["concurrent"] = concurrent
    info["killed_rc"] = proc.returncode
    info["finished"] = _results(work)
    info["after_kill"] = {rel: _loads(out / rel) for rel in derivative_files(out)}
    info["temp_files"] = [str(p) for p in out.rglob(".*")
                          if p.name not in (".samri_ml.lock", ".bidsignore")
                          and ".samri_ml_work" not in p.parts]
    start = time.monotonic()
    proc2 = run_register(example_dataset, out, work, "-v")
    info["resume_seconds"] = time.monotonic() - start
    info["resume_log"] = proc2.stderr
    info["after_resume"] = _results(work)
    return info


def _loads(path: Path) -> bool:
    """Whether a derivative is complete (its data decompress and parse to the end)."""
    try:
        load_arrays(path)
    except Exception:  # noqa: BLE001 - any failure means a broken file
        return False
    return True


def test_inputs_untouched_by_a_run(reference, example_dataset):
    assert reference["before"] == reference["after"]
    assert not (example_dataset / "derivatives" / "samri_ml").exists()


def test_a_run_writes_the_expected_derivatives(reference):
    files = derivative_files(reference["out"])
    assert any(f.endswith("space-Phantom_desc-preproc_T2w.nii.gz") for f in files), files
    assert any(f.endswith("space-Phantom_desc-preproc_bold.nii.gz") for f in files), files
    assert sum(f.endswith("_xfm.h5") for f in files) == 2, files
    # the run has --no-qc, which skips the VCF/SCF nodes only: the report is still written
    assert (reference["out"] / "sub-01.html").is_file()
    # the run in template space has its sidecar, and its header keeps the repetition time
    import json

    bold = next(reference["out"].rglob("*space-Phantom_desc-preproc_bold.nii.gz"))
    meta = json.loads(Path(str(bold).replace(".nii.gz", ".json")).read_text())
    assert meta["RepetitionTime"] == pytest.approx(nb.load(str(bold)).header.get_zooms()[3])


def test_second_run_on_the_same_output_refuses(interrupted):
    concurrent = interrupted["concurrent"]
    err = concurrent["stderr"].strip().splitlines()
    assert concurrent["rc"] == 1, err
    assert len(err) == 1 and "another samri_ml run (pid " in err[0], err
    assert "hint: wait for it, or use another OUTPUT_DIR" in err[0]


def test_killed_run_leaves_no_half_written_derivative(interrupted):
    assert interrupted["killed_rc"] == -signal.SIGKILL
    assert all(interrupted["after_kill"].values()), interrupted["after_kill"]
    # temporary files of an atomic write can only be left behind by a kill mid-copy
    assert len(interrupted["temp_files"]) <= 1, interrupted["temp_files"]


def test_killed_run_resumes_and_reuses_finished_nodes(interrupted):
    # the derivatives sinks (ds_*) run every time, by design (SINK_NODE): not counted
    finished, after = ({k: v for k, v in d.items() if not Path(k).name.startswith("ds_")}
                       for d in (interrupted["finished"], interrupted["after_resume"]))
    assert any(k.endswith(KILL_AFTER) for k in finished)
    reused = [k for k, mtime in finished.items() if after.get(k) == mtime]
    share = len(reused) / len(finished)
    print(f"\nresume: {len(finished)} nodes had finished when killed, {len(reused)} reused "
          f"({100 * share:.0f}%), {len(after) - len(reused)} run after the kill; resume took "
          f"{interrupted['resume_seconds']:.0f} s")
    assert share >= 0.9, (finished, after)
    assert len(after) > len(finished)  # the rest of the workflow did run
    # and the progress lines say which steps were reused, and nothing "not run"
    log = interrupted["resume_log"]
    assert "done (result of an earlier run reused): samri_ml_wf." in log, log[-3000:]
    assert "not run" not in log, log[-3000:]


def test_resumed_outputs_equal_an_uninterrupted_run(interrupted, reference):
    diff = compare_outputs(reference["out"], interrupted["out"])
    assert diff, "no derivatives"
    print("\n" + report(diff, "resumed vs uninterrupted"))
    assert all(d["identical"] for d in diff.values()), diff


def test_a_cached_rerun_restores_deleted_and_overwritten_derivatives(interrupted, reference,
                                                                     example_dataset):
    """A rerun with the same work dir reuses every computing step, and still writes every
    derivative again: the sinks were cached too (their inputs unchanged), so a derivative
    deleted from OUTPUT_DIR, or overwritten by a run with other options, stayed as it was
    while the run said "finished"."""
    out, work = interrupted["out"], interrupted["work"]
    files = derivative_files(out)
    gone = next(f for f in files if f.endswith("desc-preproc_T2w.nii.gz"))
    changed = next(f for f in files if f.endswith("desc-preproc_bold.nii.gz"))
    (out / gone).unlink()
    (out / changed).write_bytes(b"another run's file")
    computing = {k: v for k, v in _results(work).items() if not Path(k).name.startswith("ds_")}
    figures = {p: p.stat().st_mtime_ns for p in out.glob("sub-*/figures/*")}
    assert figures
    run_register(example_dataset, out, work)
    again = _results(work)
    assert all(again[k] == v for k, v in computing.items())  # nothing recomputed
    # the report pictures, the same bytes, are left as they were, modification time included
    # (every one was rewritten: rsync, make and DataLad saw them changed on each rerun)
    assert {p: p.stat().st_mtime_ns for p in figures} == figures
    diff = compare_outputs(reference["out"], out)
    assert gone in diff and changed in diff
    assert all(d["identical"] for d in diff.values()), diff


def test_a_step_whose_output_was_deleted_from_the_work_dir_runs_again(interrupted,
                                                                        example_dataset):
    """An output file of a finished step deleted from the work dir (to free space) stopped a
    rerun under MultiProc, the default plugin, with a page of Nipype's traceback and
    "error: TraitError: The 'out_file' trait ... must be ... an existing file": the step was
    taken for done by its hash alone, and the next one could not read its result (Linear ran
    it again). It runs again now under every plugin, with a note; nothing else is redone."""
    out, work = interrupted["out"], interrupted["work"]
    mean = next(work.rglob("f_mean/*_mean.nii.gz"))
    mean.unlink()
    computing = {k: v for k, v in _results(work).items() if not Path(k).name.startswith("ds_")}
    proc = run_register(example_dataset, out, work)  # RUN_ARGS: --nprocs 2, MultiProc
    assert mean.is_file()
    assert (f"samri_ml-register: note: 1 step(s) of an earlier run whose results are gone from "
            f"the work dir are run again (e.g. {mean.parent.relative_to(work / 'samri_ml_wf')})"
            in proc.stderr), proc.stderr
    again = _results(work)
    assert [k for k, v in computing.items() if again[k] != v] == [
        str(mean.parent.relative_to(work))]


def _copy_read_only(src: Path, dst: Path) -> str:
    """Copy the dataset and make it read-only; return how (for the tear-down)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("derivatives"))
    if os.geteuid() == 0:
        # permissions do not stop root; an immutable file or folder stops everyone
        if shutil.which("chattr") and subprocess.run(
                ["chattr", "-R", "+i", str(dst)], capture_output=True).returncode == 0:
            return "chattr"
        pytest.skip("root and no chattr +i here: a read-only dataset cannot be made")
    subprocess.run(["chmod", "-R", "a-w", str(dst)], check=True)
    return "chmod"


def _make_writable(path: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-R", "-i", str(path)], check=False)
    else:
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)


@pytest.fixture(scope="module")
def read_only_run(example_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("readonly")
    bids = root / "bids"
    how = _copy_read_only(example_dataset, bids)
    try:
        with pytest.raises(PermissionError):
            (bids / "probe").write_text("x")  # really read-only, also for root
        before = snapshot(bids)
        run_register(bids, root / "out", root / "work")
        after = snapshot(bids)
    finally:
        _make_writable(bids, how)
    return {"out": root / "out", "before": before, "after": after, "how": how}


def test_read_only_input_folder_works(read_only_run):
    assert read_only_run["before"] == read_only_run["after"]
    assert len(derivative_files(read_only_run["out"])) >= 4


def test_two_runs_give_identical_outputs(read_only_run, reference):
    """Determinism: two independent runs (same inputs and settings) compared array by array."""
    diff = compare_outputs(reference["out"], read_only_run["out"])
    print("\n" + report(diff, "run 2 vs run 1"))
    assert all(d["identical"] for d in diff.values()), diff


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rz @ ry @ rx


def oblique_acquisition(img, angles_deg, pad: float = 1.25):
    """The same head seen by a tilted slice stack: a grid rotated about the field of view's
    centre (and ``pad`` times larger, so that no corner is cut), the data resampled onto it
    (cubic spline). In world coordinates nothing moves; only the voxel axes are oblique."""
    from scipy import ndimage

    shape = np.array(img.shape[:3])
    new_shape = np.ceil(shape * pad).astype(int)
    rot = np.eye(4)
    rot[:3, :3] = _rotation(angles_deg)
    centre = img.affine @ np.array([*(shape - 1) / 2, 1.0])
    to_centre, back = np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3] = -centre[:3], centre[:3]
    grid_shift = np.eye(4)
    grid_shift[:3, 3] = -(new_shape - shape) / 2  # new voxel (0,0,0) before the old one
    affine = back @ rot @ to_centre @ img.affine @ grid_shift
    vox = np.linalg.inv(img.affine) @ affine  # new voxel -> old voxel
    data = ndimage.affine_transform(np.asarray(img.dataobj, dtype=np.float32), vox[:3, :3],
                                    vox[:3, 3], output_shape=tuple(new_shape), order=3)
    out = nb.Nifti1Image(np.clip(data, 0, None).astype(np.float32), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def test_oblique_scan_registers(example_dataset, reference, tmp_path):
    """An oblique scan (slice stack tilted by 12 and 8 degrees) is registered, not refused, and
    lands where the straight scan of the same head does: every step honours the full affine."""
    bids = tmp_path / "bids"
    shutil.copytree(example_dataset, bids, ignore=shutil.ignore_patterns("derivatives", "func"))
    anat = bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz"
    oblique_acquisition(nb.load(str(anat)), (12.0, 0.0, 8.0)).to_filename(str(anat))
    run_register(bids, tmp_path / "out", tmp_path / "work", )
    rel = "sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-preproc_T2w.nii.gz"
    got = nb.load(str(tmp_path / "out" / rel)).get_fdata()
    want = nb.load(str(reference["out"] / rel)).get_fdata()
    template = example_dataset / "template"
    inside = np.asarray(nb.load(str(template / "tpl-Phantom_desc-brain_mask.nii.gz")).dataobj) > 0
    tpl = nb.load(str(template / "tpl-Phantom_T2w.nii.gz")).get_fdata()
    r = np.corrcoef(got[inside], want[inside])[0, 1]
    r_tpl = [np.corrcoef(x[inside], tpl[inside])[0, 1] for x in (got, want)]
    print(f"\noblique vs straight, inside the template brain: r={r:.4f}; with the template: "
          f"oblique {r_tpl[0]:.3f}, straight {r_tpl[1]:.3f}")
    assert got.shape == want.shape
    assert r > 0.95
    assert r_tpl[0] > r_tpl[1] - 0.03


@pytest.mark.benchmark
def test_multithreaded_ants_is_close_but_not_bit_identical(example_dataset, tmp_path):
    """Measurement (not run by make test): two runs with 2 threads per ANTs call.

    Mattes MI in antsRegistration accumulates per-thread partial joint histograms whose
    summation order depends on thread scheduling, so the float32 metric (and from there the
    optimiser's path) varies in the last bits; see ANTs' wiki page "antsRegistration
    reproducibility issues". Prints the differences; asserts only that they stay small.
    """
    outs = []
    for name in ("a", "b"):
        run_register(example_dataset, tmp_path / f"out_{name}", tmp_path / f"work_{name}",
                     "--omp-nthreads", "2")
        outs.append(tmp_path / f"out_{name}")
    diff = compare_outputs(*outs)
    print("\n" + report(diff, "2 threads per ANTs call, run 2 vs run 1"))
    rel = "sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-preproc_T2w.nii.gz"
    a, b = (nb.load(str(o / rel)).get_fdata() for o in outs)
    r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    print(f"registered T2w, run 2 vs run 1: r={r:.6f}")
    assert r > 0.99


def _live_group_members(pgid: int) -> list[str]:
    """The processes of process group ``pgid`` still alive (zombies left out)."""
    ps = subprocess.run(["ps", "-o", "stat=,args=", "-g", str(pgid)], capture_output=True,
                        text=True).stdout
    return [line for line in ps.splitlines() if line.strip() and not line.startswith("Z")]


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
@pytest.mark.parametrize("nprocs", ["1", "2"])
def test_ctrl_c_stops_the_run_with_one_line(example_dataset, tmp_path, nprocs, how):
    """SIGINT to the process group (Ctrl-C) part-way: exit 130 at once with one
    ``interrupted`` line, for Linear (``--nprocs 1``: Nipype turned the interrupt into a failed
    node and went on with the others) and MultiProc (each forked worker printed a traceback).
    The same command then resumes and finishes. SIGTERM to the command alone (``kill PID``, a
    scheduler ending the job that runs it) killed it at once, silently, and left MultiProc's
    workers and the running ANTs programs writing into the unlocked work dir: now it ends
    them and stops as Ctrl-C does, but with ``terminated`` and exit 143 (128 + 15), as the
    other commands (it said ``interrupted``, exit 130). The resume runs after MultiProc's stop
    only: the work dir is left the same way by both plugins (unlocked, no crash file)."""
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = register_command(example_dataset, out, work)
    cmd[cmd.index("--nprocs") + 1] = nprocs
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    # Ctrl-C's default action, whatever the test runner inherited (a shell's background job
    # ignores SIGINT, and so would the command, as it should)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600
        while not any(k.endswith("s_biascorrect") for k in _results(work)):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no bias correction finished in 600 s"
            time.sleep(0.2)
        time.sleep(1.0)  # into the next nodes (an antsRegistration)
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        rc = proc.wait(timeout=60)
        waited = time.monotonic() - sent
        while _live_group_members(proc.pid) and time.monotonic() < sent + 10:
            time.sleep(0.2)
        left = _live_group_members(proc.pid)
    finally:
        text, lines = end_run(proc, log, tmp_path / "first.log")
    code, word = (130, "interrupted") if how == "ctrl_c" else (143, "terminated")
    assert rc == code and waited < 10, (rc, waited, text[-2000:])
    assert not left, left  # no worker or ANTs program left running
    assert lines[-1] == f"samri_ml-register: {word}", lines
    assert len(lines) == 2 and "session(s)" in lines[0], lines
    # the node Linear was running when Ctrl-C came left no crash file: it did not crash
    assert not list(out.glob("**/log/crash-*")), [p.read_text() for p in out.glob("**/crash-*")]
    if nprocs == "2":  # the resume is the same after either plugin's stop (25 s a run: once)
        assert run_register(example_dataset, out, work).returncode == 0


def _double(x):
    return 2 * x


def test_linear_resume_says_which_steps_were_reused(tmp_path):
    """Under ``--plugin Linear`` a rerun said plain "done" for every reused step (Linear
    starts the nodes it reuses like the others); MultiProc said "reused". A real Nipype
    workflow run twice: the reused step is said so, one that always runs is not."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from samri_ml.cli.register import Progress

    wf = pe.Workflow(name="wf", base_dir=str(tmp_path))
    first = pe.Node(niu.Function(function=_double, input_names=["x"], output_names=["y"]),
                    name="first")
    first.inputs.x = 2
    again = pe.Node(niu.Function(function=_double, input_names=["x"], output_names=["y"]),
                    name="always", overwrite=True)
    wf.connect(first, "y", again, "x")
    logs = []
    for _ in range(2):
        stream = io.StringIO()
        wf.run(plugin="Linear",
               plugin_args={"status_callback": Progress(2, stream=stream, linear=True)})
        logs.append(stream.getvalue())
    assert "] done: wf.first" in logs[0] and "] done: wf.always" in logs[0], logs[0]
    assert "] done (result of an earlier run reused): wf.first" in logs[1], logs[1]
    assert "] done: wf.always" in logs[1], logs[1]
