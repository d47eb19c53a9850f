"""What the pictures show: the QC comparison plot, the masker's loss curve and the workflow
graph drawn without Graphviz (checked on the matplotlib objects, not just the file size)."""

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.patches import FancyArrowPatch
from matplotlib.transforms import Bbox

from samri_ml.graph import _draw_layered
from samri_ml.masking.train import plot_history
from samri_ml.qc.compare import PLOT_PANELS, violin_figure, violin_plot
from samri_ml.workflows import init_functional_wf, init_generic_wf

SHIPPED = Path(__file__).resolve().parents[1] / "samri_ml/data/models/unet_brainmask_training.json"


# --------------------------------------------------------------------------------------------
# samri_ml-qc compare: one row per modality, paired points, violins only from 5 scans on
# --------------------------------------------------------------------------------------------


def _groups(n_anat=6, n_func=3):
    rng = np.random.default_rng(1)
    groups = {}
    for wf, centre in (("masked", 1.0), ("plain", 0.85)):
        recs = []
        for kind, n, s0 in (("anat", n_anat, 0.8), ("func", n_func, 1.17)):
            for i in range(n):
                v = centre + 0.03 * rng.standard_normal()
                s = s0 + 0.03 * rng.standard_normal()
                recs.append({"scan": f"sub-{i:02d}_{kind}", "modality": kind, "workflow": wf,
                             "space": "T", "vcf": v, "scf": s, "scf_normalised": s / v ** (1 / 3)})
        groups[wf] = recs
    return groups


def test_qc_plot_has_a_row_per_modality_paired_points_and_n():
    groups = _groups()
    fig = violin_figure(groups)
    axes = np.array(fig.axes).reshape(2, len(PLOT_PANELS))  # anat, func rows
    for row, (kind, n) in enumerate((("anat", 6), ("func", 3))):
        assert axes[row, 0].get_ylabel().startswith(f"{kind} scans")
        for col, (key, deviation, _label, ideal) in enumerate(PLOT_PANELS):
            ax = axes[row, col]
            assert ax.get_ylabel()  # every panel says what it shows
            ticks = [t.get_text() for t in ax.get_xticklabels()]
            assert ticks == [f"masked\nn={n}", f"plain\nn={n}"]
            # a violin (PolyCollection) only where a group has 5 scans or more
            violins = [c for c in ax.collections if isinstance(c, PolyCollection)]
            assert len(violins) == (2 if n >= 5 else 0)
            # points: the plotted values, |1 - x| on the deviation panels
            pts = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections
                                  if isinstance(c, PathCollection)])
            raw = np.array([r[key] for wf in groups for r in groups[wf] if r["modality"] == kind])
            want = np.abs(1 - raw) if deviation else raw
            assert np.allclose(np.sort(pts), np.sort(want))
            if deviation:
                assert ax.get_ylim()[0] == 0 and pts.min() >= 0
            # one line per scan joins its two workflows, plus the dashed ideal
            lines = ax.get_lines()
            ideal_lines = [ln for ln in lines if ln.get_linestyle() == "--"]
            assert len(ideal_lines) == 1 and np.allclose(ideal_lines[0].get_ydata(), ideal)
            assert sum(len(ln.get_xdata()) == 2 and ln.get_linestyle() == "-"
                       for ln in lines) == n


def _tick_labels_apart(fig) -> bool:
    """Whether no two tick labels of ``fig`` overlap: upright ones by their boxes; slanted
    ones (whose upright boxes overlap, the text not) by their distance across their lines,
    more than a line of 8 pt is high, and by the boxes of the panels' label rows."""
    import math

    renderer = fig.canvas.get_renderer()
    boxes, rows = [], {}
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        slant = labels[0].get_rotation()
        if slant:
            xs = [ax.transData.transform((t.get_position()[0], 0))[0] for t in labels]
            if min(np.diff(xs)) * math.sin(math.radians(slant)) / fig.dpi < 0.12:
                return False
            rows.setdefault(round(ax.get_position().y0, 3), []).append(
                Bbox.union([t.get_window_extent(renderer) for t in labels]))
        else:
            boxes += [t.get_window_extent(renderer) for t in labels]
    return not any(a.overlaps(b) for group in (boxes, *rows.values())
                   for i, a in enumerate(group) for b in group[i + 1:])


