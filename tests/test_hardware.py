"""The cores a job may use, as a cluster scheduler pins them."""

import os
import subprocess
import sys

import pytest

from samri_ml.hardware import available_cpus


def test_available_cpus_counts_the_cores_this_process_is_pinned_to():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("this platform cannot pin a process to cores")
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
    # a child pinned to one core, as SLURM's --cpus-per-task=1 pins a job step
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from samri_ml.hardware import available_cpus; print(available_cpus())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_register_defaults_to_the_pinned_cores():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("this platform cannot pin a process to cores")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from samri_ml.cli.register import get_parser; "
        "a = ['bids', 'out', '--template', 't.nii', '--template-mask', 'm.nii']; "
        "print(get_parser().parse_args(a).nprocs)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
