"""``samri_ml-register --plugin PBS`` with jobs that get a minimal environment.

:class:`samri_ml.testing.pbs.FakePBS` stands in for ``qsub``/``qstat``: every job runs the
batch script Nipype wrote in a new process whose ``PATH`` is ``/usr/bin:/bin``, as on a cluster
whose jobs do not inherit the login shell's environment (a batch ``template`` without
``#PBS -V``/``#$ -V``, ``sbatch --export=NONE``).
"""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from samri_ml.testing.pbs import FakePBS
from samri_ml.testing.runs import (
    compare_outputs,
    end_run,
    reference_run,
    register_command,
    report,
    run_register,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_jobs_without_the_environment_find_ants(example_dataset, tmp_path, tmp_path_factory):
    """Every ANTs step failed with 'No command "N4BiasFieldCorrection" found' in a job whose
    PATH lacks the virtual environment's bin/ (the run ended '2 step(s) failed'); the jobs now
    run the environment's ANTs by its path and give the outputs of a local run."""
    pbs = FakePBS(tmp_path / "pbs")
    out, work, here = tmp_path / "out", tmp_path / "work", tmp_path / "here"
    here.mkdir()
    args = json.dumps({"poll_sleep_duration": 0.5})
    proc = run_register(example_dataset, out, work, "--plugin", "PBS", "--plugin-args", args,
                        env=pbs.env, cwd=here)
    assert "finished; derivatives in" in proc.stderr.strip().splitlines()[-1], proc.stderr
    # Nipype's PBS plugin wrote its qstat output (stdout.nipype, stderr.nipype) into the
    # current folder, which may be BIDS_DIR: it runs from the work dir
    assert not list(here.iterdir()), list(here.iterdir())
    # Nipype names a PBS job <node>.<workflow...>, cut to 15 characters
    jobs = {line.split(" -N ")[1].split(".")[0] for line in pbs.submitted()}
    assert {"s_biascorrect", "s_register", "s_warp", "f_biascorrect", "f_register",
            "f_warp"} <= jobs, jobs
    reference = reference_run(example_dataset, tmp_path_factory.mktemp("reference"))
    diff = compare_outputs(reference["out"], out)
    print("\n" + report(diff, "PBS (minimal job environment) vs MultiProc"))
    assert diff and all(d["identical"] for d in diff.values()), diff


def test_a_failed_job_is_one_line_naming_its_cause(example_dataset, tmp_path):
    """A step failing in a cluster job (ANTs refuses a pyramid whose smoothing and shrink lists
    differ in length) ended the run with '... says: to the node could not be found.': the tail
    of Nipype's note that the plugin had moved the job's result file, not the cause."""
    from samri_ml.registration import load_flavour

    settings = load_flavour("fast")
    settings["phases"]["s_translation"]["smoothing_sigmas"] = [2, 1]
    flavour = tmp_path / "flavour.json"
    flavour.write_text(json.dumps(settings))
    pbs = FakePBS(tmp_path / "pbs")
    out = tmp_path / "out"
    cmd = [a for a in register_command(example_dataset, out, tmp_path / "work") if a != "--fast"]
    proc = subprocess.run([*cmd, "--registration-flavour", str(flavour), "--plugin", "PBS",
                           "--plugin-args", "poll_sleep_duration=0.5"], env=pbs.env,
                          capture_output=True, text=True, timeout=600)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-3000:]
    crashes = list((out / "sub-01" / "log").glob("crash-*s_register*.txt"))
    assert crashes and crashes[0].name in last, (last, list(out.rglob("crash-*")))
    assert "could not be found" not in last, last
    cause = last.split(" says: ", 1)[1]
    assert cause.split(":")[0].endswith("Error"), last  # the exception the job raised
    # the subject's report gives the same cause for the failed step (the line may cut a long
    # cause in its middle, keeping its start and end around ' ... ')
    shown = cause.split("; hint: fix the cause")[0]
    report = (out / "sub-01.html").read_text()
    for part in shown.split(" ... "):
        assert html.escape(part) in report, (part, shown)


