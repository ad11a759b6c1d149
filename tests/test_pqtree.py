"""Tests for the Booth–Lueker PQ tree in `edbc.memory.pqtree`."""

from __future__ import annotations

import itertools
import random
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edbc.memory.pqtree import PQNode, PQTree, reduce_all

# --------------------------------------------------------------- helpers


def P(*kids) -> str:
    """Canonical shape of a P-node: children in any order."""
    return "(" + " ".join(sorted(map(str, kids))) + ")"


def Q(*kids) -> str:
    """Canonical shape of a Q-node: children in this order or reversed."""
    kids = [str(k) for k in kids]
    return "[" + " ".join(min(kids, kids[::-1])) + "]"


def shape(node: PQNode) -> str:
    """Canonical shape of a subtree, comparable with `P`/`Q` expressions."""
    if node.kind == "leaf":
        return str(node.leaf)
    kids = [shape(kid) for kid in node.children]
    return P(*kids) if node.kind == "P" else Q(*kids)


def consecutive(order: list[int], subset) -> bool:
    if len(subset) <= 1:
        return True
    spots = [order.index(x) for x in subset]
    return max(spots) - min(spots) == len(subset) - 1


def check_tree(tree: PQTree, n: int) -> None:
    """Structural invariants: proper node arities, each leaf exactly once,
    and every child's parent (as the tree finds it) is the node above it."""
    from edbc.memory.pqtree import _root_cell  # parent lookup is internal

    seen = []
    stack = [tree.root]
    assert tree.root._cell is None
    while stack:
        node = stack.pop()
        if node.kind == "leaf":
            assert node.children == []
            seen.append(node.leaf)
            continue
        assert node.leaf is None
        kids = node.children
        assert len(kids) >= (2 if node.kind == "P" else 3) or n < 2
        for kid in kids:
            assert _root_cell(kid._cell)._node is node
        stack.extend(kids)
    assert sorted(seen) == list(range(n))
    assert sorted(tree.frontier()) == list(range(n))


def build(n: int, *sets) -> PQTree:
    tree = PQTree(n)
    for s in sets:
        assert tree.reduce(s), s
    return tree


# ------------------------------------------------- brute force (n <= 8)


