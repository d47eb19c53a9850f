"""Pictures of workflow graphs: Graphviz through Nipype when ``dot`` exists, else a pure-Python
layered drawing (networkx + matplotlib), so a picture is always written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GRAPH_TYPES = ("hierarchical", "flat", "colored", "orig", "exec")


def write_workflow_graph(workflow, out_base, graph2use: str = "colored", fmt: str = "png",
                         force_fallback: bool = False) -> tuple[Path, str]:
    """Write a picture of ``workflow``'s graph; return its path and how it was drawn.

    Parameters
    ----------
    workflow : nipype.pipeline.engine.Workflow
    out_base : path-like
        Output path without extension.
    graph2use : str
        Nipype's graph types: ``hierarchical``, ``flat``, ``colored``, ``orig``, ``exec``.
    fmt : str
        ``png`` or ``svg``.
    force_fallback : bool
        Use the pure-Python drawing even where Graphviz is installed.
    """
    if graph2use not in GRAPH_TYPES:
        raise ValueError(f"graph2use must be one of {GRAPH_TYPES}")
    # absolute: Nipype puts a bare name under the workflow's base_dir/name, where the picture
    # was not looked for (a second one was drawn, "dot failed", for a dot that had worked)
    out_base = Path(os.path.abspath(out_base))
    out_base.parent.mkdir(parents=True, exist_ok=True)
    why = "pure-Python drawing"
    if force_fallback:
        pass
    elif shutil.which("dot"):
        import time

        started = time.time()
        try:
            workflow.write_graph(dotfilename=str(out_base) + ".dot", graph2use=graph2use,
                                 format=fmt, simple_form=True)
        except Exception as err:  # noqa: BLE001 - Nipype raises what dot's failure gives it
            why += f" (Graphviz 'dot' failed: {type(err).__name__})"
        else:
            produced = sorted((p for p in out_base.parent.glob(f"{out_base.name}*.{fmt}")
                               if p.stat().st_mtime >= started - 1),
                              key=lambda p: p.stat().st_mtime)
            if produced:
                return produced[-1], "Graphviz"
            why += " (Graphviz 'dot' failed: it wrote no picture)"
    else:
        why += " (Graphviz 'dot' not found)"
    path = Path(f"{out_base}.{fmt}")
    _draw_layered(workflow, path, graph2use)
    return path, why


def _node_graph(workflow, graph2use):
    """The graph to draw and, per node, the sub-workflow it belongs to."""
    import networkx as nx

    if graph2use == "orig":
        graph = nx.DiGraph(workflow._graph)
        groups = {n: workflow.name for n in graph.nodes}
        labels = {n: n.name for n in graph.nodes}
        return graph, groups, labels
    flat = workflow._create_flat_graph()
    if graph2use == "exec":  # the iterables expanded: one node per value, as the run sees
        from copy import deepcopy

        from nipype.pipeline.engine.utils import generate_expanded_graph

        flat = generate_expanded_graph(deepcopy(flat))
    graph = nx.DiGraph(flat)
    groups, labels = {}, {}
    for n in graph.nodes:
        parts = n.fullname.split(".")
        groups[n] = ".".join(parts[1:-1]) or parts[0]
        values = [iterable_label(p) for p in (getattr(n, "parameterization", None) or [])]
        labels[n] = parts[-1] + (f" [{', '.join(values)}]" if values else "")
    # a name several sub-workflows use (inputnode, outputnode) with its sub-workflow's: the
    # flat graph showed three "inputnode" boxes, uncoloured, telling nothing apart
    names = [labels[n] for n in graph.nodes]
    for n in graph.nodes:
        if names.count(labels[n]) > 1 and groups[n] != workflow.name:
            labels[n] = f"{groups[n].split('.')[-1]}.{labels[n]}"
    return graph, groups, labels


def iterable_label(parameterization: str) -> str:
    """A node's iterable values as Nipype names its expanded copy
    (``_in_file_..data..sub-01..anat..sub-01_T2w.nii.gz_n_1``), with each path cut to its file
    name: ``in_file_sub-01_T2w.nii.gz_n_1``. (Its last dot-separated part was used: every
    copy of an iteration over ``.nii.gz`` files was labelled ``gz``.)"""
    import re

    short = re.sub(r"\.\.(?:(?!\.\.).)*(?=\.\.)", "", str(parameterization))
    return short.replace("..", "").lstrip("_")


#: sizes of the pure-Python drawing, in inches (one data unit is one inch)
_FONT = 7.0
_BOX_H = 0.30
_PAD_X = 0.09
_GAP_X = 0.22  # between two boxes of a row
_GAP_EDGE = 0.1  # between an edge passing a row and its neighbours
_LAYER_DY = 0.72
_LANE_GAP = 0.45
_GROUP_PAD = 0.12
_MARGIN = 0.3


def _nested(rects: dict, groups: dict, boxes: dict) -> dict:
    """Sub-workflow rectangles grown around those of their own sub-workflows
    (``generic_01`` around ``generic_01.anat_wf``: a workflow two levels down was drawn beside
    its parent), deepest first, where the grown one covers no box of another workflow;
    ordered parents first, so that a child is drawn over its parent."""
    import numpy as np

    out = dict(rects)
    for g in sorted(rects, key=lambda g: -g.count(".")):
        inner = [c for c in out if c.startswith(g + ".")]
        if not inner:
            continue
        r = np.array([out[g]] + [out[c] for c in inner])
        grown = (r[:, 0].min() - _GROUP_PAD / 2, r[:, 1].min() - _GROUP_PAD / 2,
                 r[:, 2].max() + _GROUP_PAD / 2, r[:, 3].max() + _GROUP_PAD / 2 + 0.12)
        mine = {g, *inner}
        if not any(groups[n] not in mine and a < grown[2] and c > grown[0] and b < grown[3]
                   and d > grown[1] for n, (a, b, c, d) in boxes.items() if n in groups):
            out[g] = grown
    return dict(sorted(out.items(), key=lambda item: item[0].count(".")))


def text_width(text: str, size: float = _FONT) -> float:
    """Width of ``text`` in inches at ``size`` points (matplotlib's default font)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    ext = TextPath((0, 0), text, size=size, prop=FontProperties()).get_extents()
    return ext.width / 72.0


def _layout(graph, groups, labels, layer, hierarchical, root):
    """Where the boxes go (inches) and the rows each edge passes.

    Layers top to bottom, nodes of one layer side by side, as wide as their labels. An edge
    that skips layers gets a point of its own in each row it passes (as Graphviz does), so it
    runs beside the boxes there, never through them. ``hierarchical`` puts each sub-workflow
    in a block of its own, blocks whose layers do not overlap one under the other. Rows are
    ordered by the mean x of their neighbours (a down, up and down sweep: fewer crossings).

    Returns ``pos`` (node or passing point -> centre), ``width`` (node -> box width) and
    ``chains`` (edge -> its passing points, top to bottom) and ``block_of`` (node or passing
    point -> its block: a sub-workflow's name for ``hierarchical``, else ``root``).
    """
    width = {n: text_width(labels[n]) + 2 * _PAD_X for n in graph.nodes}
    block_of = dict(groups) if hierarchical else dict.fromkeys(graph.nodes, root)
    span = {}
    for n in graph.nodes:
        lo, hi = span.get(block_of[n], (layer[n], layer[n]))
        span[block_of[n]] = (min(lo, layer[n]), max(hi, layer[n]))
    lay = dict(layer)
    chains, up, down = {}, {}, {}
    for u, v in graph.edges:
        prev, chain = u, []
        for k in range(layer[u] + 1, layer[v]):
            d = ("edge", u, v, k)
            chain.append(d)
            lay[d], width[d] = k, 0.0
            bu, bv = block_of[u], block_of[v]
            block_of[d] = bu if span[bu][0] <= k <= span[bu][1] or not (
                span[bv][0] <= k <= span[bv][1]) else bv
            down.setdefault(prev, []).append(d)
            up.setdefault(d, []).append(prev)
            prev = d
        down.setdefault(prev, []).append(v)
        up.setdefault(v, []).append(prev)
        chains[(u, v)] = chain
    span = {}
    for n in lay:
        lo, hi = span.get(block_of[n], (lay[n], lay[n]))
        span[block_of[n]] = (min(lo, lay[n]), max(hi, lay[n]))
    rows = {}  # (block, layer) -> nodes and passing points
    for n in lay:
        rows.setdefault((block_of[n], lay[n]), []).append(n)

    def gap(a, b):  # passing points (tuples) sit closer to their neighbours than boxes
        return _GAP_EDGE if isinstance(a, tuple) or isinstance(b, tuple) else _GAP_X

    def row_width(nodes):
        pairs = zip(nodes, nodes[1:], strict=False)
        return sum(width[n] for n in nodes) + sum(gap(a, b) for a, b in pairs)

    bound = {k: sum(width[n] for n in v) + _GAP_X * (len(v) - 1) for k, v in rows.items()}
    blocks = sorted(span, key=lambda b: (b != root, span[b][0], b))
    block_w = {b: max(w for (bb, _), w in bound.items() if bb == b) for b in blocks}
    lanes: list[list[str]] = []
    for b in blocks:  # the first lane whose blocks leave this one's layers free
        for lane in lanes:
            if b != root and root not in lane and all(
                    span[b][1] < span[o][0] or span[b][0] > span[o][1] for o in lane):
                lane.append(b)
                break
        else:
            lanes.append([b])
    centre_x, x = {}, 0.0
    for lane in lanes:
        w = max(block_w[b] for b in lane)
        for b in lane:
            centre_x[b] = x + w / 2
        x += w + _LANE_GAP + (2 * _GROUP_PAD if hierarchical else 0)

    def tiebreak(n):
        return (groups[n], labels[n]) if n in groups else (groups[n[1]], labels[n[1]])

    pos = {}
    for sweep in ("down", "up", "down"):
        keys = sorted(rows, key=lambda k: k[1], reverse=sweep == "up")
        for key in keys:
            nodes = rows[key]
            near = up if sweep == "down" else down

            def bary(n, near=near):
                xs = [pos[p][0] for p in near.get(n, []) if p in pos]
                old = pos[n][0] if n in pos else float("inf")
                return (sum(xs) / len(xs) if xs else old, tiebreak(n))

            nodes.sort(key=bary)
            left = centre_x[key[0]] - row_width(nodes) / 2
            for i, n in enumerate(nodes):
                if i:
                    left += gap(nodes[i - 1], n)
                pos[n] = (left + width[n] / 2, -key[1] * _LAYER_DY)
                left += width[n]
    return pos, width, chains, block_of


def _edge_path(points):
    """A smooth path through ``points`` (top to bottom): straight down through each row it
    passes, an S-shaped cubic curve across each gap between rows (where no box lies)."""
    from matplotlib.path import Path as MPath

    verts, codes = [points[0]], [MPath.MOVETO]
    for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
        if abs(xa - xb) < 1e-9 or ya - yb <= 1e-9:
            verts.append((xb, yb))
            codes.append(MPath.LINETO)
            continue
        k = (ya - yb) / 2
        verts += [(xa, ya - k), (xb, yb + k), (xb, yb)]
        codes += [MPath.CURVE4] * 3
    return MPath(verts, codes)


def group_colours(names, n_colours: int = 10) -> dict[str, int]:
    """A colour index per sub-workflow, from its own name (the part after the last dot), not
    from its place among the graph's names: ``anat_wf`` keeps its colour in every graph it is
    in (the report's and ``samri_ml-graph``'s differed). Two names on one index: the later
    (in name order) takes the next free one."""
    import re
    import zlib

    def own(name) -> int | None:
        """samri_ml's own sub-workflows' fixed colours: the structural stream the first, the
        N-th functional run's the (N+1)-th, tab10's grey (7) left to the others (anat_wf and
        func0_wf shared a hash, and func0_wf's colour hung on whether anat_wf was drawn)."""
        last = str(name).rsplit(".", 1)[-1]
        if last == "anat_wf":
            return 0
        run = re.fullmatch(r"func(\d+)_wf", last)
        if run:
            return [1, 2, 3, 4, 5, 6, 8, 9][int(run.group(1)) % 8] % n_colours
        return None

    out: dict[str, int] = {}
    for g in sorted(set(names), key=lambda g: (own(g) is None, str(g))):
        i = own(g)
        if i is None:
            i = zlib.crc32(str(g).rsplit(".", 1)[-1].encode()) % n_colours
        taken = set(out.values())
        if len(taken) < n_colours:
            while i in taken:
                i = (i + 1) % n_colours
        out[g] = i
    return out


def _draw_layered(workflow, path: Path, graph2use: str):
    """Draw the graph top to bottom with matplotlib; returns the figure (outside pyplot).

    Boxes are as wide as their labels; edges that skip layers run beside the boxes of the rows
    they pass; ``hierarchical`` puts a rectangle around each sub-workflow. Patches carry gids
    ``node:<label>``, ``group:<name>``, ``edge:<a>-><b>`` (for tests and SVG readers)."""
    import matplotlib
    import networkx as nx
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

    graph, groups, labels = _node_graph(workflow, graph2use)
    # layers: longest path from a source, so data flows top to bottom
    layer = {}
    for n in nx.topological_sort(graph):
        preds = list(graph.predecessors(n))
        layer[n] = 0 if not preds else 1 + max(layer[p] for p in preds)
    hierarchical = graph2use == "hierarchical"
    root = workflow.name
    pos, width, chains, block_of = _layout(graph, groups, labels, layer, hierarchical, root)
    group_names = sorted(set(groups.values()))
    # tab10 where it is enough: tab20's neighbours are pairs of one hue (anat_wf and func0_wf
    # came out two cyans)
    n_colours = 10 if len(group_names) <= 10 else 20
    cmap = matplotlib.colormaps[f"tab{n_colours}"]
    # half-way to white: black labels stay readable on tab10's grey and blue
    colour = {g: tuple(0.5 + 0.5 * np.asarray(cmap(i)[:3])) + (1.0,)
              for g, i in group_colours(group_names, n_colours).items()}
    by_group = graph2use in ("colored", "hierarchical")
    half = _BOX_H / 2
    boxes = {n: (pos[n][0] - width[n] / 2, pos[n][1] - half,
                 pos[n][0] + width[n] / 2, pos[n][1] + half) for n in graph.nodes}

    # edge ends spread along the bottom (out) and top (in) of each box, ordered by direction
    def first(e):
        return pos[chains[e][0]] if chains[e] else pos[e[1]]

    def last(e):
        return pos[chains[e][-1]] if chains[e] else pos[e[0]]

    start, end = {}, {}
    for n in graph.nodes:
        for ends, edges, other in ((start, list(graph.out_edges(n)), first),
                                   (end, list(graph.in_edges(n)), last)):
            edges.sort(key=lambda e, other=other: other(e)[0])
            step = min(0.08, 0.8 * width[n] / max(len(edges), 1))
            for i, e in enumerate(edges):
                ends[e] = pos[n][0] + (i - (len(edges) - 1) / 2) * step
    routes = []
    for (u, v), chain in chains.items():
        pts = [(start[(u, v)], pos[u][1] - half)]
        for d in chain:
            pts += [(pos[d][0], pos[d][1] + half), (pos[d][0], pos[d][1] - half)]
        pts.append((end[(u, v)], pos[v][1] + half))
        routes.append((u, v, _edge_path(pts)))

    group_rects = {}
    if hierarchical:
        for g in group_names:
            members = [n for n in graph.nodes if groups[n] == g]
            if g == root or not members:
                continue
            b = np.array([boxes[n] for n in members])
            lo, hi = b[:, 1].min(), b[:, 3].max()
            passing = [pos[d][0] for d in pos if isinstance(d, tuple) and block_of[d] == g
                       and lo < pos[d][1] < hi]  # edges passing the block's rows
            b = np.vstack([b] + [[x, lo, x, hi] for x in passing])
            group_rects[g] = (b[:, 0].min() - _GROUP_PAD, b[:, 1].min() - _GROUP_PAD,
                              b[:, 2].max() + _GROUP_PAD, b[:, 3].max() + _GROUP_PAD + 0.12)
        group_rects = _nested(group_rects, groups, boxes)
    pts = [np.array([[a, b], [c, d]]) for a, b, c, d in boxes.values()]
    pts += [r[2].vertices for r in routes]
    pts += [np.array([[a, b], [c, d]]) for a, b, c, d in group_rects.values()]
    allp = np.vstack(pts) if pts else np.zeros((1, 2))
    x0, y0 = allp.min(axis=0) - _MARGIN
    x1, y1 = allp.max(axis=0) + _MARGIN
    if hierarchical:  # the whole workflow's rectangle
        outer = (x0 + 0.08, y0 + 0.08, x1 - 0.08, y1 + 0.1)
        x0, y0, x1, y1 = x0 - 0.1, y0 - 0.1, x1 + 0.1, y1 + 0.25
    title = f"{workflow.name} ({graph2use}; data flow top to bottom)"
    y1 += 0.4
    x1 = max(x1, x0 + text_width(title, 10) + 2 * _MARGIN)
    legend_w = 0.0
    if by_group:
        legend_w = max(text_width(g) for g in group_names + ["workflow"]) + 0.55
        x1 += legend_w
    # a Figure without pyplot: a notebook's backend and open figures are left alone
    fig = Figure(figsize=(x1 - x0, y1 - y0))
    FigureCanvasAgg(fig)  # its renderer, whatever the backend
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.axis("off")
    if hierarchical:
        ax.add_patch(Rectangle(outer[:2], outer[2] - outer[0], outer[3] - outer[1], fill=False,
                               ec="0.4", lw=1.0, gid=f"group:{root}"))
        ax.text(outer[0] + 0.06, outer[3] - 0.05, root, fontsize=_FONT, va="top",
                color="0.3", style="italic")
        for g, (a, b, c, d) in group_rects.items():
            ax.add_patch(FancyBboxPatch((a, b), c - a, d - b,
                                        boxstyle="round,pad=0,rounding_size=0.05",
                                        fc=(*colour[g][:3], 0.08), ec=colour[g], lw=1.0,
                                        gid=f"group:{g}"))
            ax.text(a + 0.05, d - 0.03, g, fontsize=_FONT, va="top", color="0.25",
                    style="italic")
    for n in graph.nodes:
        a, b, c, d = boxes[n]
        face = colour[groups[n]] if by_group else "#9ecae1"
        ax.add_patch(FancyBboxPatch((a, b), c - a, d - b,
                                    boxstyle="round,pad=0,rounding_size=0.04", fc=face,
                                    ec="0.3", lw=0.6, alpha=0.95, zorder=3,
                                    gid=f"node:{labels[n]}"))
        ax.text(pos[n][0], pos[n][1], labels[n], fontsize=_FONT, ha="center", va="center",
                zorder=4, gid=f"label:{labels[n]}")
    for u, v, p in routes:
        ax.add_patch(FancyArrowPatch(path=p, arrowstyle="-|>", mutation_scale=8,
                                     color="#666666", lw=0.8, zorder=2,
                                     gid=f"edge:{labels[u]}->{labels[v]}"))
    ax.text((x0 + x1 - legend_w) / 2, y1 - 0.2, title, fontsize=10, ha="center", va="center")
    if by_group:
        handles = [Line2D([], [], marker="s", ls="", color=colour[g], label=g)
                   for g in group_names]
        ax.legend(handles=handles, loc="upper right", fontsize=_FONT, title="workflow",
                  title_fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    return fig
