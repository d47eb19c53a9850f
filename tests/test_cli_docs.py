"""What the docs say the commands do, checked against the commands (a documentation audit's
findings): ``--dry-run`` makes the checks of a run, the plugins offered are the plugins
checked, Ctrl-C under MultiProc prints one line, the training commands refuse bad settings in
one line up front, the notes the docs promise are printed, and ``--help`` shows what a user
needs. Real commands on a one-subject example dataset, in-process where they can be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from samri_ml.testing.runs import snapshot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """``samri_ml-example --subjects 1 --volumes 2``: the fewest volumes it accepts."""
    from samri_ml.cli.example import main

    out = tmp_path_factory.mktemp("cli_docs") / "bids"
    assert main([str(out), "--subjects", "1", "--volumes", "2"]) == 0
    return out


def _register_argv(bids: Path, out: Path | None, *extra: str) -> list[str]:
    template = bids / "template"
    return [str(bids), *([str(out)] if out else []), "participant", "--fast",
            "--dummy-scans", "0", "--no-slice-timing",
            "--template", str(template / "tpl-Phantom_T2w.nii.gz"),
            "--template-mask", str(template / "tpl-Phantom_desc-brain_mask.nii.gz"), *extra]


def _fake_programs(folder: Path, *names: str) -> Path:
    """Programs that fail as an unconfigured SLURM does."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\necho 'squeue: fatal: Could not establish a "
                                   "configuration source' >&2\nexit 1\n")
        (folder / name).chmod(0o755)
    return folder


# --------------------------------------------------------------------- samri_ml-example


def test_register_runs_from_inside_the_dataset_beside_its_template_folder(
        tmp_path, capsys, monkeypatch, example):
    """``cd bids; samri_ml-register . OUT`` failed, --dry-run too, with 'AttributeError:
    'NoneType' object has no attribute 'type'': adding the inputnode's input named
    ``template`` sets Traits' ``trait_added`` event to that name, which the inputnode made
    absolute (``/.../bids/template``) since the dataset's ``template`` folder was there."""
    from samri_ml.cli.register import main as register
    from samri_ml.interfaces._paths import IdentityInterface

    monkeypatch.chdir(example)
    assert (example / "template").is_dir()
    argv = _register_argv(Path("."), tmp_path / "out", "--dry-run")
    assert register(argv) == 0, capsys.readouterr().err[-2000:]
    assert "nodes built, none run" in capsys.readouterr().err
    # an input named after a folder here is still made absolute where it is set
    node = IdentityInterface(fields=["template"])
    node.inputs.template = "template"
    assert node.inputs.template == str(example / "template")


