"""The FSM batching policy: a table from frontier state to the type to run next.

`fsm_schedule` drives a `Frontier` with one dictionary lookup a step. Two rules
keep a step O(1) where the table cannot answer (no switch to typewise's
|F*_t| bookkeeping, which cost 4-20x the schedule):

- a state the table lacks falls back to the table's choice in its longest
  prefix the table holds, else to the policy's type priority (`Fsm.rank`: types
  the table chooses most often when they are ready come first); the fallbacks
  are counted (on lattice op-level graphs with half the table: 47 ms a
  schedule against 245 ms with typewise, and 11658 batches against 12291);
- types outside the vocabulary (a loss node the training graphs never had) are
  left out of the state and run only when no known type is ready, the one with
  the most ready nodes first: such nodes are mostly sinks, which lose nothing by waiting.

`distil` builds a table by rolling a chooser (the trained network, greedily)
over graphs and recording what it chose.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable


from ..graph.ir import Graph
from ..schedule.frontier import Frontier
from ..schedule.ir import Schedule
from ..schedule.policies import drive
from ..settings import ENCODINGS
from .encoding import State, TypeVocab, state_of, state_types


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

    def fallback(self, state: State) -> int:
        """The choice in a state the table lacks: the table's choice in the longest prefix of the
        state it holds (for `sorted`, the state of the most-ready types; its choice is ready), else
        the ready type first in the priority (`rank`). A few lookups: no frontier analysis."""
        ready = state_types(self.encoding, state)
        if self.encoding != "max":  # a prefix of a `max` state is no state
            for k in range(len(ready) - 1, 0, -1):
                action = self.table.get(state[:k])
                if action is not None:
                    return action
        rank = self.rank
        return min(ready, key=rank.__getitem__)


@dataclass(frozen=True, eq=False)
class FsmResult:
    schedule: Schedule
    fallbacks: int  # steps whose state the table lacked, decided by `Fsm.fallback`


class Stepper:
    """A frontier over one graph, seen through a vocabulary: the state of each step."""

    __slots__ = ("frontier", "to_vocab", "to_graph", "known", "unknown", "encoding")

    def __init__(self, graph: Graph, vocab: TypeVocab, encoding: str, track_ideal: bool = False):
        self.frontier = Frontier(graph, track_ideal)
        to_vocab = vocab.map_graph(graph)
        self.to_vocab = to_vocab.tolist()
        self.to_graph = {v: t for t, v in enumerate(self.to_vocab) if v >= 0}
        batchable = [t for t, nt in enumerate(graph.types) if nt.batchable]
        self.known = [t for t in batchable if self.to_vocab[t] >= 0]
        self.unknown = [t for t in batchable if self.to_vocab[t] < 0]
        self.encoding = encoding

    def state(self) -> State:
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


def fsm_schedule(graph: Graph, fsm: Fsm, name: str = "fsm", visits: Counter | None = None) -> FsmResult:
    """Schedule `graph` with the table; states it lacks go by the type priority. `visits`, when
    given, counts the table's states as they are met."""
    s = Stepper(graph, fsm.vocab, fsm.encoding)
    table = fsm.table
    fallbacks = 0

    def choose(f: Frontier) -> int:
        nonlocal fallbacks
        state = s.state()
        if not state:
            return s.unknown_choice()
        action = table.get(state)
        if action is None:
            fallbacks += 1
            action = fsm.fallback(state)
        elif visits is not None:
            visits[state] += 1
        return s.to_graph[action]

    batches = drive(s.frontier, choose)
    return FsmResult(Schedule.from_batches(name, batches, graph), fallbacks)


def distil(choose: Callable[[State], int], graphs: list[Graph], vocab: TypeVocab, encoding: str,
           table: dict[State, int] | None = None) -> dict[State, int]:
    """Roll `choose` (state -> vocabulary id of a ready type) over `graphs`, recording each
    state's choice; `choose` is asked once per distinct state. Types outside the vocabulary
    go by `fsm_schedule`'s rule. Returns the table."""
    table = {} if table is None else table
    for graph in graphs:
        s = Stepper(graph, vocab, encoding)

        def record(f: Frontier) -> int:
            state = s.state()
            if not state:
                return s.unknown_choice()
            action = table.get(state)
            if action is None:
                action = choose(state)
                if action not in state_types(encoding, state):
                    raise ValueError(f"the chooser picked type {action}, which is not ready in state {state}")
                table[state] = action
            return s.to_graph[action]

        drive(s.frontier, record)
    return table
