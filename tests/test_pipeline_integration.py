"""samri_ml inside a lab's own pipelines: its Python API in forked workers, its derivatives sinks
on reruns, its workflow factories with a mask slot, and its interfaces' cache keys (real
files, real Nipype runs, real forks; no mocks)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from samri_ml.errors import SamriMLError
from samri_ml.models.inference import FORKED_MESSAGE

FORK_TIMEOUT = 90  # seconds; a hang fails the test instead of blocking it


def _in_fork(fn, timeout: float = FORK_TIMEOUT):
    """``fn()`` in a child forked from this process (a ``multiprocessing`` fork context, as
    MultiProc's and a fork Pool's workers); returns ``("ok", value)`` or ``("error", "Type:
    message")``. A child that does not answer within ``timeout`` fails the test (and is
    killed)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def target():
        try:
            answer = ("ok", fn())
        except BaseException as err:  # noqa: BLE001 - everything goes back to the test
            answer = ("error", f"{type(err).__name__}: {err}")
        send.send(answer)

    proc = ctx.Process(target=target)
    proc.start()
    try:
        if not recv.poll(timeout):
            pytest.fail(f"the forked child hung: no answer in {timeout} s")
        return recv.recv()
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


@pytest.fixture(scope="module")
def tiny_model_ran():
    """A tiny convolutional network run through :func:`inference_fn` in this process: its
    TensorFlow has started its thread pools before the tests fork."""
    from samri_ml.models.inference import import_keras, inference_fn

    keras = import_keras()
    inp = keras.Input((16, 16, 1))
    model = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same")(inp))
    x = np.random.default_rng(0).random((4, 16, 16, 1), dtype=np.float32)
    out = np.asarray(inference_fn(model)(x))
    assert out.shape == (4, 16, 16, 2)
    return model, x


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    from samri_ml.example import make_template

    path = tmp_path_factory.mktemp("head") / "head_T2w.nii.gz"
    nb.save(make_template(0, contrasts=("t2",), supersample=1)["T2w"], path)
    return path


# ------------------------------------------------------------ TensorFlow in forked processes


def test_a_network_compiled_before_the_fork_refuses_in_the_child(tiny_model_ran):
    """The forward pass of a model compiled in the parent hung for ever in a forked child."""
    from samri_ml.models.inference import inference_fn, tensorflow_inherited

    model, x = tiny_model_ran
    assert not tensorflow_inherited()
    assert _in_fork(tensorflow_inherited) == ("ok", True)
    status, message = _in_fork(lambda: np.asarray(inference_fn(model)(x)).shape)
    assert status == "error" and message == f"SamriMLError: {FORKED_MESSAGE}"
    assert "\n" not in message and "hint: run the workflow with the Linear plugin" in message
    assert "'forkserver' or 'spawn'" in message
    # the parent itself still runs it
    assert np.asarray(inference_fn(model)(x)).shape == (4, 16, 16, 2)


def test_predict_mask_in_a_forked_child_refuses_instead_of_hanging(tiny_model_ran, head):
    """A lab's own Function node or fork Pool calling the documented predict_mask after
    TensorFlow ran in the parent: loading the U-Net hung there too, not only running it."""
    from samri_ml.masking.predict import predict_mask

    def child():
        return int(np.asarray(predict_mask(str(head), views=("coronal",), flip=False).dataobj).sum())

    t0 = time.monotonic()
    status, message = _in_fork(child)
    assert (status, message) == ("error", f"SamriMLError: {FORKED_MESSAGE}")
    assert time.monotonic() - t0 < 30