def test_example_refuses_fewer_volumes_than_registration_takes(tmp_path, capsys, example):
    """``--volumes 1`` wrote a data set that samri_ml-register refused ("functional run is
    one volume"); the fewest it accepts (2) gives one that the register's checks pass."""
    from samri_ml.cli.example import main
    from samri_ml.cli.register import main as register

    assert main([str(tmp_path / "ex"), "--volumes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("samri_ml-example: error: --volumes 1: samri_ml-register refuses a "
                   "functional run of one volume (it needs a time series); give --volumes 2 "
                   "or more"), err
    assert not (tmp_path / "ex").exists()
    assert register([*_register_argv(example, tmp_path / "out"), "--dry-run"]) == 0
    assert "nodes built, none run" in capsys.readouterr().err


# ------------------------------------------------------------- samri_ml-register --dry-run


def test_dry_run_checks_the_schedulers_programs(tmp_path, capsys, monkeypatch, example):
    """README: ``--dry-run`` makes every check of a run. It skipped the scheduler's: a cluster
    command checked on the login node passed, and the run failed at once."""
    from samri_ml.cli.register import main

    fake = _fake_programs(tmp_path / "bin", "sbatch", "squeue")
    monkeypatch.setenv("PATH", str(fake))  # no qsub, no condor_*: only the fake SLURM
    before = snapshot(tmp_path)
    argv = [*_register_argv(example, tmp_path / "out"), "--dry-run"]
    for plugin, words in (("SLURM", "--plugin SLURM: squeue fails (squeue: fatal: Could not "
                           "establish a configuration source)"),
                          ("SGE", "--plugin SGE: qsub/qstat not found on PATH; hint:"),
                          ("CondorDAGMan", "--plugin CondorDAGMan: condor_submit_dag/condor_q "
                           "not found on PATH; hint:")):
        assert main([*argv, "--plugin", plugin]) == 1, plugin
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert snapshot(tmp_path) == before


def test_condor_dagman_is_offered_and_refused_up_front_without_condor(tmp_path, capsys,
                                                                      monkeypatch, example):
    """``--plugin CondorDAGMan`` (docs/cluster.rst) was accepted but missing from --help and
    the unknown-plugin message, and without Condor it made OUTPUT_DIR, its lock and work dir
    before failing with a raw OSError about condor_submit_dag."""
    from samri_ml.cli.register import get_parser, main

    help_text = " ".join(get_parser().format_help().split())
    assert "Condor, CondorDAGMan, OAR" in help_text
    argv = _register_argv(example, tmp_path / "out")
    assert main([*argv, "--plugin", "Condr"]) == 2
    assert "Condor, CondorDAGMan, OAR" in capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main([*argv, "--plugin", "CondorDAGMan"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "condor_submit_dag/condor_q not found on PATH" in err[0], err
    assert not (tmp_path / "out").exists()


def test_dry_run_checks_that_output_dir_can_be_created(tmp_path, capsys, example):
    """A dry run passed an OUTPUT_DIR the run could not create (``os.access`` says yes to
    root: /proc, an immutable folder); the parent is now probed, as an existing folder is,
    without a trace in it (its modification time included)."""
    from samri_ml.cli.register import main
    from samri_ml.testing import read_only_folder

    targets = [Path("/proc/samri_ml_cannot_be_here")] if Path("/proc").is_dir() else []
    with read_only_folder(tmp_path / "ro") as ro:
        for out in [*targets, ro / "deriv" / "samri_ml"]:
            assert main([*_register_argv(example, out), "--dry-run"]) == 1, out
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"cannot create OUTPUT_DIR {out}: " in err[0], err
            assert "is not a writable folder (" in err[0], err
    free = tmp_path / "free"
    free.mkdir()
    before = snapshot(tmp_path)
    assert main([*_register_argv(example, free / "a" / "b"), "--dry-run"]) == 0
    capsys.readouterr()
    assert snapshot(tmp_path) == before and os.listdir(free) == []


def test_a_repeated_label_is_said_in_a_note(tmp_path, capsys, example):
    """docs/errors.rst promises a note for a repeated participant or session label; it was
    taken once without a word."""
    from samri_ml.cli.register import main

    argv = [*_register_argv(example, tmp_path / "out"), "--dry-run",
            "--participant-label", "01", "sub-01", "--session-label", "1", "ses-1", "1"]
    assert main(argv) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "note:" in ln]
    # each once (the participants' was said twice)
    assert notes.count("samri_ml-register: note: --participant-label: 01 given more than once; "
                       "taken once") == 1, notes
    assert notes.count("samri_ml-register: note: --session-label: 1 given more than once; "
                       "taken once") == 1, notes
    assert main([*_register_argv(example, tmp_path / "out"), "--dry-run",
                 "--participant-label", "01"]) == 0
    assert "more than once" not in capsys.readouterr().err


def test_the_5d_message_is_the_one_documented(tmp_path):
    """docs/errors.rst quoted "expected 3D or 4D" for a 5D image; a structural scan or
    template (3D only) says "expected 3D"."""
    from samri_ml.errors import SamriMLError
    from samri_ml.io import load_nifti

    path = tmp_path / "five.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((12, 12, 6, 5, 2), np.float32), np.eye(4)), path)
    doc = " ".join((ROOT / "docs" / "errors.rst").read_text().split())
    with pytest.raises(SamriMLError) as err:  # samri_ml-register's structural scans
        load_nifti(path, allow_4d=False)
    message = str(err.value).removeprefix(f"{path}")
    assert message == ": has 5 dimensions (12, 12, 6, 5, 2); expected 3D"
    assert f"``…{message}`` (a template or structural scan; ``expected 3D or 4D`` for a " \
        "functional run)" in doc
    with pytest.raises(SamriMLError, match=r"; expected 3D or 4D$"):  # a functional run
        load_nifti(path, allow_4d=True)


# ------------------------------------------------------------------- Ctrl-C with MultiProc

POOL_SCRIPT = """
import concurrent.futures as cf, hashlib, multiprocessing as mp, sys, time
from samri_ml.cli._common import quiet_interrupts, run_cli, setup_logging

def _main(argv):
    setup_logging(0)
    with quiet_interrupts():
        pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork"))
        future = pool.submit(time.sleep, 60)
        future.add_done_callback(lambda f: f.result())  # as Nipype's MultiProc does
        time.sleep(1)
        print("ready", flush=True)
        # the main thread in a long C call (the GIL released): the Python-level SIGINT
        # handler waits for it, while the pool's thread already logs the broken pool
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 6_000_000)
        time.sleep(30)
    return 0

sys.exit(run_cli("prog", _main))
"""


def _sigint_default() -> None:
    """In the child before it starts: SIGINT back to its default (Python then raises
    KeyboardInterrupt on it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_under_a_process_pool_is_one_line(tmp_path):
    """Ctrl-C reaches the workers too; the broken pool's thread logged a 15-line
    ``BrokenProcessPool`` traceback ("exception calling callback") before the parent's handler
    had run and muted it (1 run in 11 of samri_ml-register --nprocs 2). Now one line, 130."""
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(POOL_SCRIPT))
    # SIGINT as in a terminal, even where pytest runs as a background job (which ignores it)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=ROOT, preexec_fn=_sigint_default)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: the whole process group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err == "prog: interrupted\n", err


# ------------------------------------------------------------------ samri_ml-train-masker


@pytest.mark.parametrize("args, words", [
    (["--width", "0"], "argument --width: 0: must be at least 1"),
    (["--learning-rate", "0"], "argument --learning-rate: 0: must be above 0"),
    (["--crop-fraction", "1.5"], "argument --crop-fraction: 1.5: must be at least 0 and at most 1"),
    (["--synth-per-dama", "-1"], "argument --synth-per-dama: -1: must be at least 0"),
    (["--holdout", "dama", "sammba", "emory"],
     "--holdout dama: the validation subjects are drawn from dama (sammba's and emory's scans "
     "are one brain each); hint: hold out sammba, emory or templates"),
    (["--holdout", "dama"], "--holdout dama: the validation subjects are drawn from dama"),
])  # fmt: skip
def test_train_masker_refuses_up_front(tmp_path, capsys, args, words):
    """``--width 0`` and ``--learning-rate 0`` built the data set for minutes first;
    ``--holdout dama sammba emory`` ended in scikit-learn's ValueError after it (no subject
    left for the validation split, which is drawn from dama). Usage errors now."""
    from samri_ml.cli.train_masker import main

    assert main([str(tmp_path / "m" / "out.keras"), "--data-dir", str(tmp_path), *args]) == 2
    assert words in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "m").exists()


def test_train_masker_error_is_one_line_without_tensorflow_logs(tmp_path):
    """TensorFlow's C++ start-up lines (``WARNING: All log messages before
    absl::InitializeLog() ...``, ``oneDNN custom operations are on ...``) came above the
    one-line error of a foreign --dataset-cache. The installed command, its own stderr."""
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "SAMRI_ML_TF"))}
    script = Path(sys.executable).parent / "samri_ml-train-masker"
    proc = subprocess.run([str(script), str(tmp_path / "q.keras"), "--data-dir", str(tmp_path),
                           "--dataset-cache", str(tmp_path / "other.npz")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("samri_ml-train-masker: error: ") and \
        "not a data set cache of samri_ml-train-masker" in proc.stderr, proc.stderr


# -------------------------------------------------------------------------------- --help


def _option_help(parser, option: str) -> str:
    """The help of ``option`` in ``parser``'s --help, on one line."""
    lines = parser.format_help().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith(option + " ")
                 or ln.strip() == option or ln.lstrip().startswith(option + ","))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("   ") or line.lstrip().startswith("-"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize("module, factory, option, words", [
    ("mask", "get_parser", "--max-slices", ["at least 32", "(default: every slice)"]),
    ("train_plates", "build_parser", "--iterations", ["training steps", "(default: 10000)"]),
    ("train_plates", "build_parser", "--eval-every", ["val_1", "(default: 250)"]),
    ("train_plates", "build_parser", "--seed", ["random seed", "(default: 0)"]),
    ("train_masker", "get_parser", "--steps-per-epoch", ["batches per epoch", "(default: 150)"]),
    ("train_masker", "get_parser", "--batch-size", ["slices per batch", "(default: 32)"]),
    ("train_masker", "get_parser", "--learning-rate", ["Adam", "(default: 0.001)"]),
    ("train_masker", "get_parser", "--holdout", ["not dama"]),
    ("evaluate_plates", "build_parser", "--method", ["registered affinely to every plate",
                                                     "(default: siamese)"]),
    ("example", "get_parser", "--volumes", ["at least 2", "(default: 20)"]),
    ("register", "get_parser", "--dry-run", ["the scheduler's programs"]),
    # since 0.2.0 the QC leaves them out of the raw run too; --help did not say so
    ("register", "get_parser", "--dummy-scans", ["leave them out of the raw run too",
                                                 "raw_dummy_scans", "(default: 10)"]),
    # these three had no help at all (--graph-format's default was not even shown)
    ("register", "get_parser", "--graph-format", ["--write-graph", "(default: png)"]),
    ("register", "get_parser", "--stop-on-first-crash", ["first failed step"]),
    ("register", "get_parser", "-v", ["tracebacks"]),
    # it said DIR/<scan>.png; the files are named by figure_name, source first
    ("evaluate_masker", "get_parser", "--figures", ["DIR/<source>_<scan>.png",
                                                    "dama_tg4510_tp3_1_20130520_WT.png"]),
])  # fmt: skip
def test_help_says_the_range_and_default(monkeypatch, module, factory, option, words):
    import importlib

    monkeypatch.setenv("COLUMNS", "100")
    parser = getattr(importlib.import_module(f"samri_ml.cli.{module}"), factory)()
    text = _option_help(parser, option)
    for word in words:
        assert word in text, text


def test_graph_help_has_no_rst_markup():
    from samri_ml.cli.graph import get_parser

    text = get_parser().format_help()
    assert "``" not in text
    assert "Draw any samri_ml workflow's graph (without running it)." in " ".join(text.split())


def _pointers_a_pip_user_cannot_follow(source: str) -> list[str]:
    """The strings of ``source`` (Python; docstrings aside) that name a file of the source
    tree alone: ``docs/...`` without saying it is in the source distribution, or
    ``../shared/data`` without saying it is beside a source checkout."""
    import ast

    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings):
            text = node.value
        else:
            continue
        if (("docs/" in text and "source distribution" not in text)
                or ("../shared" in text and "beside a source checkout" not in text)):
            bad.append(text)
    return bad


