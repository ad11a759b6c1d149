"""The exact minimum number of batches, for small graphs: A* over sets of run nodes.

A search state is the set of nodes run so far (a bitmask), closed under
running ready unbatchable nodes, which cost one batch each whatever the order.
A move runs all ready nodes of one type. The heuristic is the lower bound of
the nodes not yet run (for each type, the most of its nodes on one path):
a batch shortens each type's longest path by at most one, so the heuristic
is consistent and the first complete state popped is optimal.

The search is exponential in the worst case, so it refuses graphs of more
than `MAX_NODES` nodes and gives up after `MAX_STATES` expanded states, with
a `LimitError` rather than running for hours.
"""

from __future__ import annotations

import heapq
import itertools

from ..errors import LimitError
from ..graph.ir import Graph
from ..schedule.ir import Schedule
from ..schedule.policies import run_frontier

MAX_NODES = 64
MAX_STATES = 200_000


class _Search:
    def __init__(self, graph: Graph):
        n = graph.num_nodes
        self.n = n
        batchable = [t.batchable for t in graph.types]
        self.type = graph.node_type.tolist()
        self.args = [sorted({u for u, _ in graph.args(v) if u >= 0}) for v in range(n)]
        self.pred = [sum(1 << u for u in a) for a in self.args]
        self.unbatchable = [v for v in range(n) if not batchable[self.type[v]]]
        self.types = sorted({self.type[v] for v in range(n) if batchable[self.type[v]]})
        self.column = {t: i for i, t in enumerate(self.types)}
        self.full = (1 << n) - 1

    def ready(self, done: int) -> list[int]:
        pred = self.pred
        return [v for v in range(self.n) if not done >> v & 1 and pred[v] & done == pred[v]]

    def close(self, done: int) -> int:
        """Run ready unbatchable nodes until none is ready (as `Frontier.run_unbatchable`)."""
        changed = True
        while changed:
            changed = False
            for v in self.unbatchable:
                if not done >> v & 1 and self.pred[v] & done == self.pred[v]:
                    done |= 1 << v
                    changed = True
        return done

    def moves(self, done: int) -> dict[int, int]:
        """Ready batchable nodes by type, as bitmasks."""
        out: dict[int, int] = {}
        for v in self.ready(done):
            t = self.type[v]
            if t in self.column:
                out[t] = out.get(t, 0) | 1 << v
        return out

    def bound(self, done: int) -> int:
        """Lower bound on the batches still needed: per type, the most of its nodes on one path."""
        width = len(self.types)
        longest: list[list[int] | None] = [None] * self.n
        best = [0] * width
        for v in range(self.n):
            if done >> v & 1:
                continue
            acc = [0] * width
            for u in self.args[v]:
                lu = longest[u]
                if lu is not None:
                    acc = [a if a >= b else b for a, b in zip(acc, lu)]
            c = self.column.get(self.type[v])
            if c is not None:
                acc[c] += 1
                if acc[c] > best[c]:
                    best[c] = acc[c]
            longest[v] = acc
        return sum(best)


def optimal_types(graph: Graph, max_nodes: int = MAX_NODES, max_states: int = MAX_STATES) -> list[int]:
    """The types of an optimal sequence of batchable batches (unbatchable nodes run eagerly between)."""
    if graph.num_nodes > max_nodes:
        raise LimitError(f"policy 'optimal' handles graphs of at most {max_nodes} nodes; this one has "
                         f"{graph.num_nodes} nodes; use a smaller mini-batch or another policy")
    s = _Search(graph)
    start = s.close(0)
    best_g = {start: 0}
    parent: dict[int, tuple[int, int]] = {}
    tie = itertools.count()
    heap = [(s.bound(start), 0, next(tie), start)]
    expanded = 0
    while heap:
        _, neg_g, _, done = heapq.heappop(heap)
        g = -neg_g
        if done == s.full:
            path = []
            while done != start:
                done, t = parent[done]
                path.append(t)
            return path[::-1]
        if best_g[done] < g:
            continue
        expanded += 1
        if expanded > max_states:
            raise LimitError(f"policy 'optimal' gave up after {max_states} search states on a graph of "
                             f"{graph.num_nodes} nodes; use a smaller mini-batch or another policy")
        for t, mask in s.moves(done).items():
            nxt = s.close(done | mask)
            if g + 1 < best_g.get(nxt, 1 << 62):
                best_g[nxt] = g + 1
                parent[nxt] = (done, t)
                heapq.heappush(heap, (g + 1 + s.bound(nxt), -(g + 1), next(tie), nxt))
    raise AssertionError("the search ran out of states before running every node")


def optimal_schedule(graph: Graph, max_nodes: int = MAX_NODES, max_states: int = MAX_STATES) -> Schedule:
    """A schedule with the fewest batches (see the module docstring for the limits)."""
    types = iter(optimal_types(graph, max_nodes, max_states))
    return run_frontier(graph, "optimal", lambda f: next(types))



def against_optimal(graphs, schedulers: dict) -> tuple[dict[str, list[float]], list[int], int]:
    """Each scheduler's batches over the optimum, on every graph whose optimum the search finds.
    `schedulers`: name -> (graph -> number of batches). Returns the ratios by name, the node counts of
    those graphs, and how many graphs the search gave up on (benchmark scripts' tables)."""
    ratios: dict[str, list[float]] = {name: [] for name in schedulers}
    nodes: list[int] = []
    gave_up = 0
    for g in graphs:
        try:
            best = optimal_schedule(g).num_batches
        except LimitError:
            gave_up += 1
            continue
        for name, batches in schedulers.items():
            ratios[name].append(batches(g) / best)
        nodes.append(g.num_nodes)
    return ratios, nodes, gave_up