@pytest.mark.parametrize("names", [
    ("samri_ml generic", "samri_ml masked"),  # two runs of samri_ml-register, Names told apart
    ("deriv_generic_fast", "deriv_masked_fast", "deriv_masked_precise", "averyveryverylongname"),
])
def test_qc_plot_tick_labels_neither_overlap_nor_lose_a_character(names):
    """Workflow names under the panels were one line each: "samri_ml generic" ran into
    "samri_ml masked" (and four folder names into the next panel's). Now each is wrapped to its
    share of the panel; no two tick labels of the figure overlap, and each reads as given."""
    base = _groups(5, 2)
    groups = {name: [dict(r, workflow=name) for r in recs]
              for name, recs in zip(names, [base["masked"], base["plain"]] * 2, strict=False)}
    fig = violin_figure(groups)
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        # wrapped above "n=5", or slanted on one line where a word is wider than its column
        shown = ["".join((t.get_text().rsplit(" (n=", 1) if t.get_rotation()
                          else t.get_text().rsplit("\n", 1))[0].split()) for t in labels]
        assert shown == ["".join(n.split()) for n in names]  # (a space ends a line)
    assert _tick_labels_apart(fig)


def test_qc_plot_tick_labels_keep_their_words_whole():
    """Four workflows of folder names: "deriv_unmasked" was wrapped as "deriv_" / "unmask" /
    "ed", a word broken in its middle, as a word wider than its column always was. Labels
    are wrapped after "_", "-", "." and spaces only; where a word cannot fit its column, they
    are slanted, each on one line, and still do not overlap."""
    from samri_ml.qc.compare import wrap_label

    assert wrap_label("sub-01_unmasked_fast", 0.6) == "sub-01_\nunmasked_\nfast"
    base = _groups(5, 2)
    for names, slanted in ((("deriv_unmasked", "deriv_unet", "deriv_ants", "deriv_none"), True),
                           (("unmasked", "unet"), False)):
        groups = {name: [dict(r, workflow=name) for r in recs] for name, recs
                  in zip(names, [base["masked"], base["plain"]] * 2, strict=False)}
        fig = violin_figure(groups)
        for ax in fig.axes:
            labels = ax.get_xticklabels()
            assert all(bool(t.get_rotation()) == slanted for t in labels), names
            words = {w for t in labels for w in t.get_text().replace("_", " ").split()}
            assert {w for n in names for w in n.replace("_", " ").split()} <= words, words
        assert _tick_labels_apart(fig), names


def test_qc_plot_of_many_workflows_slants_its_labels_apart():
    """Eight workflows: each name was wrapped to a 0.15 in column, "samri_ml" in five lines of
    two letters. Five or more are now written on one slanted line each, slanted just enough
    that neighbours keep apart (across their lines), the panels' label rows apart too."""
    import math

    names = [f"samri_ml {w}" for w in ("generic", "masked", "generic fast", "masked fast",
                                       "legacy", "ants default", "masked syn only", "nothing")]
    base = _groups(5, 2)
    groups = {name: [dict(r, workflow=name) for r in recs]
              for name, recs in zip(names, [base["masked"], base["plain"]] * 4, strict=True)}
    fig = violin_figure(groups)
    renderer = fig.canvas.get_renderer()
    rows = {}
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        assert [t.get_text().rsplit(" (n=", 1)[0] for t in labels] == names
        slant = labels[0].get_rotation()
        assert 20 < slant <= 90 and all(t.get_rotation() == slant for t in labels)
        # across their lines, two neighbours are further apart than a line of 8 pt is high
        xs = [ax.transData.transform((t.get_position()[0], 0))[0] for t in labels]
        gap = min(np.diff(xs)) * math.sin(math.radians(slant)) / fig.dpi
        assert gap >= 0.12, gap
        box = labels[0].get_window_extent(renderer).union(
            [t.get_window_extent(renderer) for t in labels])
        rows.setdefault(round(ax.get_position().y0, 3), []).append(box)
    for boxes in rows.values():  # the label rows of two panels side by side
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_qc_plot_writes_png_and_svg(tmp_path):
    paths = violin_plot(_groups(2, 2), tmp_path / "qc_violin")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# the masker's loss curve
