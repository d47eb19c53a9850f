"""The pictures and the banner of the per-subject HTML report (samri_ml/report.py), on small
synthetic NIfTI images written with nibabel and the report's real functions."""

from __future__ import annotations

import datetime
import json
import re

import nibabel as nb
import numpy as np
import pytest

from samri_ml import __version__
from samri_ml.bids import derivative_path
from samri_ml.report import (
    brain_coverage,
    choose_slices,
    mosaic,
    template_edges,
    write_subject_reports,
)

SHAPE = (28, 32, 22)  # RAS: x (L->R), y (P->A), z (I->S)
ZOOM = 0.25
AFFINE = np.diag([ZOOM, ZOOM, ZOOM, 1.0])
AFFINE[:3, 3] = (-3.5, -4.0, -2.75)  # slice y=k lies at -4 + 0.25 k mm

RED = (255, 59, 48)
CYAN = (50, 210, 255)


def _phantom():
    """A template: a head (60) around an ellipsoid brain (100) with a bright ventricle (220)
    and a dark band of white matter (20); its brain mask."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    head = (x / 0.95) ** 2 + (y / 0.95) ** 2 + (z / 0.95) ** 2 < 1
    brain = (x / 0.7) ** 2 + (y / 0.8) ** 2 + (z / 0.65) ** 2 < 1
    data = np.where(head, 60.0, 0.0)
    data[brain] = 100.0
    data[brain & (np.abs(x) < 0.12) & (np.abs(z) < 0.15) & (np.abs(y) < 0.4)] = 220.0
    data[brain & (z > 0.25) & (z < 0.4) & (np.abs(x) < 0.5)] = 20.0
    return data.astype(np.float32), brain


def _save(data, path, affine=AFFINE, zooms=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nb.Nifti1Image(np.asarray(data), affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    img.to_filename(path)
    return path


def _make_run(tmp_path, *, sessions=("1",), anat_vcf=0.95, func_vcf=0.6, shift=0,
              command=None):
    """A BIDS scan per session (anat and a 4D functional run) and what a run leaves in
    OUTPUT_DIR: the registered scans (the functional one covering the anterior half of the
    brain only), native brain masks, QC records. ``shift`` voxels misplace the registered
    anat (a failed registration)."""
    rng = np.random.default_rng(0)
    tpl, brain = _phantom()
    tpl_path = _save(tpl, tmp_path / "tpl" / "tpl-T_T2w.nii.gz")
    mask_path = _save(brain.astype(np.uint8), tmp_path / "tpl" / "tpl-T_desc-brain_mask.nii.gz")
    out = tmp_path / "out"
    items = []
    for ses in sessions:
        base = tmp_path / "bids" / "sub-01" / f"ses-{ses}"
        anat = _save(tpl + rng.normal(0, 3, SHAPE), base / "anat" / f"sub-01_ses-{ses}_T2w.nii.gz")
        bold_data = np.repeat(tpl[..., None], 3, axis=3) + rng.normal(0, 3, (*SHAPE, 3))
        bold = _save(bold_data.astype(np.float32),
                     base / "func" / f"sub-01_ses-{ses}_task-rest_bold.nii.gz")
        warped = np.roll(tpl, shift, axis=1) + rng.normal(0, 3, SHAPE)
        _save(warped, derivative_path(out, anat, space="T", desc="preproc"))
        func = tpl.copy()
        func[:, : SHAPE[1] // 2] = 0  # posterior half outside the field of view
        _save(func, derivative_path(out, bold, space="T", desc="preproc"))
        for raw in (anat, bold):
            _save(brain.astype(np.uint8), derivative_path(out, raw, desc="brain", suffix="mask"))
        for raw, kind, vcf in ((anat, "anat", anat_vcf), (bold, "func", func_vcf)):
            qc = derivative_path(out, raw, space="T", desc="qc", suffix="metrics",
                                 extension=".json")
            qc.write_text(json.dumps({"scan": raw.name.split(".")[0], "modality": kind,
                                      "workflow": "generic", "vcf": vcf, "scf": 1.0}))
        items.append({"subject": "01", "session": ses, "anat": str(anat), "bold": [str(bold)]})
    if command:
        (out / "dataset_description.json").write_text(json.dumps(
            {"GeneratedBy": [{"Name": "samri_ml", "Description": command}]}))
    kw = dict(template=tpl_path, template_mask=mask_path, template_name="T")
    return out, items, kw


def _pixels(png, colour, tol=40):
    """Pixels of ``png`` within ``tol`` of ``colour`` (RGB 0-255)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    return np.abs(rgb - np.array(colour)).max(axis=2) < tol


def _svg_texts(svg):
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg.read_text())


def test_template_edges_follow_the_templates_dark_and_bright_structures():
    tpl, brain = _phantom()
    edges = template_edges(tpl, brain)
    assert edges[tpl == 220].mean() > 0.5 and edges[tpl == 20].mean() > 0.5
    plain = brain & (tpl == 100)
    assert edges[plain].mean() < 0.1  # uniform tissue is not outlined
    assert not edges[~brain].any()
    # a flat template (a mask passed as the template) has no anatomy to draw
    assert not template_edges(brain.astype(float), brain).any()


