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


@pytest.mark.parametrize(
    ("threads", "parallel_ops", "intra", "inter"),
    [(2, 2, "1", "2"), (4, 2, "2", "2"), (1, 2, "1", "1"), (2, 1, "2", "1"), (0, 2, "0", "1")],
)
def test_thread_environment_splits_the_threads_over_parallel_ops(threads, parallel_ops, intra,
                                                                 inter):
    from samri_ml.models.inference import thread_environment

    env = thread_environment(threads, parallel_ops)
    assert env == {"TF_NUM_INTRAOP_THREADS": intra, "TF_NUM_INTEROP_THREADS": inter}


def test_plate_commands_run_two_tensorflow_ops_at_once(monkeypatch):
    """The plate CLIs' setting: two ops at once, each on one of two threads; variables a user
    set already win (TensorFlow reads them once, when it starts)."""
    from samri_ml.cli._common import set_tf_threads
    from samri_ml.models.inference import PLATE_PARALLEL_OPS

    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    set_tf_threads(2, PLATE_PARALLEL_OPS)
    assert (os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["TF_NUM_INTEROP_THREADS"]) == \
        ("1", "2")
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "1")
    set_tf_threads(4, PLATE_PARALLEL_OPS)
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "1"
