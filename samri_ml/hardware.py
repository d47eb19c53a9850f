"""What the machine lends this process."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPU cores this process may run on.

    On a cluster node a job is given some of the cores (SLURM's ``--cpus-per-task``, a cgroup
    cpuset): ``os.sched_getaffinity`` sees those, ``os.cpu_count`` the whole node. Where the
    affinity is unknown (macOS, Windows), all the cores.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
