"""Every workflow builds and its graph expands, without running anything."""

import json
from pathlib import Path

import pytest
from nipype.interfaces.base import isdefined
from nipype.pipeline.engine.utils import generate_expanded_graph

from samri_ml.errors import SamriMLError
from samri_ml.graph import write_workflow_graph
from samri_ml.workflows import init_functional_wf, init_generic_wf, init_structural_wf


def _names(wf):
    return {n.fullname.split(".")[-1] for n in wf._create_flat_graph().nodes()}


def _expands(wf):
    graph = generate_expanded_graph(wf._create_flat_graph())
    return graph.number_of_nodes()


@pytest.mark.parametrize("flavour", ["fast", "samri"])
@pytest.mark.parametrize("masking", ["none", "input"])
def test_structural_wf(masking, flavour):
    """With a mask, fast runs its linear phases brain to brain (both images stripped) and SyN
    on the whole images from there; samri keeps the seed's moving-image mask on every stage."""
    wf = init_structural_wf(flavour=flavour, masking=masking)
    names = _names(wf)
    assert {"s_biascorrect", "s_register", "s_warp", "s_fixed_masks"} <= names
    stripped = masking != "none" and flavour == "fast"
    assert ({"s_brain", "s_fixed_brain", "s_register_brain"} <= names) == stripped
    assert ("s_moving_masks" in names) == (masking != "none")
    if stripped:
        assert "initial_moving_transform" in _fields_into(wf, "s_register")
        assert wf.get_node("s_register").inputs.transforms == ["SyN"]
    assert _expands(wf) > 3


@pytest.mark.parametrize("method", ["composite", "structural", "functional"])
@pytest.mark.parametrize("masking", ["none", "input"])
def test_functional_wf(method, masking):
    wf = init_functional_wf(flavour="fast", method=method, masking=masking,
                            slice_timing=[0.0, 0.5, 0.25], repetition_time=1.0)
    names = _names(wf)
    assert {"f_dummy", "f_stc", "f_mean", "f_biascorrect", "f_warp"} <= names
    assert ("f_register" in names) == (method != "structural")
    if method != "structural" and masking != "none":
        fields = _fields_into(wf, "f_register")
        # fast runs the linear phases brain to brain: to the template, then SyN on the whole
        # images from there; to the structural scan, its one translation is all
        assert {"f_brain", "f_fixed_brain"} <= names and "fixed_image_masks" in fields
        assert ("f_register_brain" in names) == (method == "functional")
        assert ("initial_moving_transform" in fields) == (method == "functional")
        assert ("moving_image_masks" in fields) == (method == "functional")
    _expands(wf)


def _fields_into(wf, node_name):
    node = wf.get_node(node_name)
    return {c[1] for _, t, d in wf._graph.edges(data=True) if t is node for c in d["connect"]}


@pytest.mark.parametrize("flavour, n4_masked", [("fast", False), ("default", False),
                                                 ("samri", True)])
def test_the_brain_mask_feeds_n4_only_where_the_flavour_says(flavour, n4_masked):
    """default/fast: N4 on the whole image (a mask-restricted bias field cost an example subject
    0.04 Dice); samri: the seed's "Generic Masked" as it was."""
    s = init_structural_wf(flavour=flavour, masking="input")
    assert ("mask_image" in _fields_into(s, "s_biascorrect")) == n4_masked
    f = init_functional_wf(flavour=flavour, method="composite", masking="input")
    assert ("mask_image" in _fields_into(f, "f_biascorrect")) == n4_masked
    # the mask reaches the registration: as a moving-image mask (samri) or by stripping the
    # run's mean and the structural scan before it (default, fast)
    assert ("moving_image_masks" in _fields_into(f, "f_register")) == (flavour == "samri")
    assert ("f_brain" in _names(f)) == (flavour != "samri")


def test_functional_without_slice_timing_has_no_stc():
    assert "f_stc" not in _names(init_functional_wf(slice_timing=None))


def test_slice_timing_needs_tr():
    with pytest.raises(SamriMLError, match="repetition time"):
        init_functional_wf(slice_timing=[0, 0.5])


@pytest.mark.parametrize("anat,bolds", [
    ("sub-01_T2w.nii.gz", []), (None, ["sub-01_task-b_bold.nii.gz"]),
    ("sub-01_T2w.nii.gz", ["sub-01_task-b_bold.nii.gz", "sub-01_task-c_bold.nii.gz"])])
def test_generic_wf_structural_only_functional_only_and_both(anat, bolds, tmp_path):
    wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz", anat_file=anat,
                         bold_files=bolds, output_dir=str(tmp_path), qc=False)
    names = _names(wf)
    assert ("s_register" in names) == (anat is not None)
    assert sum(n.startswith("ds_func") and n.endswith(("0", "1")) for n in names) == len(bolds)
    if anat is None:  # functional-only: composite falls back to functional (to the template)
        assert wf.get_node("func0_wf.f_register").inputs.transforms[-1] == "SyN"


def test_generic_wf_refuses_empty_session():
    with pytest.raises(SamriMLError, match="nothing to register"):
        init_generic_wf(template="t", template_mask="m")


@pytest.mark.parametrize("factory", [
    lambda n: init_structural_wf(masking="unet", omp_nthreads=n),
    lambda n: init_functional_wf(masking="unet", omp_nthreads=n),
    lambda n: init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz",
                              anat_file="a_T2w.nii.gz", masking="unet", omp_nthreads=n),
])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_factories_refuse_a_thread_count_below_one(factory, bad):
    """-1 reached the U-Net node, where TensorFlow's failed check aborted the whole Python
    process (no exception, no crash file): refused where the workflow is built."""
    with pytest.raises(SamriMLError, match="omp_nthreads .*at least 1"):
        factory(bad)


def test_mask_model_reaches_the_mask_node_of_both_streams(tmp_path):
    """``mask_model`` (``samri_ml-register --mask-model``): a lab's own U-Net, e.g. fine-tuned
    with ``samri_ml-train-masker --scans``, masks both streams; without it the shipped one."""
    for name in ("a_T2w.nii.gz", "r_bold.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    own = tmp_path / "own.keras"
    own.write_bytes(b"")
    common = dict(template="t.nii.gz", template_mask="m.nii.gz", masking="unet", qc=False,
                  anat_file=str(tmp_path / "a_T2w.nii.gz"),
                  bold_files=[str(tmp_path / "r_bold.nii.gz")],
                  bold_metadata=[{"RepetitionTime": 1.0}])
    for model, want in ((str(own), str(own)), (None, None)):
        wf = init_generic_wf(mask_model=model, **common)
        nodes = {n.name: n for n in wf._get_all_nodes() if n.name in ("s_mask", "f_mask")}
        assert set(nodes) == {"s_mask", "f_mask"}
        for node in nodes.values():
            got = node.inputs.model if isdefined(node.inputs.model) else None
            assert got == want, (node.name, got)


def test_generic_wf_refuses_a_single_path_and_metadata_of_another_length():
    """A path given as ``bold_files`` was split into its characters, and the error named a QC
    node's ``raw_file '/'``."""
    common = dict(template="t.nii.gz", template_mask="m.nii.gz", anat_file="a_T2w.nii.gz")
    with pytest.raises(SamriMLError, match=r"a single path.*hint: bold_files=\['r_bold.nii.gz'\]"):
        init_generic_wf(bold_files="r_bold.nii.gz", **common)
    with pytest.raises(SamriMLError, match=r"2 entr\(ies\) for 1 run"):
        init_generic_wf(bold_files=["r_bold.nii.gz"], bold_metadata=[{}, {}], **common)
    with pytest.raises(SamriMLError, match=r"anat_file 'a_T2w.nii.gz': no such file"):
        init_generic_wf(bold_files=["r_bold.nii.gz"], **common)  # the QC nodes need the scans
    wf = init_generic_wf(bold_files=["r_bold.nii.gz"], bold_metadata=[{"RepetitionTime": 1.0}],
                         qc=False, **common)
    assert "func0_wf" in {n.split(".")[0] for n in wf.list_node_names()}
    # iterators (a Path.glob) were used up by the checks: the runs were left out unsaid
    wf = init_generic_wf(bold_files=iter(["r_bold.nii.gz", "s_bold.nii.gz"]),
                         bold_metadata=({"RepetitionTime": t} for t in (1.0, 2.0)), qc=False,
                         **common)
    assert {"func0_wf", "func1_wf"} <= {n.split(".")[0] for n in wf.list_node_names()}
    assert wf.get_node("func1_wf.f_set_tr").inputs.repetition_time == 2.0


@pytest.mark.parametrize("graph2use", ["colored", "flat", "hierarchical", "orig"])
def test_graph_picture_without_graphviz(graph2use, tmp_path):
    wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz",
                         anat_file="sub-01_T2w.nii.gz", bold_files=["sub-01_task-b_bold.nii.gz"],
                         output_dir=str(tmp_path), qc=False)
    path, how = write_workflow_graph(wf, tmp_path / "g", graph2use=graph2use, force_fallback=True)
    assert path.exists() and path.stat().st_size > 5000
    assert "pure-Python" in how
    svg, _ = write_workflow_graph(wf, tmp_path / "g2", graph2use=graph2use, fmt="svg",
                                  force_fallback=True)
    assert ("anat_wf" if graph2use == "orig" else "s_register") in svg.read_text()


