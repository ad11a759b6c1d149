"""Batching policies: graph -> `Schedule`.

`POLICIES` maps a name to its function. Frontier policies pick one ready type
per step and run all its ready nodes; `depth` buckets nodes by (depth, type)
instead, and `eager` runs one node at a time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import UsageError
from ..graph.ir import Graph
from .analysis import batchable_mask, depth
from .frontier import Frontier
from .ir import Schedule

Chooser = Callable[[Frontier], int]


def drive(f: Frontier, choose: Chooser) -> list[np.ndarray]:
    """Run a frontier to the end, asking `choose` for the type of every batch: the one driver
    loop of every frontier policy (heuristics, the FSM, distillation). Returns the batches."""
    batches: list[np.ndarray] = []
    while True:
        batches += f.run_unbatchable()
        if f.done:
            return batches
        batches.append(f.run(choose(f)))


def run_frontier(graph: Graph, policy: str, choose: Chooser, track_ideal: bool = False) -> Schedule:
    """The schedule of `graph` under a frontier policy."""
    return Schedule.from_batches(policy, drive(Frontier(graph, track_ideal), choose), graph)


def eager(graph: Graph) -> Schedule:
    """No batching: one node a batch, in node order."""
    n = graph.num_nodes
    return Schedule("eager", np.arange(n + 1), np.arange(n), graph.node_type)


def depth_policy(graph: Graph) -> Schedule:
    """Bucket by (depth from the inputs, type), buckets in depth order (TF Fold, DyNet strategy 2)."""
    d = depth(graph).astype(np.int64)
    t = graph.node_type.astype(np.int64)
    alone = ~batchable_mask(graph)[t]
    # Unbatchable nodes sort first within their depth and each gets a bucket of its own.
    key_type = np.where(alone, -1, t)
    key_node = np.where(alone, np.arange(graph.num_nodes), -1)
    order = np.lexsort((np.arange(graph.num_nodes), key_node, key_type, d))
    keys = np.stack([d[order], key_type[order], key_node[order]])
    starts = np.flatnonzero(np.concatenate([[True], np.any(keys[:, 1:] != keys[:, :-1], axis=0)]))
    ptr = np.append(starts, graph.num_nodes)
    return Schedule("depth", ptr, order, graph.node_type[order[starts]])


def agenda_chooser(graph: Graph) -> Chooser:
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


# The frontier heuristics as (graph -> chooser, needs |F*_t|): the policies `agenda` (DyNet's) and
# `typewise` (greedy on the share of the ideal batch), and what a learned policy imitates.
CHOOSERS: dict[str, tuple[Callable[[Graph], Chooser], bool]] = {
    "agenda": (agenda_chooser, False),
    "typewise": (lambda graph: typewise_choice, True),
}


def _frontier_policy(name: str) -> Callable[[Graph], Schedule]:
    """The heuristic `name` of `CHOOSERS` as a policy: its chooser drives the whole graph."""
    make, needs_ideal = CHOOSERS[name]
    return lambda graph: run_frontier(graph, name, make(graph), track_ideal=needs_ideal)


POLICIES: dict[str, Callable[[Graph], Schedule]] = {
    "eager": eager,
    "depth": depth_policy,
    "agenda": _frontier_policy("agenda"),
    "typewise": _frontier_policy("typewise"),
}


def schedule(graph: Graph, policy: str) -> Schedule:
    if policy not in POLICIES:
        raise UsageError(f"unknown policy '{policy}'; expected one of: {', '.join(POLICIES)}")
    return POLICIES[policy](graph)
