"""Simulate execution batch by batch: the ready frontier, by type, in the native core.

`frontier(graph)` makes the native `Frontier` (csrc/frontier.cpp), the one
engine under every frontier policy (agenda, typewise, the learned FSM), the
policy search and the RL environment. Running a type runs all its ready nodes
(partial batches are never formed), in ascending node id. Ready unbatchable
nodes run one at a time, outside any policy, by `run_unbatchable`: the lowest
type first, within it the lowest node id.

What the native object offers:

- `count` (|F_t|, ready nodes of each type) and `ideal` (|F*_t|, see
  `analysis.same_type_links`; None unless made with `track_ideal`), read-only
  numpy views; `remaining`, `done`;
- steps: `ready_types()`, `run(t)`, `run_unbatchable()`, and `state(to_vocab,
  encoding)`, the learned policy's state (`policy.encoding`);
- the heuristics' choices, `agenda_choice(average)` and `typewise_choice()`;
- whole schedules, each returning the batches as (ptr, nodes, types), the CSR of
  `Schedule`: `schedule_agenda`, `schedule_typewise`, `schedule_fsm` (a policy's
  table, `policy.fsm`) loop with no Python per step; `drive(choose)` asks the
  Python callback `choose(frontier)` for the type of every batch.

tests/oracle_frontier.py is the pure-Python definition the native results must equal.
"""

from __future__ import annotations

from ..graph.ir import Graph
from ..native import core
from .analysis import batchable_mask, same_type_links


def frontier(graph: Graph, track_ideal: bool = False):
    """The native frontier of `graph` before any node has run; `track_ideal` also maintains |F*_t|,
    which typewise and the RL reward need (its links cost more than the rest of a schedule)."""
    links = same_type_links(graph) if track_ideal else None
    return core().Frontier(graph.arg_ptr, graph.arg_node, graph.node_type, batchable_mask(graph),
                           *((links.ptr, links.node, links.num_nearest) if links is not None else ()))
