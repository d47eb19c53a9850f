"""Pictures of workflow graphs: Graphviz through Nipype when ``dot`` exists, else a pure-Python
layered drawing (networkx + matplotlib), so a picture is always written."""

from __future__ import annotations

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
    out_base = Path(out_base)
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
    graph = nx.DiGraph(flat)
    groups, labels = {}, {}
    for n in graph.nodes:
        parts = n.fullname.split(".")
        groups[n] = ".".join(parts[1:-1]) or parts[0]
        labels[n] = parts[-1]
    return graph, groups, labels


def _draw_layered(workflow, path: Path, graph2use: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph, groups, labels = _node_graph(workflow, graph2use)
    # layers: longest path from a source, so data flows left to right
    layer = {}
    for n in nx.topological_sort(graph):
        preds = list(graph.predecessors(n))
        layer[n] = 0 if not preds else 1 + max(layer[p] for p in preds)
    if graph2use == "hierarchical":  # keep each sub-workflow's nodes on neighbouring rows
        order = sorted(graph.nodes, key=lambda n: (groups[n], layer[n], labels[n]))
    else:
        order = sorted(graph.nodes, key=lambda n: (layer[n], groups[n], labels[n]))
    rows: dict[int, int] = {}
    pos = {}
    for n in order:  # data flows top to bottom; nodes of one layer side by side
        col = rows.get(layer[n], 0)
        rows[layer[n]] = col + 1
        pos[n] = (col, -layer[n])
    # centre each layer horizontally
    width = max(rows.values(), default=1)
    pos = {n: (x + (width - rows[layer[n]]) / 2.0, y) for n, (x, y) in pos.items()}
    group_names = sorted(set(groups.values()))
    cmap = plt.get_cmap("tab20")
    colour = {g: cmap(i % 20) for i, g in enumerate(group_names)}
    n_layers = max(layer.values(), default=0) + 1
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * width + 2.5), max(4, 0.75 * n_layers + 1)))
    node_colours = [colour[groups[n]] if graph2use in ("colored", "hierarchical") else "#9ecae1"
                    for n in graph.nodes]
    nx.draw_networkx_edges(graph, pos, ax=ax, arrows=True, arrowsize=10, edge_color="#777777",
                           node_size=1600, connectionstyle="arc3,rad=0.05")
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=node_colours, node_size=1600,
                           node_shape="s", alpha=0.9)
    nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=7)
    if graph2use in ("colored", "hierarchical"):
        handles = [plt.Line2D([], [], marker="s", ls="", color=colour[g], label=g)
                   for g in group_names]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
                  title="workflow", title_fontsize=8, frameon=False)
    ax.set_title(f"{workflow.name} ({graph2use})", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
