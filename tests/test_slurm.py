"""``samri_ml-register --plugin SLURM`` on a real one-node SLURM cluster (issue 5, part 6).

The test installs Debian's ``slurm-wlm`` and ``munge`` where they are missing (root and
apt-get needed; skipped with the reason otherwise), starts munged, slurmctld and slurmd on
localhost (:class:`samri_ml.testing.slurm.LocalSlurmCluster`: one node with 2 CPUs, no cgroups,
a job-completion log as the record of what ran), registers the example dataset through it and
compares the outputs with those of the MultiProc reference run of ``test_resume.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from samri_ml.testing.runs import (
    compare_outputs,
    derivative_files,
    reference_run,
    register_command,
    report,
    run_register,
)
from samri_ml.testing.slurm import LocalSlurmCluster, why_unavailable

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: nodes that run inside the scheduler process (``run_without_submitting``), never as jobs
LOCAL_NODES = {"ds_anat", "ds_anat_xfm", "ds_func0", "ds_func0_xfm", "s_fixed_masks", "f_merge"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = why_unavailable(install=True)
    if reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    start = time.monotonic()
    with LocalSlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2) as c:
        c.startup_seconds = time.monotonic() - start
        yield c


@pytest.fixture(scope="module")
def slurm_run(cluster, example_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_run")
    plugin_args = {"sbatch_args": "--partition=samriml --cpus-per-task=1 --time=60",
                   "poll_sleep_duration": 0.5, "job_finished_timeout": 30}
    start = time.monotonic()
    proc = run_register(example_dataset, root / "out", root / "work", "--plugin", "SLURM",
                        "--plugin-args", json.dumps(plugin_args), env=cluster.env)
    seconds = time.monotonic() - start
    cluster.wait_for_jobs(timeout=60)
    print(f"\nSLURM: cluster up in {cluster.startup_seconds:.1f} s, run {seconds:.0f} s, "
          f"{len(cluster.completed_jobs())} jobs")
    return {"out": root / "out", "work": root / "work", "seconds": seconds, "log": proc.stderr}


def test_jobs_went_through_sbatch(cluster, slurm_run):
    jobs = cluster.completed_jobs()
    names = [j.get("Name", "") for j in jobs]
    # Nipype names a job <node>.<workflow hierarchy>.<LOGNAME>
    nodes = {n.split(".")[0] for n in names}
    for expected in ("s_biascorrect", "s_register", "s_warp", "f_dummy", "f_mean",
                     "f_biascorrect", "f_register", "f_warp"):
        assert expected in nodes, names
    assert not nodes & LOCAL_NODES, names
    assert all(j.get("JobState") == "COMPLETED" and j.get("ExitCode") == "0:0" for j in jobs), jobs
    allocations = re.findall(r"sched: Allocate JobId=(\d+)", cluster.ctld_log.read_text())
    assert {j["JobId"] for j in jobs} <= set(allocations)
    # Nipype's batch folder holds one slurm-<id>.out per job
    outs = list((slurm_run["work"] / "samri_ml_wf" / "batch").glob("slurm-*.out"))
    assert len(outs) == len(jobs)


def test_slurm_outputs_match_multiproc(slurm_run, example_dataset, tmp_path_factory):
    reference = reference_run(example_dataset, tmp_path_factory.mktemp("reference"))
    assert len(derivative_files(slurm_run["out"])) >= 4
    diff = compare_outputs(reference["out"], slurm_run["out"])
    print("\n" + report(diff, "SLURM vs MultiProc"))
    # the same programs with the same inputs, seeds and thread counts, on the same machine:
    # a job scheduler changes where and when a node runs, not what it computes
    assert all(d["identical"] for d in diff.values()), diff


def test_slurm_graph_submits_and_a_linear_rerun_reports(cluster, example_dataset,
                                                       tmp_path_factory):
    """``--plugin SLURMGraph`` submits every job with its dependencies and returns: it used to
    write reports of a run not yet done (every scan "failed or not run") and then fail with a
    FileNotFoundError on a sink's result file. Once the jobs are done, the same command with
    ``--plugin Linear`` reuses every step and writes the reports."""
    root = tmp_path_factory.mktemp("slurm_graph")
    plugin_args = {"sbatch_args": "--partition=samriml --cpus-per-task=1 --time=60"}
    before = len(cluster.completed_jobs())
    proc = run_register(example_dataset, root / "out", root / "work", "--plugin", "SLURMGraph",
                        "--plugin-args", json.dumps(plugin_args), env=cluster.env)
    last = proc.stderr.strip().splitlines()[-1]
    assert "submitted; the jobs run under the scheduler" in last, proc.stderr[-2000:]
    # Nipype's own warning, between samri_ml's lines: a graph plugin takes no status_callback
    assert "status_callback not supported" not in proc.stderr, proc.stderr[-2000:]
    assert not (root / "out" / "sub-01.html").exists()  # nothing to report on yet
    cluster.wait_for_jobs(timeout=900)
    jobs = cluster.completed_jobs()[before:]
    assert jobs and all(j.get("JobState") == "COMPLETED" for j in jobs), jobs
    proc = run_register(example_dataset, root / "out", root / "work", "--plugin", "Linear")
    assert "finished; derivatives in" in proc.stderr.strip().splitlines()[-1]
    assert (root / "out" / "sub-01.html").is_file()
    reference = reference_run(example_dataset, tmp_path_factory.mktemp("reference"))
    diff = compare_outputs(reference["out"], root / "out")
    assert diff and all(d["identical"] for d in diff.values()), diff


@pytest.mark.parametrize("sbatch_args, noted", [("--partition=samriml", False),
                                                ("--partition=samriml --cpus-per-task=1", True),
                                                ("-p samriml -c 2", False)])
def test_threads_without_cpus_per_task_are_noted(cluster, example_dataset, tmp_path,
                                                 sbatch_args, noted):
    """--omp-nthreads 2 with sbatch_args that ask for fewer CPUs ran every ANTs job's two
    threads on one CPU, in silence. Without a CPU count in sbatch_args each step asks for its
    own (:func:`samri_ml.workflows.request_slurm_resources`): no note."""
    proc = run_register(example_dataset, tmp_path / "out", tmp_path / "work", "--plugin",
                        "SLURM", "--omp-nthreads", "2", "--dry-run", "--plugin-args",
                        json.dumps({"sbatch_args": sbatch_args}), env=cluster.env)
    note = ("note: --omp-nthreads 2: each ANTs job runs 2 threads, but sbatch_args asks for 1 "
            "CPU(s) per job; hint: leave --cpus-per-task out of sbatch_args (each step then "
            "asks for its own), or give as many as --omp-nthreads")
    assert (note in proc.stderr) == noted, proc.stderr
    assert "plugin SLURM, 2 thread(s) per ANTs step;" in proc.stderr, proc.stderr


def test_each_step_asks_for_its_own_cpus_and_memory(cluster, example_dataset, tmp_path):
    """samri_ml-register --plugin SLURM/SLURMGraph submitted every step with the run's
    sbatch_args alone: antsRegistration on --omp-nthreads threads got one CPU. Each heavy step
    now asks for its CPUs and memory, but a memory the run's sbatch_args give every job is
    left to them (a lab's --mem=3G is not cut to a step's 1 GB). SLURMGraph's dont_submit
    writes the jobs without submitting them."""
    plugin_args = {"sbatch_args": "--partition=samriml --mem=3G", "dont_submit": True}
    run_register(example_dataset, tmp_path / "out", tmp_path / "work", "--plugin",
                 "SLURMGraph", "--omp-nthreads", "2", "--plugin-args", json.dumps(plugin_args),
                 env=cluster.env)
    (submit,) = (tmp_path / "work").rglob("submit_jobs.sh")
    jobs = {}
    for name, line in re.findall(r"^j\d+_(\w+)=\$\(sbatch (.*?) -J ", submit.read_text(),
                                 re.M):
        jobs.setdefault(name, line.split())
    register = [args for name, args in jobs.items() if name.startswith("s_register")]
    assert register, sorted(jobs)
    for args in register:
        assert "--cpus-per-task=2" in args and "--mem=3G" in args, args
        assert not [a for a in args if a.startswith("--mem=") and a != "--mem=3G"], args


@pytest.mark.parametrize("dry_run", [True, False])
def test_sbatch_args_the_cluster_refuses_are_one_line(cluster, example_dataset, tmp_path,
                                                      dry_run):
    """A partition the cluster does not have made the run end, after OUTPUT_DIR and the work
    dir were made, with 'error: IndexError: list index out of range' (Nipype read sbatch's
    empty answer); sbatch --test-only now refuses it first, in sbatch's words."""
    out = tmp_path / "out"
    cmd = register_command(example_dataset, out, tmp_path / "work", "--plugin", "SLURM",
                           "--plugin-args", json.dumps({"sbatch_args": "--partition=nope"}),
                           *(["--dry-run"] if dry_run else []))
    proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "samri_ml-register: error: --plugin SLURM: sbatch refuses the jobs (sbatch: error: "
        "invalid partition specified: nope); hint: fix sbatch_args in --plugin-args (now "
        "'--partition=nope'); sbatch --test-only ARGS --wrap true tries them"], proc.stderr
    assert not out.exists() and not (tmp_path / "work").exists()