def test_flat_graph_names_the_sub_workflow_of_a_repeated_node_name():
    """The flat graph showed three boxes "inputnode" (and three "outputnode"), uncoloured:
    which sub-workflow each belonged to could not be told. A name several sub-workflows use
    now carries its sub-workflow's; the top level's stays bare."""
    from samri_ml.graph import _node_graph

    wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz", anat_file="a_T2w.nii.gz",
                         bold_files=["b_bold.nii.gz"], qc=False)
    for graph2use in ("flat", "colored"):
        _, _, labels = _node_graph(wf, graph2use)
        names = sorted(labels.values())
        assert {"inputnode", "anat_wf.inputnode", "func0_wf.inputnode"} <= set(names), names
        assert len(names) == len(set(names)), names  # every box told apart


@pytest.mark.parametrize("workflow", ["generic", "structural", "functional"])
def test_graph_command_of_the_readme_draws_every_workflow(workflow, tmp_path, capsys):
    """``samri_ml-graph generic graph --type colored --format svg`` (the README's command) and
    the two sub-workflows; the generic one has QC nodes, whose inputs must be files."""
    from samri_ml.cli.graph import main

    rc = main([workflow, str(tmp_path / "graph"), "--type", "colored", "--format", "svg",
               "--pure-python"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    svg = tmp_path / "graph.svg"
    assert svg.stat().st_size > 5000 and str(svg) in out
    if workflow == "generic":
        assert "qc" in svg.read_text().lower()
    # an existing folder as OUT: the picture goes into it (it went beside it, as folder.png)
    (tmp_path / "figs").mkdir()
    assert main([workflow, str(tmp_path / "figs"), "--pure-python"]) == 0
    assert (tmp_path / "figs" / f"{workflow}_graph.png").is_file()
    assert not (tmp_path / "figs.png").exists()


@pytest.mark.parametrize("graph2use", ["hierarchical", "flat", "orig", "exec"])
def test_graph_command_draws_the_generic_workflow_in_every_type(graph2use, tmp_path, capsys):
    """``samri_ml-graph generic g --type exec`` (offered in --help) stopped with a TraitError:
    the exec graph sets the template's placeholder name on nodes whose inputs must be files."""
    from samri_ml.cli.graph import main

    rc = main(["generic", str(tmp_path / "g"), "--type", graph2use, "--format", "svg",
               "--pure-python"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    svg = (tmp_path / "g.svg").read_text()
    assert str(tmp_path / "g.svg") in out and err == ""
    assert ("anat_wf" if graph2use == "orig" else "s_register") in svg


def test_nipype_messages_come_once_on_stderr_and_stdout_is_the_result(tmp_path):
    """Nipype's own stdout handler and the commands' root handler both printed each Nipype
    message: a failed step's warnings came twice (once on stdout, in two lines), its INFO
    lines showed without -v, and ``samri_ml-graph`` (with Graphviz) printed Nipype's
    "Generated workflow graph" on stdout before the picture's path. Real processes, as a
    user's shell runs them."""
    import subprocess
    import sys

    code = ("import sys; from samri_ml.cli._common import setup_logging; "
            "from nipype import logging as nl; setup_logging(int(sys.argv[1])); "
            "log = nl.getLogger('nipype.workflow'); log.info('info-line'); "
            "log.warning('warning-line')")
    quiet = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True,
                           check=True)
    assert quiet.stdout == ""
    assert quiet.stderr.count("warning-line") == 1 and "info-line" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    verbose = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True,
                             check=True)
    assert verbose.stdout == "" and verbose.stderr.count("info-line") == 1

    graph = subprocess.run([sys.executable, "-m", "samri_ml.cli.graph", "structural",
                            str(tmp_path / "g")], capture_output=True, text=True)  # fmt: skip
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout.splitlines() == [graph.stdout.strip()], graph.stdout
    assert graph.stdout.startswith(f"{tmp_path / 'g.png'} (") and graph.stderr == ""
    assert (tmp_path / "g.png").stat().st_size > 5000


def test_a_home_that_cannot_be_written_gives_no_matplotlib_warning(tmp_path):
    """On a cluster node or in a container with a read-only or missing home folder every
    command that draws (reports, graphs, samri_ml-qc compare --out) printed matplotlib's
    "mkdir -p failed ... it is highly recommended to set the MPLCONFIGDIR environment
    variable". Now the commands give matplotlib a temporary folder themselves, and remove it."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.write_text("")  # a file: nothing can be made under it, even by root
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    run = subprocess.run([sys.executable, "-m", "samri_ml.cli.graph", "structural",
                          str(tmp_path / "g"), "--pure-python"], env=env, capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert (tmp_path / "g.png").stat().st_size > 5000
    assert list(tmp.iterdir()) == []  # the temporary matplotlib folder is gone


def test_a_user_without_a_home_gets_no_tilde_folder(tmp_path):
    """A process with no HOME and no password entry (``env -i`` under a container's bare
    uid): Keras, imported by samri_ml-mask, -identify-plate and register's masking steps, made
    a folder literally named ``~`` (``~/.keras/keras.json``) in the current folder, which may
    be the BIDS dataset. A real process under a uid that has no password entry (root only)."""
    import os
    import pwd
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root, to run a process under a uid without a password entry")
    uid = next(u for u in range(54321, 54400) if not _has_passwd_entry(pwd, u))

    def as_uid():
        os.setgid(uid)
        os.setuid(uid)

    here = tmp_path / "cwd"
    here.mkdir()
    here.chmod(0o777)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(
        p for p in sys.path if p)}
    try:
        probe = subprocess.run([sys.executable, "-c", "import samri_ml"], cwd=here, env=env,
                               preexec_fn=as_uid, capture_output=True)  # fmt: skip
    except PermissionError:  # the interpreter lies in a folder that uid cannot enter (/root)
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("the interpreter or the package cannot be read by another user here")
    code = ("import sys; from samri_ml.cli._common import run_cli; "
            "sys.exit(run_cli('prog', lambda argv: print(__import__('keras').__version__)))")
    run = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, preexec_fn=as_uid,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip(), run.stderr
    assert list(here.iterdir()) == []


def _has_passwd_entry(pwd, uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_graph_command_refuses_what_it_would_not_draw(tmp_path, capsys):
    """``samri_ml-graph generic --masking input`` drew the unmasked workflow without a word."""
    from samri_ml.cli.graph import main

    assert main(["generic", str(tmp_path / "g"), "--masking", "input"]) == 2
    assert "--masking input: the generic workflow" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_graph_command_checks_out_before_drawing(tmp_path, capsys):
    """OUT ending in the picture's extension became ``g.png.png``; a file among OUT's parents
    or a folder where the picture goes gave a bare FileExistsError / IsADirectoryError."""
    from samri_ml.cli.graph import main

    (tmp_path / "afile").touch()
    (tmp_path / "dir.png").mkdir()
    for out, words in ((tmp_path / "afile" / "g", "afile is a file, not a folder"),
                       (tmp_path / "dir", "dir.png is a folder"),
                       (tmp_path / "g.svg", "a .svg name with --format png")):
        assert main(["structural", str(out), "--pure-python"]) == 2
        err = capsys.readouterr().err
        assert words in err.strip().splitlines()[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dir.png"]
    assert main(["structural", str(tmp_path / "g.png"), "--pure-python"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 1000 and not (tmp_path / "g.png.png").exists()


def test_a_failing_graphviz_is_named(tmp_path, monkeypatch):
    """A ``dot`` on PATH that fails: the pure-Python picture, said as such (it said "dot not
    found")."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dot").write_text("#!/bin/sh\necho 'dot: broken' >&2\nexit 1\n")
    (fake / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    wf = init_structural_wf(flavour="fast")
    path, how = write_workflow_graph(wf, tmp_path / "g", graph2use="flat")
    assert path.is_file() and path.stat().st_size > 5000
    assert how.startswith("pure-Python drawing (Graphviz 'dot' failed"), how


def test_resampled_run_keeps_its_repetition_time(tmp_path, monkeypatch):
    """antsApplyTransforms writes 1.0 as pixdim[4]; the run in template space must keep its TR
    (the sidecar's RepetitionTime, else the input header's)."""
    import nibabel as nb
    import numpy as np

    from samri_ml.workflows.registration import _restore_time_header

    monkeypatch.chdir(tmp_path)
    ref = nb.Nifti1Image(np.zeros((4, 4, 3, 5), np.float32), np.eye(4))
    ref.header.set_zooms((0.3, 0.3, 0.6, 2.5))
    ref.header.set_xyzt_units("mm", "sec")
    ref.to_filename(tmp_path / "ref.nii.gz")
    warped = nb.Nifti1Image(np.ones((6, 6, 6, 5), np.float32), np.diag([0.2, 0.2, 0.2, 1]))
    warped.to_filename(tmp_path / "warped.nii.gz")  # pixdim[4] = 1.0, as ANTs writes it
    out = nb.load(_restore_time_header(str(tmp_path / "warped.nii.gz"), str(tmp_path / "ref.nii.gz")))
    assert out.header.get_zooms()[3] == 2.5 and out.header.get_xyzt_units()[1] == "sec"
    assert np.allclose(out.header.get_zooms()[:3], 0.2) and np.asanyarray(out.dataobj).min() == 1
    out = nb.load(_restore_time_header(str(tmp_path / "warped.nii.gz"), str(tmp_path / "ref.nii.gz"),
                                       repetition_time=2.0))
    assert out.header.get_zooms()[3] == 2.0
    wf = init_functional_wf(flavour="fast", method="functional", repetition_time=2.0)
    assert wf.get_node("f_set_tr").inputs.repetition_time == 2.0


def test_bold_derivative_has_a_sidecar(tmp_path, monkeypatch):
    anat, bold = tmp_path / "sub-01_T2w.nii.gz", tmp_path / "sub-01_task-rest_bold.nii.gz"
    (tmp_path / "out" / "tpl").mkdir(parents=True)
    for path in (anat, bold, tmp_path / "t.nii.gz", tmp_path / "m.nii.gz",
                 tmp_path / "out" / "tpl" / "t.nii.gz"):  # the QC nodes' files are checked
        path.touch()
    monkeypatch.chdir(tmp_path)
    wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz", anat_file=str(anat),
                         bold_files=[str(bold)], output_dir=str(tmp_path / "out"),
                         bold_metadata=[{"RepetitionTime": 2.0, "SliceTiming": [0, 1.0],
                                         "TaskName": "rest"}])
    meta = wf.get_node("ds_func0").inputs.metadata
    assert meta["RepetitionTime"] == 2.0 and meta["SliceTimingCorrected"] is True
    # the template (space-<label> is not a standard space), as a URI: BIDS asks for a URI or
    # a path relative to the dataset
    uri = (Path.cwd() / "t.nii.gz").as_uri()
    assert meta["SpatialReference"] == uri and uri.startswith("file:///")
    assert wf.get_node("ds_anat").inputs.metadata["SpatialReference"] == uri
    inside = init_generic_wf(template=str(tmp_path / "out" / "tpl" / "t.nii.gz"),
                             template_mask="m.nii.gz", anat_file=str(anat),
                             output_dir=str(tmp_path / "out"))
    assert inside.get_node("ds_anat").inputs.metadata["SpatialReference"] == "tpl/t.nii.gz"
    assert meta["StartTime"] == 1.0 and meta["TaskName"] == "rest"


def test_report_ignores_a_stale_mask_of_an_earlier_masked_run(tmp_path):
    """Rerunning unmasked into an OUTPUT_DIR that holds an earlier ``--masking unet`` run's
    ``desc-brain_mask``: the report must not show that mask as this run's prediction."""
    import nibabel as nb
    import numpy as np

    from samri_ml.bids import derivative_path
    from samri_ml.report import write_subject_reports

    data = np.zeros((8, 8, 8), np.float32)
    data[2:6, 2:6, 2:6] = 1
    raw = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    raw.parent.mkdir(parents=True)
    nb.Nifti1Image(data, np.eye(4)).to_filename(raw)
    out = tmp_path / "out"
    for path in (derivative_path(out, raw, space="T", desc="preproc"),
                 derivative_path(out, raw, desc="brain", suffix="mask"), tmp_path / "m.nii.gz"):
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(data, np.eye(4)).to_filename(path)
    sessions = [{"subject": "01", "session": None, "anat": str(raw), "bold": []}]
    kw = dict(template=tmp_path / "m.nii.gz", template_mask=tmp_path / "m.nii.gz",
              template_name="T")
    (page,) = write_subject_reports(out, sessions, masking="none", **kw)
    assert "Predicted brain mask" not in page.read_text()
    (page,) = write_subject_reports(out, sessions, masking="unet", **kw)
    assert "Predicted brain mask" in page.read_text()


def test_bold_sidecar_says_no_slice_timing_where_the_run_was_too_short(tmp_path):
    """Slice timing needs 3 volumes after the dummy scans; a shorter run is left as it is, and
    its sidecar must say so."""
    import nibabel as nb
    import numpy as np

    bold = tmp_path / "sub-01_task-rest_bold.nii.gz"
    nb.Nifti1Image(np.ones((4, 4, 2, 5), np.float32), np.eye(4)).to_filename(bold)
    meta = {"RepetitionTime": 2.0, "SliceTiming": [0, 1.0]}
    for dummies, corrected in ((2, True), (3, False)):
        wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz", bold_files=[str(bold)],
                             bold_metadata=[meta], output_dir=str(tmp_path / "out"),
                             method="functional", dummy_scans=dummies, qc=False)
        side = wf.get_node("ds_func0").inputs.metadata
        assert side["SliceTimingCorrected"] is corrected and ("StartTime" in side) is corrected
        assert side["NumberOfVolumesDiscardedByUser"] == dummies
        # BIDS recommends a Description for a desc- derivative (the validator's warning)
        assert side["Description"] == (
            f"{dummies} dummy volume(s) dropped, " + "slice-timing corrected, " * corrected
            + "registered to template with antsRegistration (flavour default, masking none, "
            "functional method)")


def test_bold_sidecar_counts_the_volumes_dropped_before_it():
    """The derivative run lacked its dummy scans, and its sidecar did not say so: onsets from
    the raw events.tsv were that many repetitions off. The user's count adds the dummy scans
    to the raw sidecar's; the scanner's is carried over; nothing is said where nothing was
    dropped."""
    from samri_ml.workflows.generic import _discarded_volumes

    assert _discarded_volumes({}, 0) == {}
    assert _discarded_volumes({}, 10) == {"NumberOfVolumesDiscardedByUser": 10}
    raw = {"NumberOfVolumesDiscardedByUser": 2, "NumberOfVolumesDiscardedByScanner": 4}
    assert _discarded_volumes(raw, 10) == {"NumberOfVolumesDiscardedByUser": 12,
                                           "NumberOfVolumesDiscardedByScanner": 4}
    assert _discarded_volumes(raw, 0) == {"NumberOfVolumesDiscardedByUser": 2,
                                          "NumberOfVolumesDiscardedByScanner": 4}
    # not a count (a string, a boolean, negative): not carried into the derivative
    odd = {"NumberOfVolumesDiscardedByUser": "2", "NumberOfVolumesDiscardedByScanner": True}
    assert _discarded_volumes(odd, 3) == {"NumberOfVolumesDiscardedByUser": 3}


def test_bold_sidecar_counts_the_dummy_volumes_actually_dropped(tmp_path):
    """A run of no more volumes than --dummy-scans keeps its last one (4 of 5 dropped under
    the default 10): its sidecar said 10 dropped, so onsets from the raw events.tsv were put 6
    repetitions off."""
    import nibabel as nb
    import numpy as np

    bold = tmp_path / "sub-01_task-rest_bold.nii.gz"
    nb.Nifti1Image(np.ones((4, 4, 2, 5), np.float32), np.eye(4)).to_filename(bold)
    for dummies, dropped in ((10, 4), (3, 3)):
        wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz", bold_files=[str(bold)],
                             bold_metadata=[{"RepetitionTime": 2.0}],
                             output_dir=str(tmp_path / "out"), method="functional",
                             dummy_scans=dummies, qc=False)
        side = wf.get_node("ds_func0").inputs.metadata
        assert side["NumberOfVolumesDiscardedByUser"] == dropped


def test_interfaces_and_workflows_import_without_tensorflow():
    """Building a pipeline never loads TensorFlow, Keras or ANTs (only running a MaskBrain or
    IdentifyPlate node does), and the lazy interface names show in ``dir()``."""
    import subprocess
    import sys

    code = (
        "import sys, samri_ml.interfaces as i, samri_ml.workflows\n"
        "from samri_ml.interfaces import MaskBrain, IdentifyPlate, VolumeConservation\n"
        "MaskBrain(); IdentifyPlate()\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'ants', 'cv2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert {'MaskBrain', 'IdentifyPlate', 'DerivativesDataSink'} <= set(dir(i)), dir(i)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("factory", [init_structural_wf, init_functional_wf])
def test_building_a_workflow_puts_ants_on_path(factory, monkeypatch):
    """The README's Python API with the virtual environment not activated (its bin/ not on
    PATH) failed at run time with 'No command "N4BiasFieldCorrection" found on host'."""
    import shutil

    from samri_ml.ants import scripts_dir

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("antsRegistration"):
        pytest.skip("a system ANTs is on /usr/bin: it is kept")
    factory()
    for program in ("N4BiasFieldCorrection", "antsRegistration", "antsApplyTransforms"):
        assert Path(shutil.which(program)).parent == scripts_dir(), program




def _readme_python_api() -> str:
    """The README's "Python API" code block, as written."""
    text = (Path(__file__).resolve().parents[1] / "README.rst").read_text()
    block = text.split("Python API\n----------", 1)[1].split(".. code-block:: python\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


@pytest.mark.slow
def test_readme_python_api_runs_as_written(example_dataset, tmp_path):
    """The README's Python API set the inputs as relative paths: every node failed ("file
    sub-01_T2w.nii.gz does not exist"), as Nipype runs each node in a folder of its own; it
    gave absolute ones since, and relative ones again now that the factories' inputnodes make
    them absolute. Run here as written, in a folder holding files of those names (the fast
    flavour, for time)."""
    import shutil
    import subprocess
    import sys

    import nibabel as nb
    import numpy as np

    code = _readme_python_api()
    assert 'flavour="default"' in code and "wf.run()" in code
    tpl = example_dataset / "template"
    truth = example_dataset / "derivatives" / "groundtruth" / "sub-01" / "ses-1" / "anat"
    for source, name in ((example_dataset / "sub-01" / "ses-1" / "anat" /
                          "sub-01_ses-1_T2w.nii.gz", "sub-01_T2w.nii.gz"),
                         (tpl / "tpl-Phantom_T2w.nii.gz", "template.nii.gz"),
                         (tpl / "tpl-Phantom_desc-brain_mask.nii.gz", "template_mask.nii.gz"),
                         (truth / "sub-01_ses-1_desc-brain_mask.nii.gz",
                          "sub-01_desc-brain_mask.nii.gz")):
        shutil.copy2(source, tmp_path / name)
    done = subprocess.run([sys.executable, "-c", code.replace('flavour="default"',
                                                              'flavour="fast"')],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (warped,) = (tmp_path / "work" / "structural_wf" / "s_warp").glob("*.nii.gz")
    template = nb.load(tmp_path / "template.nii.gz")
    mask = nb.load(tmp_path / "template_mask.nii.gz").get_fdata() > 0
    image = nb.load(warped)
    assert image.shape == template.shape and np.allclose(image.affine, template.affine)
    r = np.corrcoef(image.get_fdata()[mask], template.get_fdata()[mask])[0, 1]
    assert r > 0.8, r  # the scan on the template: their brains' intensities agree


@pytest.mark.parametrize("masking,qc,method", [("none", False, "composite"),
                                               ("unet", True, "structural")])
def test_generic_wf_outputnode_has_what_it_built(masking, qc, method, tmp_path):
    """The outputnode's fields are connected where the workflow makes them; the runs' fields
    are lists in bold_files' order."""
    anat, bolds = tmp_path / "a_T2w.nii.gz", [tmp_path / "b_bold.nii.gz", tmp_path / "c_bold.nii.gz"]
    tpl = tmp_path / "t.nii.gz"
    for path in (anat, *bolds, tpl):
        path.write_bytes(b"")  # qc checks that the files exist; nothing is read here
    wf = init_generic_wf(template=str(tpl), template_mask=str(tpl), anat_file=str(anat),
                         bold_files=[str(b) for b in bolds], masking=masking, qc=qc,
                         method=method)
    connected = {dest for _, target, data in wf._graph.edges(data=True)
                 if target.name == "outputnode" for _, dest in data["connect"]}
    expected = {"anat_preproc", "anat_xfm", "bold_preproc"}
    expected |= {"anat_mask", "bold_mask"} if masking != "none" else set()
    expected |= {"anat_qc", "bold_qc"} if qc else set()
    expected |= {"bold_xfm"} if method != "structural" else set()
    assert connected == expected
    merge = wf.get_node("merge_bold_preproc")
    runs = {dest: src.name for src, target, data in wf._graph.edges(data=True)
            if target is merge for _, dest in data["connect"]}
    assert runs == {"in1": "func0_wf", "in2": "func1_wf"}
    assert merge.inputs.no_flatten


def test_masks_and_preprocessed_scans_name_their_raw_source_in_their_sidecars(tmp_path):
    """The masks were written without a sidecar (BIDS derivatives: a mask's ``Type``), and no
    derivative said which raw scan it came from: now ``Sources`` holds a BIDS URI into the
    raw dataset (``DatasetLinks.raw`` of the derivatives' dataset_description.json)."""
    import nibabel as nb
    import numpy as np

    from samri_ml.bids import write_dataset_description

    bids, out = tmp_path / "bids", tmp_path / "out"
    anat = bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz"
    bold = bids / "sub-01" / "ses-1" / "func" / "sub-01_ses-1_task-rest_bold.nii.gz"
    wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz", anat_file=str(anat),
                         bold_files=[str(bold)], bold_metadata=[{"RepetitionTime": 1.0}],
                         masking="unet", output_dir=str(out), qc=False)
    mask = tmp_path / "mask.nii.gz"
    nb.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)).to_filename(mask)
    written = {}
    for node, source in (("ds_anat_mask", anat), ("ds_func0_mask", bold), ("ds_anat", anat),
                         ("ds_func0", bold)):
        sink = wf.get_node(node).interface
        sink.inputs.in_file = str(mask)
        path = Path(sink.run().outputs.out_file)
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        rel = source.relative_to(bids).as_posix()
        assert sidecar["Sources"] == [f"bids:raw:{rel}"], (node, sidecar)
        written[node] = (path.name, sidecar)
    for node in ("ds_anat_mask", "ds_func0_mask"):
        name, sidecar = written[node]
        assert name.endswith("_desc-brain_mask.nii.gz") and sidecar["Type"] == "Brain"
    assert written["ds_func0"][1]["RepetitionTime"] == 1.0
    # built from Python, the workflow's derivatives had no dataset_description.json (pybids
    # refuses such a folder): the first sink writes one, where there is none
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["DatasetLinks"] == {
        "raw": bids.resolve().as_uri()}, desc
    assert "Nipype workflow" in desc["GeneratedBy"][0]["Description"]
    # samri_ml-register's own (written before its run) is left as it is by the sinks
    mine = write_dataset_description(tmp_path / "cli", bids, "1.0", "samri_ml-register x")
    before = mine.read_bytes()
    sink = wf.get_node("ds_anat").interface
    sink.inputs.base_directory = str(tmp_path / "cli")
    sink.run()
    assert mine.read_bytes() == before
    # a file given from Python outside any sub-<label> folder gets no Sources (nothing to
    # point into), not a wrong one
    wf = init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz",
                         anat_file=str(tmp_path / "sub-01_T2w.nii.gz"), masking="unet",
                         output_dir=str(out), qc=False)
    assert "Sources" not in wf.get_node("ds_anat_mask").inputs.metadata