def test_plate_ranking_in_a_forked_child_refuses_instead_of_hanging(tiny_model_ran, tmp_path):
    from samri_ml.plates.identify import default_model_dir, make_identifier

    with np.load(default_model_dir() / "plates_index.npz") as z:
        section = z["thumbnails"][len(z["plates"]) // 2]

    def child():
        return make_identifier().rank([section], regions=False)[0]["ranking"][0]

    status, message = _in_fork(child)
    assert (status, message) == ("error", f"SamriMLError: {FORKED_MESSAGE}")


LAB_SESSION = """
import sys
import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from samri_ml.models.inference import import_keras, inference_fn

keras = import_keras()  # the lab's session ran a network before the workflow
inp = keras.Input((16, 16, 1))
model = keras.Model(inp, keras.layers.Conv2D(2, 3, padding="same")(inp))
inference_fn(model)(np.zeros((1, 16, 16, 1), np.float32))


def mask(in_file):
    import os

    from samri_ml.masking.predict import predict_mask

    out = os.path.abspath("mask.nii.gz")
    predict_mask(in_file, views=("coronal",), flip=False).to_filename(out)
    return out


head, work = sys.argv[1:3]
wf = pe.Workflow("lab", base_dir=work + "/work")
node = pe.Node(niu.Function(function=mask, input_names=["in_file"], output_names=["out"]),
               name="mask")
node.inputs.in_file = head
wf.add_nodes([node])
wf.config["execution"] = {"crashdump_dir": work + "/crash", "crashfile_format": "txt"}
try:
    wf.run(plugin="MultiProc", plugin_args={"n_procs": 1})
except RuntimeError as err:
    print("RuntimeError:", err)
"""


def test_a_function_node_under_multiproc_fails_with_the_hint(head, tmp_path):
    """The audit's case: a lab's niu.Function node calling predict_mask, under MultiProc, after
    TensorFlow ran in the session. It sat at "Running 1 tasks" for ever. The session is a
    Python process of its own (forking this test process, which holds the threads of every
    test before it, could hang for reasons of its own), whose MultiProc workers are forked."""
    import subprocess
    import sys

    script = tmp_path / "lab.py"
    script.write_text(LAB_SESSION)
    try:
        r = subprocess.run([sys.executable, str(script), str(head), str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the lab's workflow hung (no answer in 300 s)")
    assert "RuntimeError:" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    crash = "".join(p.read_text() for p in (tmp_path / "crash").glob("*.txt"))
    assert f"SamriMLError: {FORKED_MESSAGE}" in crash


FAILING_NODES_AFTER_TENSORFLOW = """
import sys
import tensorflow  # noqa: F401 - the lab's session had run a network before the workflow
from nipype.pipeline import engine as pe
from samri_ml.interfaces import IdentifyPlate, MaskBrain

flat, section, work = sys.argv[1:4]
wf = pe.Workflow("lab", base_dir=work + "/work")
wf.config["execution"] = {"crashdump_dir": work + "/crash", "crashfile_format": "txt"}
wf.add_nodes([pe.Node(MaskBrain(in_file=flat), name="mask"),
              pe.Node(IdentifyPlate(in_file=section, upright=True, any_orientation=True),
                      name="plate")])
try:
    wf.run(plugin="MultiProc", plugin_args={"n_procs": 2})
except RuntimeError as err:
    print("RuntimeError:", err)
"""


def test_a_node_failing_in_its_new_interpreter_keeps_its_one_line_error(tmp_path):
    """A MaskBrain node given a 2D image, under MultiProc in a session that had imported
    TensorFlow (the node then runs in a new interpreter), left in its crash file
    'RuntimeError: samri_ml.interfaces.masking.mask_files in a new process failed:
    samri_ml.errors.SamriMLError: ...', the same cause that is the plain SamriMLError line
    without TensorFlow in the session; and IdentifyPlate's contradicting settings were a
    ValueError. Now both crash files end with the SamriMLError line alone."""
    import subprocess
    import sys

    import cv2

    from samri_ml.plates.identify import default_model_dir
    from samri_ml.report import failed_steps

    flat = tmp_path / "flat scan.nii.gz"  # a space too: a lab's folder names have them
    nb.save(nb.Nifti1Image(np.ones((20, 20, 1), np.float32), np.eye(4)), flat)
    section = tmp_path / "section.png"
    with np.load(default_model_dir() / "plates_index.npz") as z:
        cv2.imwrite(str(section), z["thumbnails"][60])
    script = tmp_path / "lab.py"
    script.write_text(FAILING_NODES_AFTER_TENSORFLOW)
    r = subprocess.run([sys.executable, str(script), str(flat), str(section), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert "RuntimeError:" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    causes = {step["node"]: step["cause"] for step in failed_steps(tmp_path / "crash")}
    assert causes == {
        "mask": f"samri_ml.errors.SamriMLError: {flat}: is a 2D image (20, 20, 1); a 3D "
                "volume is needed",
        "plate": "samri_ml.errors.SamriMLError: IdentifyPlate: upright and any_orientation "
                 "contradict each other (a section dorsal side up, or one that may come "
                 "turned); hint: set one of them"}


def test_maskbrain_in_a_forked_worker_still_runs_in_a_new_interpreter(tiny_model_ran, head,
                                                                      tmp_path):
    """The interfaces' own way out: in a forked process they run the network in a new
    interpreter, where import_keras and inference_fn have no reason to refuse."""
    from samri_ml.interfaces.masking import MaskBrain

    def child():
        os.chdir(tmp_path)
        out = MaskBrain(in_file=str(head), views=["coronal"], flip=False).run().outputs
        return out.out_mask

    status, out_mask = _in_fork(child, timeout=150)
    assert status == "ok", out_mask
    assert np.asarray(nb.load(out_mask).dataobj).sum() > 1000


def test_a_child_killed_by_a_signal_is_named():
    """A new-process child killed by a signal (the out-of-memory killer's SIGKILL) said only
    "failed: (no message)"."""
    from samri_ml.models.inference import run_in_new_process

    with pytest.raises(RuntimeError, match=r"^os\.abort in a new process failed: killed by "
                                           r"SIGABRT \(signal 6\)$"):
        run_in_new_process("os", "abort", {})
    with pytest.raises(RuntimeError, match=r"failed: killed by SIGKILL \(signal 9; out of "
                                           r"memory\?\)$"):
        run_in_new_process("os", "system", {"command": "kill -9 $PPID; sleep 5"})
    # an error in the child still gives its last line, as before
    with pytest.raises(RuntimeError, match=r"failed: FileNotFoundError: .*no-such-file"):
        run_in_new_process("os", "stat", {"path": "/no-such-file"})


def test_a_samri_ml_error_of_a_new_process_child_keeps_its_class():
    """A child's SamriMLValueError (the QC's errors, a ValueError too) came back as
    "RuntimeError: ... in a new process failed: samri_ml.errors.SamriMLValueError: ...": only
    the exact SamriMLError line was given back as samri_ml's own. Now each samri_ml error comes
    back as itself, its one line without the class name; other lines stay RuntimeErrors."""
    from samri_ml.errors import SamriMLError, SamriMLValueError
    from samri_ml.models.inference import _samri_ml_error, run_in_new_process

    with pytest.raises(SamriMLValueError, match=r"^raw\.nii\.gz: 1 voxel\(s\) are NaN$") as got:
        run_in_new_process("samri_ml.qc.smoothness", "_refuse",
                           {"message": "1 voxel(s) are NaN", "name": "raw.nii.gz"})
    assert isinstance(got.value, ValueError)
    with pytest.raises(SamriMLError, match=r"^/no/such\.nii\.gz: no such file; hint: ") as got:
        run_in_new_process("samri_ml.io", "load_nifti", {"path": "/no/such.nii.gz"})
    assert type(got.value) is SamriMLError
    # a name that only looks like samri_ml's stays the child's line (a RuntimeError)
    assert _samri_ml_error("samri_ml.errors.SamriMLNopeError: x") is None
    assert _samri_ml_error("ValueError: samri_ml.errors.SamriMLError: x") is None


# ---------------------------------------------------------------- relative paths in nodes


def test_relative_paths_work_in_nodes_and_keep_symlinked_names(head, tmp_path, monkeypatch):
    """``MaskBrain(in_file="sub-01_T2w.nii.gz")`` (as docs/masking.rst shows it) in a Node, or
    ``interface.run(cwd=...)``, failed with "sub-01_T2w.nii.gz: no such file", a file that
    was there: Nipype runs a node in a folder of its own. A relative ``base_directory`` of the
    derivatives sink wrote inside the node's folder. The paths are now absolute from where
    they were set, symbolic links kept (a DataLad dataset's scans keep their names)."""
    from samri_ml.interfaces import DerivativesDataSink, MaskBrain, VolumeConservation

    monkeypatch.chdir(tmp_path)
    (tmp_path / "annex").mkdir()
    shutil.copyfile(head, tmp_path / "annex" / "MD5E-s1234--0123abcd.nii.gz")
    os.symlink("annex/MD5E-s1234--0123abcd.nii.gz", "sub-01_T2w.nii.gz")

    node = pe.Node(MaskBrain(in_file="sub-01_T2w.nii.gz", views=["coronal"], flip=False,
                             max_slices=32), name="mask", base_dir="work")
    assert node.inputs.in_file == str(tmp_path / "sub-01_T2w.nii.gz")  # the link, not its key
    out_mask = Path(node.run().outputs.out_mask)
    assert out_mask == tmp_path / "work" / "mask" / "sub-01_T2w_mask.nii.gz"
    brain = np.asarray(nb.load(out_mask).dataobj)
    assert brain.dtype == np.uint8 and brain.sum() > 1000

    (tmp_path / "elsewhere").mkdir()
    vcf = VolumeConservation(processed_file="sub-01_T2w.nii.gz",
                             raw_file="annex/MD5E-s1234--0123abcd.nii.gz")
    assert vcf.run(cwd=str(tmp_path / "elsewhere")).outputs.vcf == pytest.approx(1.0)

    # the raw file, relative too: the derivatives' description named the node's folder as
    # the raw dataset
    (tmp_path / SOURCE).parent.mkdir(parents=True)
    os.symlink(tmp_path / "sub-01_T2w.nii.gz", tmp_path / SOURCE)
    sink = pe.Node(DerivativesDataSink(in_file=str(out_mask), source_file=SOURCE,
                                       base_directory="derivatives", desc="brain",
                                       suffix="mask"), name="ds_mask", base_dir="work")
    stored = Path(sink.run().outputs.out_file)
    assert stored == (tmp_path / "derivatives" / "sub-01" / "ses-1" / "anat" /
                      "sub-01_ses-1_desc-brain_mask.nii.gz")
    assert stored.read_bytes() == out_mask.read_bytes()
    described = json.loads((tmp_path / "derivatives" / "dataset_description.json").read_text())
    assert described["DatasetLinks"]["raw"] == tmp_path.as_uri(), described


# ------------------------------------------------------------------- derivatives on reruns


SOURCE = "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"


def _sink_wf(base, in_file, out_dir):
    from samri_ml.interfaces.bids import DerivativesDataSink

    wf = pe.Workflow("sinks", base_dir=str(base))
    ds = pe.Node(DerivativesDataSink(in_file=str(in_file), source_file=SOURCE,
                                     base_directory=str(out_dir), space="Phantom",
                                     desc="preproc", metadata={"SkullStripped": False}),
                 name="ds_anat")  # a plain Node, as a lab would use the exported interface
    wf.add_nodes([ds])
    return wf


def _downstream_wf(base, derivative):
    def stamp(in_file):
        import time

        return time.time()

    wf = pe.Workflow("second_level", base_dir=str(base))
    node = pe.Node(niu.Function(function=stamp, input_names=["in_file"],
                                output_names=["when"]), name="stamp")
    node.inputs.in_file = str(derivative)
    wf.add_nodes([node])
    return wf


def _result(graph, name):
    return next(n for n in graph.nodes() if n.name == name).result.outputs


def test_the_factories_take_relative_paths_on_their_inputnode(head, tmp_path, monkeypatch):
    """``wf.inputs.inputnode.in_file = "sub-01_T2w.nii.gz"`` on init_structural_wf (the
    README's snippet without its abspath calls, as a lab first writes it) reached N4 as it
    was, which ran in its node's folder: 'file sub-01_T2w.nii.gz does not exist', then a
    segmentation fault; so did relative iterables over subjects, and later a relative
    ``pathlib.Path``. The inputnodes now make existing relative paths absolute where they are
    set, iterables too (symbolic links kept, as the interfaces' path inputs)."""
    from samri_ml.workflows import init_structural_wf

    img = nb.load(head)  # halved, for time: 32x48x24
    small = nb.Nifti1Image(np.asanyarray(img.dataobj)[::2, ::2, ::2],
                           img.affine @ np.diag([2, 2, 2, 1]))
    monkeypatch.chdir(tmp_path)
    nb.save(small, "template.nii.gz")
    nb.save(nb.Nifti1Image((small.get_fdata() > np.percentile(small.get_fdata(), 60))
                           .astype(np.uint8), small.affine), "template_mask.nii.gz")
    for sub in ("01", "02"):
        os.symlink("template.nii.gz", f"sub-{sub}_T2w.nii.gz")

    wf = init_structural_wf(flavour="fast", masking="input")
    wf.get_node("inputnode").iterables = ("in_file", ["sub-01_T2w.nii.gz", "sub-02_T2w.nii.gz"])
    # a pathlib.Path as a string (a relative Path was left as it was, and N4 failed on it)
    wf.inputs.inputnode.template = Path("template.nii.gz")
    wf.inputs.inputnode.template_mask = "template_mask.nii.gz"
    wf.inputs.inputnode.in_mask = Path("template_mask.nii.gz")
    assert wf.inputs.inputnode.template == str(tmp_path / "template.nii.gz")
    wf.base_dir = "work"
    graph = wf.run()
    warped = sorted(node.result.outputs.output_image for node in graph.nodes()
                    if node.name == "s_warp")
    # the links' names
    assert [Path(w).name for w in warped] == [f"sub-{sub}_T2w_corrected_trans.nii.gz"
                                              for sub in ("01", "02")]
    for path in warped:
        out = nb.load(path).get_fdata()
        assert out.shape == small.shape
        assert np.corrcoef(out.ravel(), small.get_fdata().ravel())[0, 1] > 0.9


def test_a_space_the_ants_programs_would_get_split_is_one_line(head, tmp_path):
    """A lab's workflow of init_structural_wf whose base_dir had a space failed in s_register
    with ANTs' 'file /tmp/.../workdir/... does not exist', ITK's 'Fixed Image has not been
    set' and Nipype's TraitError on the missing transform: Nipype hands the bracketed paths
    to antsRegistration unquoted. Now the crash file says it in one line, before the program
    runs; a scan in a folder with a space, which Nipype quotes, still runs."""
    from samri_ml.report import crash_cause
    from samri_ml.workflows import init_structural_wf
    from samri_ml.workflows.registration import _n4_node

    data = tmp_path / "lab data"
    data.mkdir()
    scan = data / "sub-01_T2w.nii.gz"
    shutil.copy(head, scan)
    n4 = pe.Workflow("n4_only", base_dir=str(tmp_path / "work"))
    node = _n4_node("s_biascorrect", "fast", "structural", 1)
    node.inputs.input_image = str(scan)
    n4.add_nodes([node])
    corrected = _result(n4.run(), "s_biascorrect").output_image
    assert nb.load(corrected).shape == nb.load(head).shape

    wf = init_structural_wf(flavour="fast")
    wf.base_dir = str(tmp_path / "work dir")
    wf.config["execution"] = {"crashdump_dir": str(tmp_path / "crash"),
                              "crashfile_format": "txt"}
    wf.inputs.inputnode.in_file = wf.inputs.inputnode.template = str(head)
    img = nb.load(head)  # a 0/1 mask, used as it is (a soft one is written into the work dir)
    mask = (np.asanyarray(img.dataobj) > np.percentile(img.dataobj, 60)).astype(np.uint8)
    nb.Nifti1Image(mask, img.affine).to_filename(tmp_path / "mask.nii.gz")
    wf.inputs.inputnode.template_mask = str(tmp_path / "mask.nii.gz")
    with pytest.raises(RuntimeError):
        wf.run()
    moving = (tmp_path / "work dir/structural_wf/s_biascorrect"
              / head.name.replace(".nii.gz", "_corrected.nii.gz"))
    (crash,) = (tmp_path / "crash").glob("crash-*s_register-*.txt")
    assert crash_cause(crash.read_text()) == (
        f"samri_ml.errors.SamriMLError: antsRegistration: moving_image '{moving}' has a space "
        "in its path, which Nipype hands to the ANTs programs unquoted; hint: copy or link it "
        "to a path without spaces (the workflow's base_dir too)")
    assert len(list((tmp_path / "crash").iterdir())) == 1  # the one failed step


def test_a_rerun_keeps_unchanged_derivatives_and_restores_lost_ones(head, tmp_path):
    """A no-op rerun re-copied every derivative (new modification times, so a downstream
    workflow hashing by time recomputed); the exported sink used as a plain Node was cached,
    so a deleted derivative was never written again."""
    src = tmp_path / "preproc.nii.gz"
    shutil.copyfile(head, src)
    out_dir, work = tmp_path / "derivatives", tmp_path / "work"
    graph = _sink_wf(work, src, out_dir).run()
    derivative = Path(_result(graph, "ds_anat").out_file)
    sidecar = derivative.with_name(derivative.name.replace(".nii.gz", ".json"))
    assert derivative.name == "sub-01_ses-1_space-Phantom_desc-preproc_T2w.nii.gz"
    assert json.loads(sidecar.read_text()) == {"SkullStripped": False}
    # the sidecar is an output too, for a node downstream (niworkflows' out_meta)
    assert Path(_result(graph, "ds_anat").out_meta) == sidecar
    before = {p: p.stat().st_mtime_ns for p in (derivative, sidecar)}
    first = _result(_downstream_wf(work, derivative).run(), "stamp").when

    time.sleep(0.05)  # a copy now would have a later modification time
    _sink_wf(work, src, out_dir).run()
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert _result(_downstream_wf(work, derivative).run(), "stamp").when == first  # cached

    derivative.unlink()  # lost: the always-running sink writes it again
    sidecar.unlink()
    _sink_wf(work, src, out_dir).run()
    assert derivative.read_bytes() == src.read_bytes()
    assert json.loads(sidecar.read_text()) == {"SkullStripped": False}

    derivative.write_bytes(b"another run's file")  # overwritten: replaced
    _sink_wf(work, src, out_dir).run()
    assert derivative.read_bytes() == src.read_bytes()
    # the same size and time but other bytes: still replaced (compared byte by byte)
    stat = derivative.stat()
    data = bytearray(derivative.read_bytes())
    data[-1] ^= 0xFF
    derivative.write_bytes(bytes(data))
    os.utime(derivative, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _sink_wf(work, src, out_dir).run()
    assert derivative.read_bytes() == src.read_bytes()


def test_the_sink_refuses_a_non_bids_source_with_one_line(head, tmp_path):
    from samri_ml.interfaces.bids import DerivativesDataSink

    sink = DerivativesDataSink(in_file=str(head), source_file="/data/scan.nii.gz",
                               base_directory=str(tmp_path))
    with pytest.raises(SamriMLError) as err:
        sink.run()
    message = str(err.value).splitlines()[0]
    assert message.startswith("/data/scan.nii.gz: not a BIDS file name (no sub-<label> entity)")
    assert "hint: give the raw BIDS file it derives from" in message
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------- masking='input'


def test_generic_wf_refuses_input_masking():
    from samri_ml.workflows import init_generic_wf

    with pytest.raises(SamriMLError, match=r"init_generic_wf: masking='input' needs masks, and "
                                           r"it takes none; hint: use masking='unet' or 'none'"):
        init_generic_wf(template="t.nii.gz", template_mask="m.nii.gz", anat_file="a_T2w.nii.gz",
                        masking="input")


def test_generic_wf_refuses_a_template_name_that_is_no_bids_label(head, tmp_path):
    """``template_name='dsurqec_200micron'`` (SAMRI's template's name) wrote
    ``sub-01_space-dsurqec_200micron_desc-preproc_T2w.nii.gz``, which BIDS tools, and samri_ml's
    own parse_entities, read as ``space-dsurqec``; the factory refuses it as samri_ml-register
    refuses --template-name."""
    from samri_ml.bids import parse_entities
    from samri_ml.interfaces.bids import planned_derivatives
    from samri_ml.workflows import init_generic_wf

    anat = tmp_path / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    anat.parent.mkdir(parents=True)
    shutil.copy(head, anat)
    given = {"template": str(head), "template_mask": str(head), "anat_file": str(anat),
             "output_dir": str(tmp_path / "out"), "flavour": "fast"}
    with pytest.raises(SamriMLError) as err:
        init_generic_wf(**given, template_name="dsurqec_200micron")
    assert str(err.value) == ("template_name 'dsurqec_200micron': a BIDS label is letters and "
                              "digits only (it becomes space-<label> in every file name); hint: "
                              "template_name='dsurqec200micron'")
    wf = init_generic_wf(**given, template_name="dsurqec200micron")
    spaces = {parse_entities(path).get("space") for path, _ in planned_derivatives(wf)}
    assert spaces == {"dsurqec200micron", None}  # None: the transform's from-/to- name


def test_a_structural_wf_without_its_input_mask_says_so(tmp_path):
    """init_structural_wf(masking='input') with nothing connected to in_mask crashed late with
    "TypeError: _replicate() missing 1 required positional argument"."""
    from samri_ml.workflows import init_structural_wf

    rng = np.random.default_rng(0)
    affine = np.diag([0.4, 0.4, 0.4, 1.0])
    scan, mask = tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz"
    nb.save(nb.Nifti1Image(rng.random((12, 12, 12), dtype=np.float32) + 1, affine), scan)
    nb.save(nb.Nifti1Image(np.ones((12, 12, 12), np.uint8), affine), mask)
    wf = init_structural_wf(flavour="fast", masking="input", name="lab_anat")
    wf.inputs.inputnode.in_file = str(scan)
    wf.inputs.inputnode.template = str(scan)
    wf.inputs.inputnode.template_mask = str(mask)
    wf.base_dir = str(tmp_path / "work")
    wf.config["execution"] = {"crashdump_dir": str(tmp_path / "crash"),
                              "crashfile_format": "txt", "stop_on_first_crash": True}
    with pytest.raises(Exception):  # noqa: B017 - Nipype's own error; the crash file says why
        wf.run()
    crash = "".join(p.read_text() for p in (tmp_path / "crash").glob("*s_in_mask*.txt"))
    assert ("SamriMLError: masking='input' but no mask was given (inputnode.in_mask is "
            "neither connected nor set); hint: connect your mask") in crash
    assert "_replicate() missing" not in crash

    # given, the mask goes through as it is
    node = init_structural_wf(flavour="fast", masking="input").get_node("s_in_mask")
    node.base_dir = str(tmp_path / "node")
    node.inputs.in_mask = str(mask)
    assert node.run().outputs.out_mask == str(mask)


# ------------------------------------------------------------------ models in cache keys


def _hashed(node) -> tuple[dict, str]:
    listed, digest = node.interface.inputs.get_hashval(hash_method="timestamp")
    return dict(listed), digest


def _rewrite_keeping_size_and_time(path: Path) -> None:
    """Other bytes in the file, with its old size and modification time (what Nipype's
    timestamp hash of a File input sees)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_maskbrain_cache_key_follows_the_model_content(head, tmp_path):
    """Cached masks were reused after the model changed (a samri_ml upgrade shipping new
    weights): the hashed inputs named no model at all."""
    from samri_ml.interfaces.masking import MaskBrain
    from samri_ml.masking.predict import default_model_path
    from samri_ml.models.inference import file_checksum

    shipped = MaskBrain(in_file=str(head)).inputs
    assert shipped.model_checksum == file_checksum(default_model_path())
    assert shipped.model_checksum.startswith(f"{default_model_path().stat().st_size}:")
    assert "model_checksum" in dict(shipped.get_hashval()[0])

    model = tmp_path / "my_unet.keras"
    shutil.copyfile(default_model_path(), model)

    def node():  # as a lab's script builds it, on every run
        return pe.Node(MaskBrain(in_file=str(head), model=str(model), views=["coronal"],
                                 flip=False, max_slices=32), name="mask",
                       base_dir=str(tmp_path / "work"))

    assert node().inputs.model_checksum == shipped.model_checksum  # the same bytes
    node().run()
    result = tmp_path / "work" / "mask" / "result_mask.pklz"
    stamp = result.stat().st_mtime_ns
    node().run()
    assert result.stat().st_mtime_ns == stamp  # a rerun reuses the cached mask
    before = _hashed(node())
    _rewrite_keeping_size_and_time(model)
    after = _hashed(node())
    assert after[0]["model"] == before[0]["model"]  # Nipype's own hash of the file: unchanged
    assert after[0]["model_checksum"] != before[0]["model_checksum"]
    assert after[1] != before[1]
    try:  # now the node runs again (the changed bytes may not load: either way not reused)
        node().run()
    except Exception as err:  # noqa: BLE001
        assert "my_unet.keras" in str(err)
    else:
        assert result.stat().st_mtime_ns != stamp


def test_maskbrain_cache_key_follows_the_scans_name_and_content(head, tmp_path):
    """A scan renamed (``mv sub-1_T2w.nii.gz sub-01_T2w.nii.gz``, a BIDS label fixed) kept its
    cached mask, named ``sub-1_T2w_mask.nii.gz`` (Nipype's key holds a file's size and time,
    not its path), and a scan replaced with its old size and time kept the old scan's mask."""
    import copy

    import nipype

    from samri_ml.interfaces.masking import MaskBrain

    old, new = tmp_path / "sub-1_T2w.nii.gz", tmp_path / "sub-01_T2w.nii.gz"
    shutil.copy2(head, old)

    def node(scan):  # as a lab's script builds it, on every run
        return pe.Node(MaskBrain(in_file=str(scan), views=["coronal"], flip=False,
                                 max_slices=32), name="mask", base_dir=str(tmp_path / "work"))

    first = node(old).run().outputs.out_mask
    result = tmp_path / "work" / "mask" / "result_mask.pklz"
    stamp = result.stat().st_mtime_ns
    assert node(old).run().outputs.out_mask == first and result.stat().st_mtime_ns == stamp
    old.rename(new)
    assert Path(node(new).run().outputs.out_mask).name == "sub-01_T2w_mask.nii.gz"
    before = _hashed(node(new))
    _rewrite_keeping_size_and_time(new)
    after = _hashed(node(new))
    assert after[0]["in_file"] == before[0]["in_file"]  # Nipype's own hash: size and time
    assert after[0]["in_file_checksum"] != before[0]["in_file_checksum"]
    assert after[1] != before[1]
    # a MapNode's key holds the path and content of each scan of its list
    mapped = pe.MapNode(MaskBrain(), iterfield=["in_file"], name="masks")
    mapped.inputs.in_file = [str(new), str(head)]
    mapped.config = copy.deepcopy(nipype.config._sections)  # what a workflow gives it
    listed = dict(mapped._get_hashval()[0])["in_file_checksum"]
    assert listed.startswith(f"{new} ") and f"; {head} " in listed


def test_identifyplate_cache_key_follows_the_model_and_index_content(tmp_path):
    from samri_ml.interfaces.plates import IdentifyPlate, plates_checksum
    from samri_ml.models.inference import file_checksum
    from samri_ml.plates.identify import default_model_dir

    shipped = IdentifyPlate().inputs.model_checksum
    for name in ("plates_embedding.keras", "plates_index.npz", "plates_router.json"):
        assert file_checksum(default_model_dir() / name) in shipped
    assert file_checksum(default_model_dir("multimodal") / "plates_embedding.keras") in shipped
    assert "unet" not in shipped and plates_checksum() == shipped

    section = tmp_path / "section.png"
    section.write_bytes(b"\x89PNG")  # hashed only, never read here
    index = tmp_path / "my_index.npz"
    shutil.copyfile(default_model_dir() / "plates_index.npz", index)
    node = pe.Node(IdentifyPlate(in_file=str(section), index=str(index)), name="plate")
    assert f"index {file_checksum(index)}" in node.inputs.model_checksum
    before = _hashed(node)
    _rewrite_keeping_size_and_time(index)
    after = _hashed(node)
    assert after[0]["index"] == before[0]["index"] and after[1] != before[1]


def test_maskbrain_refuses_a_negative_thread_count(tmp_path):
    """num_threads=-1 reached TensorFlow, whose failed check aborted the whole Python process
    (exit 134, no exception, no crash file): the input refuses it, and so does mask_files."""
    from traits.api import TraitError

    from samri_ml.errors import SamriMLError
    from samri_ml.interfaces.masking import MaskBrain, mask_files

    with pytest.raises(TraitError, match="num_threads"):
        MaskBrain(num_threads=-1)
    assert MaskBrain(num_threads=0).inputs.num_threads == 0
    with pytest.raises(SamriMLError, match="num_threads -1: must be 0"):
        mask_files(tmp_path / "never_read.nii.gz", tmp_path, num_threads=-1)


def test_multiproc_reserves_cpus_for_the_unet_nodes():
    """MaskBrain's num_threads defaulted to 0 (TensorFlow's default: every core), which Nipype
    takes as the CPUs to reserve: none, so MultiProc ran a MapNode's masks all at once, each on
    every core. Now one thread by default, and the factories' nodes their omp_nthreads."""
    from samri_ml.interfaces.masking import MaskBrain
    from samri_ml.workflows.registration import init_functional_wf, init_structural_wf

    assert pe.Node(MaskBrain(), name="m").n_procs == 1
    for wf, node in ((init_structural_wf(masking="unet", omp_nthreads=3), "s_mask"),
                     (init_functional_wf(masking="unet", omp_nthreads=3), "f_mask")):
        assert wf.get_node(node).n_procs == 3


def test_slurm_jobs_ask_for_what_the_nodes_declare(head, tmp_path):
    """Nipype's SLURM plugins submit every node with the run's sbatch_args: the U-Net node
    (mem_gb 2) and antsRegistration on omp_nthreads=4 threads got the cluster's default job
    (one CPU). request_slurm_resources gives the heavy nodes their own; the batch Nipype's
    SLURMGraph writes (dont_submit: no cluster needed) asks for them after the run's."""
    import re

    from samri_ml.workflows import init_structural_wf, request_slurm_resources

    wf = init_structural_wf(masking="unet", omp_nthreads=4)
    wf.base_dir = str(tmp_path / "work")
    wf.inputs.inputnode.in_file = wf.inputs.inputnode.template = str(head)
    wf.inputs.inputnode.template_mask = str(head)
    asked = request_slurm_resources(wf)
    assert asked["structural_wf.s_mask"] == "--cpus-per-task=4 --mem=2048M"
    wf.run(plugin="SLURMGraph", plugin_args={"dont_submit": True, "sbatch_args": "-p short"})
    (submit,) = (tmp_path / "work" / "structural_wf" / "batch").glob("submit_jobs.sh")
    jobs = dict(re.findall(r"^j\d+_(\w+)=\$\(sbatch (.*?) -J ", submit.read_text(), re.M))
    # what each job asks for (not its log files, nor the jobs it waits for)
    args = {name: [arg for arg in re.sub(r"-[oe] \S+ ", "", line).split()
                   if not arg.startswith("--dependency=")] for name, line in jobs.items()}
    for name in ("s_mask", "s_register", "s_register_brain"):
        assert args[name][:2] == ["-p", "short"] and "--cpus-per-task=4" in args[name], args
        assert "--mem=2048M" in args[name]
    assert args["s_biascorrect"][-2:] == ["--cpus-per-task=4", "--mem=1024M"]
    assert args["s_fixed_masks"] == ["-p", "short"]  # runs in the submitting process locally
    # a CPU count or a memory the run asks for every job is left to it, the other still added
    for run_args, want in (("--mem=16G", "--cpus-per-task=4"), ("-p short -c 2", "--mem=2048M"),
                           ("--cpus-per-task=8 --mem-per-cpu=4G", None)):
        wf = init_structural_wf(masking="unet", omp_nthreads=4)
        asked = request_slurm_resources(wf, run_args)
        assert asked.get("structural_wf.s_mask") == want, (run_args, asked)
    # called again (other run args): what it asked before is replaced, not added twice
    wf = init_structural_wf(masking="unet", omp_nthreads=4)
    wf.get_node("s_mask").plugin_args = {"sbatch_args": "--gres=gpu:1"}
    request_slurm_resources(wf)
    asked = request_slurm_resources(wf, "--mem=16G")
    assert asked["structural_wf.s_mask"] == "--gres=gpu:1 --cpus-per-task=4", asked
    assert request_slurm_resources(wf, "-c 8 --mem=16G") == {}  # the run's own for every job
    assert wf.get_node("s_mask").plugin_args["sbatch_args"] == "--gres=gpu:1"


def test_a_runs_mem_bind_is_no_memory_request():
    """``--mem-bind=local`` (NUMA binding) in the run's sbatch_args was read as ``--mem``: the
    U-Net node then asked for no memory and got the cluster's default."""
    from samri_ml.workflows import init_structural_wf, request_slurm_resources

    for run_args, want in (("-p short --mem-bind=local", "--cpus-per-task=4 --mem=2048M"),
                           ("--mem 16G", "--cpus-per-task=4"),
                           ("--mem-per-gpu=8G", "--cpus-per-task=4")):
        wf = init_structural_wf(masking="unet", omp_nthreads=4)
        assert request_slurm_resources(wf, run_args)["structural_wf.s_mask"] == want, run_args


def test_identifyplate_refuses_a_negative_thread_count_multiproc_would_count_as_free():
    """IdentifyPlate(num_threads=-1) was taken: TensorFlow ran on every core while MultiProc,
    reserving num_threads CPUs for the node, counted it as freeing one ("Free processors:
    4/2" with two such nodes running)."""
    from traits.api import TraitError

    from samri_ml.interfaces.plates import IdentifyPlate

    with pytest.raises(TraitError, match="num_threads"):
        IdentifyPlate(num_threads=-1)
    assert pe.Node(IdentifyPlate(), name="plate").n_procs == 1
    assert pe.Node(IdentifyPlate(num_threads=3), name="plate").n_procs == 3
    assert pe.Node(IdentifyPlate(num_threads=0), name="plate").n_procs == 0  # as MaskBrain's


# ------------------------------------------------------- init_generic_wf as a sub-workflow


def _collect(anat, anat_qc, bolds):
    """A lab's downstream node: what the sub-workflow's outputnode handed over."""
    import json

    return {"anat": anat, "vcf": json.load(open(anat_qc))["vcf"], "bolds": bolds}


@pytest.mark.slow
def test_generic_wf_embedded_twice_in_a_lab_workflow(example_dataset, tmp_path):
    """init_generic_wf had no outputnode (every other factory has one): a lab's workflow could
    feed its inputnode but had nothing to connect its own steps to. Two instances, their
    template from an upstream node, their outputs to a downstream node; a rerun is cached."""
    from samri_ml.workflows import init_generic_wf

    tpl = example_dataset / "template"

    def pick(path):
        return path

    parent = pe.Workflow("lab", base_dir=str(tmp_path / "work"))
    upstream = pe.Node(niu.Function(function=pick, input_names=["path"],
                                    output_names=["path"]), name="choose_template")
    upstream.inputs.path = str(tpl / "tpl-Phantom_T2w.nii.gz")
    for sub, bolds in (("01", ["task-rest_bold"]), ("02", [])):
        ses = example_dataset / f"sub-{sub}" / "ses-1"
        generic = init_generic_wf(
            template=str(tpl / "tpl-Phantom_T2w.nii.gz"),
            template_mask=str(tpl / "tpl-Phantom_desc-brain_mask.nii.gz"),
            anat_file=str(ses / "anat" / f"sub-{sub}_ses-1_T2w.nii.gz"),
            bold_files=[str(ses / "func" / f"sub-{sub}_ses-1_{b}.nii.gz") for b in bolds],
            bold_metadata=[{"RepetitionTime": 1.0}] * len(bolds), slice_timing=False,
            output_dir=str(tmp_path / "derivatives"), flavour="fast", template_name="Phantom",
            name=f"sub{sub}_wf")
        collect = pe.Node(niu.Function(function=_collect, input_names=["anat", "anat_qc",
                                                                       "bolds"],
                                       output_names=["out"]), name=f"collect{sub}")
        collect.inputs.bolds = []
        parent.connect([
            (upstream, generic, [("path", "inputnode.template")]),
            (generic, collect, [("outputnode.anat_preproc", "anat"),
                                ("outputnode.anat_qc", "anat_qc")]),
        ])
        if bolds:
            parent.connect(generic, "outputnode.bold_preproc", collect, "bolds")
    graph = parent.run()
    template = nb.load(tpl / "tpl-Phantom_T2w.nii.gz")
    results = {sub: _result(graph, f"collect{sub}").out for sub in ("01", "02")}
    for sub, res in results.items():
        assert f"sub-{sub}_ses-1_T2w" in Path(res["anat"]).name
        assert nb.load(res["anat"]).shape == template.shape
        assert 0.5 < res["vcf"] < 2
    (bold,) = results["01"]["bolds"]
    assert "sub-01_ses-1_task-rest_bold" in Path(bold).name and nb.load(bold).ndim == 4
    assert results["02"]["bolds"] == []

    stored = tmp_path / "work" / "lab" / "collect01" / "result_collect01.pklz"
    stamp = stored.stat().st_mtime_ns
    parent.run()  # as the lab reruns its script: cached
    assert stored.stat().st_mtime_ns == stamp


def test_a_python_workflows_derivatives_folder_is_described_as_the_commands(tmp_path):
    """A workflow built from Python (``init_generic_wf(output_dir=...)``) wrote QC tables
    without the data dictionary of their columns and no ``.bidsignore`` (the BIDS validator's
    errors on the QC records): ``samri_ml-register`` wrote both before its run, the sinks did
    not. Now the sink writes them, a lab's own ``.bidsignore`` lines kept, and a sink of no QC
    table writes no dictionary."""
    import json

    from samri_ml.bids import output_bidsignore
    from samri_ml.interfaces.bids import DerivativesDataSink
    from samri_ml.qc.metrics import QC_TABLE_DICTIONARY, QC_TABLE_SUFFIX, TABLE_COLUMNS

    out = tmp_path / "derivatives"
    out.mkdir()
    (out / ".bidsignore").write_text("scratch/\n")
    image = tmp_path / "image.nii.gz"
    image.write_bytes(b"not read")
    DerivativesDataSink(in_file=str(image), source_file=SOURCE, base_directory=str(out),
                        desc="preproc").run(cwd=str(tmp_path))
    assert not (out / QC_TABLE_DICTIONARY).exists()
    assert (out / ".bidsignore").read_text().splitlines() == ["scratch/", *output_bidsignore()]
    table = tmp_path / "table.tsv"
    table.write_text("\t".join(TABLE_COLUMNS) + "\n")
    res = DerivativesDataSink(in_file=str(table), source_file=SOURCE, base_directory=str(out),
                              desc="qctable", suffix="metrics").run(cwd=str(tmp_path))
    assert res.outputs.out_file.endswith(f"_{QC_TABLE_SUFFIX}.tsv")
    described = json.loads((out / QC_TABLE_DICTIONARY).read_text())
    assert list(described) == list(TABLE_COLUMNS)
    assert all(described[c]["Description"] for c in TABLE_COLUMNS)
    assert (out / "dataset_description.json").exists()


@pytest.mark.slow
def test_a_soft_template_mask_is_the_brain_above_half_for_the_registration_too(
        example_dataset, tmp_path):
    """antsRegistration reads a mask as 8-bit integers: a probabilistic template mask (0.99
    in the brain) was an empty fixed-image mask, the phantom's T2w was left where it lay
    (correlation with the template 0.13 in its brain; 'No valid points' in the node's log
    alone) and the run ended well, QC coverage 1.0. The workflow binarises the mask by the
    QC's rule (above 0.5), with a note, and registers as with the binary mask."""
    from samri_ml.errors import SamriMLNote
    from samri_ml.workflows import init_generic_wf

    tpl = example_dataset / "template"
    given = nb.load(str(tpl / "tpl-Phantom_desc-brain_mask.nii.gz"))
    brain = np.asanyarray(given.dataobj) > 0
    soft = tmp_path / "soft_mask.nii.gz"
    nb.save(nb.Nifti1Image((brain * 0.99).astype(np.float32), given.affine), str(soft))
    out = tmp_path / "derivatives"
    with pytest.warns(SamriMLNote, match=r"soft_mask.nii.gz is not binary \(values 0.99 to "
                                         r"0.99\): its voxels above 0.5 are taken as the brain"):
        wf = init_generic_wf(
            template=str(tpl / "tpl-Phantom_T2w.nii.gz"), template_mask=str(soft),
            anat_file=str(example_dataset / "sub-01" / "ses-1" / "anat" /
                          "sub-01_ses-1_T2w.nii.gz"),
            output_dir=str(out), flavour="fast", template_name="Phantom", omp_nthreads=1)
    wf.base_dir = str(tmp_path / "work")
    wf.run()
    registered = nb.load(str(next(out.rglob("*_space-Phantom_desc-preproc_T2w.nii.gz"))))
    template = np.asanyarray(nb.load(str(tpl / "tpl-Phantom_T2w.nii.gz")).dataobj)
    corr = np.corrcoef(np.asanyarray(registered.dataobj)[brain], template[brain])[0, 1]
    assert corr > 0.8, corr  # 0.89, as with the binary mask
