"""The text printer of the graph IR, used by `inspect`, errors and golden tests."""

from __future__ import annotations

import numpy as np

from ..spec.program import format_shape
from .ir import Graph


def format_type_table(graph: Graph) -> str:
    counts = np.bincount(graph.node_type, minlength=len(graph.types))
    lines = []
    for ti, ty in enumerate(graph.types):
        sig = ""
        if ty.program is not None:
            p = ty.program
            ins = ", ".join(format_shape(v) for v in p.inputs)
            outs = ", ".join(format_shape(p.values[v]) for v in p.outputs)
            sig = f"  ({ins}) -> ({outs})"
        flag = "" if ty.batchable else "  [unbatchable]"
        lines.append(f"  t{ti:<3} {ty.name:<32} {counts[ti]:>7} nodes{sig}{flag}")
    return "\n".join(lines)


def format_nodes(graph: Graph, start: int = 0, stop: int | None = None) -> str:
    """Nodes `start` to `stop`. Verifier errors print the nodes around a fault, so ids out of range
    are printed as they are rather than looked up."""
    stop = graph.num_nodes if stop is None else min(stop, graph.num_nodes)
    lines = []
    for v in range(start, stop):
        args = ", ".join("0" if u < 0 else f"%{u}" + (f".{s}" if _num_outputs(graph, u) > 1 else "")
                         for u, s in graph.args(v))
        imms = graph.imms(v)
        imm = f"[{', '.join(map(str, imms))}]" if imms else ""
        lines.append(f"  %{v} = {_type_name(graph, int(graph.node_type[v]))}{imm}({args})"
                     f"    # instance {graph.instance[v]}")
    return "\n".join(lines)


def _type_name(graph: Graph, t: int) -> str:
    return graph.types[t].name if 0 <= t < len(graph.types) else f"<no type {t}>"


def _num_outputs(graph: Graph, node: int) -> int:
    if not 0 <= node < graph.num_nodes or not 0 <= graph.node_type[node] < len(graph.types):
        return 1
    return graph.types[graph.node_type[node]].num_outputs


def format_graph(graph: Graph, max_nodes: int | None = 40) -> str:
    head = (f"graph ({graph.granularity} level): {graph.num_nodes} nodes, {len(graph.types)} types, "
            f"{graph.num_edges} arguments, {graph.num_instances} instances, {len(graph.out_node)} results")
    shown = graph.num_nodes if max_nodes is None else min(max_nodes, graph.num_nodes)
    parts = [head, "types:", format_type_table(graph), "nodes:", format_nodes(graph, 0, shown)]
    if shown < graph.num_nodes:
        parts.append(f"  ... {graph.num_nodes - shown} more nodes")
    results = " ".join(f"%{u}.{s}" for u, s in zip(graph.out_node[:16].tolist(), graph.out_slot[:16].tolist()))
    more = " ..." if len(graph.out_node) > 16 else ""
    parts.append(f"results: {results}{more}")
    return "\n".join(parts)
