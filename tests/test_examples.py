"""The scripts in examples/ run as their docstrings say, and do what they claim."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_identify_folder_of_sections_writes_one_row_per_section(tmp_path):
    import cv2

    from samri_ml.plates.identify import default_model_dir

    with np.load(default_model_dir() / "plates_index.npz") as z:
        thumbs = dict(zip(z["plates"].tolist(), z["thumbnails"], strict=True))
    folder = tmp_path / "sections"
    folder.mkdir()
    for name in ("30.png", "90.png", "90.jpg"):  # 90.png and 90.jpg: one montage each
        cv2.imwrite(str(folder / name), thumbs[int(name[:2])][6:-6, 6:-6])  # a cropped plate
    (folder / "notes.txt").write_text("not a section\n")
    (folder / "broken.png").write_text("an unreadable image is named and left out\n")
    assert _load("identify_folder_of_sections").main([str(folder), str(tmp_path / "out")]) == 0
    lines = (tmp_path / "out" / "plates.tsv").read_text().splitlines()
    header, rows = lines[0].split("\t"), [dict(zip(lines[0].split("\t"), r.split("\t"), strict=True))
                                          for r in lines[1:]]  # fmt: skip
    assert header[:3] == ["section", "best_plate", "top5"] and len(rows) == 3
    for row in rows:
        plate = int(Path(row["section"]).stem)
        assert plate in map(int, row["top5"].split(",")), row
    montages = sorted(p.name for p in (tmp_path / "out" / "montages").iterdir())
    assert montages == ["30.png_plates.png", "90.jpg_plates.png", "90.png_plates.png"]


def test_identify_folder_of_sections_keeps_links_and_leaves_hidden_files_out(tmp_path, capsys):
    """The example resolved the sections' paths: a linked section (a DataLad dataset's) was
    tabled and its montage named by its target's name (the annex key); macOS' ``._30.png``
    was read and named as skipped, a montage of samri_ml-identify-plate ranked; montages an
    earlier run left for a section since removed were counted as this run's ("1 sections;
    2 montages"); a subfolder's sections were left out unsaid (samri_ml-evaluate-plates names
    them)."""
    import cv2

    from samri_ml.plates.identify import default_model_dir

    with np.load(default_model_dir() / "plates_index.npz") as z:
        thumbs = dict(zip(z["plates"].tolist(), z["thumbnails"], strict=True))
    annex, folder = tmp_path / "annex", tmp_path / "sections"
    annex.mkdir()
    folder.mkdir()
    cv2.imwrite(str(folder / "30.png"), thumbs[30][6:-6, 6:-6])
    cv2.imwrite(str(annex / "MD5E-s1--d41d8cd9.png"), thumbs[90][6:-6, 6:-6])
    (folder / "90 b.png").symlink_to(annex / "MD5E-s1--d41d8cd9.png")
    (folder / "._30.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    (folder / "30.png_plates.png").write_bytes((folder / "30.png").read_bytes())  # a montage
    (folder / "batch 2").mkdir()
    cv2.imwrite(str(folder / "batch 2" / "60.png"), thumbs[60][6:-6, 6:-6])
    example, out = _load("identify_folder_of_sections"), tmp_path / "out"
    assert example.main([str(folder), str(out)]) == 0
    said = capsys.readouterr().out
    assert "skipped" not in said and "left out: 1 montage(s) of samri_ml-identify-plate" in said
    assert ("left out: 1 subfolder(s) of images, not read (batch 2); hint: run the example on "
            "each folder") in said, said
    rows = [r.split("\t")[0] for r in (out / "plates.tsv").read_text().splitlines()[1:]]
    assert rows == [str(folder / "30.png"), str(folder / "90 b.png")]
    montages = sorted(p.name for p in (out / "montages").iterdir())
    assert montages == ["30.png_plates.png", "90 b.png_plates.png"]
    (folder / "30.png").unlink()
    assert example.main([str(folder), str(out)]) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.endswith("(1 more of an earlier run, e.g. 30.png_plates.png: their sections "
                         "are no longer in SECTIONS_DIR)"), said


def test_identify_folder_of_sections_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    """A missing SECTIONS_DIR ended in a FileNotFoundError traceback; ``--variant auto`` (the
    interface's default) was not offered."""
    example = _load("identify_folder_of_sections")
    with pytest.raises(SystemExit) as stop:
        example.main([str(tmp_path / "none"), str(tmp_path / "out"), "--variant", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].endswith(f"error: {tmp_path / 'none'}: no such folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_add_maskbrain_example_registers_better_than_no_registration(example_dataset, tmp_path):
    """The example's masked pipeline must bring the scan onto the template (it used to diverge
    without an initial alignment: Dice 0.29-0.68 against 0.76 for no registration at all)."""
    import ants

    from samri_ml.metrics import dice

    anat = next(example_dataset.glob("sub-01/ses-*/anat/*_T2w.nii.gz"))
    tpl = example_dataset / "template"
    template = next(tpl.glob("*_T2w.nii.gz"))
    template_mask = next(tpl.glob("*_desc-brain_mask.nii.gz"))
    ex = _load("add_maskbrain_to_pipeline")
    out = tmp_path / "out"
    wf = ex.add_masking(ex.existing_pipeline(anat, template, template_mask, out), anat)
    # the ANTs programs by their full path: cluster jobs without the shell's PATH find them
    from samri_ml.ants import program

    for node, name in (("n4", "N4BiasFieldCorrection"), ("register", "antsRegistration")):
        assert wf.get_node(node).interface.cmd == program(name)
    wf.run()
    assert len(list((out / "qc").glob("*_mask.png"))) == 1  # MaskBrain's picture, kept
    xfm = next(out.rglob("transformComposite.h5"))
    truth = next((example_dataset / "derivatives" / "groundtruth").glob(
        "sub-01/ses-*/anat/*_desc-brain_mask.nii.gz"))  # fmt: skip
    fixed = ants.image_read(str(template_mask))
    moving = ants.image_read(str(truth))
    warped = ants.apply_transforms(fixed, moving, [str(xfm)], interpolator="nearestNeighbor")
    identity = ants.resample_image_to_target(moving, fixed, interp_type="nearestNeighbor")
    ref = fixed.numpy() > 0
    assert dice(warped.numpy() > 0, ref) > max(0.9, dice(identity.numpy() > 0, ref))


def test_add_maskbrain_example_refuses_a_path_with_a_space_in_one_line(example_dataset, tmp_path,
                                                                     capsys):
    """``add_maskbrain_to_pipeline.py ... OUT_DIR`` with a space in OUT_DIR (or in the scan's or
    template's path) ran N4 and the mask, then ended in a Nipype traceback (antsRegistration
    got the path split: 'file /tmp/out/... does not exist'); a missing input was a TraitError
    traceback. Each is one line, before anything is written."""
    anat = next(example_dataset.glob("sub-01/ses-*/anat/*_T2w.nii.gz"))
    tpl = example_dataset / "template"
    template = next(tpl.glob("*_T2w.nii.gz"))
    template_mask = next(tpl.glob("*_desc-brain_mask.nii.gz"))
    example = _load("add_maskbrain_to_pipeline")
    out = tmp_path / "my out"
    for argv, said in (
            ([anat, template, template_mask, out], f"OUT_DIR {str(out)!r} has a space in its "
             "path, which Nipype hands to the ANTs programs unquoted; hint: copy or link it to "
             "a path without spaces"),
            ([tmp_path / "none.nii.gz", template, template_mask, tmp_path / "out"],
             f"T2w {tmp_path / 'none.nii.gz'}: no such file")):
        with pytest.raises(SystemExit) as stop:
            example.main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and err[-1] == f"add_maskbrain_to_pipeline.py: error: {said}"
    assert list(tmp_path.iterdir()) == []


def test_compare_workflows_without_samri_ml_says_so_in_one_line(tmp_path):
    """``bash examples/compare_workflows.sh`` with no .venv beside examples/ and samri_ml not
    on PATH failed with "./samri_ml-example: No such file or directory"."""
    import shutil
    import subprocess

    if shutil.which("samri_ml-example", path="/usr/bin:/bin"):
        pytest.skip("samri_ml is installed system-wide here")
    script = tmp_path / "examples" / "compare_workflows.sh"  # no .venv beside this copy
    script.parent.mkdir()
    shutil.copy2(EXAMPLES / "compare_workflows.sh", script)
    done = subprocess.run(["bash", str(script), str(tmp_path / "work")], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "compare_workflows.sh: samri_ml-example not found (no .venv beside examples/, none on "
        "PATH); hint: make install, or activate the environment samri_ml is installed in"]
    assert not (tmp_path / "work").exists()


def test_compare_workflows_in_a_folder_with_a_space_says_so_in_one_line(tmp_path):
    """``bash examples/compare_workflows.sh`` in a clone in ``~/Lab Projects/`` wrote the
    example there and stopped on samri_ml-register's hint to give ``-w``, which the script
    does not take; it says so before anything is written, with the argument that helps."""
    import subprocess

    here = tmp_path / "Lab Projects"
    here.mkdir()
    script = EXAMPLES / "compare_workflows.sh"
    done = subprocess.run(["bash", str(script)], cwd=here, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"compare_workflows.sh: {here}/compare_example has a space in its path, which the ANTs "
        f"steps cannot take; hint: bash {script} /path/without/spaces"]
    assert list(here.iterdir()) == []


# VmHWM, the peak of this interpreter's own memory: getrusage's ru_maxrss keeps, across the
# exec, the peak of the process it was started from (2.02 GB measured from a pytest-xdist
# worker that had run the other tests, 0.70 GB from a fresh one)
PEAK_RSS = """
import sys
from samri_ml.interfaces.{module} import {function}
{function}(sys.argv[1], sys.argv[2], num_threads=1)
with open("/proc/self/status") as status:
    kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(kb / 2**20)  # kB -> GB
"""


def _peak_gb(module, function, in_file, out_dir):
    """Peak memory (GB) of one node's work on ``in_file``, in a fresh interpreter as a
    MultiProc worker's new process or a cluster job runs it."""
    import subprocess
    import sys

    code = PEAK_RSS.format(module=module, function=function)
    out = subprocess.run([sys.executable, "-c", code, str(in_file), str(out_dir)],
                         capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.split()[-1])


def test_the_examples_reserve_the_memory_their_samri_ml_nodes_use(tmp_path):
    """The examples' IdentifyPlate MapNode and MaskBrain node kept Nipype's 0.2 GB per node
    while one peaks near 0.8 GB: a lab's MultiProc run with memory_gb started about four
    times too many at once. The peak of a real run must fit in what the example reserves."""
    import cv2
    import nibabel as nb

    from samri_ml.example import make_template
    from samri_ml.plates.identify import default_model_dir

    with np.load(default_model_dir() / "plates_index.npz") as z:
        section = tmp_path / "60.png"
        cv2.imwrite(str(section), z["thumbnails"][60])
    head = tmp_path / "sub-01_T2w.nii.gz"
    nb.save(make_template(0, contrasts=("t2",), supersample=1)["T2w"], head)

    identify = _load("identify_folder_of_sections").build_workflow([section], tmp_path / "out")
    plates_gb = _peak_gb("plates", "identify_file", section, tmp_path)
    assert 0.3 < plates_gb <= identify.get_node("identify").mem_gb, plates_gb

    example = _load("add_maskbrain_to_pipeline")
    wf = example.add_masking(example.existing_pipeline(head, head, head, tmp_path / "work"), head)
    mask_gb = _peak_gb("masking", "mask_files", head, tmp_path)
    assert 0.3 < mask_gb <= wf.get_node("mask_brain").mem_gb, mask_gb
