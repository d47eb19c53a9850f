"""QC Nipype interfaces run through Nipype and write the per-scan record."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from nipype import Function, Node, Workflow
from nipype.interfaces.base import isdefined
from scipy import ndimage

from samri_ml.interfaces.qc import SmoothnessConservation, VolumeConservation, WriteQCMetrics
from samri_ml.qc.metrics import qc_basename, qc_relative_path

KEYS = {
    "scan", "modality", "workflow", "vcf", "scf", "scf_normalised", "volume_processed",
    "volume_raw", "fwhm_processed", "fwhm_raw", "raw_dummy_scans", "scf_axes_left_out",
    "brain_coverage",
}  # fmt: skip


def _brain(shape=(32, 36, 20), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (zz**2 + yy**2 + xx**2) < 0.6
    tex = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    return np.where(inside, 100 + 20 * tex, 2 * rng.random(shape)).astype("float32")


@pytest.fixture
def pair(tmp_path):
    """raw on a 0.2 mm grid; processed = the same voxels on a grid 1.1x larger."""
    raw = _brain()
    aff = np.diag([0.2, 0.2, 0.4, 1.0])
    proc = raw
    aff_p = aff.copy()
    aff_p[:3, :3] *= 1.1
    raw_f = tmp_path / "sub-01_ses-1_T2w.nii.gz"
    proc_f = tmp_path / "sub-01_ses-1_space-template_T2w.nii.gz"
    nb.save(nb.Nifti1Image(raw, aff), raw_f)
    nb.save(nb.Nifti1Image(proc, aff_p), proc_f)
    return proc_f, raw_f


def test_volume_and_smoothness_nodes_in_a_workflow(pair, tmp_path):
    proc_f, raw_f = pair
    wf = Workflow(name="qc_wf", base_dir=str(tmp_path / "work"))
    vol = Node(VolumeConservation(processed_file=str(proc_f), raw_file=str(raw_f)), name="vcf")
    smo = Node(SmoothnessConservation(processed_file=str(proc_f), raw_file=str(raw_f)), name="scf")
    ds = Node(WriteQCMetrics(scan=str(raw_f), modality="anat", workflow="generic"), name="ds_qc")
    wf.connect([
        (vol, smo, [("vcf", "vcf")]),
        (vol, ds, [("vcf", "vcf"), ("volume_processed", "volume_processed"),
                   ("volume_raw", "volume_raw")]),
        (smo, ds, [("scf", "scf"), ("scf_normalised", "scf_normalised"),
                   ("fwhm_processed", "fwhm_processed"), ("fwhm_raw", "fwhm_raw")]),
    ])  # fmt: skip
    graph = wf.run()
    node = next(n for n in graph.nodes() if n.name == "ds_qc")
    out_json = node.result.outputs.out_json
    assert out_json.endswith("sub-01_ses-1_desc-qc_metrics.json")
    rec = json.loads(open(out_json).read())
    assert set(rec) == KEYS
    assert rec["scan"] == "sub-01_ses-1_T2w"
    assert rec["modality"] == "anat" and rec["workflow"] == "generic"
    # the same voxels on a 1.1x larger grid: every length x1.1, every volume x1.331
    assert rec["vcf"] == pytest.approx(1.1**3, rel=1e-6)
    assert rec["volume_processed"] == pytest.approx(1.331 * rec["volume_raw"], rel=1e-6)
    assert rec["scf"] == pytest.approx(1.1, rel=1e-6)
    # ... and normalising by VCF^(1/3) removes the size change: no smoothing was added
    assert rec["scf_normalised"] == pytest.approx(1.0, rel=1e-6)
    tsv = open(node.result.outputs.out_tsv).read().splitlines()
    assert len(tsv) == 2
    header, row = (line.split("\t") for line in tsv)
    assert set(header) == KEYS
    assert float(row[header.index("vcf")]) == pytest.approx(rec["vcf"])


def test_smoothness_node_alone_without_vcf(pair, tmp_path):
    """Smoothing the processed image raises its FWHM: SCF > 1 (mask given on its grid)."""
    _, raw_f = pair
    aff = np.diag([0.2, 0.2, 0.4, 1.0])
    proc_f = tmp_path / "smoothed.nii.gz"
    nb.save(nb.Nifti1Image(ndimage.gaussian_filter(_brain(), 1.5), aff), proc_f)
    mask = ndimage.binary_erosion(_brain() > 50, iterations=2)
    mask_f = tmp_path / "mask.nii.gz"
    nb.save(nb.Nifti1Image(mask.astype("uint8"), aff), mask_f)
    node = Node(
        SmoothnessConservation(
            processed_file=str(proc_f), raw_file=str(raw_f), mask_file=str(mask_f)
        ),
        name="scf",
        base_dir=str(tmp_path / "w2"),
    )
    res = node.run()
    assert res.outputs.scf > 1.1
    assert res.outputs.scf == pytest.approx(res.outputs.fwhm_processed / res.outputs.fwhm_raw)
    assert not isdefined(res.outputs.scf_normalised)  # no vcf given


def test_smoothness_node_refuses_a_mask_of_the_same_shape_on_another_grid(pair, tmp_path):
    """mask_file was checked by shape only: another scan's mask, its grid 3 mm away, gave the
    FWHM of whatever it covered. It is refused, naming both files."""
    from samri_ml.errors import SamriMLError

    proc_f, raw_f = pair
    aff = np.diag([0.2, 0.2, 0.4, 1.0])
    aff_p = aff.copy()
    aff_p[:3, :3] *= 1.1  # the processed image's grid
    mask = ndimage.binary_erosion(_brain() > 50, iterations=2).astype("uint8")
    moved = aff_p.copy()
    moved[:3, 3] += (3.0, 0.0, 0.0)
    ok_f, other_f = tmp_path / "ok.nii.gz", tmp_path / "other.nii.gz"
    nb.save(nb.Nifti1Image(mask, aff_p), ok_f)
    nb.save(nb.Nifti1Image(mask, moved), other_f)
    res = SmoothnessConservation(processed_file=str(proc_f), raw_file=str(raw_f),
                                 mask_file=str(ok_f)).run(cwd=str(tmp_path))
    assert res.outputs.scf > 0
    with pytest.raises(SamriMLError, match=r"brain mask .*other.nii.gz is not on the grid of "
                       r".*space-template_T2w.nii.gz: same shape \(32, 36, 20\), but its affine "
                       r"puts the grid 3 mm away"):
        SmoothnessConservation(processed_file=str(proc_f), raw_file=str(raw_f),
                               mask_file=str(other_f)).run(cwd=str(tmp_path))


def test_smoothness_node_takes_a_soft_mask_as_its_voxels_above_half(pair, tmp_path):
    """mask_file's voxels above 0 were the mask: a brain mask blurred into probabilities took
    its whole halo, while brain_coverage took the same mask's voxels above 0.5."""
    proc_f, raw_f = pair
    img = nb.load(proc_f)
    soft = ndimage.gaussian_filter((np.asanyarray(img.dataobj) > 50).astype("float32"), 1.5)
    fwhm = {}
    for name, data in (("soft", soft), ("hard", (soft > 0.5).astype("uint8"))):
        path = tmp_path / f"{name}_mask.nii.gz"
        nb.save(nb.Nifti1Image(data, img.affine), path)
        res = SmoothnessConservation(processed_file=str(proc_f), raw_file=str(raw_f),
                                     mask_file=str(path)).run(cwd=str(tmp_path))
        fwhm[name] = res.outputs.fwhm_processed
    assert fwhm["soft"] == fwhm["hard"]