def test_generic_wf_takes_paths_relative_to_where_it_is_built(example_dataset, tmp_path,
                                                              monkeypatch):
    """``init_generic_wf(anat_file='sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz', ...)`` from the
    dataset's folder (a notebook's working folder) failed in its first node: 'file
    sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz does not exist' (N4 ran in the node's own
    folder). The scans and the template are now absolute from where the factory is called;
    the first node runs on what the workflow hands it, from another folder."""
    from pathlib import Path

    monkeypatch.chdir(example_dataset)
    anat = "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
    bold = Path("sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz")
    wf = init_generic_wf(template="template/tpl-Phantom_T2w.nii.gz",
                         template_mask="template/tpl-Phantom_desc-brain_mask.nii.gz",
                         anat_file=anat, bold_files=[bold], flavour="fast", name="sub01_wf")
    monkeypatch.chdir(tmp_path)  # where a node runs: elsewhere
    given = {"in_file": wf.get_node("anat_wf.inputnode").inputs.in_file,
             "bold": wf.get_node("func0_wf.inputnode").inputs.in_file,
             "template": wf.get_node("inputnode").inputs.template,
             "template_mask": wf.get_node("inputnode").inputs.template_mask}
    assert given["in_file"] == str(example_dataset / anat)
    assert given["bold"] == str(example_dataset / bold)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in given.values()), given
    n4 = wf.get_node("anat_wf.s_biascorrect")
    n4.inputs.input_image = given["in_file"]
    n4.base_dir = str(tmp_path / "work")
    assert Path(n4.run().outputs.output_image).is_file()


