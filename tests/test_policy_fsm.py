import numpy as np
from hypothesis import given, settings

from edbc.data.typed_dag import parse_typed_dag
from edbc.graph import build_graph
from edbc.policy.encoding import ENCODINGS, TypeVocab, state_types
from edbc.policy.fsm import Fsm, distil, fsm_schedule
from edbc.schedule import lower_bound, verify_schedule
from edbc.schedule.policies import run_frontier

from .dags import lattice_dag, typed_dags
from .oracle_frontier import fallback

TWO_CHAINS = "5\n1 0\n1 0\n1 1 1\n2 1 0\n2 1 2\n"
VOCAB = TypeVocab(("t1", "t2"))


def test_table_lookup_schedules_without_fallbacks():
    g = parse_typed_dag(TWO_CHAINS)
    fsm = Fsm(VOCAB, "sorted", {(0,): 0, (0, 1): 0, (1,): 1})
    r = fsm_schedule(g, fsm)
    verify_schedule(g, r.schedule)
    assert r.fallbacks == 0 and r.schedule.num_batches == 3 == lower_bound(g)
    assert [b.tolist() for b in map(r.schedule.batch, range(3))] == [[0, 1], [2], [3, 4]]


def test_unseen_states_go_by_the_type_priority_and_are_counted():
    g = parse_typed_dag(TWO_CHAINS)
    r = fsm_schedule(g, Fsm(VOCAB, "sorted", {(0,): 0}))
    verify_schedule(g, r.schedule)
    assert "same_type_links" not in g._cache  # a fallback stays cheap: no |F*_t| bookkeeping
    assert r.fallbacks == 2  # (0, 1) and (1,) are not in the table
    assert r.schedule.num_batches == 3
    empty = fsm_schedule(g, Fsm(VOCAB, "sorted"))
    verify_schedule(g, empty.schedule)
    assert empty.fallbacks == empty.schedule.num_batches


def test_a_missing_state_goes_by_its_longest_known_prefix_else_by_the_priority():
    fsm = Fsm(TypeVocab(("a", "b", "c")), "sorted", {(0,): 0, (2, 1): 1, (1,): 1, (0, 1): 1})
    # Chosen when held: b 3 of 3, a 1 of 2, c 0 of 1.
    assert fsm.rank == [1, 0, 2]
    # The rule as the oracle states it; test_frontier_native holds the native schedules equal to it.
    assert fallback(fsm, (0, 2)) == 0  # the table's choice in (0,)
    assert fallback(fsm, (0, 1, 2)) == 1  # in (0, 1)
    assert fallback(fsm, (2, 0)) == 0  # no prefix known: a before c
    assert Fsm(VOCAB, "sorted").rank == [0, 1]  # no table: by id


def test_types_outside_the_vocabulary_wait_until_no_known_type_is_ready():
    # Two chains of t1 of lengths 2 and 1, each ending in a t3 (a loss) the vocabulary lacks.
    g = parse_typed_dag("5\n1 0\n1 1 0\n3 1 1\n1 0\n3 1 3\n")
    r = fsm_schedule(g, Fsm(VOCAB, "sorted", {(0,): 0}))
    verify_schedule(g, r.schedule)
    assert r.fallbacks == 0
    assert r.schedule.num_batches == 3 == lower_bound(g)  # both t3 nodes in one batch, at the end
    assert r.schedule.batch(2).tolist() == [2, 4]


def test_a_bad_table_choice_costs_batches():
    g = parse_typed_dag(TWO_CHAINS)
    r = fsm_schedule(g, Fsm(VOCAB, "sorted", {(0,): 0, (0, 1): 1, (1,): 1}))
    assert r.fallbacks == 0 and r.schedule.num_batches == 4


@settings(max_examples=40, deadline=None)
@given(typed_dags(max_nodes=40))
def test_distilled_table_replays_the_chooser_exactly(g):
    vocab = TypeVocab.of_graphs([g])
    if not len(vocab):
        return
    for encoding in ENCODINGS:
        # A state-only rule: the last ready type of the state.
        calls = []

        def choose(state):
            calls.append(state)
            return state_types(encoding, state)[-1]

        table = distil(choose, [g, g], vocab, encoding)
        assert len(calls) == len(set(calls)) == len(table)  # asked once per distinct state
        r = fsm_schedule(g, Fsm(vocab, encoding, table))
        verify_schedule(g, r.schedule)
        assert r.fallbacks == 0

        # The same rule on graph type ids (vocabulary order is type order here).
        def direct(f):
            ready = f.ready_types().tolist()
            if encoding == "sorted":
                return sorted(ready, key=lambda t: (-f.count[t], t))[-1]
            return max(ready)

        expected = run_frontier(g, "direct", direct)
        assert np.array_equal(expected.ptr, r.schedule.ptr) and np.array_equal(expected.nodes, r.schedule.nodes)


def test_distilled_over_lattices_applies_to_new_lattices():
    rng = np.random.default_rng(0)
    train = [lattice_dag(rng, 6) for _ in range(6)]
    vocab = TypeVocab.of_graphs(train)
    # Prefer the type with the most ready nodes: a state-only rule, so the table reproduces it.
    table = distil(lambda s: s[0], train, vocab, "sorted")
    fsm = Fsm(vocab, "sorted", table)
    for g in [lattice_dag(rng, 6) for _ in range(4)]:
        r = fsm_schedule(g, fsm)
        verify_schedule(g, r.schedule)
        assert r.schedule.num_batches >= lower_bound(g)


def test_shipped_cell_policy_reaches_the_lower_bound_on_trees(treelstm, synthetic_trees):
    from edbc.api import resolve_policy

    g = build_graph(treelstm, synthetic_trees)
    policy = resolve_policy("fsm", treelstm, "cell")
    s, fallbacks = policy.schedule(g)
    verify_schedule(g, s)
    assert s.num_batches == lower_bound(g) and fallbacks == 0