def test_overview_shows_the_template_in_a_second_colour_and_a_template_row(tmp_path):
    out, items, kw = _make_run(tmp_path)
    write_subject_reports(out, items, masking="unet", **kw)
    figures = out / "sub-01" / "figures"
    png = figures / "sub-01_ses-1_desc-overview_T2w.png"
    assert _pixels(png, RED).sum() > 200 and _pixels(png, CYAN).sum() > 100
    svg = figures / "sub-01_ses-1_desc-overview_T2w.svg"
    texts = _svg_texts(svg)
    assert "template brain mask" in texts and any("template anatomy" in t for t in texts)
    assert "template" in texts and "T2w" in texts  # the rows are named
    # two rows of 8 panels: the registered scan and the template at the same slices
    assert svg.read_text().count("<image ") == 16


def test_banner_names_the_scan_whose_vcf_is_implausible_and_the_failed_step(tmp_path):
    out, items, kw = _make_run(tmp_path, anat_vcf=0.164, shift=6)
    log = out / "sub-01" / "log"
    log.mkdir(parents=True)
    (log / "crash-1-s_register.txt").write_text("Node: wf.sub_01.s_register\nTraceback\n"
                                                "RuntimeError: antsRegistration died\n")
    (page,) = write_subject_reports(out, items, masking="unet", crashes_since=0, **kw)
    text = page.read_text()
    banner = text[text.index("<div class='banner'"):text.index("</div>")]
    assert text.index("<div class='banner'") < text.index("<h2>")  # at the top
    assert "sub-01_ses-1_T2w: VCF 0.164, outside the plausible range 0.25-4" in banner
    assert "registration probably failed" in banner
    assert "step s_register failed: RuntimeError: antsRegistration died" in banner
    assert "<td class='bad'>0.164</td>" in text
    assert "<h2>Failed steps</h2>" in text and "<b>s_register</b>" in text
    # a plausible run has no banner
    out2, items2, kw2 = _make_run(tmp_path / "good")
    (page,) = write_subject_reports(out2, items2, masking="unet", **kw2)
    assert "class='banner'" not in page.read_text()
    assert "class='bad'" not in page.read_text()


def test_functional_and_coherence_views_draw_the_template_brain_not_a_head_outline(tmp_path):
    """The contour over the functional mean (and over later sessions) is the template's brain
    mask, drawn where the overview draws it, and not the head of the structural scan (the
    head here is much bigger than the brain)."""
    out, items, kw = _make_run(tmp_path, sessions=("1", "2"))
    (page,) = write_subject_reports(out, items, masking="none", **kw)
    figures = out / "sub-01" / "figures"

    def top_row_red(png):
        red = _pixels(png, RED)
        return red[: red.shape[0] // 2]

    func = "sub-01_ses-1_task-rest"
    overview = top_row_red(figures / f"{func}_desc-overview_bold.png")
    functostruct = top_row_red(figures / f"{func}_desc-functostruct_bold.png")
    assert overview.sum() > 100
    assert (overview & functostruct).sum() / (overview | functostruct).sum() > 0.95
    assert not _pixels(figures / f"{func}_desc-functostruct_bold.png", (52, 199, 89), 30).any()
    anat = top_row_red(figures / "sub-01_ses-2_desc-overview_T2w.png")
    coherence = top_row_red(figures / "sub-01_ses-2_desc-coherence.png")
    assert (anat & coherence).sum() / (anat | coherence).sum() > 0.95
    assert "Coherence across sessions" in page.read_text()
    # no mask was predicted: the legend has no yellow (it named "a predicted brain mask")
    assert "predicted brain mask" not in page.read_text()


def test_slices_are_chosen_where_the_image_has_data():
    _, brain = _phantom()
    data = np.zeros(SHAPE, np.float32)
    data[:, 16:] = 50.0  # the anterior half of the grid only
    indices, outside, n_outside = choose_slices(data, brain, 8)
    in_brain = np.flatnonzero(brain.any(axis=(0, 2)))
    assert indices.min() >= 16 and not outside.any()
    assert indices.max() == in_brain.max()  # the last slice of the brain is shown
    assert n_outside == (in_brain < 16).sum()
    # full coverage: the extreme slices of the mask (where masks leak) are among those shown
    indices, _, n_outside = choose_slices(np.ones(SHAPE), brain, 8)
    assert indices[0] == in_brain.min() and indices[-1] == in_brain.max() and n_outside == 0


def test_a_panel_outside_the_field_of_view_is_labelled(tmp_path):
    _, brain = _phantom()
    empty = nb.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE)
    paths = mosaic(empty, nb.Nifti1Image(brain.astype(np.uint8), AFFINE), n_slices=3,
                   out_base=tmp_path / "empty")
    assert all(paths["outside_fov"])
    assert _svg_texts(paths["svg"]).count("outside the") == 3


def test_anisotropic_voxels_are_drawn_with_their_physical_aspect(tmp_path):
    """0.3 x 0.3 x 0.6 mm voxels, 20 x 10 x 10: a coronal slice 6 mm wide and 6 mm tall is
    drawn square (it was drawn half as tall)."""
    data = np.zeros((20, 10, 10), np.float32)
    data[2:18, :, 2:8] = 1
    affine = np.diag([0.3, 0.3, 0.6, 1.0])
    paths = mosaic(nb.Nifti1Image(data, affine), n_slices=2, out_base=tmp_path / "aniso")
    sizes = re.findall(r'<image [^>]*width="([\d.]+)" height="([\d.]+)"',
                       re.sub(r"base64,[^\"]*", "", paths["svg"].read_text()))
    assert sizes
    for width, height in sizes:
        assert float(width) / float(height) == pytest.approx(1.0, rel=0.05)