def test_a_graphviz_picture_under_a_relative_name_is_found(tmp_path, monkeypatch):
    """``write_workflow_graph(wf, "graph")`` with ``wf.base_dir`` set (the README's call):
    Nipype put Graphviz's picture under base_dir/<name>/, where it was not looked for, so a
    second, pure-Python one was drawn and "dot failed" said of a dot that had worked."""
    import os

    fake = tmp_path / "bin"
    fake.mkdir()
    # a dot that writes a picture where -o says (Nipype: dot -Tpng -o"out.png" "in.dot")
    (fake / "dot").write_text(
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in -o*) o=\"${a#-o}\";; esac; done\n"
        "o=\"${o%\\\"}\"; o=\"${o#\\\"}\"; printf 'picture' > \"$o\"\n")
    (fake / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    wf = init_structural_wf(flavour="fast")
    wf.base_dir = str(tmp_path / "work")
    path, how = write_workflow_graph(wf, "graph", graph2use="flat")
    assert how == "Graphviz", how
    assert path.parent == tmp_path and path.name.startswith("graph") and path.is_file()


def test_generic_wf_refuses_a_missing_template_and_negative_dummy_scans(tmp_path):
    """A missing template built without a word and failed at run time with a TraitError of an
    ApplyTransforms node the user never made; dummy_scans=-1 failed in a QC node, or (qc=False,
    init_functional_wf) was taken as 0 without a word."""
    scan = tmp_path / "a_T2w.nii.gz"
    scan.write_bytes(b"")
    with pytest.raises(SamriMLError, match=r"template '/no/t.nii.gz': no such file; hint: "):
        init_generic_wf(template="/no/t.nii.gz", template_mask=str(scan), anat_file=str(scan))
    with pytest.raises(SamriMLError, match=r"dummy_scans -1: must be a whole number, at least 0"):
        init_generic_wf(template=str(scan), template_mask=str(scan), anat_file=str(scan),
                        dummy_scans=-1, qc=False)
    with pytest.raises(SamriMLError, match=r"dummy_scans -5: must be a whole number, at least 0"):
        init_functional_wf(dummy_scans=-5)
    import numpy as np

    init_functional_wf(dummy_scans=np.int64(2), omp_nthreads=np.int32(1))  # numpy's whole numbers


def test_a_rerun_of_one_subject_keeps_the_graph_the_other_reports_link(example_dataset,
                                                                       tmp_path, capsys):
    """``samri_ml-register BIDS OUT participant --participant-label 02 --write-graph``
    replaced ``figures/workflow_graph.png``, the graph sub-01.html (an earlier run's) links,
    with a graph without sub-01; so did a dry run (with --masking unet: the U-Net's steps
    under reports of masking none). A run of some subjects, and a dry run, draw a graph of
    their own name."""
    from samri_ml.cli.register import graph_stem, main

    out = tmp_path / "out"
    whole = out / "figures" / "workflow_graph.png"
    whole.parent.mkdir(parents=True)
    whole.write_bytes(b"the graph of the run of every subject")
    template = example_dataset / "template"
    argv = [str(example_dataset), str(out), "participant", "--fast", "--dry-run",
            "--template", str(template / "tpl-Phantom_T2w.nii.gz"),
            "--template-mask", str(template / "tpl-Phantom_desc-brain_mask.nii.gz"),
            "--write-graph", "flat"]
    for extra, name in ((["--participant-label", "02"], "workflow_graph_sub-02_dry-run.png"),
                        ([], "workflow_graph_dry-run.png")):
        assert main(argv + extra) == 0, capsys.readouterr().err[-2000:]
        assert whole.read_bytes() == b"the graph of the run of every subject"
        own = out / "figures" / name
        assert own.stat().st_size > 1000
        assert f"workflow graph written to {own} " in capsys.readouterr().err
    # a run's: sessions named where they were selected; many labels: a name of bounded
    # length, one per selection
    sessions = [{"subject": f"{i:02d}", "session": "1"} for i in range(40)]
    assert graph_stem(sessions[2:3], ["02"]) == "workflow_graph_sub-02"
    assert graph_stem(sessions[:2], ["00", "01"]) == "workflow_graph_sub-00_sub-01"
    assert graph_stem(sessions[:2], None, ["1"]) == "workflow_graph_sub-00_sub-01_ses-1"
    assert graph_stem(sessions, None, None) == "workflow_graph"
    many = graph_stem(sessions, ["x"])
    assert len(many) <= 100 and many.startswith("workflow_graph_40-sessions_")
    assert many != graph_stem(sessions[1:], ["x"])


def test_runs_whose_sidecar_says_volumes_were_discarded_get_a_note(example_dataset, tmp_path,
                                                                   capsys):
    """A run whose sidecar says the scanner (or the user) discarded volumes before the file
    was written lost --dummy-scans' 10 more without a word; the run summary names it."""
    import json
    import shutil

    from samri_ml.cli.register import main

    bids = tmp_path / "bids"
    shutil.copytree(example_dataset, bids)
    sidecar = next(bids.glob("sub-01/ses-1/func/*_bold.json"))
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "NumberOfVolumesDiscardedByScanner": 4,
                                   "NumberOfVolumesDiscardedByUser": "2"}))  # not a count
    template = bids / "template"
    argv = [str(bids), str(tmp_path / "out"), "participant", "--fast", "--dry-run",
            "--template", str(template / "tpl-Phantom_T2w.nii.gz"),
            "--template-mask", str(template / "tpl-Phantom_desc-brain_mask.nii.gz")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("note: 1 functional run(s) whose sidecar says volumes were discarded before "
            "(NumberOfVolumesDiscardedByScanner/ByUser): sub-01_ses-1_task-rest_bold.nii.gz "
            "(4); --dummy-scans drops 10 more volumes from each; hint: --dummy-scans 0") in err
    assert main(argv + ["--dummy-scans", "0"]) == 0  # nothing more dropped: nothing to say
    assert "discarded before" not in capsys.readouterr().err


def _run_with_slices(path, shape=(4, 5, 3, 6), slice_dim=None):
    """A small 4D run (``shape``), its header's slice axis ``slice_dim`` where given."""
    import nibabel as nb
    import numpy as np

    img = nb.Nifti1Image(np.ones(shape, np.float32), np.eye(4))
    if slice_dim is not None:
        img.header.set_dim_info(slice=slice_dim)
    img.to_filename(path)
    return str(path)


def _template(tmp_path) -> dict:
    """A 3D template, its own mask, on the grid of :func:`_run_with_slices`' runs (a 4D one is
    refused, as samri_ml-register refuses it)."""
    path = _run_with_slices(tmp_path / "tpl.nii.gz", shape=(4, 5, 3))
    return {"template": path, "template_mask": path}


@pytest.mark.parametrize("meta, said", [
    ({"RepetitionTime": "1.0"}, "RepetitionTime '1.0' in bold_metadata[0] is not a number of "
                                "seconds above 0; hint: a number, 1.5, not \"1.5\""),
    ({"RepetitionTime": True}, "RepetitionTime True in bold_metadata[0] is not a number"),
    ({"RepetitionTime": 1000}, "RepetitionTime 1000 s in bold_metadata[0] is over 100 s: "
                               "milliseconds? hint: give it in seconds (1 for 1000 ms)"),
    ({"RepetitionTime": 1.0, "SliceTiming": [0, 0.3, 0.6], "SliceEncodingDirection": "z"},
     "SliceEncodingDirection 'z' in bold_metadata[0] is not one of i, j, k, i-, j-, k-; hint: "
     "fix it, or build with slice_timing=False"),
    ({"RepetitionTime": 1.0, "SliceTiming": ["0", "0.5", "0.2"]},
     "SliceTiming in bold_metadata[0] is not a list of numbers"),
    ({"RepetitionTime": 1.0, "SliceTiming": [0, 0.5]},
     "bold_metadata[0] gives 2 SliceTiming values for 3 slices along axis 2 "
     "(SliceEncodingDirection k); hint: fix it, or build with slice_timing=False"),
    ({"RepetitionTime": 1.0, "SliceTiming": [0, 0.3, 0.6], "SliceEncodingDirection": "j-"},
     "bold_metadata[0] gives 3 SliceTiming values for 5 slices along axis 1"),
    ({"SliceTiming": [0, 0.3, 0.6]}, "SliceTiming but no RepetitionTime in bold_metadata[0]"),
    ("rest", "bold_metadata[0] 'rest' is not a dict"),
])
def test_a_runs_metadata_is_refused_before_anything_is_built_naming_the_run(tmp_path, meta, said):
    """What samri_ml-register refuses in a run's sidecar, init_generic_wf refused late or not
    at all: a string RepetitionTime or a SliceEncodingDirection 'z' was a Nipype TraitError
    traceback, a SliceTiming count other than the run's slices failed in the node after N4
    had run, a repetition time in ms (1000) was written into the outputs. Now one line naming
    the run, before anything is built, by the same rules (samri_ml.func)."""
    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.raises(SamriMLError) as err:
        init_generic_wf(**_template(tmp_path), bold_files=[run], bold_metadata=[meta],
                        method="functional", flavour="fast", dummy_scans=0)
    assert str(err.value).startswith(f"bold_files[0] {run}: {said}")
    # the slice-timing rules are of slice timing: without it, such a run is taken
    if isinstance(meta, dict) and "SliceTiming" in meta and "RepetitionTime" in meta:
        init_generic_wf(**_template(tmp_path), bold_files=[run], bold_metadata=[meta],
                        method="functional", flavour="fast", slice_timing=False, dummy_scans=0)


def test_a_runs_slice_axis_comes_from_its_header_where_its_metadata_gives_none(tmp_path):
    """BIDS (and samri_ml-register): without SliceEncodingDirection, the NIfTI header's
    slice_dim is the slice axis; init_generic_wf took the third axis whatever the header said
    (5 slice times for a run of 5 slices along j went to the node, to fail there). Said in a
    note; empty SliceTiming is no slice timing (it failed in the node, the sidecar said
    'corrected')."""
    from samri_ml.errors import SamriMLNote

    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz", slice_dim=1)
    times = [0, 0.2, 0.4, 0.6, 0.8]
    with pytest.warns(SamriMLNote, match=r"no SliceEncodingDirection in bold_metadata\[0\]; "
                                         r"using the NIfTI header's slice axis \(slice_dim\), j"):
        wf = init_generic_wf(**_template(tmp_path), bold_files=[run],
                             bold_metadata=[{"RepetitionTime": 1.0, "SliceTiming": times}],
                             method="functional", flavour="fast", dummy_scans=0)
    assert wf.get_node("func0_wf.f_stc").inputs.slice_encoding_direction == "j"
    wf = init_generic_wf(**_template(tmp_path), bold_files=[run], dummy_scans=0,
                         bold_metadata=[{"RepetitionTime": 1.0, "SliceTiming": []}],
                         method="functional", flavour="fast", output_dir=str(tmp_path / "out"))
    assert "f_stc" not in _names(wf)
    assert wf.get_node("ds_func0").inputs.metadata["SliceTimingCorrected"] is False


@pytest.mark.parametrize("method", ["structural", "composite"])
def test_runs_without_a_structural_scan_are_registered_functional_with_a_note(tmp_path, method):
    """method='structural' without anat_file registered the runs straight to the template
    without a word (samri_ml-register notes it of a session without a T2w); now the same
    note, and the same registration (as method='functional')."""
    from samri_ml.errors import SamriMLNote

    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.warns(SamriMLNote, match=r"no anat_file: the functional runs are registered "
                                         rf"straight to the template \(as method='functional', "
                                         rf"not '{method}'\); hint: give anat_file"):
        wf = init_generic_wf(**_template(tmp_path), bold_files=[run], method=method,
                             flavour="fast", dummy_scans=0)
    assert "anat_wf" not in {n.name for n in wf._graph.nodes()}
    # its own registration, to the template (method='structural' has none)
    assert "fixed_image" in _fields_into(wf.get_node("func0_wf"), "f_register")


def test_a_run_cut_to_its_last_volume_by_dummy_scans_is_said_when_built(tmp_path):
    """dummy_scans=10 of a 5-volume run kept 1 volume (no slice timing, a one-volume run
    registered) and only the node's log said so; samri_ml-register notes it up front."""
    from samri_ml.errors import SamriMLNote

    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz", shape=(4, 5, 3, 5))
    with pytest.warns(SamriMLNote, match=r"bold_files\[0\] .*: 5 volumes, not more than "
                                         r"dummy_scans 10: 4 dropped, 1 kept; hint: "
                                         "dummy_scans 0 keeps them all"):
        init_generic_wf(**_template(tmp_path), bold_files=[run], method="functional",
                        flavour="fast", dummy_scans=10)


def test_a_mask_model_that_is_missing_or_would_go_unused_is_refused_in_one_line(tmp_path):
    """mask_model of a file that is not there was a Traits error traceback on the mask node's
    'model'; with masking='none' it was left unused without a word (samri_ml-register
    refuses both of --mask-model)."""
    missing = str(tmp_path / "own.keras")
    for factory in (init_generic_wf, init_structural_wf, init_functional_wf):
        kw = dict(template="t.nii.gz", template_mask="m.nii.gz", anat_file="a_T2w.nii.gz",
                  qc=False) if factory is init_generic_wf else {}
        with pytest.raises(SamriMLError, match=r"^mask_model '.*own.keras': model file not "
                                               r"found; hint: give the path of a .keras file"):
            factory(masking="unet", mask_model=missing, **kw)
        with pytest.raises(SamriMLError, match=r"^mask_model '.*own.keras' needs "
                                               r"masking='unet' .*masking is 'none'"):
            factory(mask_model=missing, **kw)


def test_a_4d_structural_scan_or_a_3d_run_is_refused_when_built(tmp_path):
    """A 4D anat_file or a 3D 'run' was taken by init_generic_wf (samri_ml-register refuses
    both): a 3D T2w given as a run was registered and written as a _bold derivative, without
    a word."""
    anat = _run_with_slices(tmp_path / "sub-01_T2w.nii.gz", shape=(4, 5, 3))
    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz")
    one = _run_with_slices(tmp_path / "sub-01_task-one_bold.nii.gz", shape=(4, 5, 3, 1))
    kw = dict(template=anat, template_mask=anat, dummy_scans=0)
    with pytest.raises(SamriMLError, match=r"^anat_file .*sub-01_task-rest_bold.nii.gz: "
                                           r"structural scan of 6 volumes \(4, 5, 3, 6\); "
                                           "expected one 3D volume; hint: average"):
        init_generic_wf(anat_file=run, **kw)
    for bad in (anat, one):
        with pytest.raises(SamriMLError, match=r"^bold_files\[1\] .*: functional run of shape "
                                               r"\(4, 5, 3(, 1)?\); expected a 4D time series"):
            init_generic_wf(anat_file=anat, bold_files=[run, bad], **kw)
    init_generic_wf(anat_file=anat, bold_files=[run], **kw)


def test_a_template_mask_off_the_templates_grid_or_empty_is_refused_when_built(tmp_path):
    """samri_ml-register refuses a --template-mask on another grid than the template or
    empty; init_generic_wf took either (the brain coverage measured on another grid, a
    registration to a template without its brain). The same rule, in the same words."""
    import nibabel as nb
    import numpy as np

    template = _run_with_slices(tmp_path / "tpl.nii.gz", shape=(8, 8, 8))
    data = np.zeros((8, 8, 8), np.uint8)
    data[2:6, 2:6, 2:6] = 1
    for name, img in (("coarse.nii.gz", nb.Nifti1Image(data[::2, ::2, ::2], np.diag([2, 2, 2, 1]))),
                      ("empty.nii.gz", nb.Nifti1Image(data * 0, np.eye(4))),
                      ("mask.nii.gz", nb.Nifti1Image(data, np.eye(4)))):
        img.to_filename(tmp_path / name)
    kw = dict(template=template, anat_file=template, flavour="fast")
    with pytest.raises(SamriMLError) as err:
        init_generic_wf(template_mask=str(tmp_path / "coarse.nii.gz"), **kw)
    assert str(err.value) == (
        f"template {template} (8, 8, 8) and mask {tmp_path / 'coarse.nii.gz'} (4, 4, 4) are not "
        "on the same grid; hint: resample the mask onto the template (antsApplyTransforms -n "
        "NearestNeighbor -r TEMPLATE)")
    with pytest.raises(SamriMLError, match=r"^template mask .*empty.nii.gz is empty$"):
        init_generic_wf(template_mask=str(tmp_path / "empty.nii.gz"), **kw)
    init_generic_wf(template_mask=str(tmp_path / "mask.nii.gz"), **kw)


@pytest.mark.parametrize("kw, said", [
    (dict(repetition_time="1.0"), "repetition_time '1.0': not a number of seconds above 0; "
                                  "hint: a number, 1.5, not \"1.5\""),
    (dict(repetition_time=1.0, slice_timing=[0, 0.5], slice_encoding_direction="z"),
     "slice_encoding_direction 'z': not one of i, j, k, i-, j-, k-"),
    (dict(repetition_time=1.0, slice_timing=["0", "0.5"]),
     "slice_timing ['0', '0.5']: not a list of numbers (the time in seconds of each slice)"),
])
def test_init_functional_wf_refuses_what_its_slice_timing_node_would_in_one_line(kw, said):
    """init_functional_wf(repetition_time='1.0') or slice_encoding_direction='z' was a Traits
    error traceback on the slice-timing node: one line naming the parameter now."""
    with pytest.raises(SamriMLError) as err:
        init_functional_wf(**kw)
    assert str(err.value) == said
    assert "f_stc" in _names(init_functional_wf(slice_timing=(0, 0.5), repetition_time=1))


def test_runs_whose_derivatives_would_share_a_name_are_refused_when_built(tmp_path):
    """A bold and a cbv run of the same entities: the transform and QC files drop the suffix,
    so init_generic_wf planned one name for both and one run overwrote the other's in
    silence (samri_ml-register refused them). One line naming both runs and a shared file;
    where their derivatives stay apart (no transform per run, no QC) it builds."""
    from samri_ml.interfaces.bids import planned_derivatives

    folder = tmp_path / "sub-01" / "func"
    folder.mkdir(parents=True)
    anat = _run_with_slices(tmp_path / "sub-01_T2w.nii.gz", shape=(4, 5, 3))
    bold = _run_with_slices(folder / "sub-01_task-rest_bold.nii.gz")
    cbv = _run_with_slices(folder / "sub-01_task-rest_cbv.nii.gz")
    template = _run_with_slices(tmp_path / "tpl.nii.gz", shape=(4, 5, 3))
    out = tmp_path / "out"
    kw = dict(template=template, template_mask=template, anat_file=anat, bold_files=[cbv, bold],
              dummy_scans=0, output_dir=str(out))
    with pytest.raises(SamriMLError) as err:
        init_generic_wf(**kw)
    assert str(err.value) == (
        f"bold_files[1] {bold} and bold_files[0] {cbv} would write the same transform and QC "
        "files, e.g. sub-01_task-rest_from-native_to-T2w_mode-image_xfm.h5; hint: give each "
        "its own output_dir")
    assert not out.exists()
    # a name without sub-: its data sink failed at run time, after the registration
    with pytest.raises(SamriMLError, match=r"^anat_file .*/tpl.nii.gz: not a BIDS file name "
                                           r"\(no sub-<label> entity\), so its derivatives "
                                           "cannot be named; hint: .* or build with "
                                           r"output_dir=None$"):
        init_generic_wf(**{**kw, "anat_file": kw["template"]})
    wf = init_generic_wf(**{**kw, "method": "structural", "qc": False})
    planned = [path for path, _ in planned_derivatives(wf)]
    assert len(planned) == len(set(planned)) == 4  # the T2w, its transform, the two runs


def test_a_template_mask_of_other_values_than_0_and_1_is_the_brain_above_half(tmp_path):
    """A probabilistic template mask: antsRegistration (8-bit) took its values below 1 as
    outside, the QC those above 0.5. The factory says so in a note and its
    template_binary_mask node gives every use the voxels above 0.5 (a 0/1 mask itself); a
    mask with nothing above 0.5 is refused as empty is."""
    import warnings

    import nibabel as nb
    import numpy as np

    from samri_ml.errors import SamriMLNote
    from samri_ml.masks import binary_mask_file

    template = _run_with_slices(tmp_path / "tpl.nii.gz", shape=(8, 8, 8))
    data = np.zeros((8, 8, 8), np.float32)
    data[1:7, 1:7, 1:7] = 0.3  # a halo
    data[2:6, 2:6, 2:6] = 1
    for name, values in (("soft.nii.gz", data), ("faint.nii.gz", data * 0.4),
                         ("binary.nii.gz", (data == 1).astype(np.uint8))):
        nb.Nifti1Image(values, np.eye(4)).to_filename(tmp_path / name)
    kw = dict(template=template, anat_file=template, flavour="fast")
    with pytest.raises(SamriMLError, match=r"^template mask .*faint.nii.gz has no voxel above "
                                           r"0.5 \(its values: 0.12 to 0.4\); hint: give a brain "
                                           "mask, 1 inside$"):
        init_generic_wf(template_mask=str(tmp_path / "faint.nii.gz"), **kw)
    with pytest.warns(SamriMLNote, match=r"^template mask .*soft.nii.gz is not binary \(values "
                                         r"0.3 to 1\): its voxels above 0.5 are taken as the "
                                         "brain, by the registration and the QC alike$"):
        wf = init_generic_wf(template_mask=str(tmp_path / "soft.nii.gz"), **kw)
    given = [(dst.name, c) for _, dst, d in wf._graph.out_edges(wf.get_node("inputnode"),
                                                                 data=True)
             for c in d["connect"] if c[0] == "template_mask"]
    assert given == [("template_binary_mask", ("template_mask", "in_file"))]  # its one use
    uses = {dst.name for _, dst in wf._graph.out_edges(wf.get_node("template_binary_mask"))}
    assert uses == {"anat_wf", "anat_vcf"}  # the registration and the QC
    soft = nb.load(binary_mask_file(tmp_path / "soft.nii.gz", tmp_path))
    assert soft.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(soft.dataobj), data == 1)
    binary = str(tmp_path / "binary.nii.gz")
    assert binary_mask_file(binary, tmp_path) == binary  # as it is: no copy
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/1 mask: no note
        init_generic_wf(template_mask=binary, **kw)


