"""Nipype's execution plugins as samri_ml runs them: which there are, their ``plugin_args``
(given on a command line as JSON or ``key=value``, checked before anything runs), the programs a
cluster's scheduler must answer with (checked on the login node, so that a broken set-up fails
at once with the scheduler's own message) and cancelling a run's jobs after Ctrl-C.

What each node asks a SLURM cluster for (CPUs, memory) is
:mod:`samri_ml.workflows.resources`; scale-out itself is Nipype's (design.md).

    >>> from samri_ml.cluster import parse_plugin_args
    >>> parse_plugin_args("n_procs=4,sbatch_args=-p short")
    {'n_procs': 4, 'sbatch_args': '-p short'}
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from contextlib import contextmanager

from samri_ml.errors import SamriMLError

# (Nipype's Debug plugin is left out: it takes a Python callable, which no command line gives)
PLUGINS = ("MultiProc", "Linear", "SLURM", "SLURMGraph", "SGE", "SGEGraph", "PBS", "PBSGraph",
           "LSF", "Condor", "CondorDAGMan", "OAR", "IPython")
#: plugins that submit the whole graph with job dependencies and return: the jobs run after
#: the command has ended, so there is nothing to report on yet
GRAPH_PLUGINS = ("SLURMGraph", "SGEGraph", "PBSGraph", "CondorDAGMan")


def parse_plugin_args(text: str) -> dict:
    """``--plugin-args`` as JSON (``'{"sbatch_args": "-p short"}'``) or ``key=value,key=value``;
    the values of the keys Nipype reads as numbers or switches are checked here, before any
    folder is made (``n_procs=0`` and ``poll_sleep_duration=abc`` failed inside the run)."""
    text = text.strip()
    if text[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON: {text!r} ({err.msg})") from err
        if not isinstance(value, dict):
            raise ValueError(
                f"not a JSON object: {text!r}; hint: give '{{\"n_procs\": 4}}' or n_procs=4")
        return check_plugin_args(value)
    out = {}
    for item in filter(None, text.split(",")):
        if "=" not in item:
            raise ValueError(f"expected key=value in --plugin-args, got {item!r}; hint: a value "
                             "with a comma needs the JSON form, e.g. "
                             "'{\"sbatch_args\": \"--mail-type=END,FAIL\"}'")
        key, value = item.split("=", 1)
        out[key.strip()] = plugin_value(value.strip())
    return check_plugin_args(out)


#: the least memory (GB) MultiProc runs a step with: below, it never starts one (it waits
#: for 0.01 GB free), and the run hangs without a word
MIN_MEMORY_GB = 0.01

#: ``--plugin-args`` keys Nipype reads as numbers or switches: (kind, lowest value, wording)
PLUGIN_ARG_RULES = {
    "n_procs": (int, 1, "a whole number, at least 1"),
    "n_gpu_procs": (int, 0, "a whole number, 0 or more"),
    "maxtasksperchild": (int, 1, "a whole number, at least 1"),
    "max_jobs": (int, 1, "a whole number, at least 1"),
    "max_tries": (int, 0, "a whole number, 0 or more"),
    "memory_gb": (float, MIN_MEMORY_GB, f"a number of GB, at least {MIN_MEMORY_GB}"),
    "poll_sleep_duration": (float, 0, "a number of seconds, 0 or more"),
    "job_finished_timeout": (float, 0, "a number of seconds, 0 or more"),
    "retry_timeout": (float, 0, "a number of seconds, 0 or more"),
    "raise_insufficient": (bool, None, "true or false"),
}


#: start methods of multiprocessing (MultiProc's ``mp_context``)
MP_CONTEXTS = ("fork", "spawn", "forkserver")
#: ``plugin_args`` keys that take Python objects, which no command line gives
OBJECT_KEYS = ("status_callback",)


def check_plugin_args(args: dict) -> dict:
    """Refuse a value of a key of :data:`PLUGIN_ARG_RULES` of the wrong kind or range, an
    ``mp_context`` that is no start method (it failed after OUTPUT_DIR was made, with a raw
    ValueError), a ``template`` that is neither a file nor a header's text, and keys that
    take Python objects (:data:`OBJECT_KEYS`)."""
    import math

    for key in OBJECT_KEYS:
        if key in args:
            raise ValueError(f"{key}: takes a Python function, which a command line cannot "
                             "give; hint: leave it out")
    template = args.get("template")
    if template is not None and not (isinstance(template, str) and (
            "\n" in template or template.lstrip().startswith("#!")
            or os.path.isfile(template))):
        # Nipype takes a name that is no file as the header's text: the scheduler refused the
        # script, and the run stopped with "IndexError: list index out of range", OUTPUT_DIR made
        what = ("no such file (Nipype would take it as the batch script's text, which must "
                "start with #!)" if isinstance(template, str) else "not a file's path")
        raise ValueError(f"template={json.dumps(template)}: {what}; hint: give the path of a "
                         "header file, or the header itself")
    if "mp_context" in args and args["mp_context"] not in MP_CONTEXTS:
        raise ValueError(f"mp_context={json.dumps(args['mp_context'])}: must be one of "
                         f"{', '.join(MP_CONTEXTS)}")
    for key, value in args.items():
        if key not in PLUGIN_ARG_RULES:
            continue
        kind, low, wording = PLUGIN_ARG_RULES[key]
        if kind is bool:
            ok = isinstance(value, bool)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            ok = False
        elif kind is int:
            ok = float(value).is_integer() and value >= low
            if ok:
                args[key] = int(value)
        else:  # memory_gb at least MIN_MEMORY_GB (-3 and 0.005 hung the run)
            ok = math.isfinite(value) and value >= low
        if not ok:
            raise ValueError(f"{key}={json.dumps(value)}: must be {wording}")
    return args


def plugin_value(text: str):
    """A ``key=value`` value as the JSON form would give it: ``2`` -> 2, ``0.5`` -> 0.5,
    ``true``/``false`` (any case) -> bool, ``none``/``null`` -> None, else the text (Nipype
    compared ``n_procs='2'`` with ints, and the string ``'false'`` is true)."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


