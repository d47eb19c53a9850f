"""A real one-node SLURM cluster on localhost, for testing Nipype's SLURM plugin with samri_ml.

Debian's ``slurm-wlm`` and ``munge`` packages are installed with apt-get where they are missing
(root only). Everything the daemons write (munge key and socket, ``slurm.conf``, state, spool,
logs, the job-completion log) lives in one folder, on free ports, so the cluster neither needs
nor touches ``/etc/slurm`` and a system munged. Client commands (``sbatch``, ``squeue``,
``sinfo``) find the cluster through the ``SLURM_CONF`` variable in :attr:`LocalSlurmCluster.env`.

>>> with LocalSlurmCluster(tmp) as cluster:           # doctest: +SKIP
...     subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)
...     cluster.wait_for_jobs()
...     cluster.completed_jobs()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")


def _which(name: str) -> str | None:
    # the daemons live in /usr/sbin, which is not always on a non-login PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def missing_programs() -> list[str]:
    """SLURM/munge programs that are not installed."""
    return [p for p in PROGRAMS if _which(p) is None]


def why_unavailable(install: bool = True) -> str | None:
    """Why a local cluster cannot be started here (``None``: it can).

    With ``install=True`` the Debian packages are installed first where they are missing and
    this process is root with apt-get.
    """
    if not missing_programs():
        return None if os.geteuid() == 0 else "the SLURM daemons must be started as root"
    if os.geteuid() != 0:
        return "slurm-wlm/munge are not installed and installing them needs root"
    if shutil.which("apt-get") is None:
        return "slurm-wlm/munge are not installed and apt-get is not available"
    if not install:
        return "slurm-wlm/munge are not installed"
    try:
        install_packages()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        detail = (getattr(err, "stderr", None) or b"").decode(errors="replace").strip()
        detail = detail.splitlines()[-1] if detail else str(err)
        return f"apt-get install {' '.join(PACKAGES)} failed ({detail})"
    missing = missing_programs()
    return f"still missing after apt-get: {', '.join(missing)}" if missing else None


def install_packages(timeout: float = 900) -> None:
    """``apt-get update && apt-get install -y slurm-wlm munge`` (non-interactive, root)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get may be running
    for cmd in (["apt-get", *wait, "update", "-q"],
                ["apt-get", *wait, "install", "-y", "-q", *PACKAGES]):
        subprocess.run(cmd, check=True, env=env, timeout=timeout, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurmCluster:
    """slurmctld + slurmd (+ a private munged) for one node on localhost.

    Parameters
    ----------
    root : path-like
        Folder for the configuration, state, spool, logs and munge key (created).
    cpus : int
        CPUs of the one node (jobs asking for more stay pending).
    """

    def __init__(self, root, cpus: int = 2):
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.jobcomp = self.root / "jobcomp.log"
        self.ctld_log = self.root / "slurmctld.log"
        self.slurmd_log = self.root / "slurmd.log"
        self._procs: list[subprocess.Popen] = []
        self._munged_pid: int | None = None
        #: environment for client commands and for anything that submits jobs
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- set-up -------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        mdir = self.munge_socket.parent
        mdir.mkdir(parents=True, exist_ok=True)
        os.chmod(mdir, 0o700)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        subprocess.run(
            [_which("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--log-file={mdir / 'munged.log'}", f"--pid-file={mdir / 'munged.pid'}",
             f"--seed-file={mdir / 'munged.seed'}"],
            check=True, timeout=30, capture_output=True)
        self._munged_pid = int((mdir / "munged.pid").read_text().split()[0])

    def write_conf(self) -> Path:
        """Write a minimal ``slurm.conf``: no cgroups, no accounting daemon, quick scheduling."""
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        mem_mb = max(256, (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2**20 // 2)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=samriml
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={self.ctld_log}
SlurmdLogFile={self.slurmd_log}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=2
KillWait=5
InactiveLimit=0
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=samriml Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        return self.conf

    def start(self, timeout: float = 60) -> LocalSlurmCluster:
        """Start munged, slurmctld and slurmd; wait until the node is idle."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self.write_conf()
        for prog, extra in (("slurmctld", ["-i"]), ("slurmd", ["-N", self.host])):
            log = open(self.root / f"{prog}.stderr", "wb")  # noqa: SIM115 - lives with the daemon
            self._procs.append(subprocess.Popen(
                [_which(prog), "-D", "-f", str(self.conf), *extra], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}): "
                                       f"{self.tail()}")
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the SLURM node did not become idle in {timeout:.0f} s (state "
                           f"{state!r}): {self.tail()}")

    # -- use ----------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run([_which(cmd[0]) or cmd[0], *cmd[1:]], env=self.env, check=check,
                              capture_output=True, text=True, timeout=60, cwd=self.root)

    def queue(self) -> list[str]:
        """Ids of the jobs still pending or running."""
        out = self.run("squeue", "-h", "-o", "%i", check=False).stdout
        return out.split()

    def wait_for_jobs(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout:.0f} s: {self.queue()}")
            time.sleep(0.5)

    def completed_jobs(self) -> list[dict]:
        """Finished jobs from the job-completion log (``JobId``, ``JobName``, ``JobState``...)."""
        if not self.jobcomp.exists():
            return []
        jobs = []
        for line in self.jobcomp.read_text().splitlines():
            fields = {}
            for item in line.split():
                key, _, value = item.partition("=")
                fields[key] = value
            if fields:
                jobs.append(fields)
        return jobs

    def tail(self, n: int = 15) -> str:
        """The last lines of the daemons' logs (for error messages)."""
        lines = []
        for path in (self.ctld_log, self.slurmd_log, self.root / "slurmctld.stderr",
                     self.root / "slurmd.stderr"):
            if path.exists():
                lines += [f"{path.name}: {x}" for x in path.read_text().splitlines()[-n:]]
        return "\n".join(lines)

    # -- tear-down ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel remaining jobs and stop the daemons this object started."""
        if any(p.poll() is None for p in self._procs):
            self.run("scancel", "--user", str(os.getuid()), check=False)
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs = []
        if self._munged_pid is not None:
            try:
                os.kill(self._munged_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._munged_pid = None

    def __enter__(self) -> LocalSlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False