def test_messages_and_help_point_to_what_a_pip_install_has():
    """A lab installs the wheel: it has no docs/ and no ../shared/data. A refused cluster
    job's hint said '(docs/cluster.rst)', and --data-dir's help (samri_ml-train-masker,
    samri_ml-evaluate-masker), samri_ml-train-plates' --data and their descriptions named
    ../shared/data alone. Every such pointer now says where it is (the source distribution,
    a source checkout) or names the environment variable and option to use."""
    bad = {str(path.relative_to(ROOT)): found for path in sorted((ROOT / "samri_ml").rglob("*.py"))
           if (found := _pointers_a_pip_user_cannot_follow(path.read_text()))}
    assert not bad, bad
    from samri_ml.cli.evaluate_masker import get_parser

    text = " ".join(get_parser().format_help().split())
    assert "(default: $SAMRI_ML_SHARED_DATA, else ../shared/data beside a source checkout)" \
        in text, text
    assert _pointers_a_pip_user_cannot_follow('x = "(docs/cluster.rst)"')  # the old hint


@pytest.mark.parametrize("doc", ["README.rst", *sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.rst"))])
def test_the_docs_are_valid_restructuredtext(doc):
    """README.rst is the package's long description (setup.cfg): PyPI shows it as plain text
    where it is not valid reStructuredText. A table row wider than its column and a Sphinx
    role in the README were errors; every doc is checked as docutils reads it (Sphinx roles,
    which the docs do not use, and missing Pygments aside)."""
    import io

    import docutils.core

    out = io.StringIO()
    docutils.core.publish_doctree((ROOT / doc).read_text(), settings_overrides={
        "report_level": 2, "warning_stream": out, "halt_level": 5})
    problems = [line for line in out.getvalue().splitlines()
                if "(WARNING/2)" in line or "(ERROR/3)" in line or "(SEVERE/4)" in line]
    problems = [x for x in problems if "Pygments" not in x]
    assert not problems, "\n".join(problems)


def test_the_plates_reproduce_commands_train_and_ship_the_shipped_ensemble():
    """docs/plates.rst's "Reproduce" gave the commands of the ensemble shipped before
    (p16 + p224) under "The shipped model"; the shipped index records its members
    (p16, p16s2, p224c). Each documented command must parse, and train and export those."""
    import json
    import re
    import shlex

    from samri_ml.cli.train_plates import build_parser

    doc = (ROOT / "docs" / "plates.rst").read_text().split("\nReproduce\n", 1)[1]
    block = doc.split(".. code-block:: console", 2)[1]  # the shipped model's commands
    block = re.split(r"^\S", block.lstrip("\n"), maxsplit=1, flags=re.M)[0]  # not the prose
    commands = [shlex.split(c.replace("\\\n", " ")) for c in re.split(r"^\s*\$ ", block,
                                                                         flags=re.M)[1:]]
    parser = build_parser()
    trained, ensemble = set(), None
    for argv in commands:
        if argv[0] != "samri_ml-train-plates":
            continue
        args = parser.parse_args(argv[1:])
        if args.ensemble:
            ensemble = [Path(m).parent.name for m in args.ensemble]
            assert args.export == "samri_ml/data/models", argv
        else:
            trained.add(Path(args.out).name)
    metrics = json.loads((ROOT / "samri_ml" / "data" / "models" /
                          "plates_index_metrics.json").read_text())
    shipped = [Path(m).parent.name for m in metrics["config"]["members"]]
    assert ensemble == shipped, (ensemble, shipped)
    assert trained == set(shipped), (trained, shipped)


def _documented_commands(text: str, program: str) -> list[list[str]]:
    """The complete ``program`` commands of a doc (inline ``code`` or indented blocks; lines
    joined at a trailing backslash); synopses with ``[...]``, ``|`` or one-letter
    placeholders (``P``, ``F``) and mentions of options alone (no value: ``--figures``) are
    left out. ``DATA`` stays a token for the caller."""
    import re
    import shlex

    flat = re.sub(r"\\\n\s*", " ", text)
    found = re.findall(rf"``?({program} [^`]*)``?", flat)
    found += re.findall(rf"^\s*(?:\$ )?({program} [^`\n]*)$", flat, flags=re.M)
    out = []
    for command in dict.fromkeys(" ".join(c.split()) for c in found):
        argv = shlex.split(command, comments=True)
        if any(t.startswith("[") or "|" in t or (len(t) == 1 and t.isupper()) for t in argv):
            continue
        if all(t.startswith("-") for t in argv[1:]):
            continue
        out.append(argv)
    return out


def test_the_masker_card_commands_parse_and_train_the_shipped_model():
    """The masker's model card and docs/masking.rst give the training commands a lab runs to
    reproduce or extend the shipped model; none was checked against today's flags (only the
    plates' were). Each must parse, and those that make the shipped model (OUT
    unet_brainmask.keras, an ensemble of J and T8-soup, T8-soup an average of T8-2 and T8-3)
    must give the members and settings its _training.json records."""
    import json

    from samri_ml.cli.evaluate_masker import get_parser as evaluate_parser
    from samri_ml.cli.train_masker import get_parser as train_parser

    card = (ROOT / "samri_ml" / "data" / "models" / "unet_brainmask.md").read_text()
    data = card.split("takes the data options `", 1)[1].split("`", 1)[0].split()
    assert "--dataset-cache" in data, data  # the card's DATA, as the card defines it
    parsers = {"samri_ml-train-masker": train_parser(),
               "samri_ml-evaluate-masker": evaluate_parser()}
    trained = {}  # OUT name -> the card's command for it
    n = 0
    for doc in (card, (ROOT / "docs" / "masking.rst").read_text()):
        for program, parser in parsers.items():
            for argv in _documented_commands(doc, program):
                if "DATA" in argv:
                    at = argv.index("DATA")
                    argv[at:at + 1] = data
                args = parser.parse_args(argv[1:])  # exit 2 (SystemExit) on a stale flag
                n += 1
                if program.endswith("train-masker") and doc is card:
                    trained[args.out.name] = args
    assert n >= 10 and "unet_brainmask.keras" in trained, n
    record = json.loads((ROOT / "samri_ml" / "data" / "models" /
                         "unet_brainmask_training.json").read_text())
    checked = []

    def check(name, record):
        args = trained[name]
        for kind in ("ensemble_of", "average_of"):
            if kind in record:
                assert [p.name for p in getattr(args, kind)] == [Path(m).name for m in
                                                                 record[kind]], name
                for key in ("holdout", "seed", "views", "stripped_rim"):
                    got = getattr(args, key)
                    assert (list(got) if isinstance(got, tuple) else got) == \
                        record["config"][key], (name, key)
                for member in record["members"]:
                    if Path(member["model"]).name in trained:
                        check(Path(member["model"]).name, member)
                checked.append(name)
                return
        config = record["config"]
        for key in ("width", "holdout", "synth_per_dama", "synth_per_template", "snout_neck",
                    "views", "crops_per_scan", "crop_fraction", "stripped_rim", "seed",
                    "learning_rate", "epochs_plain", "epochs_augmented", "steps_per_epoch",
                    "max_minutes", "threads", "train_seed"):
            got = getattr(args, key)
            assert (list(got) if isinstance(got, tuple | list) else got) == config[key], \
                (name, key)
        assert args.init.name == Path(config["init_model"]).name, name
        checked.append(name)

    check("unet_brainmask.keras", record)
    # the ensemble, its two members (J trained; T8-soup an average) and T8-3, trained
    assert {"unet_brainmask.keras", "J.keras", "T8-soup.keras", "T8-3.keras"} <= set(checked), \
        checked


def test_the_plates_card_and_docs_commands_parse():
    """Every complete samri_ml-train-plates / samri_ml-evaluate-plates command of the plate
    model card and docs/plates.rst parses with today's flags (the "Reproduce" block alone
    was checked)."""
    from samri_ml.cli.evaluate_plates import build_parser as evaluate_parser
    from samri_ml.cli.train_plates import build_parser as train_parser

    parsers = {"samri_ml-train-plates": train_parser(),
               "samri_ml-evaluate-plates": evaluate_parser()}
    n = 0
    for doc in (ROOT / "samri_ml" / "data" / "models" / "plates_embedding.md",
                ROOT / "docs" / "plates.rst"):
        text = doc.read_text()
        for program, parser in parsers.items():
            for argv in _documented_commands(text, program):
                parser.parse_args(argv[1:])
                n += 1
    assert n >= 10, n


def _command_parsers() -> dict:
    """``(module, argparse parser)`` of every ``samri_ml-<program>`` console script of
    setup.cfg."""
    import configparser
    import importlib

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = dict(line.replace(" ", "").split("=", 1) for line in
                   config["options.entry_points"]["console_scripts"].strip().splitlines())
    parsers = {}
    for name, target in scripts.items():
        if name.startswith("samri_ml-"):
            module = importlib.import_module(target.split(":")[0])
            factory = getattr(module, "get_parser", None) or module.build_parser
            parsers[name] = module, factory()
    return parsers


def _option_strings(parser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands' parsers."""
    import argparse

    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def test_every_option_the_docs_give_a_command_is_one_it_takes():
    """The commands of the README, docs/*.rst, the model cards and examples/ named options
    that a renamed or removed flag leaves behind, and only the training and evaluation
    commands were parsed (above). Every ``--option`` (or ``-x``) after ``samri_ml-<program>``
    in one command (lines joined at a trailing backslash; quoted arguments such as
    ``--plugin-args '{"sbatch_args": "--mem=8G"}'`` left out) must be one the program's parser
    takes, and every ``samri_ml-<program>`` must be a console script of setup.cfg."""
    import re

    parsers = {name: _option_strings(parser) for name, (_, parser) in _command_parsers().items()}
    docs = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst")),
            *sorted((ROOT / "samri_ml" / "data" / "models").rglob("*.md")),
            *sorted((ROOT / "examples").iterdir())]
    wrong, n = [], 0
    for doc in docs:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        text = re.sub(r"'[^'\n]*(?:\n[^'\n]*){0,3}'", "''", text)  # quoted arguments
        for m in re.finditer(r"(?<![\w./-])(samri_ml-[a-z-]+)((?:[ \t]+[^\s`|;&)]+)*)", text):
            program, rest = m.group(1), m.group(2)
            if program not in parsers:
                wrong.append(f"{doc.name}: {program} is no command")
                continue
            for option in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", rest):
                n += 1
                if option not in parsers[program]:
                    wrong.append(f"{doc.name}: {program} has no {option}")
    assert not wrong, "\n".join(dict.fromkeys(wrong))
    assert n >= 200, n  # the commands were found


def test_every_file_and_python_name_the_docs_point_to_exists():
    """The README, docs/*.rst and the model cards send a lab to files of the project
    (``benchmarks/masking_speed.py``, ``samri_ml/data/registration/default.json``,
    ``tests/test_resume.py``) and to Python names (``samri_ml.graph.write_workflow_graph``,
    ``samri_ml.masking.train.remap_intensity``); a file renamed or a function moved left the
    docs pointing to nothing. Each path must exist and each dotted name must import."""
    import importlib
    import re

    docs = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst")),
            *sorted((ROOT / "samri_ml" / "data" / "models").rglob("*.md"))]
    missing, paths, names = [], 0, 0
    for doc in docs:
        text = doc.read_text()
        for path in set(re.findall(r"(?<![\w/.])((?:samri_ml|tests|benchmarks|examples|docs)"
                                   r"/[\w./-]*\w)", text)):
            if not any(c in path for c in "*<{"):
                paths += 1
                if not (ROOT / path).exists():
                    missing.append(f"{doc.name}: {path}")
        for name in set(re.findall(r"(?<![\w/.])(samri_ml(?:\.\w+)+)", text)):
            names += 1
            parts = name.split(".")
            for i in range(len(parts), 0, -1):  # the longest importable module
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ImportError:
                    continue
            for attr in parts[i:]:
                if attr in ("py", "json", "keras", "md", "npz", "png"):  # a file's extension
                    break
                if not hasattr(obj, attr):
                    missing.append(f"{doc.name}: {name}")
                    break
                obj = getattr(obj, attr)
    assert not missing, "\n".join(sorted(missing))
    assert paths >= 50 and names >= 20, (paths, names)


def test_every_hint_docs_errors_rst_quotes_is_one_the_code_gives():
    """docs/errors.rst quotes each error's ``hint:``; a hint reworded in the code left the
    table quoting one no command prints (a lab comparing the line it got with the docs found
    nothing). The words each quoted hint starts with, up to its first value (a number, a path,
    an option, a quoted name), must be in a string of samri_ml's code."""
    import ast
    import re

    strings = []
    for path in (ROOT / "samri_ml").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.append(node.value)
            elif isinstance(node, ast.JoinedStr):  # the f-string's values cut it in pieces
                strings.append("\0".join(v.value if isinstance(v, ast.Constant) else ""
                                         for v in node.values))
    code = "\0".join(strings)
    doc = " ".join((ROOT / "docs" / "errors.rst").read_text().split())
    value = re.compile(r"^-|\d|/|\.\w|['\"()\[\]<]|[,;]$")
    missing, n = [], 0
    for quoted in re.findall(r"``(.+?)``", doc):
        for hint in re.findall(r"hint: ([^…]+)", quoted):
            words = []
            for word in hint.split():
                if value.search(word):
                    break
                words.append(word)
            if len(words) >= 3:
                n += 1
                if " ".join(words) not in code:
                    missing.append(" ".join(words))
    assert not missing, "\n".join(missing)
    assert n >= 40, n


def _readme_section(title: str) -> str:
    """The text of the README's section ``title``, up to the next section's heading."""
    import re

    text = (ROOT / "README.rst").read_text()
    start = text.index(f"\n{title}\n{'-' * len(title)}\n") + 2 * len(title) + 3
    nxt = re.search(r"\n[^\n]+\n-{3,}\n", text[start:])
    return text[start:start + nxt.start()] if nxt else text[start:]


def test_every_number_of_the_readmes_results_at_a_glance_is_one_the_docs_measured():
    """The README's "Results at a glance" sums up docs/results.rst, docs/masking.rst,
    docs/plates.rst, docs/qc.rst and the model cards; cut from a 968-line README, it gave
    ``samri_ml-mask`` end to end as 6-13 s (the docs: 6.1-9.2 s) and the plates 1260-1596x the
    baseline at 224 px (the docs: 1153-1748x; no 1596 anywhere). Each number of its
    "measured" column with a decimal point or three digits must be one those docs give."""
    import re

    section = _readme_section("Results at a glance")
    measured = re.findall(r"^\s{3}\* - .*\n\s{5}- ((?:.*\n)*?)\s{5}- ", section, re.M)
    assert len(measured) >= 6, section
    sources = [*(ROOT / "docs" / f"{name}.rst" for name in ("results", "masking", "plates",
                                                            "qc")),
               *(ROOT / "samri_ml" / "data" / "models").rglob("*.md")]
    number = r"(?<![\d.])\d+(?:\.\d+)?(?![\d]|\.\d)"
    known = {n for path in sources for n in re.findall(number, path.read_text())}
    wanted = [n for cell in measured for n in re.findall(number, cell)
              if "." in n or len(n) >= 3]
    assert len(wanted) >= 15, measured
    assert not [n for n in wanted if n not in known], [n for n in wanted if n not in known]


def test_every_doc_is_named_where_the_readme_says_where_to_read_on():
    """A lab finds docs/*.rst from the README's "Where to read on" list: docs/qc.rst, new
    when the README was cut, had to be added there by hand. Every docs/*.rst must be in it."""
    text = (ROOT / "README.rst").read_text()
    listed = text[text.index("Where to read on:"):text.index("Quick start\n")]
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.rst"))
               if f"``docs/{p.name}``" not in listed]
    assert not missing, missing