def test_write_qc_metrics_missing_values_are_null(tmp_path):
    node = Node(
        WriteQCMetrics(
            scan="sub-02_ses-3_task-rest_acq-EPI_bold.nii.gz", modality="func", vcf=0.9
        ),
        name="ds",
        base_dir=str(tmp_path),
    )
    res = node.run()
    rec = json.loads(open(res.outputs.out_json).read())
    assert set(rec) == KEYS
    assert rec["vcf"] == 0.9 and rec["scf"] is None and rec["workflow"] == ""
    assert res.outputs.out_json.endswith("sub-02_ses-3_task-rest_acq-EPI_desc-qc_metrics.json")
    assert "n/a" in open(res.outputs.out_tsv).read()
    assert res.outputs.out_tsv.endswith(
        "sub-02_ses-3_task-rest_acq-EPI_desc-qctable_metrics.tsv")


def test_the_record_is_not_read_as_its_tables_sidecar(tmp_path):
    """The record ``..._desc-qc_metrics.json`` beside ``..._desc-qc_metrics.tsv`` was, to
    BIDS tools (pybids, the validator's inheritance rule), the TSV's sidecar: pybids gave the
    table ``vcf``, ``scf``... as metadata, and as entities to query by."""
    bids = pytest.importorskip("bids")
    deriv = tmp_path / "deriv"
    folder = deriv / "sub-01" / "ses-1" / "anat"
    folder.mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(json.dumps(
        {"Name": "qc", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "samri_ml"}]}))
    res = Node(WriteQCMetrics(scan="sub-01_ses-1_T2w.nii.gz", modality="anat", vcf=0.98,
                              scf=1.1), name="ds", base_dir=str(tmp_path / "work")).run()
    for out in (res.outputs.out_json, res.outputs.out_tsv):
        Path(folder / Path(out).name).write_bytes(Path(out).read_bytes())
    layout = bids.BIDSLayout(deriv, validate=False, is_derivative=True)
    (table,) = layout.get(extension=".tsv")
    assert table.get_metadata() == {}
    assert layout.get(extension=".json", desc="qc")[0].get_dict()["vcf"] == 0.98