def test_panels_have_orientation_labels_positions_in_mm_and_readable_text(tmp_path):
    tpl, brain = _phantom()
    paths = mosaic(nb.Nifti1Image(tpl, AFFINE), nb.Nifti1Image(brain.astype(np.uint8), AFFINE),
                   n_slices=4, out_base=tmp_path / "m", title="scan")
    texts = _svg_texts(paths["svg"])
    assert {"L", "R", "S", "I"} <= set(texts)
    assert any("posterior \u2192 anterior" in t for t in texts)
    for k, y in zip(paths["indices"], paths["positions_mm"], strict=True):
        assert y == pytest.approx(-4.0 + ZOOM * k)
        assert f"y = {y:.1f} mm" in texts
    sizes = [float(s) for s in re.findall(r"font-size: ([\d.]+)px", paths["svg"].read_text())]
    assert sizes and min(sizes) >= 9
    from PIL import Image

    assert Image.open(paths["png"]).info["dpi"][0] == pytest.approx(120, abs=1)


@pytest.mark.parametrize("n_slices", [1, 2, 8])
def test_title_and_legend_are_whole_however_few_the_slices(tmp_path, n_slices):
    """A scan with one or two slices in the brain (a thick-slice functional run) got a figure
    of that many panels, 2.5-4 in wide: its title ("sub-..._bold: functional mean (top), its
    registered structural scan (bottom)") and its legend were cut off at both ends. Now the
    figure is as wide as they are: nothing is drawn at its left and right edges."""
    from PIL import Image

    tpl, brain = _phantom()
    img = nb.Nifti1Image(tpl, AFFINE)
    title = ("sub-sammba_ses-1_task-rest_run-2_bold: functional mean (top), its registered "
             "structural scan (bottom)")
    legend = {"#ff3b30": "template brain mask", "#32d2ff": "template anatomy (dark/bright edges)"}
    paths = mosaic(img, nb.Nifti1Image(brain.astype(np.uint8), AFFINE), reference=img,
                   n_slices=n_slices, out_base=tmp_path / "m", title=title,
                   row_labels=["functional", "structural"], legend=legend)
    assert len(paths["indices"]) == n_slices
    grey = np.asarray(Image.open(paths["png"]).convert("L"), dtype=float)
    assert grey.shape[1] >= 120 * 7  # the title is about 7.5 in long at 11 pt
    assert grey[:, :3].max() < 30 and grey[:, -3:].max() < 30  # (the title's letters: 255)
    assert any(title in t for t in _svg_texts(paths["svg"]))


def test_a_long_row_label_is_wrapped_to_its_row(tmp_path):
    """A functional run of a few BIDS entities is the overview's row label
    (task-rest_acq-highres_dir-AP_run-01_echo-1_bold): on one line, 3.4 in, beside a row 1.3 in
    high, it ran off the top of the figure and over the next row's "template". Now it is
    wrapped to the row's height, whole, and the rest of the figure keeps its size."""
    from PIL import Image

    tpl, brain = _phantom()
    img = nb.Nifti1Image(tpl, AFFINE)
    label = "task-rest_acq-highres_dir-AP_run-01_echo-1_bold"
    paths = mosaic(img, nb.Nifti1Image(brain.astype(np.uint8), AFFINE), reference=img,
                   n_slices=4, out_base=tmp_path / "m", row_labels=[label, "template"])
    assert "".join(t for t in _svg_texts(paths["svg"]) if t in label) == label
    grey = np.asarray(Image.open(paths["png"]).convert("L"), dtype=float)
    # (120 dpi) the panels' rows: 0.85 in from the top, 1.6 * 22 / 28 in high, 0.35 in apart
    top, high, gap = 0.85 * 120, 1.6 * 22 / 28 * 120, 0.35 * 120
    margin = grey[:, : int(0.3 * 120)] > 100  # the row labels' column, left of the panels
    rows = np.flatnonzero(margin.any(axis=1))
    assert rows.size and rows.min() >= top - 2 and rows.max() <= top + 2 * high + gap + 2
    first = rows[rows < top + high + gap / 2]
    assert first.size and first.max() <= top + high + 2  # within its own row

def test_mask_pictures_name_their_scan(tmp_path):
    out, items, kw = _make_run(tmp_path)
    (page,) = write_subject_reports(out, items, masking="unet", **kw)
    figures = out / "sub-01" / "figures"
    titles = {}
    for name in ("sub-01_ses-1_T2w", "sub-01_ses-1_task-rest_bold"):
        entities, suffix = name.rsplit("_", 1)
        texts = _svg_texts(figures / f"{entities}_desc-mask_{suffix}.svg")
        titles[name] = next(t for t in texts if "predicted brain mask (native space)" in t)
        assert name in titles[name]
    assert len(set(titles.values())) == 2
    assert "Predicted brain mask on the native scan: sub-01_ses-1_T2w.nii.gz" in page.read_text()


