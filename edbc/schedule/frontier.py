"""Simulate execution batch by batch: the ready frontier, by type.

`Frontier` is the engine under every frontier policy (agenda, typewise, the
learned FSM) and the RL environment. Running a type runs all its ready nodes
(partial batches are never formed). Unbatchable nodes are run one by one by
`run_unbatchable`, outside any policy.

A step costs a fixed handful of numpy calls on arrays the size of the batch
(never of the graph), so the learned FSM can schedule a 64-tree mini-batch in
well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.ir import Graph, csr_gather
from .analysis import batchable_mask, consumers, same_type_links


@dataclass(frozen=True, eq=False)
class Adjacency:
    """Out-edges of every node, as a CSR or, when degrees are even, a padded table.

    `table[v]` lists v's targets padded with -1; it replaces the CSR gather (a
    dozen numpy calls) by one fancy index when padding wastes little.
    """

    ptr: np.ndarray
    node: np.ndarray
    table: np.ndarray | None

    def targets(self, nodes: np.ndarray) -> np.ndarray:
        """Targets of `nodes`, one entry per edge (a target may repeat)."""
        if self.table is not None:
            out = self.table[nodes].ravel()
            return out[out >= 0]
        pos, _ = csr_gather(self.ptr, nodes)
        return self.node[pos]


def adjacency(ptr: np.ndarray, node: np.ndarray) -> Adjacency:
    n = len(ptr) - 1
    degree = np.diff(ptr)
    width = int(degree.max()) if n else 0
    # A narrow table pays even when mostly padding (lattice nodes: 1 to ~6 consumers):
    # one fancy index beats the dozen calls of a CSR gather (a lattice step: 36 -> 26 us).
    if width > 16 and n * width > 2 * len(node) + n:
        return Adjacency(ptr, node, None)
    table = np.full((n, max(width, 1)), -1, dtype=np.int64)
    owner = np.repeat(np.arange(n), degree)
    table[owner, np.arange(len(node)) - ptr[owner]] = node
    return Adjacency(ptr, node, table)


def _consumer_adjacency(graph: Graph) -> Adjacency:
    def compute(g: Graph) -> Adjacency:
        c = consumers(g)
        return adjacency(c.ptr, c.node)
    return graph.cached("consumer_adjacency", compute)


def _link_adjacency(graph: Graph) -> Adjacency:
    def compute(g: Graph) -> Adjacency:
        links = same_type_links(g)
        return adjacency(links.ptr, links.node)
    return graph.cached("link_adjacency", compute)


def _decrement(counter: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Count one down per entry of `targets`; the distinct targets that reached zero, ascending."""
    np.subtract.at(counter, targets, 1)
    zero = targets[counter[targets] == 0]
    if len(zero) > 1:
        zero.sort()
        keep = np.empty(len(zero), dtype=bool)
        keep[0] = True
        np.not_equal(zero[1:], zero[:-1], out=keep[1:])
        zero = zero[keep]
    return zero


class Frontier:
    def __init__(self, graph: Graph, track_ideal: bool = False):
        """`track_ideal` also maintains |F*_t| (see `ideal`), which typewise and RL need.

        It can also be switched on later with `track_ideal_now`, e.g. by a
        policy that needs |F*_t| only in states it cannot decide otherwise.
        """
        self.graph = graph
        self._consumers = _consumer_adjacency(graph)
        self._pending = consumers(graph).num_args.astype(np.int64)
        self._node_type = graph.node_type
        num_types = len(graph.types)
        self._batchable = batchable_mask(graph)
        self._any_unbatchable = not bool(np.all(self._batchable))
        self._chunks: list[list[np.ndarray]] = [[] for _ in range(num_types)]
        self.count = np.zeros(num_types, dtype=np.int64)  # |F_t|: ready nodes of each type
        self.remaining = graph.num_nodes
        self.ideal: np.ndarray | None = None  # |F*_t|, when tracked
        self._add_ready(np.flatnonzero(self._pending == 0))
        if track_ideal:
            self.track_ideal_now()

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def ready_types(self) -> np.ndarray:
        """Batchable types with at least one ready node, in type order."""
        return np.flatnonzero((self.count > 0) & self._batchable)

    def has_unbatchable(self) -> bool:
        return self._any_unbatchable and bool(np.any(self.count[~self._batchable]))

    def ready_nodes(self, t: int) -> np.ndarray:
        chunks = self._chunks[t]
        if len(chunks) > 1:
            merged = np.concatenate(chunks)
            merged.sort()
            self._chunks[t] = [merged]
            return merged
        return chunks[0] if chunks else np.zeros(0, dtype=np.int64)

    def track_ideal_now(self) -> None:
        """Start maintaining |F*_t|: not-yet-run type-t nodes with no not-yet-run type-t ancestor."""
        if self.ideal is not None:
            return
        links = same_type_links(self.graph)
        self._links = _link_adjacency(self.graph)
        run = self._pending == 0
        for chunks in self._chunks:
            for c in chunks:
                run[c] = False
        self._near_pending = links.num_nearest.astype(np.int64)
        later = self._links.targets(np.flatnonzero(run))
        if len(later):
            np.subtract.at(self._near_pending, later, 1)
        free = ~run & (self._near_pending == 0)
        self.ideal = np.bincount(self._node_type[free], minlength=len(self.graph.types)).astype(np.int64)

    def run(self, t: int) -> np.ndarray:
        """Run every ready node of type t as one batch; returns the batch (ascending node ids)."""
        nodes = self.ready_nodes(t)
        if not nodes.size:
            raise ValueError(f"type {t} has no ready node")
        self._chunks[t] = []
        self.count[t] = 0
        self._finish(nodes, t)
        return nodes

    def run_unbatchable(self) -> list[np.ndarray]:
        """Run ready unbatchable nodes one at a time, until none is ready; each is its own batch."""
        batches: list[np.ndarray] = []
        if not self._any_unbatchable:
            return batches
        while True:
            waiting = np.flatnonzero((self.count > 0) & ~self._batchable)
            if not waiting.size:
                return batches
            t = int(waiting[0])
            nodes = self.ready_nodes(t)
            first, rest = nodes[:1], nodes[1:]
            self._chunks[t] = [rest] if rest.size else []
            self.count[t] = rest.size
            self._finish(first, t)
            batches.append(first)

    def _finish(self, nodes: np.ndarray, t: int) -> None:
        self.remaining -= len(nodes)
        if self.ideal is not None:
            self.ideal[t] -= len(nodes)
            later = self._links.targets(nodes)
            if len(later):
                self.ideal[t] += len(_decrement(self._near_pending, later))
        targets = self._consumers.targets(nodes)
        if len(targets):
            self._add_ready(_decrement(self._pending, targets))

    def _add_ready(self, nodes: np.ndarray) -> None:
        if not nodes.size:
            return
        types = self._node_type[nodes]
        first = types[0]
        if not np.any(types != first):
            self._chunks[first].append(nodes)
            self.count[first] += len(nodes)
            return
        order = np.argsort(types, kind="stable")
        sorted_types = types[order]
        cuts = np.flatnonzero(sorted_types[1:] != sorted_types[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(nodes)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            t = sorted_types[lo]
            self._chunks[t].append(nodes[order[lo:hi]])
            self.count[t] += hi - lo