def test_one_data_dictionary_describes_every_qc_tables_columns(tmp_path):
    """BIDS wants a TSV's columns described: one dictionary at the top of the derivatives
    folder, which the inheritance principle applies to every scan's table (pybids reads it as
    each table's metadata, and nothing of the record), one entry per column of the table, in
    its order, with the units of the volumes and FWHMs."""
    bids = pytest.importorskip("bids")
    from samri_ml.qc.metrics import QC_TABLE_DICTIONARY, write_qc_table_dictionary

    deriv = tmp_path / "deriv"
    deriv.mkdir()
    (deriv / "dataset_description.json").write_text(json.dumps(
        {"Name": "qc", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "samri_ml"}]}))
    for scan, modality in (("sub-01_ses-1_T2w.nii.gz", "anat"),
                           ("sub-02_ses-1_task-rest_bold.nii.gz", "func")):
        res = Node(WriteQCMetrics(scan=scan, modality=modality, vcf=0.98, scf=1.1),
                   name=f"ds_{modality}", base_dir=str(tmp_path / "work")).run()
        for out in (res.outputs.out_json, res.outputs.out_tsv):
            folder = deriv / qc_relative_path(scan, modality).parent
            folder.mkdir(parents=True, exist_ok=True)
            (folder / Path(out).name).write_bytes(Path(out).read_bytes())
    path = write_qc_table_dictionary(deriv)
    assert path == deriv / QC_TABLE_DICTIONARY == deriv / "desc-qctable_metrics.json"
    layout = bids.BIDSLayout(deriv, validate=False, is_derivative=True)
    tables = layout.get(extension=".tsv", suffix="metrics")
    assert len(tables) == 2
    for table in tables:
        header = Path(table.path).read_text().splitlines()[0].split("\t")
        meta = table.get_metadata()
        assert set(meta) == set(header), (meta, header)  # pybids sorts the keys
        assert list(json.loads(path.read_text())) == header  # the file has the table's order
        assert all(meta[column]["Description"] for column in header)
        assert meta["volume_raw"]["Units"] == "mm^3" and meta["fwhm_raw"]["Units"] == "mm"
        assert set(meta["modality"]["Levels"]) == {"anat", "func"}
    # the record keeps its values; the dictionary is no record's sidecar
    (record,) = layout.get(extension=".json", desc="qc", subject="01")
    assert record.get_dict()["vcf"] == 0.98
    # written again unchanged: left as it is (a rerun keeps a downstream cache valid)
    before = path.stat().st_mtime_ns
    write_qc_table_dictionary(deriv)
    assert path.stat().st_mtime_ns == before


