"""Batching policies: graph -> `Schedule`.

`POLICIES` maps a name to its function. Frontier policies pick one ready type
per step and run all its ready nodes; `depth` buckets nodes by (depth, type)
instead, and `eager` runs one node at a time.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..errors import UsageError
from ..graph.ir import Graph
from .analysis import batchable_mask, depth
from .frontier import frontier
from .ir import Schedule

Chooser = Callable[..., int]  # the native frontier -> the type of the next batch


def run_frontier(graph: Graph, policy: str, choose: Chooser, track_ideal: bool = False) -> Schedule:
    """The schedule of `graph` with the Python callback `choose(frontier)` naming the type of every
    batch (the native loop asks it once a step)."""
    return Schedule(policy, *frontier(graph, track_ideal).drive(choose))


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


def agenda_average(graph: Graph) -> np.ndarray:
    """The average depth of each type's nodes (inf for types without nodes)."""
    def compute(g: Graph) -> np.ndarray:
        counts = np.bincount(g.node_type, minlength=len(g.types))
        sums = np.bincount(g.node_type, weights=depth(g), minlength=len(g.types))
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    return graph.cached("agenda_average", compute)


class Rule(NamedTuple):
    """A frontier heuristic's native rule on one graph, step by step or to the end."""

    choose: Chooser  # the type of the next batch
    schedule: Callable[..., tuple]  # frontier -> the batches to the end, (ptr, nodes, types)


def agenda_rule(graph: Graph) -> Rule:
    """DyNet's agenda: the ready type whose nodes have the lowest average depth (lowest id on ties)."""
    average = agenda_average(graph)
    return Rule(lambda f: f.agenda_choice(average), lambda f: f.schedule_agenda(average))


# Greedy on the share of the ideal batch: the ready type of the largest |F_t| / |F*_t| (ties to the
# larger batch, then the lower type id).
TYPEWISE = Rule(lambda f: f.typewise_choice(), lambda f: f.schedule_typewise())

# The frontier heuristics as (graph -> its rule, needs |F*_t|): the policies `agenda` and `typewise`,
# and what a learned policy imitates.
HEURISTICS: dict[str, tuple[Callable[[Graph], Rule], bool]] = {
    "agenda": (agenda_rule, False),
    "typewise": (lambda graph: TYPEWISE, True),
}


def _frontier_policy(name: str) -> Callable[[Graph], Schedule]:
    """The heuristic `name` of `HEURISTICS` as a policy: its rule runs the whole graph natively."""
    make, needs_ideal = HEURISTICS[name]
    return lambda graph: Schedule(name, *make(graph).schedule(frontier(graph, needs_ideal)))


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
