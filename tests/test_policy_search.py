"""Tables from the heuristics (imitation, search by rollouts) and the lattice-like DAG family."""

import numpy as np
import pytest

from edbc.data.lattice_dag import CELLS, lattice_dag
from edbc.policy.encoding import ENCODINGS, TypeVocab, state_types
from edbc.policy.fsm import Fsm, fsm_schedule
from edbc.policy.search import batches, imitate, improve
from edbc.schedule import lower_bound, schedule, verify_schedule


@pytest.fixture(scope="module")
def family():
    rng = np.random.default_rng(3)
    return [lattice_dag(rng, lattices=3) for _ in range(6)]


def test_lattice_dags_are_op_level_lattices_with_shared_op_types(family):
    for g in family:
        names = {t.name for t in g.types[1:]}
        assert names == {f"t{k}" for k in range(1, 10)}  # every cell and op type is used
        for policy in ("depth", "agenda", "typewise"):
            verify_schedule(g, schedule(g, policy))
    # The same seed gives the same graph.
    a, b = (lattice_dag(np.random.default_rng(7), 2) for _ in range(2))
    assert np.array_equal(a.node_type, b.node_type) and np.array_equal(a.arg_node, b.arg_node)
    assert len({t for kind in CELLS.values() for t in kind[1:]}) == 4  # elementwise types shared by cells


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_imitating_agenda_replays_it(family, encoding):
    # On one graph agenda's choice is a function of the set of ready types, which every state holds.
    for g in family[:3]:
        vocab = TypeVocab.of_graphs([g])
        r = fsm_schedule(g, Fsm(vocab, encoding, imitate("agenda", [g], vocab, encoding)))
        expected = schedule(g, "agenda")
        assert r.fallbacks == 0
        assert np.array_equal(r.schedule.ptr, expected.ptr) and np.array_equal(r.schedule.nodes, expected.nodes)


def test_imitated_typewise_tables_choose_ready_types_and_schedule_validly(family):
    vocab = TypeVocab.of_graphs(family)
    table = imitate("typewise", family, vocab, "sorted")
    assert table and all(a in state_types("sorted", s) for s, a in table.items())
    for g in family:
        r = fsm_schedule(g, Fsm(vocab, "sorted", table))
        verify_schedule(g, r.schedule)
        assert r.fallbacks == 0 and r.schedule.num_batches >= lower_bound(g)


def test_search_never_needs_more_batches_on_its_graphs_and_is_deterministic(family):
    vocab = TypeVocab.of_graphs(family)
    start = imitate("typewise", family, vocab, "sorted")
    before = batches(Fsm(vocab, "sorted", start), family)
    table, tries = improve(start, family, vocab, "sorted", 12)
    assert 0 < tries <= 12
    assert batches(Fsm(vocab, "sorted", table), family) <= before
    assert improve(start, family, vocab, "sorted", 12) == (table, tries)
    assert set(table) == set(start)  # the search changes choices, not states