@pytest.mark.parametrize("method", ["composite", "functional"])
def test_init_generic_wf_binarises_the_template_mask_in_one_node(tmp_path, method):
    """init_generic_wf's template_binary_mask node gave its 0/1 mask to the streams, whose own
    template_binary_mask nodes read it again and gave it on unchanged: two or more nodes per
    session of one job (each a step of the run, 6 of the example data's 93). One node, its
    mask used by every registration that takes the template's mask, and by the QC."""
    anat = _run_with_slices(tmp_path / "sub-01_T2w.nii.gz", shape=(8, 8, 8))
    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz", shape=(8, 8, 8, 3))
    wf = init_generic_wf(template=anat, template_mask=anat, anat_file=anat, bold_files=[run],
                         method=method, flavour="fast", dummy_scans=0)
    graph = generate_expanded_graph(wf._create_flat_graph())  # the steps a run runs
    binarising = [node.fullname for node in graph.nodes()
                  if node.name == "template_binary_mask"]
    assert binarising == [f"{wf.name}.template_binary_mask"], binarising
    node = next(n for n in graph.nodes() if n.name == "template_binary_mask")
    uses = {dst.name for _, dst in graph.out_edges(node)}
    stream = {"composite": "s_fixed_masks", "functional": "f_fixed_masks"}[method]
    assert {stream, "anat_vcf", "func0_vcf"} <= uses, uses