def _ctrl_c_when(ready, pbs: FakePBS, command: list[str], log_path,
                 terminate: bool = False) -> tuple[int, str, list]:
    """Run ``command`` with ``pbs``'s programs until ``ready()``, then press Ctrl-C: SIGINT to
    its process group (the submitting command and its qsub, not the jobs, which run in
    sessions of their own, as on a cluster); ``terminate``: SIGTERM to the command alone
    (``kill PID``, a scheduler ending the job that runs it). Returns its exit status, output
    and lines."""
    log = open(log_path, "w")  # noqa: SIM115
    # Ctrl-C's default action (a shell's background job ignores SIGINT)
    proc = subprocess.Popen(command, env=pbs.env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert proc.poll() is None, Path(log_path).read_text()
            assert time.monotonic() < deadline, "no job started in 300 s"
            time.sleep(0.1)
        if terminate:
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        text, lines = end_run(proc, log, log_path)
    return rc, text, lines


def _left_running(pbs: FakePBS, seconds: float = 10) -> list[int]:
    """The jobs still running ``seconds`` after a run ended (qdel's SIGTERM takes a moment)."""
    deadline = time.monotonic() + seconds
    while pbs.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    return pbs.running()


def test_ctrl_c_cancels_the_jobs_of_the_run(example_dataset, tmp_path):
    """Ctrl-C on the submitting command left its queued and running jobs to the scheduler
    (Nipype does not cancel them): they went on writing into the work dir while a rerun with
    the same -w submitted the same steps again. They are cancelled now, and a note says so;
    the rerun finishes."""
    pbs = FakePBS(tmp_path / "pbs")
    out, work = tmp_path / "out", tmp_path / "work"
    args = ("--plugin", "PBS", "--plugin-args", "poll_sleep_duration=0.5")
    seen = []

    def registering() -> bool:  # a registration job runs, and the plugin's poll has seen it
        seen.append(any(" -N s_register" in job for job in pbs.submitted())
                    and bool(pbs.running()))
        return sum(seen) > 10  # a second (0.1 s a check)

    rc, text, lines = _ctrl_c_when(registering, pbs,
                                   register_command(example_dataset, out, work, *args),
                                   tmp_path / "first.log")
    assert rc == 130 and lines[-1] == "samri_ml-register: interrupted", text[-2000:]
    assert "note: cancelled the" in lines[-2] and "(qdel " in lines[-2], lines
    assert not _left_running(pbs), "jobs of the interrupted run still running"
    proc = run_register(example_dataset, out, work, *args, env=pbs.env)
    assert "finished; derivatives in" in proc.stderr.strip().splitlines()[-1], proc.stderr


@pytest.mark.parametrize("terminate", [False, True], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_during_a_submission_cancels_the_job_submitted(example_dataset, tmp_path,
                                                              terminate):
    """Ctrl-C while ``qsub`` was submitting a job (the scheduler had taken it, its id was not
    yet read) left that job running after the "interrupted" line: Ctrl-C stopped qsub and the
    command before the job's id was in the plugin's queue, so it was not cancelled. The
    submission now finishes first, and its job is cancelled with the others. SIGTERM to the
    command alone likewise (it ended qsub with the command's other children), ending with
    ``terminated``, exit 143."""
    pbs = FakePBS(tmp_path / "pbs", delay=3.0)
    command = register_command(example_dataset, tmp_path / "out", tmp_path / "work",
                               "--plugin", "PBS", "--plugin-args", "poll_sleep_duration=0.5")
    # the first job started; qsub has not answered its id
    rc, text, lines = _ctrl_c_when(pbs.running, pbs, command, tmp_path / "run.log",
                                   terminate=terminate)
    assert len(pbs.submitted()) == 1
    code, word = (143, "terminated") if terminate else (130, "interrupted")
    assert rc == code and lines[-1] == f"samri_ml-register: {word}", text[-2000:]
    assert "note: cancelled the 1 job(s)" in lines[-2] and "(qdel 0)" in lines[-2], lines
    assert not _left_running(pbs), "the job being submitted at Ctrl-C is still running"


def test_a_job_the_scheduler_refuses_is_one_line_and_the_queued_jobs_are_cancelled(
        example_dataset, tmp_path):
    """A submit program that refuses a step's job (its memory over the queue's limit): with
    SLURM the run stopped with 'IndexError: list index out of range' (Nipype read a job id
    from sbatch's empty output), with PBS it queued a job without an id and waited on it; the
    jobs already queued ran on. Now the scheduler's own words, naming the step, exit 1, and
    the queued jobs are cancelled."""
    pbs = FakePBS(tmp_path / "pbs", refuse="s_register")
    proc = subprocess.run(register_command(example_dataset, tmp_path / "out",
                                           tmp_path / "work", "--plugin", "PBS", "--plugin-args",
                                           "poll_sleep_duration=0.5"),
                          env=pbs.env, capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    # tried again twice (Nipype's default max_tries), 2 s apart, each a note
    retries = [ln for ln in lines if "; trying again in 2 s (retry " in ln]
    assert len(retries) == 2 and all("qsub refused the job of step samri_ml_wf.sub_01_ses_1."
                                     "anat_wf.s_register: " in ln for ln in retries), lines
    # the jobs queued at that moment (their number depends on timing), cancelled
    assert all("note: cancelled the " in ln for ln in lines
               if "note:" in ln and ln not in retries), lines
    assert lines[-1].startswith("samri_ml-register: error: qsub refused the job of step "
                                "samri_ml_wf.sub_01_ses_1.anat_wf.s_register: qsub: Job "
                                "exceeds queue resource limits MSG=cannot satisfy queue max "
                                "mem requirement; hint: if the scheduler is reachable, check "
                                "what the step asks for"), lines
    assert not _left_running(pbs), "jobs of the stopped run still running"



def test_a_job_killed_by_the_scheduler_fails_its_step_not_the_run(example_dataset, tmp_path):
    """A job the scheduler killed (its memory or time limit: SIGKILL, no result file written)
    stopped the run with 'error: TypeError: can only concatenate str (not "list") to str'
    (Nipype's crash report took its plugin's message for a list), with no crash file. Now the
    step fails with a crash file that says why, and the run ends as after any failed step."""
    pbs = FakePBS(tmp_path / "pbs")
    out = tmp_path / "out"
    command = register_command(example_dataset, out, tmp_path / "work", "--plugin", "PBS",
                               "--plugin-args", "poll_sleep_duration=0.5,job_finished_timeout=1")
    log_path = tmp_path / "run.log"
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen(command, env=pbs.env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:  # the registration job runs: the scheduler kills it (SIGKILL, as at OOM)
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            jobs = pbs.submitted()
            n = next((i for i, job in enumerate(jobs) if " -N s_register" in job), None)
            pid = pbs.state / f"{n}.pid"  # (FakePBS' job ids count from 0)
            fields = pid.read_text().split() if n is not None and pid.is_file() else []
            if len(fields) == 2:
                os.killpg(int(fields[0]), signal.SIGKILL)
                break
            time.sleep(0.1)
        rc = proc.wait(timeout=300)
    finally:
        text, lines = end_run(proc, log, log_path)
    assert rc == 1, text[-3000:]
    assert "TypeError" not in text, text[-3000:]
    crashes = list((out / "sub-01" / "log").glob("crash-*s_register*.txt"))
    assert crashes and crashes[0].name in lines[-1], (lines[-1], list(out.rglob("crash-*")))
    assert lines[-1].startswith("samri_ml-register: error: 1 step(s) failed"), lines[-1]
    assert f"says: OSError: job {n} ended without the step's result (killed or removed by " \
        "the scheduler: its memory or time limit?); hint: ask the scheduler for more in " \
        "--plugin-args" in lines[-1], lines[-1]