# --------------------------------------------------------------------------------------------


def _history():
    """J's training history (the shipped ensemble's first member, its record's ``members``)."""
    record = json.loads(SHIPPED.read_text())
    (j,) = [m for m in record["members"] if m["model"] == "J.keras"]
    return j["history"]


def test_loss_curve_axes_marks_and_title(tmp_path):
    history = _history()
    fig = plot_history(history, tmp_path / "unet_brainmask_loss.png", init_model="x/GH.keras")
    assert (tmp_path / "unet_brainmask_loss.png").stat().st_size > 10_000
    loss_ax, dice_ax = fig.axes
    assert loss_ax.get_ylim()[0] == 0 and loss_ax.get_ylim()[1] > max(history["loss"])
    lo, hi = dice_ax.get_ylim()
    assert hi == 1.0 and hi - lo >= 0.05 and lo <= min(history["val_dice_coefficient"])
    best = int(np.argmin(history["val_loss"])) + 1  # the restored epoch: 3
    lr_drop = 1 + next(i for i in range(1, 7)
                       if history["learning_rate"][i] != history["learning_rate"][i - 1])
    for ax in (loss_ax, dice_ax):
        xs = [ln.get_xdata()[0] for ln in ax.get_lines()
              if len(ln.get_xdata()) == 2 and ln.get_xdata()[0] == ln.get_xdata()[1]]
        assert best in xs and lr_drop - 0.5 in xs
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"restored: epoch {best}" in legend
    assert any(t.startswith("learning rate") for t in legend)
    assert fig._suptitle.get_text().startswith("unet_brainmask.keras (started from GH.keras)")
    from PIL import Image

    # the title in the file itself: which model a loss curve is of, read without the figure
    assert Image.open(tmp_path / "unet_brainmask_loss.png").info["Title"] == \
        fig._suptitle.get_text()


def test_the_shipped_loss_curve_names_the_model_whose_curves_it_shows():
    """The shipped unet_brainmask_J_loss.png (the curves of J, the ensemble's first member, as
    the model card says) was titled "unet_brainmask.keras (started from GH.keras)": the
    shipped model, an average of two U-Nets that has no curves of its own. Its title, in the
    PNG's Title text, names J now."""
    from PIL import Image

    models = Path(__file__).resolve().parents[1] / "samri_ml" / "data" / "models"
    record = json.loads((models / "unet_brainmask_training.json").read_text())
    member = next(m for m in record["members"] if m["model"] == "J.keras")
    title = Image.open(models / "unet_brainmask_J_loss.png").info.get("Title", "")
    assert title.startswith("J.keras, the first member of unet_brainmask.keras")
    assert member["config"]["init_model"] in title