@pytest.mark.parametrize("factory", [
    lambda: init_structural_wf(flavour="fast", masking="input"),
    lambda: init_structural_wf(flavour="samri"),
    lambda: init_functional_wf(flavour="fast", method="functional", masking="input"),
])
def test_the_streams_on_their_own_take_a_soft_template_mask_above_half(factory, tmp_path):
    """init_structural_wf/init_functional_wf used on their own gave a soft template mask to
    antsRegistration as it was, which reads it as 8-bit integers: a mask of 0.99 at most was
    empty and the scan left unregistered (Dice 0.85 against 0.97 on the example data). Every
    use of inputnode.template_mask now goes through their template_binary_mask node, which
    writes the voxels above 0.5 as a 0/1 mask."""
    import nibabel as nb
    import numpy as np

    wf = factory()
    graph = wf._graph
    uses = [dst.name for _, dst, d in graph.out_edges(wf.get_node("inputnode"), data=True)
            for c in d["connect"] if c[0] == "template_mask"]
    assert uses == ["template_binary_mask"]
    into = {dst.name for _, dst in graph.out_edges(wf.get_node("template_binary_mask"))}
    assert into and all(name.endswith(("_fixed_masks", "_fixed_brain", "_fixed_brain_masks"))
                        for name in into)
    soft = np.zeros((8, 8, 8), np.float32)
    soft[1:7, 1:7, 1:7] = 0.3
    soft[2:6, 2:6, 2:6] = 0.99
    nb.Nifti1Image(soft, np.eye(4)).to_filename(tmp_path / "soft.nii.gz")
    node = wf.get_node("template_binary_mask")
    node.base_dir = str(tmp_path / "work")
    node.inputs.in_file = str(tmp_path / "soft.nii.gz")
    given = nb.load(node.run().outputs.out_file)
    assert given.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(given.dataobj), soft > 0.5)


