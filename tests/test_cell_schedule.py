"""Tests for `edbc.schedule.cell`: the exact internal schedule of a cell."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edbc.cell.schedule import schedule_cell


@st.composite
def small_dags(draw):
    n = draw(st.integers(1, 8))
    types = [draw(st.integers(0, 2)) for _ in range(n)]
    deps = [tuple(sorted(set(draw(st.lists(st.integers(0, i - 1), max_size=2))))) if i else () for i in range(n)]
    return deps, types


def fewest_batches(deps, types) -> int:
    """Breadth-first search over the sets of ops done, running all ready ops of one type a step."""
    n = len(types)
    need = [sum(1 << d for d in ds) for ds in deps]
    level, steps = {0}, 0
    while (1 << n) - 1 not in level:
        nxt = set()
        for done in level:
            groups: dict[int, int] = {}
            for i in range(n):
                if not done >> i & 1 and need[i] & done == need[i]:
                    groups[types[i]] = groups.get(types[i], 0) | 1 << i
            nxt.update(done | m for m in groups.values())
        level, steps = nxt, steps + 1
    return steps


@settings(max_examples=400, deadline=None)
@given(small_dags())
def test_branch_and_bound_is_exact_and_valid(dag):
    deps, types = dag
    sched = schedule_cell(deps, types)
    assert sched.exact
    assert len(sched.batches) == fewest_batches(deps, types)
    assert sched.lower_bound <= len(sched.batches)
    done: set[int] = set()
    for batch in sched.batches:
        assert len({types[i] for i in batch}) == 1
        ready = {i for i in range(len(types)) if i not in done and set(deps[i]) <= done}
        assert set(batch) <= ready
        # every ready op of the batch's type runs in it
        assert {i for i in ready if types[i] == types[batch[0]]} == set(batch)
        done |= set(batch)
    assert done == set(range(len(types)))


def test_treelstm_node_cell_reaches_its_lower_bound():
    # affine; sigmoid(i), tanh(u), mul, sigmoid(f_l), mul, sigmoid(f_r), mul, sum, sigmoid(o), tanh(c), mul
    deps = [(), (0,), (0,), (1, 2), (0,), (4,), (0,), (6,), (3, 5, 7), (0,), (8,), (9, 10)]
    types = [0, 1, 2, 3, 1, 3, 1, 3, 4, 1, 2, 3]
    sched = schedule_cell(deps, types)
    assert len(sched.batches) == sched.lower_bound == 7
    assert (1, 4, 6, 9) in sched.batches  # the four sigmoids over the gate chunks run as one
