"""Tests for `edbc.memory.align`: batch orders that make operands aligned slices."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edbc.memory.align import Request, solve_orders


def single(consumer: int, producer: int, index, weight: int = 1) -> Request:
    index = np.asarray(index, dtype=np.int64)
    return Request(consumer, np.full(len(index), producer), index, np.full(len(index), producer), weight)


def is_view(orders: list[np.ndarray], chains: list[list[int]], r: Request) -> bool:
    """Whether the operand's values, laid out in producer order (blocks adjacent per the
    chains), are consecutive and in the consumer's order."""
    where = {}  # (block, producer position) -> memory position; blocks placed one after another
    placed = [blk for chain in chains for blk in chain]
    placed += sorted(set(r.block.tolist()) - set(placed))
    start = 0
    for blk in placed:
        b = blk  # in these tests a block is its batch
        pos = np.empty(len(orders[b]), dtype=np.int64)
        pos[orders[b]] = np.arange(len(orders[b]))
        for i in range(len(orders[b])):
            where[(blk, i)] = start + pos[i]
        start += len(orders[b])
    mem = np.array([where[(int(blk), int(i))] for blk, i in zip(r.block, r.index)])
    consumer_pos = np.empty(len(orders[r.consumer]), dtype=np.int64)
    consumer_pos[orders[r.consumer]] = np.arange(len(orders[r.consumer]))
    by_consumer = mem[np.argsort(consumer_pos)]
    return bool(np.all(np.diff(by_consumer) == 1))


def test_tree_children_become_two_aligned_blocks():
    # batch 0: 8 leaves; batch 1: 4 nodes whose left children are leaves 6,0,4,2 and right 7,1,5,3
    left, right = single(1, 0, [6, 0, 4, 2], 2), single(1, 0, [7, 1, 5, 3], 2)
    solved = solve_orders([8, 4], [left, right])
    assert is_view(solved.orders, [], left) and is_view(solved.orders, [], right)
    assert solved.followed == 1 and solved.pinned == 1 and solved.dropped == 0


def test_chain_steps_nest_like_sentences_sorted_by_length():
    rng = np.random.default_rng(0)
    sizes = [12, 9, 7, 4, 2]
    requests = []
    for t in range(1, len(sizes)):
        requests.append(single(t, t - 1, rng.choice(sizes[t - 1], sizes[t], replace=False)))
    solved = solve_orders(sizes, requests)
    assert all(is_view(solved.orders, [], r) for r in requests)


def test_long_chains_of_sentences_of_many_lengths_are_all_served():
    # 32 sentences of 1..40 words; step t runs the sentences still going, in a random order,
    # and each reads its own state at step t-1: a forest of ~40 nested sets, moved step by step
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 41, size=32)
    steps = [rng.permutation(np.flatnonzero(lengths > t)) for t in range(int(lengths.max()))]
    requests = []
    for t in range(1, len(steps)):
        where = {int(s): i for i, s in enumerate(steps[t - 1])}
        requests.append(single(t, t - 1, [where[int(s)] for s in steps[t]]))
    solved = solve_orders([len(s) for s in steps], requests)
    assert solved.dropped == 0
    assert all(is_view(solved.orders, [], r) for r in requests)


def test_composite_of_whole_blocks_chains_them():
    # batch 2 reads every node of batch 0 and of batch 1 (e.g. an output layer over two chain steps)
    batch = np.array([1, 0, 1, 0, 0])
    index = np.array([1, 2, 0, 0, 1])
    r = Request(2, batch, index, batch, 10)
    solved = solve_orders([3, 2, 5], [r])
    assert solved.composite == 1 and solved.chains == [[0, 1]]
    assert is_view(solved.orders, solved.chains, r)


def test_crossing_sets_use_the_pq_tree_and_are_both_served():
    # two consumers read overlapping, crossing ranges of one producer
    a, b = single(1, 0, [0, 1, 2]), single(2, 0, [2, 3, 1])
    solved = solve_orders([5, 3, 3], [a, b])
    assert is_view(solved.orders, [], a) and is_view(solved.orders, [], b)


def test_impossible_set_is_dropped_and_orders_stay_valid():
    # {0,1}, {1,2} and {0,2} cannot all be consecutive in 0..3; consumers decide in
    # reverse run order, so the first consumer's set is the one that does not fit
    reqs = [single(1, 0, [0, 1]), single(2, 0, [1, 2]), single(3, 0, [0, 2])]
    solved = solve_orders([4, 2, 2, 2], reqs)
    assert solved.dropped == 1
    assert sorted(solved.orders[0].tolist()) == [0, 1, 2, 3]
    assert [is_view(solved.orders, [], r) for r in reqs] == [False, True, True]


def test_fixed_batch_is_followed_only_where_consecutive():
    ok, bad = single(1, 0, [3, 1, 2]), single(2, 0, [0, 2])
    solved = solve_orders([4, 3, 2], [ok, bad], fixed=[True, False, False])
    assert solved.orders[0].tolist() == [0, 1, 2, 3]
    assert is_view(solved.orders, [], ok) and not is_view(solved.orders, [], bad)


@st.composite
def tree_problems(draw):
    """Batches in run order where every producer position is read at most once (a forest)."""
    n = draw(st.integers(2, 7))
    sizes = [draw(st.integers(1, 8)) for _ in range(n)]
    free = [list(range(k)) for k in sizes]
    requests = []
    for c in range(1, n):
        for _ in range(draw(st.integers(0, 3))):
            p = draw(st.integers(0, c - 1))
            if len(free[p]) < sizes[c]:
                continue
            picked = draw(st.permutations(free[p]))[:sizes[c]]
            free[p] = [x for x in free[p] if x not in picked]
            requests.append(single(c, p, picked, draw(st.integers(1, 5))))
    return sizes, requests


@settings(max_examples=300, deadline=None)
@given(tree_problems())
def test_forests_of_single_source_operands_are_all_served(problem):
    sizes, requests = problem
    solved = solve_orders(sizes, requests)
    for b, k in enumerate(sizes):
        assert sorted(solved.orders[b].tolist()) == list(range(k))
    assert all(is_view(solved.orders, solved.chains, r) for r in requests)


@st.composite
def dag_problems(draw):
    """Any single-source or whole-block requests, values read any number of times."""
    n = draw(st.integers(2, 6))
    sizes = [draw(st.integers(1, 6)) for _ in range(n)]
    requests = []
    for c in range(1, n):
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                p = draw(st.integers(0, c - 1))
                if sizes[p] < sizes[c]:
                    continue
                requests.append(single(c, p, draw(st.permutations(range(sizes[p])))[:sizes[c]]))
            else:
                sources = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=3, unique=True))
                if sum(sizes[s] for s in sources) != sizes[c]:
                    continue
                batch = np.concatenate([np.full(sizes[s], s) for s in sources])
                index = np.concatenate([np.arange(sizes[s]) for s in sources])
                perm = np.array(draw(st.permutations(range(sizes[c]))))
                requests.append(Request(c, batch[perm], index[perm], batch[perm], 1))
    return sizes, requests


@settings(max_examples=300, deadline=None)
@given(dag_problems())
def test_any_problem_gives_permutations_and_valid_chains(problem):
    sizes, requests = problem
    solved = solve_orders(sizes, requests)
    for b, k in enumerate(sizes):
        assert sorted(solved.orders[b].tolist()) == list(range(k))
    blocks = [blk for chain in solved.chains for blk in chain]
    assert len(blocks) == len(set(blocks))
    assert solved.followed + solved.pinned + solved.composite + solved.dropped <= len(requests)