def test_the_same_run_given_twice_is_refused_when_built(tmp_path, monkeypatch):
    """init_generic_wf(bold_files=[a, a]) was built (a run registered twice; with output_dir
    both wrote one set of derivatives): one line naming both entries, also where the second
    is spelled another way (relative, ./)."""
    monkeypatch.chdir(tmp_path)
    anat = _run_with_slices(tmp_path / "sub-01_T2w.nii.gz", shape=(4, 5, 3))
    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz")
    other = _run_with_slices(tmp_path / "sub-01_task-other_bold.nii.gz")
    kw = dict(template=anat, template_mask=anat, anat_file=anat, dummy_scans=0)
    for again, output_dir in ((run, None),
                              ("./sub-01_task-rest_bold.nii.gz", str(tmp_path / "o"))):
        with pytest.raises(SamriMLError) as err:
            init_generic_wf(bold_files=[run, other, again], output_dir=output_dir, **kw)
        assert str(err.value) == (f"bold_files[2] {run}: the same run as bold_files[0]; hint: "
                                  "give each run once")
    init_generic_wf(bold_files=[run, other], **kw)


@pytest.mark.parametrize("what, value", [("qc", "false"), ("slice_timing", "no"), ("qc", 0),
                                         ("slice_timing", None)])
def test_a_switch_that_is_no_bool_is_refused_when_built(tmp_path, what, value):
    """qc='false' or slice_timing='no' (strings, true) built the QC and the slice timing
    they were to leave out, without a word."""
    import numpy as np

    anat = _run_with_slices(tmp_path / "sub-01_T2w.nii.gz", shape=(4, 5, 3))
    run = _run_with_slices(tmp_path / "sub-01_task-rest_bold.nii.gz", shape=(4, 5, 3, 20))
    kw = dict(template=anat, template_mask=anat, anat_file=anat, bold_files=[run],
              bold_metadata=[{"RepetitionTime": 1.0, "SliceTiming": [0, 0.3, 0.6]}])
    with pytest.raises(SamriMLError) as err:
        init_generic_wf(**kw, **{what: value})
    assert str(err.value) == f"{what} {value!r}: must be True or False"
    left_out = {"qc": "anat_vcf", "slice_timing": "f_stc"}[what]
    assert left_out in _names(init_generic_wf(**kw, **{what: np.True_}))
    assert left_out not in _names(init_generic_wf(**kw, **{what: np.False_}))


