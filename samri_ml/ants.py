"""The real ANTs programs, taken from antspyx, as command-line executables.

antspyx compiles antsRegistration, antsApplyTransforms and N4BiasFieldCorrection into its
extension module; each takes an ordinary ``argv`` list. The console scripts declared in
``setup.cfg`` call them, so ``nipype.interfaces.ants`` runs them unchanged. A system ANTs on
``PATH`` wins: :func:`ensure_ants_on_path` only adds our scripts where none is found, and our
scripts hand over to it where it lies behind them on ``PATH`` (an activated virtual environment
puts its scripts first, and a system ANTs was then never used).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

PROGRAMS = ("antsRegistration", "antsApplyTransforms", "N4BiasFieldCorrection")


def _ants_lib():
    """Load antspyx's compiled module alone (0.05 s), not the whole ``ants`` package (3 s)."""
    spec = importlib.util.find_spec("ants")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("antspyx is not installed: pip install antspyx")
    pkg = Path(list(spec.submodule_search_locations)[0])
    so = sorted(pkg.glob("lib.*.so")) + sorted(pkg.glob("lib.*.pyd"))
    if not so:
        raise RuntimeError(f"antspyx's compiled library was not found in {pkg}")
    lspec = importlib.util.spec_from_file_location("ants.lib", so[0])
    module = importlib.util.module_from_spec(lspec)
    lspec.loader.exec_module(module)
    return module


def run_program(name: str, argv: list[str]) -> int:
    """Run ANTs program ``name`` (one of :data:`PROGRAMS`) with ``argv`` (without the program
    name); return its status."""
    if name not in PROGRAMS:  # it was antspyx's "module 'ants.lib' has no attribute ..."
        from samri_ml.errors import SamriMLError

        raise SamriMLError(f"{name}: not an ANTs program samri_ml runs; hint: one of "
                           f"{', '.join(PROGRAMS)}")
    lib = _ants_lib()
    if argv and argv[0] in ("--version", "-V") and name != "antsRegistration":
        # only antsRegistration and N4 know --version; answer for the others with the
        # version of the same build, which is what Nipype's version check wants
        name = "antsRegistration"
    sys.stdout.flush()
    status = getattr(lib, name)([str(a) for a in argv])
    sys.stdout.flush()
    return int(status or 0)


#: set for a system ANTs started by one of our scripts: a system "antsRegistration" that is
#: itself a wrapper calling antsRegistration from PATH then gets antspyx's, not ours again
_HANDED_OVER = "SAMRI_ML_ANTS_HANDED_OVER"


def _is_ours(program: Path) -> bool:
    """Whether ``program`` is one of samri_ml's console scripts (of any environment)."""
    try:
        with open(program, "rb") as f:
            return b"samri_ml.ants" in f.read(4096)
    except OSError:
        return False


def system_ants_dir() -> Path | None:
    """The folder of the first ``antsRegistration`` on ``PATH`` that is not a samri_ml script
    (a system ANTs, wherever it is on ``PATH``), or None."""
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        program = Path(entry or ".", "antsRegistration")
        if program.is_file() and os.access(program, os.X_OK) and not _is_ours(program):
            return program.parent
    return None


def _entry(name):
    def main() -> None:
        import signal

        system = None if os.environ.get(_HANDED_OVER) else system_ants_dir()
        if system is not None and os.access(system / name, os.X_OK):
            os.environ[_HANDED_OVER] = "1"
            os.execv(system / name, [str(system / name), *sys.argv[1:]])

        # Ctrl-C ends the program as it ends the compiled ANTs tools (Python would raise
        # KeyboardInterrupt, with a traceback, only once the C++ call returned); an ignored
        # SIGINT (a background job) stays ignored
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        sys.exit(run_program(name, sys.argv[1:]))

    main.__name__ = name
    return main


antsRegistration = _entry("antsRegistration")
antsApplyTransforms = _entry("antsApplyTransforms")
N4BiasFieldCorrection = _entry("N4BiasFieldCorrection")


