"""Tables that start from the heuristics: imitation, and improvement by rollouts.

`imitate` rolls a frontier heuristic (`schedule.policies.CHOOSERS`) over the
training graphs and gives each state the type the heuristic chose there most
often; typewise decides on |F*_t| counts the state does not hold, so its table
is close to typewise but not equal (on lattices, slightly better). `improve` then searches the table: for
the states the training graphs meet most, most met first, it tries every other
ready type and keeps a change when the training graphs need fewer batches
(each try one rollout of the table over the search graphs; `budget` tries).
Both are deterministic.
"""

from __future__ import annotations

from collections import Counter

from ..graph.ir import Graph
from ..schedule.frontier import Frontier
from ..schedule.policies import CHOOSERS, drive
from .encoding import State, TypeVocab, state_types
from .fsm import Fsm, Stepper, fsm_schedule


def imitate(heuristic: str, graphs: list[Graph], vocab: TypeVocab, encoding: str) -> dict[State, int]:
    """The table of `heuristic`'s most frequent choice in each state it meets on `graphs` (ties: the
    lower vocabulary id). The table's own rollouts leave the heuristic's path where a state's vote
    was split, so a second pass rolls the table over `graphs` and gives each state it lacks the
    heuristic's choice there (one pass of DAgger): the table then needs no fallback on `graphs`."""
    make, needs_ideal = CHOOSERS[heuristic]
    votes: dict[State, Counter] = {}
    for graph in graphs:
        s = Stepper(graph, vocab, encoding, track_ideal=needs_ideal)
        choose = make(graph)

        def record(f: Frontier) -> int:
            t = choose(f)
            state = s.state()
            if state and s.to_vocab[t] >= 0:
                votes.setdefault(state, Counter())[s.to_vocab[t]] += 1
            return t

        drive(s.frontier, record)
    table = {state: min(c, key=lambda v: (-c[v], v)) for state, c in votes.items()}
    for graph in graphs:
        s = Stepper(graph, vocab, encoding, track_ideal=needs_ideal)
        choose = make(graph)

        def fill(f: Frontier) -> int:
            state = s.state()
            if not state:
                return s.unknown_choice()
            if state not in table:
                v = s.to_vocab[choose(f)]
                # The heuristic may prefer a type the vocabulary lacks; the table cannot say that.
                table[state] = v if v >= 0 else state_types(encoding, state)[0]
            return s.to_graph[table[state]]

        drive(s.frontier, fill)
    return table


def batches(fsm: Fsm, graphs: list[Graph], visits: Counter | None = None) -> int:
    """Batches of `fsm` over `graphs`; `visits` counts the table's states met."""
    return sum(fsm_schedule(g, fsm, visits=visits).schedule.num_batches for g in graphs)


def improve(table: dict[State, int], graphs: list[Graph], vocab: TypeVocab, encoding: str,
            budget: int) -> tuple[dict[State, int], int]:
    """Greedy search over the table's choices (module docstring); returns the improved table
    and the tries spent."""
    table = dict(table)
    visits: Counter = Counter()
    best = batches(Fsm(vocab, encoding, table), graphs, visits)
    tries = 0
    tried: set[State] = set()
    while tries < budget:
        # The most visited state not yet searched; changes may make new states common.
        pending = [s for s, _ in sorted(visits.items(), key=lambda sv: (-sv[1], sv[0])) if s not in tried]
        if not pending:
            break
        state = pending[0]
        tried.add(state)
        for action in state_types(encoding, state):
            if action == table[state] or tries >= budget:
                continue
            tries += 1
            candidate = dict(table)
            candidate[state] = action
            seen: Counter = Counter()
            got = batches(Fsm(vocab, encoding, candidate), graphs, seen)
            if got < best:
                table, best, visits = candidate, got, seen
    return table, tries