def test_a_4d_template_or_template_mask_is_refused_when_built_as_the_command_does(tmp_path):
    """samri_ml-register refused a 4D --template (or --template-mask); init_generic_wf took it
    (antsRegistration read its first volume). The same check, in the command's words."""
    from samri_ml.io import load_nifti

    anat = _run_with_slices(tmp_path / "sub-01_T2w.nii.gz", shape=(4, 5, 3))
    four = _run_with_slices(tmp_path / "tpl4d.nii.gz", shape=(4, 5, 3, 2))
    with pytest.raises(SamriMLError) as command:
        load_nifti(four, allow_4d=False)  # samri_ml-register's check of --template
    assert str(command.value) == f"{four}: has 4 dimensions (4, 5, 3, 2); expected 3D"
    for given in (dict(template=four, template_mask=anat),
                  dict(template=anat, template_mask=four)):
        for qc in (True, False):
            with pytest.raises(SamriMLError) as err:
                init_generic_wf(anat_file=anat, qc=qc, **given)
            assert str(err.value) == str(command.value)
    one = _run_with_slices(tmp_path / "tpl1.nii.gz", shape=(4, 5, 3, 1))  # one volume: 3D
    init_generic_wf(anat_file=anat, template=one, template_mask=anat)


def test_init_generic_wf_says_a_negative_voxel_size_once_in_its_own_words(tmp_path, capfd):
    """A run whose header's pixdim is negative: init_generic_wf gave nibabel's raw
    'pixdim[1,2,3] should be positive; setting to abs of pixdim values' alone (the headers
    read to size the run's steps), never samri_ml's note of what it means (ANTs mirrors that
    axis), which samri_ml-register says."""
    import gzip
    import warnings

    import numpy as np

    from samri_ml.errors import SamriMLNote

    tpl = _template(tmp_path)
    run = tmp_path / "sub-01_task-rest_bold.nii.gz"
    _run_with_slices(run, shape=(4, 5, 3, 6))
    raw = bytearray(gzip.decompress(run.read_bytes()))
    raw[80:84] = np.array([-1.0], "<f4").tobytes()  # pixdim[1] of the NIfTI-1 header
    run.write_bytes(gzip.compress(bytes(raw)))
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("default")  # Python's own: each place's note once
        init_generic_wf(**tpl, anat_file=None, bold_files=[str(run)], method="functional",
                        flavour="fast", dummy_scans=0)
    notes = [str(w.message) for w in said if issubclass(w.category, SamriMLNote)
             and "pixdim) is negative" in str(w.message)]
    assert len(notes) == 1, [str(w.message) for w in said]
    err = capfd.readouterr().err
    assert "setting to abs" not in err, err