def scripts_dir() -> Path:
    """Where samri_ml's console scripts are installed: beside this interpreter (a virtual
    environment), else where the package's install record puts them, else this interpreter's
    scripts folder.

    ``pip install --user`` puts them in ``~/.local/bin``, beside neither: run from there (pip
    warns that it is not on ``PATH``), every registration stopped on "no antsRegistration
    found"."""
    candidate = Path(sys.executable).parent
    if (candidate / "antsRegistration").exists():
        return candidate
    from importlib import metadata

    try:
        recorded = metadata.distribution("samri_ml").files or []
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        recorded = []
    for file in recorded:
        if file.name in ("antsRegistration", "antsRegistration.exe"):
            return Path(os.path.normpath(file.locate())).parent
    return Path(sysconfig.get_paths()["scripts"])


def program(name: str) -> str:
    """The command Nipype's interface for ANTs program ``name`` runs: the absolute path of
    this environment's antspyx-backed script where that is the ANTs :func:`ensure_ants_on_path`
    uses, else ``name`` (a system ANTs, found on ``PATH``).

    A cluster job does not always get the submitting shell's ``PATH`` (a batch ``template``
    without ``#PBS -V`` or ``#$ -V``, ``sbatch --export=NONE``): it runs this environment's
    Python by its path, and found no ``N4BiasFieldCorrection`` by its name. The path is
    quoted for the shell Nipype runs it through where it needs to be: an environment in a
    folder with a space (``~/Lab Projects/samri_ml/.venv``) failed every ANTs step with
    ``No command "/home/me/Lab" found``.
    """
    ours = scripts_dir() / name
    if system_ants_dir() is None and ours.exists():
        return shlex.quote(str(ours))
    return name


def ensure_ants_on_path() -> str:
    """Make ``antsRegistration`` & co. reachable for Nipype; return which ANTs is used.

    A system ANTs on ``PATH`` is kept, also behind our scripts (they hand over to it).
    Otherwise the antspyx-backed scripts of this environment are put first on ``PATH``
    (inherited by MultiProc workers, and by cluster jobs that get the submitting shell's
    environment; for those that do not, give Nipype's ANTs interfaces
    ``command=program(name)``, :func:`program`, as samri_ml's own workflows do).
    """
    system = system_ants_dir()
    if system is not None:
        return f"system ANTs ({system})"
    ours = scripts_dir()
    elsewhere = shutil.which("antsRegistration")  # another environment's samri_ml scripts
    if not (ours / "antsRegistration").exists() and elsewhere:
        return f"antspyx ANTs ({Path(elsewhere).parent})"
    if not (ours / "antsRegistration").exists():
        raise RuntimeError(
            "no antsRegistration found: install ANTs, or reinstall samri_ml so its "
            "antspyx-backed scripts are created"
        )
    path = os.environ.get("PATH", "")
    if str(ours) not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(ours), path]) if path else str(ours)
    return f"antspyx ANTs ({ours})"


def unquoted_spaced_paths(cmdline: str, paths) -> list[tuple[str, str]]:
    """The ``(name, path)`` pairs of ``paths`` that ``cmdline`` would hand to a shell split in
    two: a path with whitespace in it found outside the command line's single quotes, whole
    or by its file name without extensions (an output Nipype names after an input, as N4's
    ``--output <name>_corrected.nii.gz``).

    Nipype quotes a plain file argument (``--input-image '/a b/x.nii.gz'``) but not those it
    builds into brackets (antsRegistration's ``--metric MI[ fixed, moving, ... ]``,
    ``--masks``, ``--initial-moving-transform``), antsApplyTransforms' ``--transform``, nor the
    output names it makes.
    """
    import re

    outside = re.sub(r"'[^']*'", " ", cmdline)
    found = []
    for name, path in paths:
        stem = os.path.basename(path).split(".")[0]
        if any(re.search(r"\s", part) and part in outside for part in (path, stem)):
            found.append((name, path))
    return found
