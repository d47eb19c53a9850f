"""The benchmark scripts against today's code: each builds its parser, and the command lines
the docs, the model cards and its own docstring give still parse (no removed or renamed option).

Fast (no benchmark is run): each script is run up to its ``parse_args`` only.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))
#: where benchmark command lines are written down
DOCS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst")),
        *sorted((ROOT / "samri_ml" / "data" / "models").rglob("*.md")),
        *sorted(BENCH.glob("*.py"))]


class _Parsed(Exception):
    """Raised at a script's ``parse_args``: the parser is built, nothing has run yet."""


def _parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``benchmarks/<script>`` builds, caught at its ``parse_args``."""
    caught = []

    def stop(self, *args, **kwargs):
        caught.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script)])
    with pytest.raises(_Parsed):
        runpy.run_path(str(BENCH / script), run_name="__main__")
    return caught[0]


def documented_options(script: str) -> dict[str, set[str]]:
    """``{where: options}``: the ``--options`` of each command line of ``benchmarks/<script>``
    written in the docs (to the end of its literal or line; a line ending in ``\\`` or
    followed by an indented ``[--option ...]`` line goes on)."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            for m in re.finditer(rf"benchmarks/{re.escape(script)}", line):
                text = line[m.end():]
                j = i
                while (text.rstrip().endswith("\\") or (
                        j + 1 < len(lines) and lines[j + 1].strip().startswith(("[--", "--")))):
                    j += 1
                    text = text.rstrip().rstrip("\\") + " " + lines[j]
                text = re.split(r"`|\)", text)[0]
                options = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text))
                if options:
                    found.setdefault(f"{doc.relative_to(ROOT)}:{i + 1}", set()).update(options)
    return found


def test_every_benchmark_is_checked():
    assert len(SCRIPTS) >= 18, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_builds_its_parser_and_its_documented_options_exist(script, monkeypatch):
    parser = _parser_of(script, monkeypatch)
    assert parser.format_help().startswith("usage:")
    known = set(parser._option_string_actions)
    unknown = {where: sorted(opts - known)
               for where, opts in documented_options(script).items() if opts - known}
    assert not unknown, f"benchmarks/{script}: options the docs give that it lacks: {unknown}"


def test_the_documented_options_are_found():
    """The extraction above reads what it should (else the test before passes on nothing)."""
    assert "--max-slices" in set().union(*documented_options("masking_speed.py").values())
    dama = set().union(*documented_options("registration_dama.py").values())
    assert {"--flavours", "--n-moving", "--skip-moving", "--zoom"} <= dama


def test_masking_speed_always_runs_this_cpus_default_precision():
    """``benchmarks/masking_speed.py --precisions float32`` on a CPU whose default is bfloat16
    loaded the bfloat16 network as the reference of its ``a=`` Dice but never ran it: a
    KeyError after the first volume's timing. The default precision is now always run."""
    spec = importlib.util.spec_from_file_location("masking_speed", BENCH / "masking_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.precisions_to_run(["float32"], "bfloat16") == ["float32", "bfloat16"]
    assert bench.precisions_to_run(["bfloat16", "float32"], "bfloat16") == ["bfloat16",
                                                                              "float32"]
    assert bench.precisions_to_run(["float32"], "float32") == ["float32"]


def test_plates_speed_refuses_no_baseline_sections():
    """``benchmarks/plates_speed.py --mi-sections 0`` timed the Siamese network (a minute),
    then ended in a ValueError traceback ('no sections to evaluate') where the baseline's
    metrics and the speed-up were due. It is refused at once, as a usage error."""
    proc = subprocess.run([sys.executable, str(BENCH / "plates_speed.py"), "--mi-sections", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "plates_speed.py: error: --mi-sections must be at least 1: the speed-up is measured on "
        "those sections")