def test_qc_basename_and_derivative_path():
    assert qc_basename("/x/sub-1_ses-a_desc-brain_T2w.nii.gz") == "sub-1_ses-a_desc-qc_metrics"
    assert qc_basename("scan.nii") == "scan_desc-qc_metrics"
    rel = qc_relative_path("sub-1_ses-a_task-rest_bold.nii.gz", "func")
    assert rel.as_posix() == "sub-1/ses-a/func/sub-1_ses-a_task-rest_desc-qc_metrics.json"
    rel = qc_relative_path("sub-1_ses-a_task-rest_bold.nii.gz", "func", ".tsv")
    assert rel.as_posix() == "sub-1/ses-a/func/sub-1_ses-a_task-rest_desc-qctable_metrics.tsv"


def test_volume_conservation_refuses_a_percentile_outside_0_100():
    """percentile=200 was taken, and the run failed later in numpy without naming the input."""
    from traits.api import TraitError

    from samri_ml.interfaces import VolumeConservation

    with pytest.raises(TraitError, match="percentile"):
        VolumeConservation(percentile=200)
    assert VolumeConservation(percentile=0).inputs.percentile == 0
    assert VolumeConservation().inputs.percentile == 66.0


def test_a_runs_dummy_scans_are_left_out_of_its_raw_image(tmp_path):
    """The workflow drops a run's dummy scans, the QC compared the result with the whole raw
    run: its bright first volumes (before the steady state) lowered the VCF and inflated the
    raw FWHM (here, a run that was only cut: VCF 0.94, SCF 0.96 instead of 1 and 1)."""
    from samri_ml.workflows import init_generic_wf

    rng = np.random.default_rng(3)
    base = _brain()[..., None]
    n_dummy, n_t = 10, 40
    t = np.arange(n_dummy + n_t)
    raw = (base + rng.normal(0, 2.0, (*base.shape[:3], t.size))) * (1 + 0.6 * np.exp(-t / 3))
    aff = np.diag([0.2, 0.2, 0.4, 1.0])
    raw_f, proc_f = tmp_path / "sub-01_task-rest_bold.nii.gz", tmp_path / "proc_bold.nii.gz"
    nb.save(nb.Nifti1Image(raw.astype("float32"), aff), raw_f)
    nb.save(nb.Nifti1Image(raw[..., n_dummy:].astype("float32"), aff), proc_f)
    got = {}
    for dummies in (0, n_dummy):
        vol = VolumeConservation(processed_file=str(proc_f), raw_file=str(raw_f),
                                 raw_dummy_scans=dummies).run(cwd=str(tmp_path)).outputs
        smooth = SmoothnessConservation(processed_file=str(proc_f), raw_file=str(raw_f),
                                        raw_dummy_scans=dummies).run(cwd=str(tmp_path)).outputs
        got[dummies] = vol.vcf, smooth.scf
        assert vol.raw_dummy_scans == dummies  # for the record: how the raw run was taken
    assert got[n_dummy] == pytest.approx((1.0, 1.0), abs=1e-6)
    assert got[0][0] < 0.95 and got[0][1] < 0.98, got  # the bias the whole run gave
    # the workflow tells its QC nodes how many volumes it dropped
    for name in ("t.nii.gz", "m.nii.gz"):
        nb.save(nb.Nifti1Image(np.ones((4, 4, 4), "float32"), np.eye(4)), tmp_path / name)
    wf = init_generic_wf(template=str(tmp_path / "t.nii.gz"),
                         template_mask=str(tmp_path / "m.nii.gz"), anat_file=None,
                         bold_files=[str(raw_f)], output_dir=str(tmp_path / "out"), qc=True,
                         dummy_scans=7)
    for node in ("func0_vcf", "func0_scf"):
        assert wf.get_node(node).inputs.raw_dummy_scans == 7
    # and the record says how many were left out (a record without it is an older release's)
    edge = wf._graph.get_edge_data(wf.get_node("func0_vcf"), wf.get_node("func0_qc"))
    assert ("raw_dummy_scans", "raw_dummy_scans") in edge["connect"]
    rec = WriteQCMetrics(scan=str(raw_f), modality="func", vcf=got[n_dummy][0],
                         raw_dummy_scans=n_dummy).run(cwd=str(tmp_path)).outputs
    assert json.loads(Path(rec.out_json).read_text())["raw_dummy_scans"] == n_dummy
    header, row = Path(rec.out_tsv).read_text().splitlines()
    assert dict(zip(header.split("\t"), row.split("\t"), strict=True))["raw_dummy_scans"] == "10"


