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


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist of a copy of the source (a build in place leaves ``build/`` and
    ``*.egg-info`` in the checkout)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.rst"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "samri_ml", src / "samri_ml",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
    needed = [r.name for r in map(Requirement, _requirements(built["wheel"]))
              if r.marker is None or r.marker.evaluate(env)]
    assert [n for n in needed if n.startswith("tensorflow")] == [want], needed


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
