"""The pure-Python frontier and policies, as they were before the native core: the oracle the
native engine (csrc/frontier.cpp) must equal, batch for batch, and nothing else.

`same_type_links` and `depth` are the analyses; `Frontier` is numpy over the ready frontier by
type; `drive` is the loop every frontier policy ran; `batches_of` (agenda, typewise) and `fsm_schedule` (with `state_of`
and `fallback`) are the policies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from edbc.graph.ir import Graph, csr_gather, csr_ptr
from edbc.policy.encoding import state_types
from edbc.schedule.analysis import Consumers, SameTypeLinks, batchable_mask, level_args, same_type_numbering
from edbc.schedule.ir import Schedule


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


def consumers(g: Graph) -> Consumers:
    """The argument CSR transposed, by a stable sort of the argument edges by producer."""
    owner = np.repeat(np.arange(g.num_nodes, dtype=np.int32), np.diff(g.arg_ptr))
    real = g.arg_node >= 0
    producer = g.arg_node[real]
    order = np.argsort(producer, kind="stable")
    ptr = csr_ptr(np.bincount(producer, minlength=g.num_nodes))
    num_args = np.bincount(owner[real], minlength=g.num_nodes).astype(np.int32)
    return Consumers(ptr, owner[real][order], num_args)


def _consumer_adjacency(graph: Graph) -> Adjacency:
    def compute(g: Graph) -> Adjacency:
        c = consumers(g)
        return adjacency(c.ptr, c.node)
    return graph.cached("oracle_consumer_adjacency", compute)


def _link_adjacency(graph: Graph) -> Adjacency:
    def compute(g: Graph) -> Adjacency:
        links = same_type_links(g)
        return adjacency(links.ptr, links.node)
    return graph.cached("oracle_link_adjacency", compute)


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


def same_type_links(graph: Graph) -> SameTypeLinks:
    """`analysis.same_type_links` in numpy, level by level (bitsets reduced over each level's arguments)."""
    def compute(g: Graph) -> SameTypeLinks:
        n = g.num_nodes
        types = g.node_type.astype(np.int64)
        numbering = same_type_numbering(g)
        rank, words, col0 = numbering.rank, numbering.words, numbering.col0

        width = int(words.max()) if n else 0
        total = int(col0[-1])
        # `seen` and `shadowed` side by side, so that one reduction a level propagates both.
        bits = np.zeros((n + 1, 2 * total), dtype=np.uint64)
        near_words = np.zeros((n, width), dtype=np.uint64)
        # Each node's own type's columns, padded to `width` (padding masked off).
        own_valid = np.arange(width) < words[types][:, None]
        own_cols = np.where(own_valid, col0[types][:, None] + np.arange(width), 0)
        own_word = col0[types] + rank // 64
        own_bit = np.uint64(1) << (rank % 64).astype(np.uint64)
        la = level_args(g)
        for nodes, rows, starts in zip(la.nodes, la.rows, la.starts):
            acc = np.bitwise_or.reduceat(bits[rows], starts, axis=0)
            acc_seen, acc_shadowed = acc[:, :total], acc[:, total:]
            rows = np.broadcast_to(np.arange(len(nodes))[:, None], (len(nodes), width))
            valid = own_valid[nodes]
            r, c = rows[valid], own_cols[nodes][valid]
            mine = acc_seen[r, c]
            near = np.zeros((len(nodes), width), dtype=np.uint64)
            near[valid] = mine & ~acc_shadowed[r, c]
            near_words[nodes] = near
            acc_shadowed[r, c] = mine
            acc_seen[rows[:, 0], own_word[nodes]] |= own_bit[nodes]
            bits[nodes] = acc
        return numbering.links(*set_bits(near_words))
    return graph.cached("oracle_same_type_links", compute)


def set_bits(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and bit index of every set bit of a [rows, k] uint64 matrix.

    Peels the lowest set bit of every nonzero word at once, so the work grows
    with the number of set bits, not with the width of the bitsets.
    """
    rows, cols = np.nonzero(words)
    vals = words[rows, cols]
    found_rows, found_bits = [], []
    while vals.size:
        low = vals & (~vals + np.uint64(1))
        # frexp of an exact power of two 2**k is (0.5, k + 1), exactly.
        found_rows.append(rows)
        found_bits.append(cols * 64 + np.frexp(low.astype(np.float64))[1] - 1)
        vals = vals ^ low
        more = vals != 0
        rows, cols, vals = rows[more], cols[more], vals[more]
    if not found_rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found_rows).astype(np.int64), np.concatenate(found_bits).astype(np.int64)


def depth(graph: Graph) -> np.ndarray:
    """Each node's depth: 0 without node arguments, else 1 + its deepest argument's."""
    ptr, args = graph.arg_ptr.tolist(), graph.arg_node.tolist()
    d = [0] * graph.num_nodes
    for v in range(graph.num_nodes):
        d[v] = 1 + max((d[u] for u in args[ptr[v]:ptr[v + 1]] if u >= 0), default=-1)
    return np.array(d, dtype=np.int32)


def drive(f: Frontier, choose) -> list[np.ndarray]:
    """Run a frontier to the end, asking `choose(f)` for the type of every batch. Returns the batches."""
    batches: list[np.ndarray] = []
    while True:
        batches += f.run_unbatchable()
        if f.done:
            return batches
        batches.append(f.run(choose(f)))


def agenda_chooser(graph: Graph):
    """DyNet's agenda choice on `graph`: the ready type whose nodes have the lowest average depth."""
    counts = np.bincount(graph.node_type, minlength=len(graph.types))
    sums = np.bincount(graph.node_type, weights=depth(graph), minlength=len(graph.types))
    average = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)

    def choose(f: Frontier) -> int:
        ready = f.ready_types()
        return int(ready[np.argmin(average[ready])])  # argmin keeps the lowest type id on ties

    return choose


def typewise_choice(f: Frontier) -> int:
    """The ready type with the largest |F_t| / |F*_t|, the share of its ideal batch (needs `f.ideal`)."""
    ready = f.ready_types()
    ratio = f.count[ready] / f.ideal[ready]
    # Ties go to the larger batch, then the lower type id.
    best = np.lexsort((ready, -f.count[ready], -ratio))[0]
    return int(ready[best])


def batches_of(policy: str, graph: Graph) -> list[np.ndarray]:
    """The batches of the heuristic `policy` ("agenda" or "typewise") on `graph`."""
    if policy == "agenda":
        return drive(Frontier(graph), agenda_chooser(graph))
    return drive(Frontier(graph, track_ideal=True), typewise_choice)


def state_of(encoding: str, ids: list[int], counts: list[int]) -> tuple[int, ...]:
    """The state of a frontier whose ready batchable types have vocabulary ids `ids`
    and `counts` ready nodes (aligned lists)."""
    if encoding == "set":
        return tuple(sorted(ids))
    ranked = [v for _, v in sorted(zip([-c for c in counts], ids))]
    if encoding == "sorted":
        return tuple(ranked)
    return tuple(sorted(ids)) + (ranked[0],)


def fallback(fsm, state: tuple[int, ...]) -> int:
    """The choice in a state the table lacks: the table's choice in the longest prefix of the
    state it holds (not for `max`), else the ready type first in `fsm.rank`."""
    ready = state_types(fsm.encoding, state)
    if fsm.encoding != "max":
        for k in range(len(ready) - 1, 0, -1):
            action = fsm.table.get(state[:k])
            if action is not None:
                return action
    return min(ready, key=fsm.rank.__getitem__)


class Stepper:
    """A frontier over one graph, seen through a vocabulary: the state of each step."""

    def __init__(self, graph: Graph, vocab, encoding: str, track_ideal: bool = False):
        self.frontier = Frontier(graph, track_ideal)
        self.to_vocab = vocab.map_graph(graph).tolist()
        self.to_graph = {v: t for t, v in enumerate(self.to_vocab) if v >= 0}
        batchable = [t for t, nt in enumerate(graph.types) if nt.batchable]
        self.known = [t for t in batchable if self.to_vocab[t] >= 0]
        self.unknown = [t for t in batchable if self.to_vocab[t] < 0]
        self.encoding = encoding

    def state(self) -> tuple[int, ...]:
        """The state of the ready types the vocabulary knows; () when none is ready."""
        counts = self.frontier.count.tolist()
        ready = [t for t in self.known if counts[t]]
        if not ready:
            return ()
        return state_of(self.encoding, [self.to_vocab[t] for t in ready], [counts[t] for t in ready])

    def unknown_choice(self) -> int:
        """When no known type is ready: the ready unknown type with the most ready nodes (lowest id on ties)."""
        counts = self.frontier.count.tolist()
        return max((t for t in self.unknown if counts[t]), key=lambda t: (counts[t], -t))


def fsm_schedule(graph: Graph, fsm) -> tuple[Schedule, int, Counter]:
    """The schedule of `graph` under `fsm`'s table, its fallbacks, and the table's states met."""
    s = Stepper(graph, fsm.vocab, fsm.encoding)
    fallbacks = 0
    visits: Counter = Counter()

    def choose(f: Frontier) -> int:
        nonlocal fallbacks
        state = s.state()
        if not state:
            return s.unknown_choice()
        action = fsm.table.get(state)
        if action is None:
            fallbacks += 1
            action = fallback(fsm, state)
        else:
            visits[state] += 1
        return s.to_graph[action]

    return Schedule.from_batches("fsm", drive(s.frontier, choose), graph), fallbacks, visits
