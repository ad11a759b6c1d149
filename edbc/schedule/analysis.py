"""Graph analyses the schedulers share, computed once per graph and memoised on it.

Depths come from one scan of the nodes in their (topological) order in the
native core (csrc/frontier.cpp), whatever the graph's shape. The other analyses run level by level with whole levels as numpy arrays, their
Python work a few numpy calls a level, prepared for all levels at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.ir import Graph, csr_gather, csr_ptr
from ..native import core


@dataclass(frozen=True, eq=False)
class Consumers:
    ptr: np.ndarray  # int64 [N+1]
    node: np.ndarray  # int32: one entry per argument edge, so a node may appear twice
    num_args: np.ndarray  # int32 [N]: arguments that come from nodes (not zeros)


def consumers(graph: Graph) -> Consumers:
    """The argument CSR transposed, in the native core (a counting sort; numpy's argsort was half
    of a tree mini-batch's schedule phase). The native frontier transposes it itself, with the same
    code."""
    return graph.cached("consumers", lambda g: Consumers(*core().consumers(g.arg_ptr, g.arg_node)))


def levels(graph: Graph) -> list[np.ndarray]:
    """Nodes grouped by depth, each level in node order."""
    def compute(g: Graph) -> list[np.ndarray]:
        d = depth(g)
        order = np.argsort(d, kind="stable")
        return np.split(order, np.flatnonzero(np.diff(d[order])) + 1) if g.num_nodes else []
    return graph.cached("levels", compute)


def depth(graph: Graph) -> np.ndarray:
    """Level 0 has no node arguments; a node's level is 1 + its deepest argument's (int32)."""
    return graph.cached("depth", lambda g: core().depths(g.arg_ptr, g.arg_node))


def batchable_mask(graph: Graph) -> np.ndarray:
    return graph.cached("batchable", lambda g: np.array([t.batchable for t in g.types], dtype=bool))


@dataclass(frozen=True, eq=False)
class LevelArgs:
    """For each level: its nodes, and their arguments laid out for `ufunc.reduceat(table[rows],
    starts)`, where `table` has a row per node and a last row of zeros. Prepared for all levels at
    once, so that a level costs a few numpy calls. Every node lists argument -1 (the zero row)
    before its own, so that no node's group is empty."""

    nodes: list[np.ndarray]
    rows: list[np.ndarray]  # per level: the argument rows of its nodes, node by node
    starts: list[np.ndarray]  # per level: where each node's rows begin in `rows`


def level_args(graph: Graph) -> LevelArgs:
    def compute(g: Graph) -> LevelArgs:
        lv = levels(g)
        order = np.concatenate(lv) if lv else np.zeros(0, dtype=np.int64)
        counts = np.diff(g.arg_ptr)[order] + 1
        ptr = csr_ptr(counts)
        pos, owner = csr_gather(g.arg_ptr, order)
        rows = np.full(int(ptr[-1]), -1, dtype=np.int64)
        rows[np.arange(len(pos)) + owner + 1] = g.arg_node[pos]  # after each node's -1
        cut = csr_ptr(np.array([len(nodes) for nodes in lv], dtype=np.int64)).tolist()
        return LevelArgs(lv, [rows[ptr[a]:ptr[b]] for a, b in zip(cut, cut[1:])],
                         [ptr[a:b] - ptr[a] for a, b in zip(cut, cut[1:])])
    return graph.cached("level_args", compute)


def lower_bound(graph: Graph) -> int:
    """Unbatchable nodes + for each type, the most nodes of that type on any one path.

    Every schedule needs at least this many batches: nodes of one type on one
    path can never share a batch.
    """
    def compute(g: Graph) -> int:
        batchable = batchable_mask(g)
        unbatchable = int(np.count_nonzero(~batchable[g.node_type]))
        used = np.unique(g.node_type[batchable[g.node_type]])
        if not used.size:
            return unbatchable
        column = np.full(len(g.types), -1)
        column[used] = np.arange(len(used))
        own = np.zeros((g.num_nodes, len(used)), dtype=np.int32)  # one-hot: the node's type counts
        cols = column[g.node_type]
        mine = np.flatnonzero(cols >= 0)
        own[mine, cols[mine]] = 1
        longest = np.zeros((g.num_nodes + 1, len(used)), dtype=np.int32)
        la = level_args(g)
        for nodes, rows, starts in zip(la.nodes, la.rows, la.starts):
            longest[nodes] = np.maximum.reduceat(longest[rows], starts, axis=0) + own[nodes]
        return unbatchable + int(longest.max(axis=0).sum())
    return graph.cached("lower_bound", compute)


@dataclass(frozen=True, eq=False)
class SameTypeLinks:
    """Each node's nearest ancestors of its own type, as links to maintain |F*_t| incrementally.

    The nearest same-type ancestors of v are those that are not ancestors of
    another same-type ancestor of v. A node runs only after all its ancestors,
    so v has no not-yet-run ancestor of its type exactly when all of its
    nearest ones have run. `num_nearest[v]` counts them; `ptr`/`node` list,
    for each u, the nodes of which u is a nearest same-type ancestor.
    """

    ptr: np.ndarray
    node: np.ndarray
    num_nearest: np.ndarray


def same_type_links(graph: Graph) -> SameTypeLinks:
    """Sets of same-type ancestors travel down the graph as bitsets, all types at once.

    Two bitsets a node: `seen`, the type-t nodes among its ancestors and
    itself, and `shadowed`, those of them that are strict ancestors of another
    (for a type-t node: everything it has seen before itself). The nearest
    type-t ancestors of a type-t node are what its arguments have seen minus
    what they have shadowed. (Keeping only those, rather than every type-t
    ancestor with a path free of type t, matters: along an LSTM's cell-state
    chain the latter grow with the chain.) Ancestors never cross instances,
    so bits are numbered within an instance and stay narrow; each type owns a
    range of 64-bit words. The propagation runs in the native core (csrc/frontier.cpp).
    """
    def compute(g: Graph) -> SameTypeLinks:
        n = g.num_nodes
        numbering = same_type_numbering(g)
        rank, words, col0 = numbering.rank, numbering.words, numbering.col0

        # Quadratic in the nodes of one type in one instance (a 40k-token sentence: 5 GB): refuse
        # up front rather than run out of memory. Imported here: the limits import this package.
        from ..runtime.limits import check_host_fits
        check_host_fits(f"|F*_t| for a graph of {n} nodes (typewise, or policy training)",
                        "use --policy agenda, or smaller instances", bitsets=8 * n * 2 * int(col0[-1]))
        # The bitsets travel node by node in the native core; it returns each node's nearest
        # ancestors as bits, which name them by rank.
        dst, r = core().nearest_same_type(g.arg_ptr, g.arg_node, g.node_type, rank, col0, words)
        return numbering.links(dst, r)
    return graph.cached("same_type_links", compute)


@dataclass(frozen=True, eq=False)
class SameTypeNumbering:
    """The bit numbering of `same_type_links`: each node's rank among its type's nodes in its
    instance, and each type's range of 64-bit words (`col0[t]`, `words[t]` of them)."""

    order: np.ndarray  # nodes by (type, instance, id)
    rank: np.ndarray
    first_of_group: np.ndarray  # position in `order` of rank 0 of each node's (type, instance) group
    words: np.ndarray
    col0: np.ndarray

    def links(self, dst: np.ndarray, r: np.ndarray) -> SameTypeLinks:
        """The links from each node `dst` to its nearest same-type ancestors, named by rank `r`."""
        n = len(self.rank)
        src = self.order[self.first_of_group[dst] + r]
        link_order = np.lexsort((dst, src))
        ptr = csr_ptr(np.bincount(src, minlength=n))
        num_nearest = np.bincount(dst, minlength=n).astype(np.int32)
        return SameTypeLinks(ptr, dst[link_order].astype(np.int32), num_nearest)


def same_type_numbering(g: Graph) -> SameTypeNumbering:
    n = g.num_nodes
    types = g.node_type.astype(np.int64)
    order = np.lexsort((np.arange(n), g.instance, types))
    key = types[order] * g.num_instances + g.instance[order]
    group_start = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    group_size = np.diff(np.append(group_start, n))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(group_start, group_size)
    first_of_group = np.empty(n, dtype=np.int64)
    first_of_group[order] = np.repeat(group_start, group_size)
    words = np.zeros(len(g.types), dtype=np.int64)
    np.maximum.at(words, types[order[group_start]], (group_size + 63) // 64)
    return SameTypeNumbering(order, rank, first_of_group, words, np.concatenate([[0], np.cumsum(words)]))
