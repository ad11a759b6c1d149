import numpy as np
import pytest
from hypothesis import given, settings

from edbc.data.typed_dag import parse_typed_dag
from edbc.errors import LimitError
from edbc.policy.optimal import optimal_schedule
from edbc.schedule import POLICIES, lower_bound, schedule, verify_schedule

from .dags import lattice_dag, optimal_batches, typed_dags


@settings(max_examples=80, deadline=None)
@given(typed_dags(max_nodes=11, max_types=3))
def test_search_finds_the_brute_force_optimum(g):
    s = optimal_schedule(g)
    verify_schedule(g, s)
    assert s.num_batches == optimal_batches(g)


@settings(max_examples=30, deadline=None)
@given(typed_dags(max_nodes=40))
def test_no_policy_beats_it(g):
    best = optimal_schedule(g).num_batches
    assert lower_bound(g) <= best
    for name in POLICIES:
        assert schedule(g, name).num_batches >= best


def test_lattices_where_greedy_policies_are_not_optimal():
    rng = np.random.default_rng(3)
    gaps = 0
    for _ in range(10):
        g = lattice_dag(rng, num_lattices=2, max_len=8)
        best = optimal_schedule(g).num_batches
        gaps += schedule(g, "typewise").num_batches - best
        assert schedule(g, "agenda").num_batches >= best
    assert gaps > 0


def test_too_large_graphs_and_searches_are_refused():
    chain = parse_typed_dag("70\n1 0\n" + "".join(f"{1 + i % 2} 1 {i}\n" for i in range(69)))
    with pytest.raises(LimitError, match="at most 64 nodes; this one has 70"):
        optimal_schedule(chain)
    assert optimal_schedule(chain, max_nodes=100).num_batches == 70
    g = lattice_dag(np.random.default_rng(0), num_lattices=3, max_len=6)
    with pytest.raises(LimitError, match="gave up after 5 search states"):
        optimal_schedule(g, max_states=5)
