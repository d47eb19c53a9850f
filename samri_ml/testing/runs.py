"""Running ``samri_ml-register`` the way a user does (the console script, in a subprocess) and
comparing what two runs wrote. Shared by the resume, determinism and SLURM tests."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

#: the settings every reliability run uses: one subject, the fast flavour, no QC nodes, two
#: nodes at a time with one thread each. One thread per ANTs call makes antsRegistration
#: bit-reproducible: with several, its Mattes mutual information sums per-thread partial
#: histograms in a varying order, and the optimiser amplifies the rounding differences.
RUN_ARGS = ("participant", "--fast", "--no-qc", "--participant-label", "01", "--nprocs", "2",
            "--omp-nthreads", "1")


def script(name: str = "samri_ml-register") -> str:
    """The console script of this environment."""
    return str(Path(sys.executable).parent / name)


def register_command(bids: Path, out: Path, work: Path, *extra: str) -> list[str]:
    """The command line of a reliability run on the example dataset ``bids`` (without
    ``--nprocs`` where ``extra`` names a cluster plugin, which does not use it)."""
    from samri_ml.cluster import SCHEDULER_PROGRAMS

    template = bids / "template"
    run_args = list(RUN_ARGS)
    plugin = extra[extra.index("--plugin") + 1] if "--plugin" in extra[:-1] else None
    if plugin in SCHEDULER_PROGRAMS:
        i = run_args.index("--nprocs")
        del run_args[i:i + 2]
    return [script(), str(bids), str(out), *run_args,
            "--template", str(template / "tpl-Phantom_T2w.nii.gz"),
            "--template-mask", str(template / "tpl-Phantom_desc-brain_mask.nii.gz"),
            "-w", str(work), *extra]


def run_register(bids: Path, out: Path, work: Path, *extra: str, env=None,
                 timeout: float = 1200, cwd=None) -> subprocess.CompletedProcess:
    """Run ``samri_ml-register`` (in the folder ``cwd``) to the end; raise with its stderr if
    it fails."""
    proc = subprocess.run(register_command(bids, out, work, *extra), env=env, timeout=timeout,
                          capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise AssertionError(f"samri_ml-register failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def end_run(proc: subprocess.Popen, log, path: Path) -> tuple[str, list[str]]:
    """The end of a test that signalled a run started in a session of its own: what is left
    of its process group killed, its log closed; the log's text and its lines without the
    progress lines (``[...]``)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    text = Path(path).read_text()
    return text, [ln for ln in text.splitlines() if not ln.startswith("[")]


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` (relative path -> checksum, mode, mtime)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(folder))] = (digest, st.st_mode, st.st_mtime_ns)
    return out


def derivative_files(out: Path) -> list[str]:
    """The derivatives a run wrote (images, transforms, JSON/TSV), relative to ``out``.

    Hidden files (the lock, temporary files of atomic writes) and ``dataset_description.json``
    (it records the command line) are left out.
    """
    out = Path(out)
    return sorted(
        str(p.relative_to(out)) for p in out.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
        and p.name != "dataset_description.json" and p.suffix != ".html"
        and "log" not in p.relative_to(out).parts[:2] and "figures" not in p.relative_to(out).parts
    )


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as fh:
        fh.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                      if isinstance(obj, h5py.Dataset) else None)
    return arrays


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The numbers in one derivative: image data, transform parameters, or JSON numbers."""
    path = Path(path)
    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nb

        img = nb.load(str(path))
        return {"data": np.asarray(img.dataobj), "affine": img.affine}
    if name.endswith(".h5"):
        return {k: np.asarray(v) for k, v in _h5_arrays(path).items()
                if np.asarray(v).dtype.kind in "fiu"}
    if name.endswith(".json"):
        flat = {}

        def walk(obj, key=""):
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(v, f"{key}/{k}")
            elif isinstance(obj, list):
                for i, v in enumerate(obj):
                    walk(v, f"{key}/{i}")
            elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
                flat[key] = np.asarray(obj, dtype=float)

        walk(json.loads(path.read_text()))
        return flat
    return {"bytes": np.frombuffer(path.read_bytes(), dtype=np.uint8)}


def compare_outputs(a: Path, b: Path) -> dict[str, dict]:
    """Compare the derivatives of two runs file by file.

    Returns ``{relative path: {"identical": bool, "max_abs": float, "max_rel": float,
    "mean_abs": float}}``, where for every array pair ``max_abs = max |x_a - x_b|``,
    ``max_rel = max_abs / max |x_a|`` and ``mean_abs = mean |x_a - x_b|`` (the largest over
    the arrays of the file); ``identical`` compares the arrays exactly (``np.array_equal``). A
    file present in one run only has infinite differences.
    """
    files_a, files_b = derivative_files(a), derivative_files(b)
    result = {}
    for rel in sorted(set(files_a) | set(files_b)):
        if rel not in files_a or rel not in files_b:
            result[rel] = {"identical": False, "max_abs": float("inf"), "max_rel": float("inf"),
                           "mean_abs": float("inf")}
            continue
        xa, xb = load_arrays(Path(a) / rel), load_arrays(Path(b) / rel)
        identical = xa.keys() == xb.keys()
        max_abs = max_rel = mean_abs = 0.0 if identical else float("inf")
        for key in sorted(set(xa) & set(xb)):
            va, vb = np.asarray(xa[key]), np.asarray(xb[key])
            if va.shape != vb.shape:
                identical, max_abs, max_rel = False, float("inf"), float("inf")
                mean_abs = float("inf")
                continue
            identical &= bool(np.array_equal(va, vb))
            if va.size and va.dtype.kind in "fiu":
                delta = np.abs(va.astype(np.float64) - vb.astype(np.float64))
                diff = float(np.max(delta))
                scale = float(np.max(np.abs(va.astype(np.float64)))) or 1.0
                max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / scale)
                mean_abs = max(mean_abs, float(np.mean(delta)))
        result[rel] = {"identical": identical, "max_abs": max_abs, "max_rel": max_rel,
                       "mean_abs": mean_abs}
    return result


_REFERENCE: dict[str, dict] = {}


def report(diff: dict, what: str) -> str:
    """:func:`compare_outputs` as printable lines."""
    lines = [f"{what}:"]
    for rel, d in diff.items():
        lines.append(f"  {rel}: identical={d['identical']} max_abs={d['max_abs']:.3g} "
                     f"max_rel={d['max_rel']:.3g} mean_abs={d['mean_abs']:.3g}")
    return "\n".join(lines)


def reference_run(bids: Path, root: Path) -> dict:
    """One uninterrupted MultiProc run per dataset and process, shared by the test modules.

    Returns ``{"out": OUTPUT_DIR, "seconds": wall time, "before": snapshot(bids),
    "after": snapshot(bids)}`` (the input folder just before and after the run). Computed on
    first use, under ``root``.
    """
    import time

    key = str(Path(bids).resolve())
    if key not in _REFERENCE:
        out, work = Path(root) / "ref_out", Path(root) / "ref_work"
        before = snapshot(bids)
        start = time.monotonic()
        run_register(bids, out, work)
        seconds = time.monotonic() - start
        _REFERENCE[key] = {"out": out, "work": work, "seconds": seconds, "before": before,
                           "after": snapshot(bids)}
    return _REFERENCE[key]