def test_functional_runs_of_a_session_have_pictures_and_headings_of_their_own(tmp_path):
    """Each functional run's picture above the structural scan was titled "functional mean
    (top), its registered structural scan (bottom)" and headed "Functional mean above the
    registered structural scan ...": two runs of a session read alike, in the report and in
    sub-*/figures/. Now both name their run, as the overview does."""
    import shutil

    out, items, kw = _make_run(tmp_path)
    first = items[0]["bold"][0]
    second = first.replace("task-rest_bold", "task-rest_run-2_bold")
    shutil.copy(first, second)
    for desc in ("preproc",):
        shutil.copy(derivative_path(out, first, space="T", desc=desc),
                    derivative_path(out, second, space="T", desc=desc))
    items[0]["bold"].append(second)
    (page,) = write_subject_reports(out, items, masking="none", **kw)
    text = page.read_text()
    figures = out / "sub-01" / "figures"
    titles = []
    for name in ("sub-01_ses-1_task-rest", "sub-01_ses-1_task-rest_run-2"):
        assert (f"<h3>{name}_bold.nii.gz: functional mean above the registered structural "
                "scan" in text)
        texts = _svg_texts(figures / f"{name}_desc-functostruct_bold.svg")
        titles.append(next(t for t in texts if "functional mean (top)" in t))
        assert titles[-1].startswith(f"{name}_bold: ")
    assert titles[0] != titles[1]


def test_vcf_of_a_partial_field_of_view_has_a_caveat(tmp_path):
    out, items, kw = _make_run(tmp_path)
    bold = derivative_path(out, items[0]["bold"][0], space="T", desc="preproc")
    assert brain_coverage(nb.load(bold), nb.load(kw["template_mask"])) == pytest.approx(0.5,
                                                                                         abs=0.1)
    (page,) = write_subject_reports(out, items, masking="unet", **kw)
    text = page.read_text()
    rows = {r.split("</td>")[0].split(">")[-1]: r for r in text.split("<tr>")[2:]}
    assert "&dagger;" in rows["sub-01_ses-1_task-rest_bold"]
    assert "100%" in rows["sub-01_ses-1_T2w"] and "&dagger;" not in rows["sub-01_ses-1_T2w"]
    assert "Partial field of view" in text and "not expected to be 1" in text
    # the normalised SCF divides by that VCF: a real 12-slice EPI read 1.40 with SCF 1.13
    assert "normalised SCF divides by VCF<sup>1/3</sup>, so it is skewed too" in text


def test_header_names_version_masking_flavour_and_date(tmp_path):
    command = "samri_ml-register bids out participant --template t.nii.gz --fast --masking unet"
    out, items, kw = _make_run(tmp_path, command=command)
    (page,) = write_subject_reports(out, items, masking="unet", crashes_since=0, **kw)
    text = page.read_text()
    assert f"samri_ml {__version__}" in text
    assert "masking <b>unet</b>" in text and "registration flavour <b>fast</b>" in text
    assert f"report written {datetime.date.today():%Y-%m-%d}" in text
    assert "Command: <code>samri_ml-register bids out participant" in text
    # an explicit flavour wins; without a recorded command none is guessed
    out2, items2, kw2 = _make_run(tmp_path / "b")
    (page,) = write_subject_reports(out2, items2, masking="none", **kw2)
    assert "registration flavour" not in page.read_text()
    (page,) = write_subject_reports(out2, items2, masking="none", flavour="precise", **kw2)
    assert "registration flavour <b>precise</b>" in page.read_text()


def test_a_qc_value_that_could_not_be_measured_reads_n_a_and_is_named(tmp_path):
    """A scan of noise only has no measurable smoothness: its record holds null for the raw
    FWHM and the SCF, which the table showed as the word "None", like a value, with no
    banner. The record here is the real QC of such a scan."""
    from samri_ml.qc.metrics import qc_from_arrays, qc_record, write_qc_record

    out, items, kw = _make_run(tmp_path)
    anat = items[0]["anat"]
    registered = nb.load(derivative_path(out, anat, space="T", desc="preproc"))
    # neighbours anti-correlated along every axis (a checkerboard of noise): no FWHM
    checker = (-1.0) ** np.indices(SHAPE).sum(axis=0)
    noise = 100 + checker * np.random.default_rng(1).uniform(5, 15, SHAPE)
    values = qc_from_arrays(registered.get_fdata(), AFFINE, noise, AFFINE)
    assert values["fwhm_raw"] != values["fwhm_raw"]  # NaN
    qc = derivative_path(out, anat, space="T", desc="qc", suffix="metrics", extension=".json")
    write_qc_record(qc_record(values, scan="sub-01_ses-1_T2w", modality="anat",
                              workflow="generic"), qc)
    assert json.loads(qc.read_text())["scf"] is None
    (page,) = write_subject_reports(out, items, masking="none", **kw)
    text = page.read_text()
    assert "None" not in text
    rows = {r.split("</td>")[0].split(">")[-1]: r.split("</tr>")[0]
            for r in text.split("<tr>")[2:]}
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", rows["sub-01_ses-1_T2w"])
    # scan modality workflow vcf scf scf_normalised v_proc v_raw fwhm_proc fwhm_raw coverage
    assert cells[4] == cells[5] == cells[9] == "n/a", cells
    assert float(cells[3]) == pytest.approx(values["vcf"], rel=1e-3)
    assert "<p class='note'>n/a: the value could not be measured" in text
    # the columns say their units (mm^3, mm), as the record's contract has them
    assert ("<th>volume_processed (mm&sup3;)</th><th>volume_raw (mm&sup3;)</th>"
            "<th>fwhm_processed (mm)</th><th>fwhm_raw (mm)</th>") in text
    banner = text[text.index("<div class='banner'"):text.index("</div>")]
    assert "sub-01_ses-1_T2w: SCF n/a (could not be measured" in banner
    # the functional run's record (measured) has no n/a and no banner line
    assert "n/a" not in rows["sub-01_ses-1_task-rest_bold"]
    assert "task-rest_bold" not in banner


