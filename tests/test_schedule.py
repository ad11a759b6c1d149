import numpy as np
import pytest
from hypothesis import given, settings

from edbc.data.typed_dag import parse_typed_dag
from edbc.errors import UsageError, VerificationError
from edbc.graph import build_graph, lower_to_ops
from edbc.schedule import POLICIES, Schedule, format_schedule, frontier, lower_bound, schedule, verify_schedule

from .dags import ideal_counts, lattice_dag, optimal_batches, typed_dags
from .oracle_frontier import set_bits


@settings(max_examples=60, deadline=None)
@given(typed_dags())
def test_every_policy_gives_a_valid_schedule_at_least_the_lower_bound(g):
    bound = lower_bound(g)
    for name in POLICIES:
        s = schedule(g, name)
        verify_schedule(g, s)
        assert s.num_batches >= bound
    assert schedule(g, "eager").num_batches == g.num_nodes


@settings(max_examples=60, deadline=None)
@given(typed_dags(max_nodes=9, max_types=3))
def test_lower_bound_never_exceeds_the_optimum(g):
    best = optimal_batches(g)
    assert lower_bound(g) <= best
    for name in POLICIES:
        assert schedule(g, name).num_batches >= best


@settings(max_examples=40, deadline=None)
@given(typed_dags(max_nodes=25, unbatchable=False))
def test_ideal_batch_sizes_are_maintained_incrementally(g):
    f = frontier(g, track_ideal=True)
    done = np.zeros(g.num_nodes, dtype=bool)
    step = 0
    while not f.done:
        assert np.array_equal(f.ideal, ideal_counts(g, done))
        ready = f.ready_types()
        assert np.all(f.count[ready] <= f.ideal[ready])
        t = int(ready[step % len(ready)])  # vary the choices
        done[f.run(t)] = True
        step += 1
    assert np.all(f.ideal == 0)


def test_ideal_batch_sizes_with_wide_bitsets():
    # Over 64 nodes of one type in one instance: the same-type bitsets span several words.
    g = lattice_dag(np.random.default_rng(2), num_lattices=2, min_len=70, max_len=80)
    f = frontier(g, track_ideal=True)
    done = np.zeros(g.num_nodes, dtype=bool)
    step = 0
    while not f.done:
        if step % 7 == 0:
            assert np.array_equal(f.ideal, ideal_counts(g, done))
        ready = f.ready_types()
        done[f.run(int(ready[step % len(ready)]))] = True
        step += 1


def test_set_bits_match_unpacking():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, size=(50, 3), dtype=np.uint64) & rng.integers(0, 2**63, size=(50, 3),
                                                                                   dtype=np.uint64)
    words[7] = 0
    words[9, 1] = np.uint64(1) << np.uint64(63)
    rows, bits = set_bits(words)
    expected = np.nonzero(np.unpackbits(words.view(np.uint8), axis=1, bitorder="little"))
    assert sorted(zip(rows.tolist(), bits.tolist())) == sorted(zip(*(e.tolist() for e in expected)))


def test_lower_bound_by_hand():
    # a chain a-b-a-b of two types: 2 + 2; plus an unbatchable node
    g = parse_typed_dag("5\n1 0\n2 1 0\n1 1 1\n2 1 2\n0 0\n")
    assert lower_bound(g) == 5


def test_unbatchable_nodes_run_alone_and_first():
    g = parse_typed_dag("4\n0 0\n0 0\n1 1 0\n1 1 1\n")
    for name in POLICIES:
        s = schedule(g, name)
        verify_schedule(g, s)
        if name != "eager":
            assert s.sizes.tolist() == [1, 1, 2]


def test_depth_splits_what_agenda_keeps_together():
    # two chains of type 1 of lengths 1 and 2 feeding a type-2 node each: depth puts the
    # type-2 nodes at depths 1 and 2, agenda runs both chains' type-1 nodes first
    g = parse_typed_dag("5\n1 0\n1 0\n1 1 1\n2 1 0\n2 1 2\n")
    assert schedule(g, "depth").num_batches == 4
    assert schedule(g, "agenda").num_batches == 3 == lower_bound(g)


def test_tree_policies_on_cell_and_op_graphs(treelstm, synthetic_trees):
    g = build_graph(treelstm, synthetic_trees)
    for graph in (g, lower_to_ops(g)):
        bound = lower_bound(graph)
        counts = {}
        for name in POLICIES:
            s = schedule(graph, name)
            verify_schedule(graph, s)
            counts[name] = s.num_batches
        assert counts["agenda"] == counts["typewise"] == bound
        assert counts["depth"] > bound  # leaves sit at every depth
        assert counts["eager"] == graph.num_nodes


def test_verifier_catches_broken_schedules():
    g = parse_typed_dag("3\n1 0\n1 1 0\n2 1 1\n")
    good = schedule(g, "agenda")
    verify_schedule(g, good)
    with pytest.raises(VerificationError, match="runs 2 times"):
        verify_schedule(g, Schedule("x", [0, 1, 2, 3], [0, 0, 2], [1, 1, 2]))
    with pytest.raises(VerificationError, match="its argument %0 runs in batch 1"):
        verify_schedule(g, Schedule("x", [0, 1, 2, 3], [1, 0, 2], [1, 1, 2]))
    with pytest.raises(VerificationError, match="holds node %2 of type t2"):
        verify_schedule(g, Schedule("x", [0, 1, 3], [0, 1, 2], [1, 1]))


def test_printer_and_unknown_policy():
    g = parse_typed_dag("2\n1 0\n1 1 0\n")
    text = format_schedule(g, schedule(g, "agenda"))
    assert "2 batches, lower bound 2" in text
    with pytest.raises(UsageError, match="expected one of: eager, depth"):
        schedule(g, "greedy")
