"""BIDS-Derivatives names and atomic writes."""

from samri_ml.bids import atomic_copy, derivative_path, parse_entities


def test_parse_entities():
    ent = parse_entities("/d/sub-01/ses-2/func/sub-01_ses-2_task-rest_acq-ge_bold.nii.gz")
    assert ent["sub"] == "01" and ent["ses"] == "2" and ent["task"] == "rest"
    assert ent["acq"] == "ge" and ent["suffix"] == "bold" and ent["datatype"] == "func"
    assert ent["extension"] == ".nii.gz"


def test_derivative_names():
    src = "/d/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
    assert derivative_path("/o", src, space="Phantom", desc="preproc").as_posix() == \
        "/o/sub-01/ses-1/anat/sub-01_ses-1_space-Phantom_desc-preproc_T2w.nii.gz"
    assert derivative_path("/o", src, from_="native", to="Phantom", mode="image", suffix="xfm",
                           extension=".h5").name == \
        "sub-01_ses-1_from-native_to-Phantom_mode-image_xfm.h5"


def test_atomic_copy_leaves_no_temporary(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("x" * 1000)
    dst = atomic_copy(src, tmp_path / "out" / "b.txt")
    assert dst.read_text() == "x" * 1000
    assert [p.name for p in dst.parent.iterdir()] == ["b.txt"]


def test_derivative_names_keep_every_source_entity():
    """Two runs that differ only in an entity such as chunk-, inv- or proc- must not share a
    derivative (the second would overwrite the first)."""
    names = {derivative_path("/o", f"/d/sub-01/func/sub-01_task-rest_{e}_bold.nii.gz",
                             space="X", desc="preproc").name
             for e in ("chunk-1", "chunk-2", "inv-1", "proc-norm", "recording-x", "foo-1")}
    assert len(names) == 6
    assert derivative_path("/o", "/d/sub-01/func/sub-01_task-rest_run-1_echo-2_inv-1_bold.nii.gz",
                           space="X", desc="preproc").name == \
        "sub-01_task-rest_run-1_echo-2_inv-1_space-X_desc-preproc_bold.nii.gz"