def test_a_failed_rerun_does_not_pass_an_earlier_runs_registration_off_as_its_own(tmp_path):
    """A rerun into the OUTPUT_DIR of an earlier, successful run, that failed for the subject
    (its crash file written after the run started), showed the earlier run's registered scans
    and QC values as "registered" under the new run's options, with nothing to tell them
    apart. They are now marked in the banner, under their heading and in the QC table. A run
    without a failure (a cached rerun keeps identical derivatives, and their dates) and a
    failed run's own fresh outputs are not marked."""
    import os
    import time

    out, items, kw = _make_run(tmp_path)
    old = time.time() - 3600
    for f in out.rglob("*.nii.gz"):
        os.utime(f, (old, old))
    started = time.time()
    (page,) = write_subject_reports(out, items, masking="unet", crashes_since=started, **kw)
    assert "before this run" not in page.read_text()  # no failure: nothing marked
    log = out / "sub-01" / "log"
    log.mkdir(parents=True)
    (log / "crash-2-s_register.txt").write_text("Node: wf.sub_01.anat_wf.s_register\n"
                                                "RuntimeError: antsRegistration died\n")
    (page,) = write_subject_reports(out, items, masking="unet", crashes_since=started, **kw)
    text = page.read_text()
    banner = text[text.index("<div class='banner'"):text.index("</div>")]
    when = datetime.datetime.fromtimestamp(old).astimezone()
    assert (f"sub-01_ses-1_T2w.nii.gz ({when:%Y-%m-%d %H:%M %Z}): the registered scan shown "
            "was written before this run, which failed for this subject") in banner, banner
    assert "sub-01_ses-1_task-rest_bold.nii.gz (" in banner
    heading = text.index("sub-01_ses-1_T2w.nii.gz: registered, under the template")
    assert text.index("before this run, whose steps for this subject failed", heading) \
        < text.index("<img", heading)
    assert "<td>sub-01_ses-1_T2w &Dagger;</td>" in text
    assert "&Dagger; Written before this run" in text
    # the structural scan's sink step ran through this run and found its bytes in place (so
    # left the file and its time): confirmed, not marked; the functional run still is
    from samri_ml.report import registered_output

    anat = registered_output(out, items[0]["anat"], kw["template_name"]).resolve()
    (page,) = write_subject_reports(out, items, masking="unet", crashes_since=started,
                                    confirmed={anat}, **kw)
    text = page.read_text()
    banner = text[text.index("<div class='banner'"):text.index("</div>")]
    assert "sub-01_ses-1_T2w.nii.gz (" not in banner, banner
    assert "sub-01_ses-1_task-rest_bold.nii.gz (" in banner, banner
    assert "<td>sub-01_ses-1_T2w &Dagger;</td>" not in text
    # the failed run's own outputs (written after it started) are its own
    for f in out.rglob("*_desc-preproc_*.nii.gz"):
        os.utime(f)
    (page,) = write_subject_reports(out, items, masking="unet", crashes_since=started, **kw)
    text = page.read_text()
    assert "step s_register failed" in text and "before this run" not in text
    assert "&Dagger;" not in text


def test_a_session_without_a_structural_scan_says_so(tmp_path):
    """A session with functional runs only (registered straight to the template) was shown
    like any other: only the command line's note said why its VCF may differ."""
    out, items, kw = _make_run(tmp_path, sessions=("1", "2"))
    items[1]["anat"] = None
    (page,) = write_subject_reports(out, items, masking="none", **kw)
    text = page.read_text()
    ses1, ses2 = text.split("<h2>sub-01_ses-2</h2>")
    assert "No structural scan in this session" not in ses1
    assert ses2.index("<b>No structural scan in this session:</b> its functional runs were "
                      "registered straight to the template") < ses2.index("<h3>")


