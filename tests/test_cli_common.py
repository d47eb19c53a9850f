"""What every command does with its output files and lines (samri_ml.cli._common)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

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
