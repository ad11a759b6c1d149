"""Simulate execution batch by batch: the ready frontier, by type.

`Frontier` is the engine under every frontier policy (agenda, typewise, the
learned FSM) and the RL environment. Running a type runs all its ready nodes
(partial batches are never formed). Unbatchable nodes are run one by one by
`run_unbatchable`, outside any policy.
"""

from __future__ import annotations

import numpy as np

from ..graph.ir import Graph, csr_gather
from .analysis import batchable_mask, consumers, same_type_links


class Frontier:
    def __init__(self, graph: Graph, track_ideal: bool = False):
        """`track_ideal` also maintains |F*_t| (see `ideal`), which typewise and RL need."""
        self.graph = graph
        c = consumers(graph)
        self._cons_ptr = c.ptr
        self._cons_node = c.node
        self._pending = c.num_args.copy()
        self._node_type = graph.node_type
        num_types = len(graph.types)
        self._batchable = batchable_mask(graph)
        self._chunks: list[list[np.ndarray]] = [[] for _ in range(num_types)]
        self.count = np.zeros(num_types, dtype=np.int64)  # |F_t|: ready nodes of each type
        self.remaining = graph.num_nodes
        self.ideal = None
        if track_ideal:
            links = same_type_links(graph)
            self._link_ptr = links.ptr
            self._link_node = links.node
            self._near_pending = links.num_nearest.copy()
            # |F*_t|: not-yet-run type-t nodes with no not-yet-run type-t ancestor.
            self.ideal = np.bincount(graph.node_type[links.num_nearest == 0],
                                     minlength=num_types).astype(np.int64)
        self._add_ready(np.flatnonzero(self._pending == 0))

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def ready_types(self) -> np.ndarray:
        """Batchable types with at least one ready node, in type order."""
        return np.flatnonzero((self.count > 0) & self._batchable)

    def has_unbatchable(self) -> bool:
        return bool(np.any(self.count[~self._batchable]))

    def ready_nodes(self, t: int) -> np.ndarray:
        chunks = self._chunks[t]
        if len(chunks) > 1:
            merged = np.sort(np.concatenate(chunks))
            self._chunks[t] = [merged]
            return merged
        return chunks[0] if chunks else np.zeros(0, dtype=np.int64)

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
        batches = []
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
            pos, _ = csr_gather(self._link_ptr, nodes)
            if pos.size:
                later, k = np.unique(self._link_node[pos], return_counts=True)
                self._near_pending[later] -= k
                self.ideal[t] += int(np.count_nonzero(self._near_pending[later] == 0))
        pos, _ = csr_gather(self._cons_ptr, nodes)
        if pos.size:
            targets, k = np.unique(self._cons_node[pos], return_counts=True)
            self._pending[targets] -= k
            self._add_ready(targets[self._pending[targets] == 0])

    def _add_ready(self, nodes: np.ndarray) -> None:
        if not nodes.size:
            return
        types = self._node_type[nodes]
        first = types[0]
        if np.all(types == first):
            self._chunks[first].append(nodes)
            self.count[first] += len(nodes)
            return
        order = np.argsort(types, kind="stable")
        sorted_types = types[order]
        cuts = np.flatnonzero(np.diff(sorted_types)) + 1
        for group in np.split(order, cuts):
            t = types[group[0]]
            self._chunks[t].append(nodes[group])
            self.count[t] += len(group)
