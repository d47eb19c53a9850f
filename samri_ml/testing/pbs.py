"""A stand-in for a PBS/Torque cluster on this machine, for testing Nipype's ``PBS`` plugin.

:class:`FakePBS` writes ``qsub``, ``qstat`` and ``qdel`` programs into a folder. ``qsub`` runs the job
script Nipype gives it at once, in the background, the way a compute node would: in a fresh
process with a *minimal* environment (``HOME``, ``LOGNAME``, ``PATH=/usr/bin:/bin`` and the
variables named in ``keep``), as a job gets it from a batch template without ``#PBS -V`` or
from ``sbatch --export=NONE``. ``qstat -f ID`` answers what Nipype's plugin reads:
``job_state = R`` while the job runs, ``job_state = C`` once it has ended; ``qdel ID`` ends
the job (SIGTERM to its process group).

>>> pbs = FakePBS(tmp)                                   # doctest: +SKIP
>>> subprocess.run(["samri_ml-register", ..., "--plugin", "PBS"], env=pbs.env)
>>> pbs.submitted()                                      # the qsub command lines
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

_QSUB = '''\
import os, subprocess, sys, time
{started}
state = {state!r}
args = sys.argv[1:]
name = args[args.index("-N") + 1] if "-N" in args else "job"
if {refuse!r} and {refuse!r} in name:  # as PBS refuses a job over the queue's limits
    sys.exit("qsub: Job exceeds queue resource limits MSG=cannot satisfy queue max mem "
             "requirement")
logdir = args[args.index("-o") + 1] if "-o" in args else os.path.dirname(args[-1])
with open(os.path.join(state, "submitted.log"), "a") as log:
    log.write(" ".join(args) + "\\n")
    n = sum(1 for _ in open(os.path.join(state, "submitted.log")))
env = {{"HOME": os.environ.get("HOME", "/"), "PATH": "/usr/bin:/bin",
        "LOGNAME": os.environ.get("LOGNAME", "pbs")}}
env.update({{k: os.environ[k] for k in {keep!r} if k in os.environ}})
with open(os.path.join(logdir, f"{{name}}.o{{n}}"), "w") as out:
    job = subprocess.Popen(["sh", args[-1]], stdout=out, stderr=subprocess.STDOUT, env=env,
                           cwd=env["HOME"], start_new_session=True)
with open(os.path.join(state, f"{{n}}.pid"), "w") as f:
    f.write(f"{{job.pid}} {{started(job.pid)}}")
time.sleep({delay!r})  # a busy server: the job is queued, its id not yet answered
print(f"{{n}}.fakepbs")
'''

_QSTAT = '''\
import os, sys
{started}
state = {state!r}
ids = [a.split(".")[0] for a in sys.argv[1:] if not a.startswith("-")]
if not ids:
    sys.exit(0)
try:
    pid, start = open(os.path.join(state, ids[0] + ".pid")).read().split()
except FileNotFoundError:
    sys.exit(f"qstat: Unknown Job Id {{ids[0]}}")
running = started(int(pid)) == start
print(f"Job Id: {{ids[0]}}.fakepbs\\n    job_state = {{'R' if running else 'C'}}")
'''

_QDEL = '''\
import os, signal, sys
{started}
state = {state!r}
for jid in sys.argv[1:]:
    try:
        pid, start = open(os.path.join(state, jid.split(".")[0] + ".pid")).read().split()
        if started(int(pid)) == start:  # not another process that got the pid since
            os.killpg(int(pid), signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError):
        pass
'''


def started(pid):
    """The start time of process ``pid`` (clock ticks after boot, as a string), None once it
    has ended (a zombie too). With the pid it names a job: on a busy machine another process
    gets the pid of a job that has ended (pids are reused), and was taken for the job."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return None if fields[0] == "Z" else fields[19]


_STARTED = inspect.getsource(started)


class FakePBS:
    """``qsub``/``qstat``/``qdel`` in ``root/bin`` that run each job locally with a minimal
    environment; :attr:`env` puts them first on ``PATH`` for the submitting command. ``qsub``
    answers a job's id ``delay`` seconds after starting it (a busy scheduler), and refuses the
    jobs whose name holds ``refuse`` (exit status 1, as a queue's limits do)."""

    def __init__(self, root, keep: tuple[str, ...] = ("PYTHONPATH",), delay: float = 0.0,
                 refuse: str = ""):
        self.root = Path(root)
        self.bin = self.root / "bin"
        self.state = self.root / "state"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        for name, code in (("qsub", _QSUB), ("qstat", _QSTAT), ("qdel", _QDEL)):
            path = self.bin / name
            path.write_text(f"#!{sys.executable}\n"
                            + code.format(state=str(self.state), keep=tuple(keep),
                                          started=_STARTED, delay=float(delay),
                                          refuse=str(refuse)))
            path.chmod(0o755)
        #: environment for the command that submits the jobs
        self.env = dict(os.environ, PATH=os.pathsep.join([str(self.bin),
                                                          os.environ.get("PATH", "")]))

    def submitted(self) -> list[str]:
        """The arguments of every ``qsub`` call so far, one string each."""
        log = self.state / "submitted.log"
        return log.read_text().splitlines() if log.is_file() else []

    def running(self) -> list[int]:
        """The process ids of the jobs still running."""
        alive = []
        for path in self.state.glob("*.pid"):
            fields = path.read_text().split()  # none while qsub writes it
            if len(fields) == 2 and started(int(fields[0])) == fields[1]:
                alive.append(int(fields[0]))
        return alive
