"""What a workflow's nodes declare (``n_procs``, ``mem_gb``), as SLURM job requests.

Nipype's MultiProc reserves each node's ``n_procs`` and ``mem_gb``, but its SLURM and SLURMGraph
plugins submit every node with the same ``sbatch_args``: a samri_ml workflow run there got the
cluster's default job (often one CPU and a few hundred MB) for antsRegistration on
``omp_nthreads`` threads and for the U-Net, which peaks near 0.9 GB. Nipype adds a node's own
``plugin_args['sbatch_args']`` after the run's; this module writes them.
"""

from __future__ import annotations

import math
import re

#: what Nipype reserves for a node unless told (``pe.Node(mem_gb=0.20)``)
NIPYPE_DEFAULT_MEM_GB = 0.20


def sbatch_resources(n_procs: int, mem_gb: float, *, cpus: bool = True,
                     mem: bool = True) -> str:
    """``sbatch`` options asking for ``n_procs`` CPUs and ``mem_gb`` GB (rounded up to whole
    MB), e.g. ``--cpus-per-task=4 --mem=2048M``; ``cpus``/``mem`` False leave either out."""
    parts = ([f"--cpus-per-task={max(1, int(n_procs))}"] if cpus else []) + \
        ([f"--mem={math.ceil(mem_gb * 1024)}M"] if mem else [])
    return " ".join(parts)


#: options of a run's ``sbatch_args`` that :func:`request_slurm_resources` leaves to it
#: (its group 1: the count, where one follows); ``--mem-bind`` asks for no memory
CPU_OPTION = re.compile(r"(?:^|\s)(?:--cpus-per-task\b|-c(?=\s*\d))[=\s]*(\d*)")
MEM_OPTION = re.compile(r"(^|\s)--mem(-per-cpu|-per-gpu)?(?=[=\s]|$)")


#: the node's ``plugin_args`` key recording what :func:`request_slurm_resources` added to its
#: ``sbatch_args``: a second call (other ``run_args``) replaces it (it was added twice)
ASKED_KEY = "samri_ml_requested"


def request_slurm_resources(workflow, run_args: str = "") -> dict[str, str]:
    """Give every node of ``workflow`` (sub-workflows too) that declares more than one CPU or
    more than Nipype's default memory its own ``sbatch_args`` (:func:`sbatch_resources`),
    for Nipype's SLURM and SLURMGraph plugins; returns them by node name.

    Nipype puts a node's ``sbatch_args`` after the run's (``plugin_args={'sbatch_args':
    ...}``), so these win over a ``--cpus-per-task`` or ``--mem`` given there; options the
    node's do not name (partition, time, account) stay the run's. Nodes that run in the
    submitting process (``run_without_submitting``) are left as they are. ``run_args``: the
    run's own ``sbatch_args``; a CPU count or a memory it asks for every job is left to it (a
    lab's ``--mem=16G`` for every job was not to be cut to a node's 2 GB), the other is added.
    """
    cpus, mem = not CPU_OPTION.search(run_args), not MEM_OPTION.search(run_args)
    asked = {}
    for node in workflow._get_all_nodes():
        n_procs, mem_gb = node.n_procs or 1, node.mem_gb
        if node.run_without_submitting or (n_procs <= 1 and mem_gb <= NIPYPE_DEFAULT_MEM_GB):
            continue
        wanted = sbatch_resources(n_procs, mem_gb, cpus=cpus, mem=mem)
        args = dict(node.plugin_args or {})
        own = str(args.get("sbatch_args", ""))
        before = args.pop(ASKED_KEY, None)
        if before and own.endswith(before):  # asked before: replaced, not added again
            own = own[: -len(before)]
        if wanted:
            # a leading space: SLURMGraph joins the run's sbatch_args and the node's without one
            own = f"{own} {wanted}"
            args[ASKED_KEY] = f" {wanted}"  # (Nipype's plugins read only the keys they know)
        if own:
            args["sbatch_args"] = own
        else:
            args.pop("sbatch_args", None)
        node.plugin_args = args
        if wanted:
            asked[node.fullname] = own.strip()
    return asked