def test_loss_curve_legend_hides_no_curve(tmp_path):
    """The legend sat in the loss panel's lower left corner: for a loss falling from 0.7 over
    30 epochs (a plain and an augmented phase, the rate lowered, raised and lowered again) its
    eight entries covered the curves of epochs 4-9. Now one legend below both panels, each
    entry once; no point of any curve lies under it."""
    n = 30
    loss = list(0.6 * np.exp(-np.arange(n) / 6) + 0.1)
    val = [v + 0.02 for v in loss]
    history = {"loss": loss, "val_loss": val, "dice_coefficient": [1 - 0.8 * v for v in loss],
               "val_dice_coefficient": [1 - 0.8 * v for v in val],
               "learning_rate": [1e-3] * 10 + [5e-4] * 8 + [1e-3] * 6 + [5e-4] * 6,
               "phase": ["plain"] * 18 + ["augmented"] * 12}
    fig = plot_history(history, tmp_path / "m_loss.png")
    assert not any(ax.get_legend() for ax in fig.axes)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels)) == 7  # train, validation, 2 restored, 2 rates, phase
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer))
        for line in ax.get_lines():
            pts = line.get_transform().transform(line.get_xydata())
            assert not any(box.contains(x, y) for x, y in pts)


def test_loss_curve_reads_init_only_from_its_own_training_json(tmp_path):
    history = _history()
    summary = {"config": {"init_model": "GH.keras"}, "history": history}
    (tmp_path / "m_training.json").write_text(json.dumps(summary))
    fig = plot_history(history, tmp_path / "m_loss.png")
    assert "GH.keras" in fig._suptitle.get_text()
    other = dict(history, loss=history["loss"][:-1] + [0.5])  # a stale json of another run
    fig = plot_history(other, tmp_path / "m_loss.png")
    assert "GH" not in fig._suptitle.get_text() and "m.keras" in fig._suptitle.get_text()


# --------------------------------------------------------------------------------------------
# workflow graph without Graphviz
# --------------------------------------------------------------------------------------------


def _generic(tmp_path):
    files = {n: tmp_path / n for n in ("t.nii.gz", "m.nii.gz", "sub-01_T2w.nii.gz",
                                       "sub-01_task-b_bold.nii.gz")}
    for f in files.values():
        f.touch()  # the QC nodes want existing inputs; nothing runs
    return init_generic_wf(template=str(files["t.nii.gz"]), template_mask=str(files["m.nii.gz"]),
                           anat_file=str(files["sub-01_T2w.nii.gz"]),
                           bold_files=[str(files["sub-01_task-b_bold.nii.gz"])],
                           output_dir=str(tmp_path),
                           qc=True)


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # a closed figure has lost its canvas
    return fig.canvas.get_renderer()


def _extents(fig, prefix):
    r = fig.canvas.get_renderer()
    return {a: a.get_window_extent(r) for a in fig.findobj()
            if (a.get_gid() or "").startswith(prefix)}


@pytest.mark.parametrize("which,graph2use", [("functional", "orig"), ("generic", "colored"),
                                             ("generic", "hierarchical")])
