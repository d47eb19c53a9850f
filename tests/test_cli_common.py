"""What every command does with its output files and lines (samri_ml.cli._common)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from samri_ml.cli._common import write_output_text


def test_an_output_through_a_link_keeps_the_link_and_a_pipe_is_written_into(tmp_path):
    """``--json link.json`` replaced the link by a file and left its target stale; a named
    pipe (or, as root, ``/dev/null``) was replaced by a regular file, its reader left
    waiting. Now: the target is written and the link kept; the pipe is written into."""
    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    write_output_text("new", link)
    assert link.is_symlink() and target.read_text() == "new"

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_output_text("through the pipe", fifo)
    reader.join(10)
    assert got == ["through the pipe"] and fifo.is_fifo()

    write_output_text("fresh", tmp_path / "new.json")  # a new name: atomically, no leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "new.json", "pipe.json",
                                                          "target.json"]


def test_a_name_the_console_cannot_show_does_not_stop_the_run(tmp_path):
    """On an ASCII (or cp1252) console a file name with ``ü`` stopped
    samri_ml-identify-plate with a UnicodeEncodeError before --json was written."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:200, 0:260]
    section = 40 + 160 * np.exp(-(((yy - 100) / 60) ** 2 + ((xx - 130) / 90) ** 2))
    image = tmp_path / "schnitt ü.png"
    Image.fromarray(section.astype(np.uint8)).save(image)
    out = tmp_path / "r.json"
    run = subprocess.run([sys.executable, "-m", "samri_ml.cli.identify_plate", str(image),
                          "--json", str(out), "--no-regions", "--top", "1"],
                         capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode("ascii").startswith(f"{tmp_path}/schnitt \\xfc.png: ")
    assert out.exists()


@pytest.mark.parametrize("command", ["example", "graph"])
def test_a_result_line_on_an_ascii_console_or_a_closed_stdout_ends_well(tmp_path, command):
    """samri_ml-example and samri_ml-graph printed their last line (where the files are) with
    a bare print: into a folder named with ``µ`` on an ASCII console the files were written,
    then 'error: UnicodeEncodeError', exit 1; with the reader of stdout gone (``| true``,
    ``| head -1`` that ended) 'error: BrokenPipeError', exit 1. Now the line is escaped, or
    dropped (:func:`samri_ml.cli._common.print_line`), and the exit status is 0."""
    module = f"samri_ml.cli.{command}"
    args = {"example": ["--subjects", "1", "--volumes", "2"], "graph": ["structural"]}[command]
    out = tmp_path / "données µm" / "out"
    run = subprocess.run([sys.executable, "-m", module, *args, str(out)], capture_output=True,
                         env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "donn\\xe9es \\xb5m" in run.stdout.decode("ascii"), run.stdout
    err = tmp_path / "err.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", module, *args, str(tmp_path / "b")],
                                stdout=subprocess.PIPE, stderr=stderr)
        proc.stdout.close()  # the reader is gone before the first line, as after head -1
        assert proc.wait(timeout=300) == 0, err.read_text()
    assert err.read_text() == ""


def test_commands_start_with_a_home_they_cannot_look_into(tmp_path):
    """A command run as another user whose HOME cannot be entered (``docker run -u 1000`` on an
    image with ``HOME=/root``, mode 700) stopped with ``PermissionError: ... '/root/.config/
    matplotlib'`` before reading its inputs: looking for matplotlib's folder raised. It goes on
    with a temporary folder, as with a read-only home. Run as an unprivileged user, which
    needs root and util-linux' setpriv."""
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    tmp_path.chmod(0o755)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "")}
    code = ("from samri_ml.paths import quiet_config_dirs\nquiet_config_dirs()\n"
            "import os\nprint(os.environ.get('MPLCONFIGDIR', 'unset'))\n")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd="/", timeout=120)
    if "Permission denied" in proc.stderr and "samri_ml" not in proc.stderr:
        pytest.skip(f"the interpreter cannot be run as another user here: {proc.stderr[-200:]}")
    assert proc.returncode == 0 and "PermissionError" not in proc.stderr, proc.stderr
    assert "samri_ml-config-" in proc.stdout, proc.stdout


_INTERRUPTED = """
import os, signal, sys
from samri_ml.cli._common import run_cli

def interrupted(argv):
    raise KeyboardInterrupt

given = sys.argv[1] == "given"
code = run_cli("prog", interrupted, ["x"] if given else None)
handler = signal.getsignal(signal.SIGINT)
print("ignored" if handler is signal.SIG_IGN else "restored", code, flush=True)
if not given:
    os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C after the 'interrupted' line
print("alive", flush=True)
"""