def test_a_field_of_view_under_a_quarter_of_the_templates_is_refused_too(
        tmp_path, capsys, example):
    """docs/registration.rst said ``--no-fov-check`` lets through scans whose field of view is
    over 4x the template's; the check also refuses one under a quarter of it (a header whose
    voxel sizes are 10x too small), which the docs now say: refused in one line with the
    hint, let through with a note by ``--no-fov-check``."""
    import shutil

    from samri_ml.cli.register import main as register

    bids = tmp_path / "bids"
    shutil.copytree(example, bids)
    scan = next(bids.glob("sub-01/ses-1/anat/*_T2w.nii.gz"))
    img = nb.load(scan)
    affine = img.affine.copy()
    affine[:3, :3] /= 5
    nb.save(nb.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header), scan)
    argv = _register_argv(bids, tmp_path / "out", "--dry-run")
    assert register(argv) == 1
    err = capsys.readouterr().err
    assert "is 0.2x the template's" in err and "--no-fov-check" in err, err
    assert register([*argv, "--no-fov-check"]) == 0
    assert "--no-fov-check: 1 scan(s) registered" in capsys.readouterr().err


def test_every_section_the_docs_name_is_one_the_named_doc_has():
    """The docs send a lab to a section by name (``docs/plates.rst``, "Latest"; the README,
    "Reliability"); cutting the README moved sections between files, and a name left behind
    points to nothing. Each quoted name after a doc must start a heading of that doc, or a
    paragraph's bold or italic lead (``**Latest**``, ``*Sections scanned larger ...*``)."""
    import re

    docs = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst")),
            *sorted((ROOT / "samri_ml" / "data" / "models").rglob("*.md"))]
    pointer = re.compile(r"(?:``)?(docs/\w+\.rst|README)(?:``)?,\s+\"([^\"]+)\"")
    elsewhere = re.compile(r"\"([^\"]{8,})\" in (?:``)?(docs/\w+\.rst)")  # "X" in docs/y.rst
    here = re.compile(r"(?:see )\"([^\"]{8,})\" (?:below|above)")  # see "X" below
    missing, n = [], 0
    for doc in docs:
        text = " ".join(doc.read_text().split())
        pointers = [*pointer.findall(text), *((t, x) for x, t in elsewhere.findall(text)),
                    *((str(doc.relative_to(ROOT)), x) for x in here.findall(text))]
        for target, name in pointers:
            n += 1
            lines = (ROOT / ("README.rst" if target == "README" else target)).read_text()
            lines = [line.strip().lstrip("*").strip() for line in lines.splitlines()]
            if not any(line.startswith(name.strip()) for line in lines):
                missing.append(f'{doc.name}: {target}, "{name}"')
    assert not missing, "\n".join(missing)
    assert n >= 10, n