@lru_cache(maxsize=None)
def positions(n: int) -> np.ndarray:
    """positions(n)[k, x]: where element x stands in the k-th permutation."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int8).reshape(-1, n)
    return np.argsort(perms, axis=1)


@st.composite
def families(draw):
    """A ground-set size and a family of subsets, about half of them
    intervals of a hidden permutation so that many are satisfiable."""
    n = draw(st.integers(1, 8))
    hidden = draw(st.permutations(range(n)))
    sets = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            size = draw(st.integers(0, n))
            start = draw(st.integers(0, n - size))
            sets.append(list(hidden[start:start + size]))
        else:
            sets.append(draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n)))
    return n, sets


@settings(max_examples=1000, deadline=None)
@given(families())
def test_matches_brute_force(family):
    n, sets = family
    pos = positions(n)
    alive = np.ones(len(pos), dtype=bool)  # permutations meeting every kept set
    tree = PQTree(n)
    kept_sets = []
    for s in sets:
        if len(s) > 1:
            spots = pos[:, s]
            meets = alive & (spots.max(axis=1) - spots.min(axis=1) == len(s) - 1)
        else:
            meets = alive
        before = (tree.frontier(), tree.count_permutations(), shape(tree.root))
        kept = tree.reduce(s)
        assert kept == bool(meets.any())                          # (a)
        if kept:
            alive = meets
            kept_sets.append(s)
        else:                                                     # (d)
            assert (tree.frontier(), tree.count_permutations(), shape(tree.root)) == before
        order = tree.frontier()
        assert all(consecutive(order, k) for k in kept_sets)      # (b)
        assert tree.count_permutations() == int(alive.sum())      # (c)
        check_tree(tree, n)


@settings(max_examples=400, deadline=None)
@given(families(), st.data())
def test_checkpoint_rollback_restores_and_commit_keeps(family, data):
    """A group of reduces between `checkpoint` and `rollback` leaves no trace;
    after `commit` the tree is the one the same reduces give without a checkpoint."""
    n, sets = family
    cut = data.draw(st.integers(0, len(sets)))
    tree = PQTree(n)
    reduce_all(tree, sets[:cut])
    plain = tree.copy()
    before = (tree.frontier(), tree.count_permutations(), shape(tree.root))
    tree.checkpoint()
    reduce_all(tree, sets[cut:])
    tree.rollback()
    assert (tree.frontier(), tree.count_permutations(), shape(tree.root)) == before
    check_tree(tree, n)
    tree.checkpoint()
    assert reduce_all(tree, sets[cut:]) == reduce_all(plain, sets[cut:])
    tree.commit()
    assert shape(tree.root) == shape(plain.root)
    assert tree.count_permutations() == plain.count_permutations()
    check_tree(tree, n)
    # and the tree goes on exactly like one that never had a checkpoint
    assert reduce_all(tree, sets) == reduce_all(plain, sets)
    assert shape(tree.root) == shape(plain.root)


def test_nested_checkpoints():
    tree = build(6, {0, 1})
    tree.checkpoint()
    assert tree.reduce({1, 2})
    tree.checkpoint()
    assert tree.reduce({2, 3}) and tree.reduce({4, 5})
    tree.rollback()
    assert shape(tree.root) == P(3, 4, 5, Q(0, 1, 2))
    tree.commit()
    assert shape(tree.root) == P(3, 4, 5, Q(0, 1, 2))
    check_tree(tree, 6)


# ------------------------------------------------------ templates by hand


def test_universal_tree():
    tree = PQTree(4)
    assert tree.root.kind == "P" and tree.root.leaf is None
    assert shape(tree.root) == P(0, 1, 2, 3)
    assert tree.count_permutations() == 24
    assert sorted(tree.frontier()) == [0, 1, 2, 3]


def test_l1_p2_group_full_leaves_at_root():
    tree = build(4, {0, 1})
    assert shape(tree.root) == P(2, 3, P(0, 1))
    assert tree.count_permutations() == 3 * 2 * 2


def test_p1_full_p_child():
    tree = build(4, {0, 1}, {0, 1, 2})
    assert shape(tree.root) == P(3, P(2, P(0, 1)))


def test_p3_then_p4_replacing_the_root():
    tree = build(5, {0, 1, 2, 3}, {3, 4})
    assert shape(tree.root) == Q(P(0, 1, 2), 3, 4)
    assert tree.root.kind == "Q"
    assert tree.count_permutations() == 2 * 6


def test_p4_root_keeps_empty_children():
    tree = build(6, {0, 1, 2, 3}, {3, 4})
    assert shape(tree.root) == P(5, Q(P(0, 1, 2), 3, 4))


def test_p5_partial_p_node_below_root():
    tree = build(7, {0, 1, 2, 3}, {0, 1, 2, 3, 4, 5})
    assert shape(tree.root) == P(6, P(4, 5, P(0, 1, 2, 3)))
    assert tree.reduce({3, 4, 6})
    assert shape(tree.root) == Q(5, P(0, 1, 2), 3, 4, 6)


def test_p6_two_partial_children_at_root():
    tree = build(8, {0, 1, 2}, {3, 4, 5})
    assert tree.reduce({2, 3})
    assert shape(tree.root) == P(6, 7, Q(P(0, 1), 2, 3, P(4, 5)))


def test_p6_with_full_children_between():
    tree = build(8, {0, 1, 2}, {3, 4, 5})
    assert tree.reduce({2, 3, 6})
    assert shape(tree.root) == P(7, Q(P(0, 1), 2, 6, 3, P(4, 5)))


def test_q1_full_q_child():
    tree = build(5, {0, 1}, {1, 2})
    assert shape(tree.root) == P(3, 4, Q(0, 1, 2))
    assert tree.reduce({0, 1, 2, 3})
    assert shape(tree.root) == P(4, P(3, Q(0, 1, 2)))


def test_q2_below_root_single_end_child():
    tree = build(6, {0, 1}, {1, 2}, {0, 1, 2, 3})
    assert shape(tree.root) == P(4, 5, P(3, Q(0, 1, 2)))
    assert tree.reduce({2, 3})
    assert shape(tree.root) == P(4, 5, Q(0, 1, 2, 3))


def test_q2_below_root_splices_partial_child():
    tree = build(5, {2, 3}, {0, 1}, {1, 2, 3})
    assert shape(tree.root) == P(4, Q(0, 1, P(2, 3)))
    assert tree.reduce({0, 1, 2, 4})
    assert shape(tree.root) == Q(4, 0, 1, 2, 3)
    assert tree.count_permutations() == 2


def test_q2_at_root_splices_partial_child():
    tree = build(7, {0, 1}, {1, 2}, {2, 3, 4})
    assert shape(tree.root) == P(5, 6, Q(0, 1, 2, P(3, 4)))
    assert tree.reduce({1, 2, 3})
    assert shape(tree.root) == P(5, 6, Q(0, 1, 2, 3, 4))


def test_q3_two_partial_children_at_root():
    tree = build(5, {0, 1}, {3, 4}, {0, 1, 2}, {2, 3, 4})
    assert shape(tree.root) == Q(P(0, 1), 2, P(3, 4))
    assert tree.reduce({1, 2, 3})
    assert shape(tree.root) == Q(0, 1, 2, 3, 4)
    assert tree.count_permutations() == 2


def test_q_orientation_and_blocks_are_readable():
    tree = build(6, {0, 1}, {1, 2}, {2, 3}, {4, 5})
    root = tree.root
    assert root.kind == "P"
    q = next(kid for kid in root.children if kid.kind == "Q")
    assert [kid.leaf for kid in q.children] in ([0, 1, 2, 3], [3, 2, 1, 0])
    # the frontier reads every node's children left to right
    order = tree.frontier()
    i = order.index(q.children[0].leaf)
    assert order[i:i + 4] == [kid.leaf for kid in q.children]


# --------------------------------------------------------------- failures


FAILURES = [
    # (n, sets that build the tree, set that must fail)
    (6, [{0, 1}, {2, 3}, {0, 1, 2, 3, 4}], {1, 2, 5}),   # two partials below root
    (6, [{0, 1}, {2, 3}, {4, 5}], {1, 2, 4}),            # three partials at root
    (5, [{0, 1}, {1, 2}, {2, 3}], {1, 2, 4}),            # Q run not at an end
    (4, [{0, 1}, {1, 2}, {2, 3}], {0, 2}),               # Q run not consecutive
    (5, [{0, 1}, {3, 4}, {0, 1, 2}, {2, 3, 4}], {1, 4}),  # partials apart
    (7, [{0, 1}, {1, 2}, {2, 3, 4}, {0, 1, 2, 3, 4, 5}], {2, 3, 5}),  # partial at outer end
    (6, [{0, 1}, {1, 2}, {3, 4}, {4, 5}], {1, 4}),       # middles of two Q-nodes
]


@pytest.mark.parametrize("n, sets, bad", FAILURES)
def test_failing_reduce_leaves_tree_unchanged(n, sets, bad):
    tree = build(n, *sets)
    twin = tree.copy()
    before = (tree.frontier(), tree.count_permutations(), shape(tree.root))
    assert not tree.reduce(bad)
    assert (tree.frontier(), tree.count_permutations(), shape(tree.root)) == before
    check_tree(tree, n)
    # same later behaviour as a tree that never saw the failing set
    rng = random.Random(n)
    for _ in range(30):
        s = rng.sample(range(n), rng.randint(2, n - 1))
        assert tree.reduce(s) == twin.reduce(s)
        assert shape(tree.root) == shape(twin.root)


def test_failure_found_after_modifications_is_rolled_back():
    # Tree (8 (4 ((0 1 2) 3) ((5 6) 7))): the set goes through P3 twice and
    # P5 twice before the P-node over 0..7 finds two partial children.
    tree = build(9, {0, 1, 2}, {0, 1, 2, 3}, {5, 6}, {5, 6, 7}, {0, 1, 2, 3, 4, 5, 6, 7})
    assert shape(tree.root) == P(8, P(4, P(P(0, 1, 2), 3), P(P(5, 6), 7)))
    before = (tree.frontier(), tree.count_permutations(), shape(tree.root))
    assert not tree.reduce({2, 3, 6, 7, 8})
    assert (tree.frontier(), tree.count_permutations(), shape(tree.root)) == before
    check_tree(tree, 9)


# ------------------------------------------------------- trivial and bad


@pytest.mark.parametrize("subset", [[], [3], [0, 1, 2, 3, 4], range(5)])
def test_trivial_sets_change_nothing(subset):
    tree = build(5, {1, 2})
    before = (tree.frontier(), tree.count_permutations(), shape(tree.root))
    assert tree.reduce(subset)
    assert (tree.frontier(), tree.count_permutations(), shape(tree.root)) == before


@pytest.mark.parametrize("subset, bad", [
    ([0, 5], "5"), ([-1, 2], "-1"), ([1, 2, 1], "1"), ([0, "a"], "'a'"), ([0, 1.5], "1.5"),
])
def test_bad_elements_raise_and_change_nothing(subset, bad):
    tree = build(5, {1, 2})
    before = shape(tree.root)
    with pytest.raises(ValueError, match=bad):
        tree.reduce(subset)
    assert shape(tree.root) == before


def test_numpy_integers_are_accepted():
    tree = PQTree(4)
    assert tree.reduce(np.array([0, 1]))
    assert shape(tree.root) == P(2, 3, P(0, 1))


def test_tiny_ground_sets():
    empty = PQTree(0)
    assert empty.frontier() == [] and empty.count_permutations() == 1
    assert empty.reduce([])
    one = PQTree(1)
    assert one.root.kind == "leaf" and one.root.leaf == 0
    assert one.reduce([0]) and one.frontier() == [0] and one.count_permutations() == 1
    two = PQTree(2)
    assert two.reduce([1, 0]) and two.count_permutations() == 2
    with pytest.raises(ValueError):
        PQTree(-1)


def test_reduce_all_drops_failing_sets():
    tree = PQTree(5)
    assert reduce_all(tree, [{0, 1}, {1, 2}, {0, 2}, {2, 3}, [4]]) == [True, True, False, True, True]
    assert shape(tree.root) == P(4, Q(0, 1, 2, 3))


# -------------------------------------------------------------- copy


def test_copy_is_independent():
    tree = build(8, {0, 1}, {1, 2}, {5, 6})
    twin = tree.copy()
    assert shape(twin.root) == shape(tree.root)
    assert twin.frontier() == tree.frontier()
    assert twin.count_permutations() == tree.count_permutations()
    assert twin.reduce({2, 3}) and twin.reduce({6, 7})
    assert shape(tree.root) == P(3, 4, 7, Q(0, 1, 2), P(5, 6))
    assert shape(twin.root) == P(4, Q(0, 1, 2, 3), Q(5, 6, 7))
    assert tree.reduce({0, 4})
    assert shape(twin.root) == P(4, Q(0, 1, 2, 3), Q(5, 6, 7))
    check_tree(tree, 8)
    check_tree(twin, 8)


# ------------------------------------------------------ moderate size


def test_intervals_of_hidden_permutation_are_all_kept():
    n = 2000
    rng = random.Random(1)
    hidden = list(range(n))
    rng.shuffle(hidden)
    sets = []
    for _ in range(4000):
        size = rng.randint(2, 64)
        start = rng.randrange(n - size + 1)
        sets.append(hidden[start:start + size])
    tree = PQTree(n)
    assert all(reduce_all(tree, sets))
    where = {leaf: i for i, leaf in enumerate(tree.frontier())}
    for s in sets:
        spots = [where[x] for x in s]
        assert max(spots) - min(spots) == len(s) - 1
    assert 2 <= tree.count_permutations() < 2 ** 64
    check_tree(tree, n)


def test_mixed_random_sets_keep_frontier_consistent():
    n = 500
    rng = random.Random(2)
    hidden = list(range(n))
    rng.shuffle(hidden)
    sets = []
    for _ in range(2000):
        size = rng.randint(2, 40)
        if rng.random() < 0.3:
            sets.append(rng.sample(range(n), size))
        else:
            start = rng.randrange(n - size + 1)
            sets.append(hidden[start:start + size])
    tree = PQTree(n)
    kept = reduce_all(tree, sets)
    assert 0 < sum(kept) < len(sets)
    where = {leaf: i for i, leaf in enumerate(tree.frontier())}
    for s, k in zip(sets, kept):
        spots = [where[x] for x in s]
        assert (max(spots) - min(spots) == len(s) - 1) or not k
    check_tree(tree, n)