def test_graph_fallback_labels_inside_boxes_and_image(which, graph2use, tmp_path):
    wf = (init_functional_wf()
          if which == "functional" else _generic(tmp_path))
    fig = _draw_layered(wf, tmp_path / "g.png", graph2use)
    r = _renderer(fig)
    image = fig.bbox
    boxes = _extents(fig, "node:")
    labels = _extents(fig, "label:")
    assert len(boxes) == len(labels) > 5
    by_label = {}
    for box, ext in boxes.items():
        by_label.setdefault(box.get_gid()[5:], []).append(ext)
    for text, ext in labels.items():
        assert image.contains(ext.x0, ext.y0) and image.contains(ext.x1, ext.y1), text.get_text()
        # the label lies inside its own box
        assert any(b.x0 <= ext.x0 and ext.x1 <= b.x1 and b.y0 <= ext.y0 and ext.y1 <= b.y1
                   for b in by_label[text.get_text()]), text.get_text()
    # no two boxes overlap
    exts = list(boxes.values())
    for i, a in enumerate(exts):
        for b in exts[i + 1:]:
            assert not a.overlaps(b)
    # edges: inside the image; none passes through a box that is not one of its ends
    n_edges = 0
    for arrow in fig.findobj(FancyArrowPatch):
        gid = arrow.get_gid() or ""
        if not gid.startswith("edge:"):
            continue
        n_edges += 1
        poly = np.vstack(arrow.get_path().to_polygons(closed_only=False))
        pts = arrow.get_transform().transform(poly)
        assert Bbox.from_extents(*pts.min(0), *pts.max(0)).x0 >= image.x0 - 1
        assert pts[:, 0].max() <= image.x1 + 1 and pts[:, 1].min() >= image.y0 - 1
        src, dst = gid[5:].split("->")
        for box, ext in boxes.items():
            name = box.get_gid()[5:]
            if name in (src, dst):
                continue  # its ends (and same-named nodes of other sub-workflows)
            inner = ext.padded(-3)
            inside = ((pts[:, 0] > inner.x0) & (pts[:, 0] < inner.x1)
                      & (pts[:, 1] > inner.y0) & (pts[:, 1] < inner.y1))
            assert not inside.any(), f"{gid} crosses {name}"
    assert n_edges > 5
    if graph2use == "hierarchical":  # a rectangle per sub-workflow, around its nodes
        groups = {a.get_gid()[6:]: a.get_window_extent(r) for a in fig.findobj()
                  if (a.get_gid() or "").startswith("group:")}
        assert {"generic_wf", "anat_wf", "func0_wf"} <= set(groups)
        for box, ext in boxes.items():
            if box.get_gid() in ("node:s_register", "node:f_register"):
                rect = groups["anat_wf" if "s_" in box.get_gid() else "func0_wf"]
                assert rect.x0 < ext.x0 and ext.x1 < rect.x1 and rect.y0 < ext.y0 < rect.y1


def _same(x):
    return x


def test_the_exec_graph_without_graphviz_expands_the_iterables(tmp_path):
    """Without ``dot`` the "exec" type drew the flat graph: one node for an iterable's three
    runs. Now one node per value, as Nipype's own exec graph, labelled with the value."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from samri_ml.graph import _node_graph

    wf = pe.Workflow("w")
    a = pe.Node(niu.Function(function=_same, input_names=["x"], output_names=["y"]), name="a")
    a.iterables = ("x", [1, 2, 3])
    b = pe.Node(niu.Function(function=_same, input_names=["x"], output_names=["y"]), name="b")
    wf.connect(a, "y", b, "x")
    assert sorted(_node_graph(wf, "flat")[2].values()) == ["a", "b"]
    graph, _, labels = _node_graph(wf, "exec")
    assert sorted(labels.values()) == [f"{n} [x_{v}]" for n in "ab" for v in (1, 2, 3)]
    assert graph.number_of_edges() == 3
    # an iteration over files: each copy named by its file (every one was "[gz]")
    a.iterables = ("x", [f"/data/sub-0{i}/anat/sub-0{i}_T2w.nii.gz" for i in (1, 2)])
    labels = _node_graph(wf, "exec")[2]
    assert sorted(labels.values()) == [f"{n} [x_sub-0{i}_T2w.nii.gz]" for n in "ab"
                                       for i in (1, 2)]


def test_a_workflow_two_levels_down_is_drawn_inside_its_parent(tmp_path):
    """The hierarchical drawing without Graphviz put ``generic_01.anat_wf`` (a lab's workflow
    holding init_generic_wf) beside the ``generic_01`` box, not inside it."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    lab = pe.Workflow("lab_wf")
    generic = _generic(tmp_path)
    source = pe.Node(niu.Function(function=_same, input_names=["x"], output_names=["y"]),
                     name="source")
    source.inputs.x = str(tmp_path / "a_T2w.nii.gz")
    lab.connect(source, "y", generic, "inputnode.template")
    fig = _draw_layered(lab, tmp_path / "g.png", "hierarchical")
    r = _renderer(fig)
    groups = {a.get_gid()[6:]: a.get_window_extent(r) for a in fig.findobj()
              if (a.get_gid() or "").startswith("group:")}
    assert {"generic_wf", "generic_wf.anat_wf", "generic_wf.func0_wf"} <= set(groups), groups
    outer = groups["generic_wf"]
    for inner in ("generic_wf.anat_wf", "generic_wf.func0_wf"):
        box = groups[inner]
        assert outer.x0 < box.x0 and box.x1 < outer.x1 and outer.y0 < box.y0 < box.y1 < outer.y1