def test_smoothness_node_leaves_out_an_axis_one_image_has_no_fwhm_along(tmp_path):
    """A raw scan whose neighbouring slices are anticorrelated (no FWHM across them) against a
    processed copy blurred across slices only: SCF 1.4 from the across-slice axis that only
    the processed side counted; now that axis is left out of both FWHMs (SCF 1.0), and the
    workflow's record names it, in the JSON and the TSV."""
    from scipy import ndimage

    from samri_ml.workflows import init_generic_wf

    rng = np.random.default_rng(0)
    slices = ndimage.gaussian_filter(rng.standard_normal((64, 64, 13)), (1.5, 1.5, 0))
    raw = 1000 + 10 * (slices[..., 1:] - 0.5 * slices[..., :-1]) / slices.std()
    proc = 1000 + 10 * ndimage.gaussian_filter(slices[..., 1:], (0, 0, 1.5)) / slices.std()
    aff = np.diag([0.2, 0.2, 0.6, 1.0])
    raw_f, proc_f = tmp_path / "sub-01_T2w.nii.gz", tmp_path / "sub-01_space-t_T2w.nii.gz"
    nb.save(nb.Nifti1Image(raw.astype("float32"), aff), raw_f)
    nb.save(nb.Nifti1Image(proc.astype("float32"), aff), proc_f)
    out = SmoothnessConservation(processed_file=str(proc_f), raw_file=str(raw_f)).run(
        cwd=str(tmp_path)).outputs
    assert out.scf_axes_left_out == ["I-S"]
    assert out.scf == pytest.approx(1.0, abs=0.05)
    rec = WriteQCMetrics(scan=str(raw_f), modality="anat", scf=out.scf,
                         scf_axes_left_out=out.scf_axes_left_out).run(cwd=str(tmp_path)).outputs
    assert json.loads(Path(rec.out_json).read_text())["scf_axes_left_out"] == ["I-S"]
    header, row = Path(rec.out_tsv).read_text().splitlines()
    assert dict(zip(header.split("\t"), row.split("\t"), strict=True))["scf_axes_left_out"] \
        == "I-S"
    # the workflow hands the axes to its record
    for name in ("t.nii.gz", "m.nii.gz"):
        nb.save(nb.Nifti1Image(np.ones((4, 4, 4), "float32"), np.eye(4)), tmp_path / name)
    wf = init_generic_wf(template=str(tmp_path / "t.nii.gz"),
                         template_mask=str(tmp_path / "m.nii.gz"), anat_file=str(raw_f),
                         bold_files=[], output_dir=str(tmp_path / "out"), qc=True)
    edge = wf._graph.get_edge_data(wf.get_node("anat_scf"), wf.get_node("anat_qc"))
    assert ("scf_axes_left_out", "scf_axes_left_out") in edge["connect"]