def test_a_redrawn_picture_is_the_same_bytes(tmp_path):
    """The SVGs got new random ids and the date on every draw, so two runs of
    samri_ml-register with the same inputs gave figures with different checksums."""
    tpl, brain = _phantom()
    args = (nb.Nifti1Image(tpl, AFFINE), nb.Nifti1Image(brain.astype(np.uint8), AFFINE))
    first = mosaic(*args, n_slices=3, out_base=tmp_path / "a" / "m", title="scan")
    second = mosaic(*args, n_slices=3, out_base=tmp_path / "b" / "m", title="scan")
    for ext in ("svg", "png"):
        assert first[ext].read_bytes() == second[ext].read_bytes(), ext
    assert "<dc:date>" not in first["svg"].read_text()
    other = mosaic(*args, n_slices=3, out_base=tmp_path / "c" / "m", title="other scan")
    assert other["svg"].read_bytes() != first["svg"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["m.png", "m.svg"]


def test_figures_are_named_as_bids_derivatives_with_the_suffix_last(tmp_path):
    """BIDS-Derivatives figures end in the scan's suffix, after desc- (fMRIPrep's
    sub-01_task-rest_desc-carpetplot_bold.svg); they were sub-01_ses-1_T2w_desc-overview.png,
    the suffix amid the entities."""
    from samri_ml.bids import parse_entities

    out, items, kw = _make_run(tmp_path, sessions=("1", "2"))
    write_subject_reports(out, items, masking="unet", **kw)
    names = sorted(p.name for p in (out / "sub-01" / "figures").iterdir())
    assert "sub-01_ses-1_task-rest_desc-overview_bold.svg" in names, names
    assert "sub-01_ses-2_desc-mask_T2w.png" in names, names
    for name in names:
        if "coherence" in name:  # two sessions' scans, no one scan's suffix
            continue
        ent = parse_entities(name)
        assert ent["suffix"] in ("T2w", "bold") and "desc" in ent, name


def test_mask_figures_show_the_head_not_the_whole_field_of_view(tmp_path):
    """A skull-stripped brain in a large field of view filled 60 % of each mask panel's width:
    its outline was too small to judge. Mask figures (samri_ml-mask --png, evaluate-masker,
    the report's mask pictures) now show the head's box grown by a margin; a head that fills
    its grid is shown whole, and the slices' positions are those of the whole grid."""
    import nibabel as nb

    from samri_ml.report import HEAD_MARGIN, head_box, mask_figure, mosaic

    data = np.zeros((100, 40, 80), np.float32)
    data[40:60, 10:30, 30:50] = 100.0  # a 20-voxel brain in a grid 5 and 4 times as wide
    box = head_box(data)
    pad = int(HEAD_MARGIN * 20)
    assert box == (slice(40 - pad, 60 + pad), slice(None), slice(30 - pad, 50 + pad))
    assert head_box(np.ones((30, 30, 30), np.float32)) == (slice(None),) * 3
    img = nb.Nifti1Image(data, np.diag([0.1, 0.1, 0.1, 1.0]))
    mask = nb.Nifti1Image((data > 0).astype(np.uint8), img.affine)
    whole = mosaic(img, mask, out_base=tmp_path / "whole", formats=("png",))
    cropped = mosaic(img, mask, out_base=tmp_path / "cropped", formats=("png",), crop=True)
    assert cropped["positions_mm"] == whole["positions_mm"]
    png = mask_figure(img, mask, tmp_path / "m.png")
    import matplotlib.image as mpimg

    # the brain (grey 100 of 100: white) fills a panel: many more bright pixels than uncut
    bright = [(mpimg.imread(p)[..., :3].mean(-1) > 0.9).sum()
              for p in (tmp_path / "whole.png", png)]
    assert bright[1] > 4 * bright[0], bright


def test_a_mask_figure_shows_the_part_of_the_reference_its_prediction_missed(tmp_path):
    """samri_ml-evaluate-masker --figures: a predicted mask that missed the posterior half
    of the brain was drawn on slices of its own extent only, the anterior half, where it
    lay on the reference mask and hid it: the picture of a Dice 0.67 looked perfect. The
    slices now span both masks: the missed half shows the reference's outline alone."""
    from samri_ml.report import REFERENCE_MASK_COLOUR, mask_figure

    _, brain = _phantom()
    predicted = brain.copy()
    predicted[:, : SHAPE[1] // 2] = False
    png = mask_figure(nb.Nifti1Image(_phantom()[0], AFFINE),
                      nb.Nifti1Image(predicted.astype(np.uint8), AFFINE), tmp_path / "m.png",
                      reference=nb.Nifti1Image(brain.astype(np.uint8), AFFINE), n_slices=6)
    cyan = tuple(int(REFERENCE_MASK_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    left = _pixels(png, cyan, tol=60)
    half = left.shape[1] // 2
    # the posterior slices (the left half of the figure) outline the reference alone
    assert left[:, :half].sum() > 200

def test_a_report_names_the_other_templates_registrations_it_does_not_show(tmp_path):
    """A run to a second template rewrote sub-01.html and its pictures for that template
    alone: the first template's registrations stayed in the folder, with nothing saying the
    report no longer reviews them."""
    import shutil

    out, items, kw = _make_run(tmp_path)
    (page,) = write_subject_reports(out, items, masking="none", **kw)
    assert "also holds registrations to" not in page.read_text()
    anat = next(out.glob("sub-01/ses-1/anat/*_space-T_desc-preproc_T2w.nii.gz"))
    shutil.copy(anat, anat.with_name(anat.name.replace("space-T_", "space-Other_")))
    (page,) = write_subject_reports(out, items, masking="none", **kw)
    assert ("This subject's folder also holds registrations to space-Other; this report "
            "shows space-T only") in page.read_text()


def test_index_lists_every_report_and_links_the_graph_relative_to_the_folder(tmp_path):
    """A run of many subjects left as many sub-*.html side by side, nothing to start from, and
    each embedded the whole run's workflow graph (30 subjects: 10.5 MB of it in each of the
    30 reports). index.html lists them, with each subject's warnings; the graph is one file,
    linked from the folder, and the links still hold in a copy whose path has a space."""
    import base64
    import shutil
    from html.parser import HTMLParser

    from PIL import Image

    out, items, kw = _make_run(tmp_path, anat_vcf=0.164, shift=6)
    graph = out / "figures" / "workflow_graph.png"
    graph.parent.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(graph)
    (out / "sub-02.html").write_text("<!DOCTYPE html><html><body>earlier</body></html>\n")
    (page,) = write_subject_reports(out, items, masking="unet", workflow_graph=graph, **kw)
    text = page.read_text()
    assert base64.b64encode(graph.read_bytes()).decode()[:200] not in text  # not embedded
    index = (out / "index.html").read_text()
    assert "sub-01_ses-1_T2w: VCF 0.164, outside the plausible range" in index
    assert "an earlier run's report" in index and f"samri_ml {__version__}" in index

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.hrefs, self.open = [], []

        def handle_starttag(self, tag, attrs):
            self.hrefs += [v for k, v in attrs if k == "href"]
            if tag not in ("meta", "img", "br"):
                self.open.append(tag)

        def handle_endtag(self, tag):
            if tag not in ("meta", "img", "br"):
                assert self.open.pop() == tag

    moved = tmp_path / "moved dir" / "copy"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    for name, expected in (("index.html", {"sub-01.html", "sub-02.html",
                                           "figures/workflow_graph.png"}),
                           ("sub-01.html", {"index.html", "figures/workflow_graph.png"})):
        parser = Links()
        parser.feed((moved / name).read_text())
        assert not parser.open, name  # every tag closed
        assert set(parser.hrefs) == expected, (name, parser.hrefs)
        assert all((moved / href).is_file() for href in parser.hrefs)


def test_a_structural_scan_off_the_template_is_in_the_banner_and_index_without_qc(tmp_path):
    """With --no-qc (no QC records) a structural scan covering a quarter of the template's
    brain got its note in the page's body only: no banner, and index.html said 'no
    warnings'. The coverage is the report's own: it is named there as with QC."""
    out, items, kw = _make_run(tmp_path)
    anat = derivative_path(out, items[0]["anat"], space="T", desc="preproc")
    data = np.asanyarray(nb.load(anat).dataobj).copy()
    data[:, :20] = data[:, 26:] = 0  # a slab: the rest of the brain off the scan
    _save(data, anat)
    for qc in (True, False):
        (page,) = write_subject_reports(out, items, masking="none", qc=qc, **kw)
        text = page.read_text()
        banner = text[text.index("<div class='banner'"):text.index("</div>")]
        assert "sub-01_ses-1_T2w: the registered structural scan covers only" in banner
        assert "unless the scan is a slab of part of the brain" in banner
        assert "task-rest_bold" not in banner  # a functional run of part of the brain: never
        index = (out / "index.html").read_text()
        assert "no warnings" not in index and "the registration probably failed" in index


def test_a_structural_scan_off_the_template_is_named_at_the_end_of_a_run_without_qc(tmp_path):
    """With --no-qc a structural scan covering a quarter of the template's brain was named in
    its report and index.html but not in the run's end-of-run notes (they read QC records):
    the reports hand their records of it over, and the note is the one a QC record gives."""
    from samri_ml.cli.register import implausible_qc_notes

    out, items, kw = _make_run(tmp_path)
    anat = derivative_path(out, items[0]["anat"], space="T", desc="preproc")
    data = np.asanyarray(nb.load(anat).dataobj).copy()
    data[:, :20] = data[:, 26:] = 0  # a slab: the rest of the brain off the scan
    _save(data, anat)
    for qc, expected in ((True, 0), (False, 1)):  # with QC, the record says it
        found: list = []
        write_subject_reports(out, items, masking="none", qc=qc, off_template=found, **kw)
        assert len(found) == expected, found
    (note,) = implausible_qc_notes(found, out)
    assert note.startswith("sub-01_ses-1_T2w: the registered structural scan covers only ")
    assert note.endswith(f"unless the scan is a slab of part of the brain; hint: look at "
                         f"{out / 'sub-01.html'}"), note


def test_an_interrupted_rerun_is_named_in_the_index_too(tmp_path):
    """A rerun interrupted after it rewrote part of a subject's files marked the subject's
    report (mark_interrupted), but index.html, an earlier run's, still said 'no warnings'
    of it. The index names the subject in a banner too, once."""
    import time

    from samri_ml.report import mark_interrupted

    out, items, kw = _make_run(tmp_path)
    (page,) = write_subject_reports(out, items, masking="none", **kw)
    index = out / "index.html"
    assert "no warnings" in index.read_text()
    when = time.time()
    for _ in range(2):
        mark_interrupted(page, ["sub-01_ses-1_space-T_desc-preproc_T2w.nii.gz"], when)
    text = index.read_text()
    assert text.count("class='banner interrupted'") == 1
    assert text.index("<b>sub-01:</b> a later run (started") < text.index("<h1>")
    assert "was interrupted after rewriting 1 of its files" in text


def test_the_index_lists_interrupted_subjects_in_their_order(tmp_path):
    """An interrupted rerun marks its subjects in order, and each banner went first in
    index.html: sub-03's above sub-02's above sub-01's, against the table's order."""
    import time

    from samri_ml.report import mark_interrupted

    out, items, kw = _make_run(tmp_path)
    pages = write_subject_reports(out, items, masking="none", **kw)
    for subject in ("02", "03"):  # earlier runs' reports of other subjects
        pages.append(out / f"sub-{subject}.html")
        pages[-1].write_text("<!DOCTYPE html><html><body>earlier</body></html>\n")
    when = time.time()
    for page in (pages[0], pages[2], pages[1]):  # a later interrupted run may mark out of order
        assert mark_interrupted(page, [f"{page.stem}_T2w.nii.gz"], when)
    text = (out / "index.html").read_text()
    assert text.count("class='banner interrupted'") == 3
    places = [text.index(f"<b>sub-{s}:</b> a later run") for s in ("01", "02", "03")]
    assert places == sorted(places) and places[-1] < text.index("<h1>"), places


def test_graphs_no_report_links_are_named(tmp_path):
    """A run of the whole dataset after one of ``--participant-label 01 --write-graph`` left
    ``figures/workflow_graph_sub-01.png``, which no report linked any more, and nothing
    named it (the end-of-run note of files not from this run names these). A graph an
    earlier run's report still links, and the files Graphviz writes beside a linked one,
    are not named."""
    from PIL import Image

    from samri_ml.report import unlinked_graphs

    out, items, kw = _make_run(tmp_path)
    figures = out / "figures"
    figures.mkdir(parents=True)
    picture = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    for name in ("workflow_graph_sub-01.png", "workflow_graph_sub-02.png", "workflow_graph.png",
                 "workflow_graph_dry-run.png"):
        picture.save(figures / name)
    (figures / "workflow_graph.dot").write_text("digraph {}\n")
    (out / "sub-02.html").write_text(  # an earlier run's report, which links its own graph
        "<!DOCTYPE html><html><body><a href='figures/workflow_graph_sub-02.png'>graph</a>"
        "</body></html>\n")
    write_subject_reports(out, items, masking="none",
                          workflow_graph=figures / "workflow_graph_sub-01.png", **kw)
    assert [p.name for p in unlinked_graphs(out)] == [
        "workflow_graph.dot", "workflow_graph.png", "workflow_graph_dry-run.png"]
    write_subject_reports(out, items, masking="none",
                          workflow_graph=figures / "workflow_graph.png", **kw)  # a rerun of all
    assert [p.name for p in unlinked_graphs(out)] == [
        "workflow_graph_dry-run.png", "workflow_graph_sub-01.png"]
    assert unlinked_graphs(tmp_path / "none") == []


def test_the_index_says_an_earlier_runs_report_has_warnings(tmp_path):
    """A rerun of one subject (--participant-label 01) listed sub-02's report as 'an earlier
    run's report', its red banner (a failed registration, a later run interrupted) unsaid:
    the index read as if sub-02 were fine."""
    out, items, kw = _make_run(tmp_path)
    (out / "sub-02.html").write_text(
        "<!DOCTYPE html><html><body><div class='banner' role='alert'><b>Warning: sub-02</b>"
        "<ul><li>VCF 0.1</li></ul></div></body></html>\n")
    (out / "sub-03.html").write_text("<!DOCTYPE html><html><body>fine</body></html>\n")
    write_subject_reports(out, items, masking="none", **kw)
    rows = {r.split("'>")[2].split("<")[0]: r
            for r in (out / "index.html").read_text().split("<tr>")[2:]}
    assert "<td class='bad text'>an earlier run's report" in rows["sub-02"]
    assert "with warnings: see it" in rows["sub-02"]
    assert "<td class='text'>an earlier run's report" in rows["sub-03"]
    assert "with warnings" not in rows["sub-03"]


def test_a_template_without_contrast_has_no_anatomy_in_the_legend_or_key(tmp_path):
    """A template without contrast in its brain (a brain mask given as the template) has no
    anatomy to outline: no cyan is drawn, but each picture's legend still listed the cyan
    "template anatomy (dark/bright edges)", and the report's key explained cyan. Both now list
    only what is drawn; a template with contrast keeps them."""
    out, items, kw = _make_run(tmp_path)
    _, brain = _phantom()
    flat = _save(brain.astype(np.float32) * 100, tmp_path / "flat" / "tpl-T_T2w.nii.gz")
    for template, drawn in ((flat, False), (kw["template"], True)):
        write_subject_reports(out, items, masking="unet", **{**kw, "template": template})
        for view in ("overview_T2w", "overview_bold"):
            (svg,) = (out / "sub-01" / "figures").glob(f"*desc-{view}.svg")
            texts = _svg_texts(svg)
            assert "template brain mask" in texts, texts
            assert any("template anatomy" in t for t in texts) == drawn, (view, texts)
            assert bool(_pixels(svg.with_suffix(".png"), CYAN).sum()) == drawn
        page = (out / "sub-01.html").read_text()
        assert ("the template's anatomy" in page) == drawn
        assert "the template's brain mask" in page
