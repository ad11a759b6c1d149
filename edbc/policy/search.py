"""Tables that start from the heuristics: imitation, and improvement by rollouts.

`imitate` rolls a frontier heuristic (`schedule.policies.HEURISTICS`) over the
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
from ..schedule.frontier import frontier
from ..schedule.policies import HEURISTICS
from .encoding import State, TypeVocab, state_types
from .fsm import Fsm, fsm_schedule, native_table


def imitate(heuristic: str, graphs: list[Graph], vocab: TypeVocab, encoding: str) -> dict[State, int]:
    """The table of `heuristic`'s most frequent choice in each state it meets on `graphs` (ties: the
    lower vocabulary id). The table's own rollouts leave the heuristic's path where a state's vote
    was split, so a second pass rolls the table over `graphs` and gives each state it lacks the
    heuristic's choice there (one pass of DAgger): the table then needs no fallback on `graphs`."""
    make, needs_ideal = HEURISTICS[heuristic]
    votes: dict[State, Counter] = {}
    for graph in graphs:
        choose = make(graph).choose
        to_vocab = vocab.map_graph(graph)

        def record(f) -> int:
            t = choose(f)
            state = f.state(to_vocab, encoding)
            if state and to_vocab[t] >= 0:
                votes.setdefault(state, Counter())[int(to_vocab[t])] += 1
            return t

        frontier(graph, needs_ideal).drive(record)
    table = {state: min(c, key=lambda v: (-c[v], v)) for state, c in votes.items()}
    # Every state the table lacks is filled, so the fallback priority is never used.
    lookup = native_table(encoding, table, list(range(len(vocab))))
    for graph in graphs:
        f = frontier(graph, needs_ideal)
        choose = make(graph).choose
        to_vocab = vocab.map_graph(graph)

        def fill(state: State) -> int:
            v = int(to_vocab[choose(f)])
            # The heuristic may prefer a type the vocabulary lacks; the table cannot say that.
            table[state] = v if v >= 0 else state_types(encoding, state)[0]
            return table[state]

        f.schedule_fsm(lookup, to_vocab, fill)
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