@pytest.mark.parametrize("argv", ["command-line", "given"])
def test_a_second_ctrl_c_after_the_interrupted_line_prints_no_traceback(argv):
    """``timeout -s INT`` signals the whole process group: a second SIGINT reached
    samri_ml-register while it finalized after its 'interrupted' line, and a KeyboardInterrupt
    traceback followed that line (2 of 16 tries). From the command line further Ctrl-Cs are
    ignored until the exit; a caller that gives argv gets its handler back."""
    run = subprocess.run([sys.executable, "-c", _INTERRUPTED, argv], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "prog: interrupted", run.stderr
    expected = "restored 130\nalive" if argv == "given" else "ignored 130\nalive"
    assert run.stdout.strip() == expected, run.stdout


def test_a_benchmark_without_the_shared_data_says_so_in_one_line(tmp_path):
    """Without the real-data folder, ``benchmarks/registration_dama.py`` said 'skipped' and
    exited 0, as a benchmark that ran; the plate benchmarks ended in a traceback
    ('…/plates/val_2: not a directory'), plates_twophoton.py in nibabel's FileNotFoundError,
    registration_sammba.py in an AssertionError; masking_anisotropy.py said the subjects are
    not in '../shared/data' (it had looked in ``$SAMRI_ML_SHARED_DATA``). Each now exits 1 with
    one line that says where the data were looked for (:func:`samri_ml.cli._common.run_script`)."""
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    missing = tmp_path / "no_data"
    env = {**os.environ, "SAMRI_ML_SHARED_DATA": str(missing)}
    scripts = sorted(p.name for p in bench.glob("*.py")
                     if p.stem.startswith(("plates_", "registration_", "masking_")) and
                     # plates_table reads training runs only; masking_speed's phantom rows
                     # run without the data
                     p.stem not in ("plates_table", "masking_speed"))
    assert len(scripts) >= 14, scripts
    for script in scripts:
        argv = ["m=model.keras"] if script == "plates_select.py" else []
        proc = subprocess.run([sys.executable, str(bench / script), *argv], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, (script, proc.stderr)
        assert "Traceback" not in proc.stderr, (script, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1] == (
            f"benchmarks/{script}: error: SAMRI_ML_SHARED_DATA={missing}: data folder not "
            "found; hint: set SAMRI_ML_SHARED_DATA"), script


@pytest.mark.parametrize("command, argv", [
    ("mask", ["{missing}", "{out}/m.nii.gz"]),
    ("mask", ["{missing}", "--out-dir", "{out}"]),
    ("qc", ["scan", "{missing}", "{missing}"]),
    ("qc", ["scan", "{missing}", "{missing}", "--mask", "{missing}"]),
    ("identify_plate", ["{missing}"]),
    # a model or plate index given is an input too (they exited 1)
    ("mask", ["{given}", "{out}/m.nii.gz", "--model", "{missing}"]),
    ("mask", ["{given}", "--out-dir", "{out}", "--model", "{missing}"]),
    ("evaluate_masker", ["--model", "{missing}"]),
    ("identify_plate", ["{given}", "--model", "{missing}"]),
    ("identify_plate", ["{given}", "--index", "{missing}"]),
    ("evaluate_plates", ["--images", "{folder}", "--model", "{missing}"]),
])
@pytest.mark.parametrize("case", ["missing", "pattern", "annexed"])
def test_a_missing_input_is_a_usage_error_in_every_command(command, argv, case, tmp_path, capsys):
    """An input path that names no file: exit 2 (docs/errors.rst: a usage error), before any
    work and with nothing written. ``samri_ml-mask`` and ``samri_ml-qc scan`` exited 1 after
    TensorFlow's start-up, ``identify-plate`` and ``qc compare`` 2 before anything ran."""
    import importlib

    missing = {"missing": tmp_path / "nope.nii.gz", "pattern": tmp_path / "*.nii.gz",
               "annexed": tmp_path / "annexed.nii.gz"}[case]
    if case == "annexed":  # a DataLad file not fetched: ls lists it
        missing.symlink_to("../.git/annex/objects/Xy/Zw/MD5E-s9--k.nii.gz/MD5E-s9--k.nii.gz")
    out = tmp_path / "out"
    given = tmp_path / "given.png"  # an input that is there
    given.write_bytes(b"")
    argv = [a.format(missing=missing, out=out, given=given, folder=tmp_path) for a in argv]
    rc = importlib.import_module(f"samri_ml.cli.{command}").main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2, last
    assert str(missing) in last and "Traceback" not in last
    assert {"missing": "no such file; hint: check the path",
            "pattern": "no file matches this pattern",
            "annexed": "its content is not here (a DataLad/git-annex file not fetched)"}[case] \
        in last
    assert not out.exists()