#: the programs a cluster plugin of Nipype calls to submit and to poll jobs (Nipype's Condor
#: plugin submits with HTCondor's qsub emulation, condor_qsub, not condor_submit)
SCHEDULER_PROGRAMS = {
    "SLURM": ("sbatch", "squeue"), "SLURMGraph": ("sbatch", "squeue"),
    "SGE": ("qsub", "qstat"), "SGEGraph": ("qsub", "qstat"),
    "PBS": ("qsub", "qstat"), "PBSGraph": ("qsub", "qstat"),
    "LSF": ("bsub", "bjobs"), "Condor": ("condor_qsub", "condor_q"),
    "CondorDAGMan": ("condor_submit_dag", "condor_q"), "OAR": ("oarsub", "oarstat"),
}


#: plugins whose job scripts run the environment's Python unquoted (Nipype 1.11), and the
#: plugin of the same scheduler that quotes it
UNQUOTED_PYTHON_PLUGINS = {"SLURMGraph": "SLURM", "SGEGraph": "SGE", "PBSGraph": "PBS",
                           "CondorDAGMan": "Condor"}


#: the program that cancels a cluster plugin's jobs
CANCEL_PROGRAMS = {"SLURM": "scancel", "SGE": "qdel", "PBS": "qdel", "LSF": "bkill",
                   "Condor": "condor_rm", "OAR": "oardel"}


