"""What a workflow's nodes declare (``n_procs``, ``mem_gb``), as SLURM job requests.

Nipype's MultiProc reserves each node's ``n_procs`` and ``mem_gb``, but its SLURM and SLURMGraph
plugins submit every node with the same ``sbatch_args``: a samri_ml workflow run there got the
cluster's default job (often one CPU and a few hundred MB) for antsRegistration on
``omp_nthreads`` threads and for the U-Net, which peaks near 0.9 GB. Nipype adds a node's own
``plugin_args['sbatch_args']`` after the run's; this module writes them.
"""

from __future__ import annotations

import math

#: what Nipype reserves for a node unless told (``pe.Node(mem_gb=0.20)``)
NIPYPE_DEFAULT_MEM_GB = 0.20


def sbatch_resources(n_procs: int, mem_gb: float) -> str:
    """``sbatch`` options asking for ``n_procs`` CPUs and ``mem_gb`` GB (rounded up to whole
    MB), e.g. ``--cpus-per-task=4 --mem=2048M``."""
    return f"--cpus-per-task={max(1, int(n_procs))} --mem={math.ceil(mem_gb * 1024)}M"


def request_slurm_resources(workflow) -> dict[str, str]:
    """Give every node of ``workflow`` (sub-workflows too) that declares more than one CPU or
    more than Nipype's default memory its own ``sbatch_args`` (:func:`sbatch_resources`),
    for Nipype's SLURM and SLURMGraph plugins; returns them by node name.

    Nipype puts a node's ``sbatch_args`` after the run's (``plugin_args={'sbatch_args':
    ...}``), so these win over a ``--cpus-per-task`` or ``--mem`` given there; options the
    node's do not name (partition, time, account) stay the run's. Nodes that run in the
    submitting process (``run_without_submitting``) are left as they are.
    """
    asked = {}
    for node in workflow._get_all_nodes():
        n_procs, mem_gb = node.n_procs or 1, node.mem_gb
        if node.run_without_submitting or (n_procs <= 1 and mem_gb <= NIPYPE_DEFAULT_MEM_GB):
            continue
        args = dict(node.plugin_args or {})
        # a leading space: SLURMGraph joins the run's sbatch_args and the node's without one
        args["sbatch_args"] = f"{args.get('sbatch_args', '')} {sbatch_resources(n_procs, mem_gb)}"
        node.plugin_args = args
        asked[node.fullname] = args["sbatch_args"].strip()
    return asked