def test_drawing_leaves_a_notebooks_matplotlib_alone(tmp_path):
    """The figures (workflow graph without Graphviz, QC violins, mask pictures, loss curve)
    called ``matplotlib.use('Agg')``: in a notebook or script of the lab's own, its backend
    was switched to Agg (the inline or interactive backend gone, ``plt.show()`` then showed
    nothing). Now they draw on Figures outside pyplot, and the lab's open figure stays
    pyplot's only one. A Python process of its own, as a notebook's kernel is."""
    import subprocess
    import sys

    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
import nibabel as nb
import numpy as np
from pathlib import Path
from samri_ml.graph import _draw_layered
from samri_ml.masking.train import plot_history
from samri_ml.qc.compare import violin_plot
from samri_ml.report import mask_figure
from samri_ml.workflows import init_functional_wf
sys_path = Path({str(tmp_path)!r})
mine = plt.figure()
plt.plot([1, 2])
data = np.zeros((20, 20, 20), np.float32)
data[5:15, 5:15, 5:15] = 1
img = nb.Nifti1Image(data, np.eye(4))
written = [
    _draw_layered(init_functional_wf(), sys_path / "g.png", "orig") and sys_path / "g.png",
    *violin_plot({_groups(2, 2)!r}, sys_path / "qc"),
    mask_figure(img, nb.Nifti1Image(data.astype(np.uint8), np.eye(4)), sys_path / "m.png"),
    plot_history({_history()!r}, sys_path / "loss.png") and sys_path / "loss.png",
]
assert all(Path(p).stat().st_size > 1000 for p in written), written
print(matplotlib.get_backend(), plt.get_fignums() == [mine.number])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["svg", "True"]


def test_a_sub_workflow_keeps_its_colour_in_every_graph():
    """Colours followed the place of a sub-workflow's name among the graph's names, so
    ``anat_wf`` had one colour in the report's graph and another in ``samri_ml-graph``'s."""
    from samri_ml.graph import group_colours

    small = group_colours(["sub_01.func0_wf", "sub_01.func1_wf"])
    large = group_colours(["a_wf", "qc_wf", "sub_02.anat_wf", "sub_02.func0_wf",
                           "sub_02.func1_wf", "masking_wf", "register"])
    assert small["sub_01.func0_wf"] == large["sub_02.func0_wf"]
    assert small["sub_01.func1_wf"] == large["sub_02.func1_wf"]
    assert len({large[g] for g in ("sub_02.anat_wf", "sub_02.func0_wf", "sub_02.func1_wf")}) == 3
    many = group_colours([f"wf{i}" for i in range(20)], 20)
    assert sorted(many.values()) == list(range(20))  # as many names as colours: all differ


def test_a_scan_missing_from_a_middle_workflow_is_not_joined_across_it():
    """Three workflows, one scan missing from the second: its grey line ran straight from the
    first to the third, across the second's violin, as if it had a value there."""
    base = _groups(6, 0)
    groups = {wf: [dict(r, workflow=wf) for r in base["masked"]] for wf in ("a", "b", "c")}
    groups["b"] = [r for r in groups["b"] if r["scan"] != "sub-00_anat"]
    fig = violin_figure(groups)
    ax = fig.axes[0]
    grey = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert len(grey) == 5  # the scan in a and c only has no line (no neighbours to join)
    for ln in grey:
        assert np.isfinite(np.asarray(ln.get_ydata(), float)).all()