def test_options_the_readme_gives_as_alternatives_exclude_each_other():
    """The README's synopses write ``[--a | --b]`` for options of which one may be given.
    ``samri_ml-evaluate-masker [--phantom | --scans DIR]`` said so of two that go together
    (``--phantom`` adds the example's phantoms to the shared data's scans or to ``--scans``):
    a lab without the shared data read ``--phantom`` as the way to run without it, and was
    refused ('data folder not found'). Each such pair must be a mutually exclusive group of
    the command's parser, or refused together by its own message ('--overwrite and
    --skip-existing: give one')."""
    import inspect
    import re

    parsers = _command_parsers()
    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.rst").read_text())
    wrong, n = [], 0
    for line in text.splitlines():
        m = re.match(r"\s*(samri_ml-[a-z-]+)\s", line)
        if not m:
            continue
        module, parser = parsers[m.group(1)]
        source = inspect.getsource(module)
        groups = [{s for a in g._group_actions for s in a.option_strings}
                  for g in parser._mutually_exclusive_groups]
        for a, b in re.findall(r"\[(--[\w-]+)[^\[\]|]*\|\s*(--[\w-]+)[^\[\]]*\]", line):
            n += 1
            if not any({a, b} <= g for g in groups) and f"{a} and {b}" not in source:
                wrong.append(f"{m.group(1)} [{a} | {b}]")
    assert not wrong, wrong
    assert n >= 2, n