def test_volume_conservation_measures_the_template_brain_a_scan_covers(pair, tmp_path):
    """A functional scan of a few slices covers part of the template's brain, and its VCF is
    not expected to be 1: the record now says how much it covers (brain_coverage), so that
    samri_ml-qc compare can say which scans it pools are partial; null without a mask."""
    proc_f, raw_f = pair
    img = nb.load(proc_f)
    data = np.asarray(img.dataobj)
    brain = data > 50
    # the template's brain: the scan's, and as much again in slices the scan does not hold
    # (the same mask on a grid twice as long along I-S, any grid will do)
    mask = np.concatenate([brain, brain], axis=2).astype("uint8")
    mask_f = tmp_path / "tpl_desc-brain_mask.nii.gz"
    nb.save(nb.Nifti1Image(mask, img.affine), mask_f)
    out = VolumeConservation(processed_file=str(proc_f), raw_file=str(raw_f),
                             reference_mask=str(mask_f)).run(cwd=str(tmp_path)).outputs
    assert out.brain_coverage == pytest.approx(0.5, abs=0.02)
    rec = WriteQCMetrics(scan=str(raw_f), modality="anat", vcf=out.vcf,
                         brain_coverage=out.brain_coverage).run(
                             cwd=str(tmp_path)).outputs
    assert json.loads(Path(rec.out_json).read_text())["brain_coverage"] == pytest.approx(
        out.brain_coverage)
    header, row = Path(rec.out_tsv).read_text().splitlines()
    assert float(dict(zip(header.split("\t"), row.split("\t"), strict=True))[
        "brain_coverage"]) == pytest.approx(out.brain_coverage)
    # without the mask: no coverage measured, null in the record
    plain = VolumeConservation(processed_file=str(proc_f), raw_file=str(raw_f)).run(
        cwd=str(tmp_path)).outputs
    assert not isdefined(plain.brain_coverage)
    rec = WriteQCMetrics(scan=str(raw_f), modality="anat", vcf=plain.vcf).run(
        cwd=str(tmp_path)).outputs
    assert json.loads(Path(rec.out_json).read_text())["brain_coverage"] is None



@pytest.mark.parametrize("interface, inputs", [
    ("MaskBrain", {"max_slices": 3}),
    ("VolumeConservation", {"percentile": 100.0}),
    ("WriteQCMetrics", {"scan": ""}),
])
def test_inputs_that_cannot_work_are_refused_where_they_are_set(interface, inputs):
    """MaskBrain(max_slices=3) was refused only when the node ran (after the work upstream);
    VolumeConservation(percentile=100) gave a VCF of NaN (nothing above the threshold), and
    WriteQCMetrics(scan="") wrote a file named _desc-qc_metrics.json, both without a word."""
    from traits.api import TraitError

    from samri_ml import interfaces

    with pytest.raises(TraitError):
        getattr(interfaces, interface)(**inputs)


def test_a_cached_node_whose_output_is_gone_runs_again(tmp_path):
    """A cached node whose result Nipype cannot read back (an output file of it deleted: its
    result names a file that is not there) is asked to list its outputs again: Nipype's
    SimpleInterface listed none, and the node gave them all undefined, without running, to
    fail the next node ('requires a value for input'). Now it runs again, as Nipype's own
    interfaces do; every samri_ml interface has that base."""
    import samri_ml.interfaces as interfaces
    from samri_ml.interfaces._base import SimpleInterface

    wf = Workflow(name="wf", base_dir=str(tmp_path))
    write = Node(WriteQCMetrics(scan="sub-01_T2w.nii.gz", modality="anat", vcf=0.9),
                 name="write")
    read = Node(Function(function=_vcf_of, input_names=["in_file"], output_names=["vcf"]),
                name="read")
    wf.connect(write, "out_json", read, "in_file")

    def run():
        graph = wf.run()
        return {n.name: n.result.outputs for n in graph.nodes()}

    first = run()
    assert first["read"].vcf == 0.9
    Path(first["write"].out_json).unlink()
    again = run()
    assert Path(again["write"].out_json).is_file() and again["read"].vcf == 0.9
    assert all(issubclass(getattr(interfaces, name), SimpleInterface)
               for name in interfaces.__all__)


def _vcf_of(in_file):
    import json

    with open(in_file) as f:
        return json.load(f)["vcf"]
