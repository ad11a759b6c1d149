"""The FSM batching policy: a table from frontier state to the type to run next.

`fsm_schedule` drives a `Frontier` with one dictionary lookup a step. A state
the table has never seen (or one with a type outside the policy's vocabulary)
falls back to `typewise`, whose |F*_t| counts are switched on only then; the
fallbacks are counted. `distil` builds the table by rolling a chooser (the
trained network, greedily) over graphs and recording what it chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


from ..graph.ir import Graph
from ..schedule.frontier import Frontier
from ..schedule.ir import Schedule
from ..schedule.policies import drive, typewise_choice
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


@dataclass(frozen=True, eq=False)
class FsmResult:
    schedule: Schedule
    fallbacks: int  # steps whose state the table lacked, decided by typewise


class Stepper:
    """A frontier over one graph, seen through a vocabulary: the state of each step."""

    __slots__ = ("frontier", "to_vocab", "to_graph", "candidates", "encoding")

    def __init__(self, graph: Graph, vocab: TypeVocab, encoding: str, track_ideal: bool = False):
        self.frontier = Frontier(graph, track_ideal)
        to_vocab = vocab.map_graph(graph)
        self.to_vocab = to_vocab.tolist()
        self.to_graph = {v: t for t, v in enumerate(self.to_vocab) if v >= 0}
        self.candidates = [t for t, nt in enumerate(graph.types) if nt.batchable]
        self.encoding = encoding

    def state(self) -> State | None:
        """The current state, or None when a ready type is outside the vocabulary."""
        counts = self.frontier.count.tolist()
        ready = [t for t in self.candidates if counts[t]]
        ids = [self.to_vocab[t] for t in ready]
        if -1 in ids:
            return None
        return state_of(self.encoding, ids, [counts[t] for t in ready])


def fsm_schedule(graph: Graph, fsm: Fsm, name: str = "fsm") -> FsmResult:
    """Schedule `graph` with the table, falling back to typewise in states it lacks."""
    s = Stepper(graph, fsm.vocab, fsm.encoding)
    table = fsm.table
    fallbacks = 0

    def choose(f: Frontier) -> int:
        nonlocal fallbacks
        state = s.state()
        action = table.get(state) if state is not None else None
        if action is not None:
            return s.to_graph[action]
        fallbacks += 1
        f.track_ideal_now()
        return typewise_choice(f)

    batches = drive(s.frontier, choose)
    return FsmResult(Schedule.from_batches(name, batches, graph), fallbacks)


def distil(choose: Callable[[State], int], graphs: list[Graph], vocab: TypeVocab, encoding: str,
           table: dict[State, int] | None = None) -> dict[State, int]:
    """Roll `choose` (state -> vocabulary id of a ready type) over `graphs`, recording each
    state's choice; `choose` is asked once per distinct state. Returns the table."""
    table = {} if table is None else table
    for graph in graphs:
        s = Stepper(graph, vocab, encoding)

        def record(f: Frontier) -> int:
            state = s.state()
            if state is None:
                raise ValueError("a graph has a type outside the policy's vocabulary")
            action = table.get(state)
            if action is None:
                action = choose(state)
                if action not in state_types(encoding, state):
                    raise ValueError(f"the chooser picked type {action}, which is not ready in state {state}")
                table[state] = action
            return s.to_graph[action]

        drive(s.frontier, record)
    return table
