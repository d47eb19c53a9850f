"""The cores a job may use, as a cluster scheduler pins them."""

import os
import subprocess
import sys

import pytest

from samri_ml.hardware import available_cpus

needs_pinning = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="this platform cannot pin a process to cores"
)


def _pinned_to_one_core(code: str) -> str:
    """stdout of ``code`` run in a child pinned to one core, as SLURM's --cpus-per-task=1 pins
    a job step."""
    pin = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    out = subprocess.run([sys.executable, "-c", pin + code], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return out.stdout.strip()


@needs_pinning
def test_available_cpus_counts_the_cores_this_process_is_pinned_to():
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
    code = "from samri_ml.hardware import available_cpus; print(available_cpus())"
    assert _pinned_to_one_core(code) == "1"


@needs_pinning
def test_register_defaults_to_the_pinned_cores():
    code = (
        "from samri_ml.cli.register import get_parser; "
        "a = ['bids', 'out', '--template', 't.nii', '--template-mask', 'm.nii']; "
        "print(get_parser().parse_args(a).nprocs)"
    )
    assert _pinned_to_one_core(code) == "1"
