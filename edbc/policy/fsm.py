"""The FSM batching policy: a table from frontier state to the type to run next.

`fsm_schedule` runs the whole schedule in the native core (`Frontier.schedule_fsm`,
csrc/frontier.cpp): a table lookup a step, on the table converted once into a
native lookup (`Fsm.lookup`). Two rules keep a step O(1) where the table cannot
answer (no switch to typewise's |F*_t| bookkeeping, which cost 4-20x the schedule):

- a state the table lacks falls back to the table's choice in its longest
  proper prefix the table holds (not for `max`, whose prefixes are no states),
  else to the policy's type priority (`Fsm.rank`: types the table chooses most
  often when they are ready come first); the fallbacks are counted (on lattice
  op-level graphs with half the table: 47 ms a schedule against 245 ms with
  typewise, and 11658 batches against 12291);
- types outside the vocabulary (a loss node the training graphs never had) are
  left out of the state and run only when no known type is ready, the one with
  the most ready nodes first (lowest id on ties): such nodes are mostly sinks,
  which lose nothing by waiting.

`distil` builds a table by rolling a chooser (the trained network, greedily)
over graphs and recording what it chose: the same native loop, asking the
chooser where the table lacks the state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from ..graph.ir import Graph
from ..native import core
from ..schedule.frontier import frontier
from ..schedule.ir import Schedule
from ..settings import ENCODINGS
from .encoding import State, TypeVocab, state_types


@dataclass(frozen=True, eq=False)
class Fsm:
    vocab: TypeVocab
    encoding: str
    table: dict[State, int] = field(default_factory=dict)  # state -> vocabulary id of the type to run

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}")

    @cached_property
    def rank(self) -> list[int]:
        """Fallback priority of each vocabulary id (lower runs first): by the share of the table's
        states holding the type that choose it, most first; ties and unused types by id."""
        held = [0] * len(self.vocab)
        chosen = [0] * len(self.vocab)
        for state, action in self.table.items():
            for v in state_types(self.encoding, state):
                held[v] += 1
            chosen[action] += 1
        order = sorted(range(len(self.vocab)), key=lambda v: (-chosen[v] / held[v] if held[v] else 1.0, v))
        rank = [0] * len(self.vocab)
        for position, v in enumerate(order):
            rank[v] = position
        return rank

    @cached_property
    def lookup(self):
        """The table as a native `FsmTable` with its `rank`, built once per policy (the table is not
        changed after the policy is made)."""
        return native_table(self.encoding, self.table, self.rank)


def native_table(encoding: str, table: dict[State, int], rank: list[int]):
    return core().FsmTable(encoding, list(table), list(table.values()), rank)


@dataclass(frozen=True, eq=False)
class FsmResult:
    schedule: Schedule
    fallbacks: int  # steps whose state the table lacked, decided by the fallback (module docstring)


def fsm_schedule(graph: Graph, fsm: Fsm, name: str = "fsm", visits: Counter | None = None) -> FsmResult:
    """Schedule `graph` with the table; states it lacks go by `Fsm.rank`'s fallback. `visits`, when
    given, counts the table's states as they are met."""
    ptr, nodes, types, fallbacks, hits = frontier(graph).schedule_fsm(
        fsm.lookup, fsm.vocab.map_graph(graph), count_visits=visits is not None)
    if visits is not None:
        states = list(fsm.table)
        for entry in np.flatnonzero(hits).tolist():
            visits[states[entry]] += int(hits[entry])
    return FsmResult(Schedule(name, ptr, nodes, types), fallbacks)


def distil(choose: Callable[[State], int], graphs: list[Graph], vocab: TypeVocab, encoding: str,
           table: dict[State, int] | None = None) -> dict[State, int]:
    """Roll `choose` (state -> vocabulary id of a ready type) over `graphs`, recording each
    state's choice; `choose` is asked once per distinct state. Types outside the vocabulary
    go by `fsm_schedule`'s rule. Returns the table."""
    table = {} if table is None else table
    # Every state the table lacks is asked, so the fallback priority is never used.
    lookup = native_table(encoding, table, list(range(len(vocab))))

    def ask(state: State) -> int:
        action = choose(state)
        if action not in state_types(encoding, state):
            raise ValueError(f"the chooser picked type {action}, which is not ready in state {state}")
        table[state] = action
        return action

    for graph in graphs:
        frontier(graph).schedule_fsm(lookup, vocab.map_graph(graph), ask)
    return table