def cancel_jobs(plugin: str, runner, prog: str = "samri_ml") -> None:
    """After Ctrl-C, cancel the jobs a cluster plugin (``runner``) submitted and had not yet
    seen end: Nipype leaves them queued or running, writing into the work dir's step folders
    while a rerun with the same ``-w`` submits the same steps again. Says which, in a note."""
    import subprocess

    program = CANCEL_PROGRAMS.get(plugin)
    ids = [str(taskid) for taskid in getattr(runner, "_pending", {})]
    if program is None or not ids:
        return
    command = f"{program} {' '.join(ids)}"

    def cancel(*which) -> tuple[bool, str]:
        try:
            run = subprocess.run([program, *which], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False, ""
        return run.returncode == 0, run.stdout + run.stderr

    done, _ = cancel(*ids)
    left = []
    if not done:
        # one job ended since the plugin last polled: qdel/bkill refuse the whole call for it
        # ("does not exist", "already finished"), and the note said every job may still run
        for taskid in ids:
            ok, said = cancel(taskid)
            if not (ok or ENDED.search(said)):
                left.append(taskid)
    if not left:
        print(f"{prog}: note: cancelled the {len(ids)} job(s) of this run still queued or "
              f"running ({command})", file=sys.stderr)
    else:
        print(f"{prog}: note: {len(left)} job(s) of this run may still be queued or running; "
              f"hint: {program} {' '.join(left)}, before a rerun with the same -w",
              file=sys.stderr)


#: what a cancel program says of a job that has ended already (SGE's qdel, LSF's bkill, PBS'
#: qdel, SLURM's scancel, HTCondor's condor_rm, OAR's oardel)
ENDED = re.compile(r"does not exist|already (finished|completed|completing)|unknown job|"
                   r"invalid job id|not found|no such job|has finished|"
                   r"couldn't find/remove", re.IGNORECASE)


def submit_whole(runner, prog: str = "samri_ml") -> None:
    """Make each job submission of a cluster plugin (``runner``) finish before Ctrl-C or
    SIGTERM stops the run, and a refused one fail in one line naming the step.

    Ctrl-C reaches the terminal's whole process group, the submit program (``qsub``,
    ``sbatch``) too, and SIGTERM (``kill PID``, a scheduler ending the job that runs the
    command) ends every process below this one: a submit program stopped after the scheduler
    had taken its job, or this process stopped before it had read the job's id, left a job
    that :func:`cancel_jobs` did not know of, running on after the "interrupted" line. During
    a submission the submit program runs in a session of its own and either signal is held,
    then acted on once the job is in the plugin's queue; a second one does not wait.

    A submit program that refuses a job (exit status not 0: a step's ``--cpus-per-task`` or
    ``--mem`` more than the partition has, a QOS limit, a busy controller's "Socket timed out
    on send/recv") stopped the run with ``IndexError: list index out of range`` (SLURM: Nipype
    read the job id from its empty output) or queued a job without an id (PBS). The
    submission is tried again ``max_tries`` times, ``retry_timeout`` seconds apart (the
    plugin's, from ``plugin_args``; Nipype's own retry never saw a submit program's exit
    status), each retry a note; after the last, the scheduler's message is the error. Plugins
    without per-job submission (the Graph plugins, MultiProc) are left as they are."""
    import threading
    import time

    if threading.current_thread() is not threading.main_thread():
        return
    if hasattr(runner, "_submit_graph"):  # one script submits every job
        _say_graph_refusals(runner, prog)
        return
    submit = getattr(runner, "_submit_batchtask", None)
    if submit is None:
        return
    if getattr(runner, "_jobid_re", None) == NIPYPE_SBATCH_ID:
        runner._jobid_re = SBATCH_ID
    once = _submit_held(runner, submit)

    @functools.wraps(submit)
    def whole(scriptfile, node, *args, **kwargs):
        tries = max(0, int(getattr(runner, "_max_tries", 0) or 0))
        wait = max(0.0, float(getattr(runner, "_retry_timeout", 0) or 0))
        for retry in range(1, tries + 2):
            taskid, refused = once(scriptfile, node, *args, **kwargs)
            if refused is None:
                return taskid
            if retry > tries:
                break
            # a busy or restarting controller refuses for a moment ("Socket timed out")
            print(f"{prog}: note: {refused[0]}; trying again in {wait:g} s (retry {retry} "
                  f"of {tries})", file=sys.stderr)
            time.sleep(wait)
        what, program = refused
        args = SUBMIT_ARGS.get(program, "sbatch_args/qsub_args/bsub_args")
        tried = (f" (tried {tries + 1} times, {wait:g} s apart: max_tries, retry_timeout)"
                 if tries else "")
        # the plugin's own argument (LSF was told to fix sbatch_args/qsub_args); a scheduler
        # that is down ("unable to contact qmaster") is no request to fix
        # (the docs are in the source distribution only: a pip user has no docs/ folder)
        raise SamriMLError(f"{what}; hint: if the scheduler is reachable, check what the step "
                           "asks for (its CPUs and memory: docs/cluster.rst of samri_ml's "
                           "source distribution) against the queue or partition, and "
                           f"--plugin-args' {args}{tried}")

    runner._submit_batchtask = whole


def _submit_held(runner, submit):
    """``submit`` (a plugin's ``_submit_batchtask``) made to run whole, with Ctrl-C and
    SIGTERM held (:func:`submit_whole`), returning ``(job id, None)``, or ``(None, (what,
    program))`` where the submit program refused the job (:func:`_refusal`)."""
    import signal

    def once(scriptfile, node, *args, **kwargs):
        previous = {signum: signal.getsignal(signum)
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        # ignored (a background job's SIGINT) or not Python's: left as they are
        previous = {signum: handler for signum, handler in previous.items() if callable(handler)}
        held = []

        def hold(signum, frame):
            held.append(signum)
            if len(held) > 1:  # a second signal: not held
                previous[signum](signum, frame)

        for signum in previous:
            signal.signal(signum, hold)
        calls = []
        try:
            with _children_apart(calls):
                try:
                    taskid = submit(scriptfile, node, *args, **kwargs)
                except Exception as err:
                    refused = _refusal(calls, node)
                    if refused:
                        return None, refused
                    if calls and isinstance(err, (AttributeError, IndexError, ValueError)):
                        raise SamriMLError(_no_job_id(calls[-1], node)) from err
                    raise
            refused = _refusal(calls, node)
            if refused:  # queued without an id: not a job to wait for, or to cancel
                getattr(runner, "_pending", {}).pop(taskid, None)
                return None, refused
            return taskid, None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if len(held) == 1:  # a refused submission too: nothing was queued, no retry
                previous[held[0]](held[0], None)

    return once


def _refusal(calls: list, node) -> tuple[str, str] | None:
    """What a submission whose last program (of ``calls``, Nipype's runtimes) exited with
    another status than 0 tells: ``("<program> refused the job of step <step>: <what it
    said>", program)``; None where none did."""
    failed = [c for c in calls if getattr(c, "returncode", 0) not in (0, None)]
    if not failed:
        return None
    runtime = failed[-1]
    program = str(getattr(runtime, "cmdline", "") or "the submit program").split()[0]
    said = " ".join(line.strip() for line in str(getattr(runtime, "stderr", "") or
                                                  getattr(runtime, "stdout", "")).splitlines()
                    if line.strip()) or f"exit status {runtime.returncode}"
    step = getattr(node, "fullname", None) or getattr(node, "_id", "?")
    name = os.path.basename(program)
    return f"{name} refused the job of step {step}: {said}", name


def _no_job_id(runtime, node) -> str:
    """The error for a submission whose program (``runtime``, Nipype's) exited with status 0
    but answered no job id that Nipype reads (a site's wrapper adding a line; the run stopped
    with ``AttributeError`` or ``IndexError``)."""
    program = os.path.basename(str(getattr(runtime, "cmdline", "") or "?").split()[0])
    answer = " ".join(str(getattr(runtime, "stdout", "") or "").split()) or "nothing"
    step = getattr(node, "fullname", None) or getattr(node, "_id", "?")
    return (f"{program} answered no job id for step {step} (it said: {answer}); hint: a job "
            "may be queued: check the queue, and leave out options that change what the "
            "submit program answers")


#: how Nipype's SLURM plugin reads a job's id from sbatch's last line, and how samri_ml does:
#: ``sbatch --parsable`` (in sbatch_args) answers the id alone (``123``, ``123;cluster``), and
#: the run stopped with "AttributeError: 'NoneType' object has no attribute 'groups'"
NIPYPE_SBATCH_ID = "Submitted batch job ([0-9]*)"
SBATCH_ID = r"(?:Submitted batch job )?([0-9]+)"

#: the --plugin-args key of each submit program's arguments
SUBMIT_ARGS = {"sbatch": "sbatch_args", "qsub": "qsub_args", "bsub": "bsub_args",
               "oarsub": "oarsub_args", "condor_qsub": "qsub_args"}


def follow_jobs(runner) -> None:
    """Mend how a job-by-job cluster plugin (``runner``: SLURM, SGE, PBS, LSF, Condor, OAR)
    follows its jobs.

    A job that ended without the step's result file (killed by the scheduler at its memory or
    time limit, removed by hand) stopped the whole run with ``TypeError: can only concatenate
    str (not "list") to str`` (Nipype's crash report added its note to the plugin's message,
    a string, as to a list), no crash file written; the step now fails with a crash file
    saying so, and the run goes on as after any failed step.

    HTCondor's ``condor_q`` lists batches, not jobs, since 8.5.6, and Nipype's Condor plugin,
    which looks for a line starting with the job's id, took every job for ended at once: each
    step failed ``job_finished_timeout`` seconds after its submission, its job running on. It
    asks ``condor_q -af ClusterId ID`` now.

    A ``squeue`` that failed for a moment (a busy controller's "Socket timed out on send/recv")
    made Nipype's SLURM plugin take the job for ended (Nipype meant to ask again, but never saw
    squeue's exit status): its step failed as if the job had been killed, the job running on.
    The job now counts as queued until squeue answers or says it knows no such job.

    Nipype's SGE plugin asks ``qacct`` whether a job that ``qstat`` no longer lists has ended,
    and compared its answer (bytes) with a string: a TypeError, taken for "not ended" after 50
    s of retries, so a job that ended unseen (a cluster with ``finished_jobs 0``, or more jobs
    ending between two polls than qstat keeps) counted as running for ever and the run hung.
    ``qacct -j ID`` is read as text now.

    MultiProc (:func:`_follow_workers`): a step whose result file could not be written (a
    full work dir) hung the run."""
    from concurrent.futures import Executor

    if isinstance(getattr(runner, "pool", None), Executor):  # MultiProc's (not a Pool's)
        _follow_workers(runner)
        return
    get = getattr(runner, "_get_result", None)
    if get is None or not hasattr(runner, "_pending"):
        return

    @functools.wraps(get)
    def result(taskid):
        out = get(taskid)
        if isinstance(out, dict) and isinstance(out.get("traceback"), str):
            out["traceback"] = [
                f"{out['traceback']}\n",
                f"OSError: job {taskid} ended without the step's result (killed or removed "
                "by the scheduler: its memory or time limit?); hint: ask the scheduler for "
                "more in --plugin-args\n"]
        return out

    runner._get_result = result
    if type(runner).__name__ == "CondorPlugin":
        runner._is_pending = _condor_pending
    elif type(runner).__name__ == "SLURMPlugin":
        runner._is_pending = _slurm_pending
    elif hasattr(runner, "_refQstatSubstitute"):  # SGE
        runner._refQstatSubstitute._qacct_verified_complete = _sge_ended


def _follow_workers(runner) -> None:
    """Make a step of Nipype's MultiProc plugin (``runner``) that failed in its worker beyond
    the step's own error handling fail the step, not hang the run.

    A step whose result file could not be written (a work dir on a full disk: "[Errno 28] No
    space left on device") failed, and the worker then read that file back for the crash
    report: its FileNotFoundError reached the plugin's callback, which never recorded the step
    as ended, and the run waited for it for ever after one "exception calling callback for
    <Future ...>" traceback (seen on the example data in a 3 MB work dir: 10 minutes, then
    killed). The step now fails with a crash file of the worker's errors (the full disk among
    them, which the run's hint names), and the run goes on as after any failed step."""
    import traceback

    callback, tasks = runner._async_callback, getattr(runner, "_task_obj", {})

    def settled(future):
        try:
            future.result()
        except Exception as err:  # noqa: BLE001 - whatever escaped the worker fails its step
            # (a future done at once calls back before the plugin has filed it: the task
            # being submitted)
            taskid = next((t for t, f in list(tasks.items()) if f is future), runner._taskid)
            runner._taskresult[taskid] = {"result": None, "taskid": taskid,
                                          "traceback": traceback.format_exception(err)}
            return
        callback(future)

    runner._async_callback = settled


def _condor_pending(taskid) -> bool:
    """Whether HTCondor's queue holds job cluster ``taskid`` (idle, running or held)."""
    import subprocess

    try:
        said = subprocess.run(["condor_q", "-af", "ClusterId", str(taskid)], text=True,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL).stdout
    except subprocess.TimeoutExpired:
        return True  # asked again at the next poll
    except OSError:
        return False
    return str(taskid) in said.split()


def _slurm_pending(taskid) -> bool:
    """Whether SLURM's queue holds job ``taskid``: True while ``squeue`` fails otherwise than
    for a job id it does not know (asked again at the next poll)."""
    import subprocess

    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%i", "-j", str(taskid)], text=True,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return True
    except OSError:
        return False
    if proc.returncode != 0:  # a job SLURM has forgotten: "Invalid job id specified"
        return "invalid job id" not in proc.stderr.lower()
    return str(taskid) in proc.stdout.split()


def _sge_ended(taskid) -> bool:
    """Whether SGE's accounting (``qacct -j ID``) lists job ``taskid``: it has ended."""
    import subprocess

    try:
        said = subprocess.run(["qacct", "-j", str(taskid)], text=True, capture_output=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False  # asked again at the next poll
    return said.returncode == 0 and re.search(
        rf"^jobnumber\s+{int(taskid)}\s*$", said.stdout, re.MULTILINE) is not None


def _say_graph_refusals(runner, prog: str = "samri_ml") -> None:
    """A Graph plugin (SLURMGraph, SGEGraph, PBSGraph) submits every job from one script,
    which goes on where a submit program refuses a job: the run said "submitted", exit 0,
    with 29 refusals (the scheduler's words unseen), or with a later job held on a missing id.
    What the script's submit programs wrote to stderr is now a note, with a hint."""
    submit = runner._submit_graph

    @functools.wraps(submit)
    def said(*args, **kwargs):
        calls = []
        with _children_apart(calls):
            result = submit(*args, **kwargs)
        errors = [line.strip() for c in calls
                  for line in str(getattr(c, "stderr", "") or "").splitlines() if line.strip()]
        if errors or any(getattr(c, "returncode", 0) not in (0, None) for c in calls):
            shown = "; ".join(dict.fromkeys(errors[:3])) or "its script ended with an error"
            more = f" (and {len(errors) - 3} more lines)" if len(errors) > 3 else ""
            print(f"{prog}: note: submitting the jobs said: {shown}{more}; some jobs may "
                  "not be queued, or wait on one that is not; hint: check the queue, cancel "
                  "this run's jobs and fix --plugin-args before a rerun", file=sys.stderr)
        return result

    runner._submit_graph = said


@contextmanager
def _children_apart(calls: list):
    """Meanwhile the programs Nipype's interfaces start run in sessions of their own, reading
    no terminal (a Ctrl-C is not theirs, nor this process's SIGTERM to those below it), and
    their runtimes (command, exit status, output) are appended to ``calls``."""
    import subprocess

    from nipype.interfaces.base import core
    from nipype.utils import subprocess as nipype_subprocess

    popen, run_command = nipype_subprocess.Popen, core.run_command

    def apart(*args, **kwargs):
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return popen(*args, **kwargs)

    def recorded(runtime, *args, **kwargs):
        runtime = run_command(runtime, *args, **kwargs)
        calls.append(runtime)
        return runtime

    nipype_subprocess.Popen, core.run_command = apart, recorded
    try:
        yield
    finally:
        nipype_subprocess.Popen, core.run_command = popen, run_command


def ensure_logname() -> None:
    """Set ``$LOGNAME`` from the user id where it is unset (containers, CI, cron): Nipype's
    SLURM/SGE plugins name jobs after it and fail with a bare ``KeyError: 'LOGNAME'``."""
    if os.environ.get("LOGNAME"):
        return
    import getpass

    try:
        os.environ["LOGNAME"] = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry
        os.environ["LOGNAME"] = "samri_ml"


def check_scheduler(plugin: str, plugin_args: dict | None = None) -> None:
    """Before anything is written: the cluster plugin's programs must be on PATH, and for
    SLURM ``squeue`` (what Nipype's SLURM plugins poll) must answer and ``sbatch --test-only``
    accept the ``sbatch_args`` of ``plugin_args``, so that a broken set-up fails at once with
    the scheduler's own message instead of Nipype's ``IndexError`` or ``RuntimeError`` after
    the first submission. Sets ``$LOGNAME`` where it is unset (:func:`ensure_logname`): a
    workflow run from Python on SLURM or SGE failed with ``KeyError: 'LOGNAME'``."""
    import shutil
    import subprocess

    if plugin == "IPython":
        import importlib.util

        if importlib.util.find_spec("ipyparallel") is None:
            raise SamriMLError("--plugin IPython: ipyparallel is not installed; hint: pip "
                               "install ipyparallel and start a cluster (ipcluster start), or "
                               "use --plugin MultiProc")
    programs = SCHEDULER_PROGRAMS.get(plugin)
    if programs is None:
        return
    ensure_logname()
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise SamriMLError(f"--plugin {plugin}: {'/'.join(missing)} not found on PATH; hint: "
                           "run on a login node of the cluster, or use --plugin MultiProc")
    if plugin in UNQUOTED_PYTHON_PLUGINS and any(c.isspace() for c in sys.executable):
        # their job scripts run f"{sys.executable} {script}": every job failed with "No such
        # file or directory" on the environment's path cut at the space
        raise SamriMLError(f"--plugin {plugin}: the Python of this environment, "
                           f"{sys.executable}, is in a folder with a space, which {plugin}'s "
                           "job scripts do not quote; hint: use --plugin "
                           f"{UNQUOTED_PYTHON_PLUGINS[plugin]}, or install samri_ml in a "
                           "folder without spaces")
    if programs[1] != "squeue":
        return
    try:
        user = os.environ.get("LOGNAME") or str(os.getuid())
        proc = subprocess.run(["squeue", "-h", "-u", user], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        raise SamriMLError(f"--plugin {plugin}: squeue did not answer within 60 s; hint: "
                           "check the cluster, or use --plugin MultiProc") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
        raise SamriMLError(f"--plugin {plugin}: squeue fails ({lines[-1].strip()}); hint: "
                           "check the SLURM configuration (SLURM_CONF), or use --plugin "
                           "MultiProc")
    # a job sbatch refuses (a partition, time or CPU count the cluster does not have) made
    # Nipype fail with "IndexError: list index out of range" on sbatch's empty answer
    sbatch_args = str((plugin_args or {}).get("sbatch_args") or "")
    if plugin == "SLURMGraph" and re.search(r"(^|\s)--parsable\b", sbatch_args):
        # its script reads each id from "Submitted batch job N": the jobs waiting on another
        # were refused ("Job dependency problem")
        raise SamriMLError(f"--plugin {plugin}: --parsable in sbatch_args leaves the jobs "
                           "without the ids their dependencies need; hint: leave it out")
    said = _sbatch_refusal(sbatch_args)
    if said:
        raise SamriMLError(f"--plugin {plugin}: sbatch refuses the jobs ({said[0]}); hint: fix "
                           f"sbatch_args in --plugin-args (now {sbatch_args!r}); sbatch "
                           "--test-only ARGS --wrap true tries them")


def _sbatch_refusal(*args: str) -> list[str] | None:
    """What ``sbatch --test-only ARGS --wrap true`` says (its lines; ``exit N`` where it says
    nothing) where it refuses a job with the options ``args`` (strings of options, split as a
    shell would); None where it accepts it, or cannot tell (not answering within 60 s,
    unbalanced quotes): the submission then says what is wrong."""
    import shlex
    import subprocess

    try:
        options = [option for text in args for option in shlex.split(text)]
        proc = subprocess.run(["sbatch", "--test-only", *options, "--wrap", "true"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired, ValueError):  # ValueError: unbalanced quotes
        return None
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return lines or [f"exit {proc.returncode}"]


def check_step_requests(plugin: str, run_args: str, asked: dict[str, str]) -> None:
    """Before anything is written: ``sbatch --test-only`` must accept the run's
    ``sbatch_args`` with each distinct request of the steps (``asked``: step -> its
    sbatch_args, :func:`samri_ml.workflows.request_slurm_resources`), so that a step asking
    for more CPUs or memory than the partition has fails at once, named, not at its
    submission minutes into the run. A request ``sbatch`` does not answer within 60 s passes."""
    requests: dict[str, str] = {}
    for step, request in sorted(asked.items()):  # the first step of a request, by name
        requests.setdefault(request, step)
    for request, step in requests.items():
        said = _sbatch_refusal(run_args, request)
        if said:
            raise SamriMLError(
                f"--plugin {plugin}: sbatch refuses the job of step {step}, which asks for "
                f"{request} ({said[-1]}); hint: a partition with more (sbatch_args in "
                "--plugin-args), or fewer threads (--omp-nthreads)")

