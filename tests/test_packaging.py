"""What ``pip install samri_ml`` gives a lab: the wheel and the sdist built from this tree (real
builds, with the setuptools at hand), their data files and their requirements."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "samri_ml" / "data"
SDIST_FOLDERS = ("docs", "examples", "tests", "benchmarks")


def _copy_source(src: Path) -> Path:
    """A copy of the source tree (no caches) in the new folder ``src``: a checkout's, or an
    unpacked sdist's (which has no ``.gitignore``)."""
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.rst", "MANIFEST.in", "Makefile",
                 "LICENSE", ".gitignore"):
        if name != ".gitignore" or (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for name in ("samri_ml", *SDIST_FOLDERS):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist of a copy of the source (a build in place leaves ``build/`` and
    ``*.egg-info`` in the checkout)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = _copy_source(tmp / "src")
    dist = tmp / "dist"
    for command in ([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                     "--no-cache-dir", "-q", "-w", str(dist), str(src)],
                    [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                     "b.build_sdist(sys.argv[1])", str(dist)]):
        done = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = dist.glob("samri_ml-*.whl")
    (sdist,) = dist.glob("samri_ml-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_the_sdist_tests_run_in_the_unpacked_sdist(built, tmp_path):
    """The sdist carries the tests (``make test`` in it), but its packaging tests copied the
    tree's ``.gitignore``, which no sdist holds: every one of them stopped on
    FileNotFoundError there. The sdist's own copy of this module, run from the unpacked sdist."""
    import importlib.util

    with tarfile.open(built["sdist"]) as t:
        t.extractall(tmp_path / "unpacked", filter="data")
    (tree,) = (tmp_path / "unpacked").iterdir()
    spec = importlib.util.spec_from_file_location("sdist_test_packaging",
                                                  tree / "tests" / "test_packaging.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    copy = module._copy_source(tmp_path / "copy")
    assert (copy / "setup.cfg").read_bytes() == (tree / "setup.cfg").read_bytes()
    assert (copy / "samri_ml" / "ants.py").is_file() and (copy / "tests").is_dir()


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines()
            if ln.startswith("Requires-Dist:")]


def test_wheel_and_sdist_ship_every_data_file(built):
    """The models, plate indexes, router and registration settings the commands load at run
    time are in both archives, byte for byte."""
    shipped = {p.relative_to(ROOT).as_posix(): p.read_bytes() for p in DATA.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert {"samri_ml/data/models/unet_brainmask.keras", "samri_ml/data/models/plates_index.npz",
            "samri_ml/data/models/plates_router.json",
            "samri_ml/data/registration/fast.json"} <= set(shipped)
    with zipfile.ZipFile(built["wheel"]) as z:
        assert {n: z.read(n) for n in shipped if n in z.namelist()} == shipped
    with tarfile.open(built["sdist"]) as t:
        top = t.getnames()[0].split("/")[0]
        in_sdist = {n: t.extractfile(f"{top}/{n}").read() for n in shipped
                    if f"{top}/{n}" in t.getnames()}
    assert in_sdist == shipped


def test_the_package_says_it_is_typed(built):
    """No archive held ``samri_ml/py.typed`` (PEP 561): mypy stopped a lab's script at
    ``from samri_ml.masking.predict import ...`` ("module is installed, but missing library
    stubs or py.typed marker") and never used the package's annotations."""
    assert (ROOT / "samri_ml" / "py.typed").is_file()
    with zipfile.ZipFile(built["wheel"]) as z:
        assert "samri_ml/py.typed" in z.namelist()
    with tarfile.open(built["sdist"]) as t:
        top = t.getnames()[0].split("/")[0]
        assert f"{top}/samri_ml/py.typed" in t.getnames()


def test_sdist_carries_what_the_readme_points_to(built):
    """The sdist held the package only: the README it carries points to ``make demo``,
    docs/*.rst, examples/ and the tests, none of which were in it."""
    with tarfile.open(built["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    wanted = {"Makefile", "docs/masking.rst", "docs/plates.rst", "docs/errors.rst",
              "docs/cluster.rst", "examples/compare_workflows.sh", "tests/conftest.py",
              "tests/test_packaging.py", "benchmarks/example_accuracy.py"}
    assert wanted <= names, sorted(wanted - names)
    for folder in SDIST_FOLDERS:
        tracked = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
        assert tracked <= names, sorted(tracked - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_license_text_ships_with_the_package(built):
    """The metadata said Apache-2.0 but no archive (nor the repository) held the licence's
    text, which the licence asks every copy to carry."""
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    with zipfile.ZipFile(built["wheel"]) as z:
        licences = [n for n in z.namelist() if n.endswith("/LICENSE") and ".dist-info/" in n]
        assert licences and z.read(licences[0]).decode() == text, z.namelist()[-12:]
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        assert "Apache-2.0" in z.read(meta).decode()
    with tarfile.open(built["sdist"]) as t:
        top = t.getnames()[0].split("/")[0]
        assert t.extractfile(f"{top}/LICENSE").read().decode() == text


# the platforms a lab installs on; tensorflow-cpu has wheels for the first two only
PLATFORMS = {
    "linux x86_64": ({"sys_platform": "linux", "platform_machine": "x86_64"}, "tensorflow-cpu"),
    "windows": ({"sys_platform": "win32", "platform_machine": "AMD64"}, "tensorflow-cpu"),
    "mac arm64": ({"sys_platform": "darwin", "platform_machine": "arm64"}, "tensorflow"),
    "linux aarch64": ({"sys_platform": "linux", "platform_machine": "aarch64"}, "tensorflow"),
}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_one_tensorflow_that_has_a_wheel_for_the_platform(built, platform):
    """``pip install samri_ml`` on an Apple-silicon Mac failed: it required tensorflow-cpu,
    which has no macOS wheel (tensorflow has). Exactly one of the two is required anywhere."""
    from packaging.requirements import Requirement

    env, want = PLATFORMS[platform]
    env = {**env, "python_version": "3.11", "extra": ""}
    needed = [r for r in map(Requirement, _requirements(built["wheel"]))
              if r.marker is None or r.marker.evaluate(env)]
    tensorflow = [r for r in needed if r.name.startswith("tensorflow")]
    assert [r.name for r in tensorflow] == [want], needed
    # TensorFlow 2.16 with the Keras the models need (3.15) ended every masking and plate
    # command with an "Exception ignored in AtomicFunction.__del__" traceback (measured with
    # 2.16.2; 2.17.1 is clean)
    assert not tensorflow[0].specifier.contains("2.16.2")


def test_test_tools_are_not_runtime_requirements(built):
    """pytest was a requirement of every install (only samri_ml's own tests use it); it is in
    the ``test`` extra with the other test tools."""
    from packaging.requirements import Requirement

    runtime, test = [], []
    for r in map(Requirement, _requirements(built["wheel"])):
        (test if r.marker is not None and r.marker.evaluate({"extra": "test"})
         and not r.marker.evaluate({"extra": ""}) else runtime).append(r.name)
    assert not {"pytest", "pytest-timeout", "hypothesis", "ruff"} & set(runtime), runtime
    assert {"pytest", "pytest-timeout", "hypothesis"} <= set(test), test


def _older_python() -> str | None:
    """A real Python older than 3.11 on this machine, if there is one."""
    import glob
    import os

    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 5, -1)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for exe in filter(None, candidates):
        done = subprocess.run([exe, "-c", "import sys; print(sys.version_info[1])"],
                              capture_output=True, text=True)
        if done.returncode == 0 and int(done.stdout) < 11:
            return exe
    return None


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_refuses_a_missing_or_old_python_in_one_line(tmp_path):
    """``make demo`` with only an older Python stopped on an AssertionError traceback that
    did not say which Python it had found; without any, on ``-c: command not found``."""
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    cases = [("", "make: no python3.11 or python3 on PATH; hint: install Python 3.11, or give "
                  "it: make demo PYTHON=/path/to/python3.11")]
    old = _older_python()
    if old:
        minor = subprocess.run([old, "-c", "import sys; print(sys.version_info[1])"],
                               capture_output=True, text=True).stdout.strip()
        cases.append((old, f"make: PYTHON={old} is Python 3.{minor}; samri_ml needs 3.11 or "
                           "newer; hint: make demo PYTHON=/path/to/python3.11"))
    for python, message in cases:
        done = subprocess.run(["make", "demo", f"PYTHON={python}"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert done.stderr.splitlines()[0] == message, done.stderr
        assert "Traceback" not in done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "pyproject.toml",
                                                              "setup.cfg"]
    if not old:
        pytest.skip("the missing Python was checked; no Python older than 3.11 here")


def test_keras_floor_loads_the_shipped_models(built):
    """setup.cfg allowed Keras 3.3, and Keras 3.3-3.14 cannot load the shipped models (saved
    by 3.15: initialisers' ``input_axes``, Resizing's ``antialias``): an install that kept an
    older Keras failed on the first mask or plate. The floor is the newest saving version."""
    import json

    from packaging.requirements import Requirement
    from packaging.version import Version

    saved = max(Version(json.loads(zipfile.ZipFile(p).read("metadata.json"))["keras_version"])
                for p in DATA.rglob("*.keras"))
    (keras,) = [r for r in map(Requirement, _requirements(built["wheel"])) if r.name == "keras"]
    assert keras.specifier.contains(str(saved))
    assert not keras.specifier.contains(f"{saved.major}.{saved.minor - 1}.99"), keras


def _installed_clone(repo: Path, venv: Path) -> Path:
    """The Makefile and packaging files in ``repo``, with ``make install`` done into ``venv``
    (its stamp newer than them): ``make demo`` there runs this environment's commands."""
    import os
    import time

    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, repo / name)
    for name in ("setup.cfg", "pyproject.toml"):
        os.utime(repo / name, (time.time() - 60, time.time() - 60))
    venv.mkdir()
    (venv / ".samri_ml-installed").touch()
    return venv


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_and_clean_take_paths_with_spaces(tmp_path):
    """The Makefile did not quote DEMO_DATA and DEMO_OUT: ``make clean DEMO_OUT="~/Lab
    Data/demo"`` removed ``~/Lab`` and ``./Data/demo``, and ``make demo`` with such a path gave
    the commands broken arguments. Real commands of this environment, a dry-run registration."""

    scripts = Path(sys.executable).parent
    if not (scripts / "samri_ml-register").exists():
        pytest.skip(f"samri_ml's commands are not installed beside {sys.executable}")
    repo = tmp_path / "repo"
    repo.mkdir()
    venv = _installed_clone(repo, tmp_path / "venv")
    # (a template path with a space is refused by samri_ml-register: the ANTs steps cannot
    # take it; an output folder can have one)
    data, out = tmp_path / "my_data", tmp_path / "my out"
    paths = [f"VENV={venv}", f"BIN={scripts}", f"DEMO_DATA={data}", f"DEMO_OUT={out}"]
    done = subprocess.run(["make", "demo", *paths,
                           "DEMO_ARGS=--participant-label 01 --dry-run"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (data / "dataset_description.json").is_file()
    assert "nodes built, none run" in done.stderr, done.stderr
    assert "make: Warning" not in done.stderr, done.stderr
    for sentinel in (tmp_path / "my" / "keep", repo / "out" / "keep"):
        sentinel.parent.mkdir()
        sentinel.touch()
    done = subprocess.run(["make", "clean", *paths], cwd=repo, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert not data.exists() and not out.exists() and not venv.exists()
    assert (tmp_path / "my" / "keep").exists() and (repo / "out" / "keep").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_in_a_clone_in_a_folder_with_a_space(tmp_path):
    """``make demo`` in a clone in ``~/Lab Projects/`` (its example data and work dir in it,
    which the ANTs steps cannot take) stopped on samri_ml-register's hint to give ``-w``,
    which make does not take; it says so in one line with the variables that move them, and
    runs with them. Real commands of this environment, a dry-run registration."""

    scripts = Path(sys.executable).parent
    if not (scripts / "samri_ml-register").exists():
        pytest.skip(f"samri_ml's commands are not installed beside {sys.executable}")
    repo = tmp_path / "Lab Projects" / "samri_ml"
    repo.mkdir(parents=True)
    venv = _installed_clone(repo, tmp_path / "venv")
    paths = [f"VENV={venv}", f"BIN={scripts}", "DEMO_ARGS=--participant-label 01 --dry-run"]
    done = subprocess.run(["make", "demo", *paths], cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == (
        f"make: {repo}/example_data has a space in its path, which the ANTs steps cannot "
        "take; hint: make demo DEMO_DATA=/path/without/spaces/example_data "
        "DEMO_WORK=/path/without/spaces/demo_work"), done.stderr
    assert not (repo / "example_data").exists()
    data, work = tmp_path / "data", tmp_path / "work"
    done = subprocess.run(["make", "demo", *paths, f"DEMO_DATA={data}", f"DEMO_WORK={work}"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nodes built, none run" in done.stderr, done.stderr
    assert f"work dir {work}" in done.stderr, done.stderr


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None,
                    reason="make or git is not installed")
def test_make_dist_builds_the_committed_tree_only(tmp_path):
    """A wheel built in a checkout (``pip wheel .``) shipped what an earlier build had left in
    ``build/lib`` (a module removed since) and any untracked file under ``samri_ml/data`` (a
    scratch model). ``make dist`` builds the sdist from ``git archive HEAD`` and the wheel from
    that sdist: both hold the committed files only. Real git, make and setuptools."""
    import os
    import time

    repo = _copy_source(tmp_path / "repo")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c",
           "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"]):
        subprocess.run([*git, *command], cwd=repo, check=True, capture_output=True)
    committed = set(subprocess.run(["git", "ls-files", "samri_ml"], cwd=repo, check=True,
                                   capture_output=True, text=True).stdout.split())
    stale = {"build/lib/samri_ml/stale_module.py": "x = 1\n",
             "samri_ml/data/models/scratch.keras": "not a model"}
    for name, text in stale.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    for name in ("setup.cfg", "pyproject.toml"):  # `make install` done: its stamp is newer
        os.utime(repo / name, (time.time() - 60, time.time() - 60))
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".samri_ml-installed").touch()
    done = subprocess.run(["make", "dist", f"VENV={venv}", f"BIN={Path(sys.executable).parent}"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "uncommitted" not in done.stderr, done.stderr
    (wheel,) = (repo / "dist").glob("samri_ml-*.whl")
    (sdist,) = (repo / "dist").glob("samri_ml-*.tar.gz")
    assert sorted(p.name for p in (repo / "dist").iterdir()) == sorted([wheel.name, sdist.name])
    assert not (repo / ".dist_src").exists()
    with zipfile.ZipFile(wheel) as z:
        in_wheel = {n for n in z.namelist() if n.startswith("samri_ml/")}
    assert in_wheel == committed, (sorted(in_wheel - committed), sorted(committed - in_wheel))
    with tarfile.open(sdist) as t:
        in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/samri_ml/" in n}
    assert not {"samri_ml/stale_module.py", *stale} & in_sdist
    assert committed <= in_sdist
