"""Random typed DAGs for property tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from edbc.data.lattice_dag import CELL_LEVEL, lattice_dag as generated_lattice_dag
from edbc.data.typed_dag import parse_typed_dag
from edbc.graph import Graph


@st.composite
def typed_dags(draw, max_nodes: int = 40, max_types: int = 4, unbatchable: bool = True) -> Graph:
    n = draw(st.integers(1, max_nodes))
    num_types = draw(st.integers(1, max_types))
    lines = [str(n)]
    low = 0 if unbatchable else 1
    for v in range(n):
        t = draw(st.integers(low, num_types))
        k = draw(st.integers(0, min(v, 3)))
        args = draw(st.lists(st.integers(0, v - 1), min_size=k, max_size=k)) if v else []
        lines.append(" ".join(map(str, [t, len(args), *args])))
    return parse_typed_dag("\n".join(lines))


def optimal_batches(g: Graph) -> int:
    """Fewest batches by breadth-first search over sets of run nodes (tiny graphs only)."""
    n = g.num_nodes
    preds = [0] * n
    for v in range(n):
        for u, _ in g.args(v):
            preds[v] |= 1 << u
    batchable = [g.types[t].batchable for t in g.node_type]
    full = (1 << n) - 1
    level = {0}
    steps = 0
    while full not in level:
        nxt = set()
        for done in level:
            ready = [v for v in range(n) if not done >> v & 1 and preds[v] & done == preds[v]]
            by_type: dict[int, int] = {}
            for v in ready:
                if not batchable[v]:
                    nxt.add(done | 1 << v)
                else:
                    by_type[g.node_type[v]] = by_type.get(g.node_type[v], 0) | 1 << v
            for mask in by_type.values():
                nxt.add(done | mask)
        level = nxt
        steps += 1
    return steps


def ideal_counts(g: Graph, done: np.ndarray) -> np.ndarray:
    """|F*_t| from its definition: not-run type-t nodes with no not-run type-t ancestor."""
    n = g.num_nodes
    counts = np.zeros(len(g.types), dtype=np.int64)
    # ancestors_of_type[v] = set of not-run ancestors of v (all types), by a forward pass
    anc: list[set[int]] = [set() for _ in range(n)]
    for v in range(n):
        for u, _ in g.args(v):
            anc[v] |= anc[u]
            if not done[u]:
                anc[v].add(u)
    for v in range(n):
        if not done[v] and not any(g.node_type[u] == g.node_type[v] for u in anc[v]):
            counts[g.node_type[v]] += 1
    return counts


def lattice_dag(rng: np.random.Generator, num_lattices: int = 4, min_len: int = 4, max_len: int = 12,
                word_prob: float = 0.5) -> Graph:
    """A typed DAG shaped like a lattice model's cell-level graph: per character a char cell
    (t1) fed by the previous node's state, word arcs (t2) spanning 2-4 characters fed by the
    state where they start, merge cells (t3) folding each word arc into the state where it
    ends, and a tag (t4) on every node's state (`edbc.data.lattice_dag` at cell level)."""
    return generated_lattice_dag(rng, num_lattices, min_len, max_len, word_prob, CELL_LEVEL)
