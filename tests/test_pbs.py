"""``samri_ml-register --plugin PBS`` with jobs that get a minimal environment.

:class:`samri_ml.testing.pbs.FakePBS` stands in for ``qsub``/``qstat``: every job runs the
batch script Nipype wrote in a new process whose ``PATH`` is ``/usr/bin:/bin``, as on a cluster
whose jobs do not inherit the login shell's environment (a batch ``template`` without
``#PBS -V``/``#$ -V``, ``sbatch --export=NONE``).
"""

from __future__ import annotations

import json

import pytest

from samri_ml.testing.pbs import FakePBS
from samri_ml.testing.runs import compare_outputs, reference_run, report, run_register

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_jobs_without_the_environment_find_ants(example_dataset, tmp_path, tmp_path_factory):
    """Every ANTs step failed with 'No command "N4BiasFieldCorrection" found' in a job whose
    PATH lacks the virtual environment's bin/ (the run ended '2 step(s) failed'); the jobs now
    run the environment's ANTs by its path and give the outputs of a local run."""
    pbs = FakePBS(tmp_path / "pbs")
    out, work = tmp_path / "out", tmp_path / "work"
    args = json.dumps({"poll_sleep_duration": 0.5})
    proc = run_register(example_dataset, out, work, "--plugin", "PBS", "--plugin-args", args,
                        env=pbs.env)
    assert "finished; derivatives in" in proc.stderr.strip().splitlines()[-1], proc.stderr
    # Nipype names a PBS job <node>.<workflow...>, cut to 15 characters
    jobs = {line.split(" -N ")[1].split(".")[0] for line in pbs.submitted()}
    assert {"s_biascorrect", "s_register", "s_warp", "f_biascorrect", "f_register",
            "f_warp"} <= jobs, jobs
    reference = reference_run(example_dataset, tmp_path_factory.mktemp("reference"))
    diff = compare_outputs(reference["out"], out)
    print("\n" + report(diff, "PBS (minimal job environment) vs MultiProc"))
    assert diff and all(d["identical"] for d in diff.values()), diff
