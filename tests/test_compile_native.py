"""The native compile paths (`csrc/compile.cpp`) against their Python oracles (`compile_oracle.py`):
equal graphs, layouts and operand tables on every bundled model (its real data where present) and
hundreds of random mini-batches, at both granularities, under every scheduling policy and both
memory modes."""

from __future__ import annotations

import numpy as np
import pytest

from edbc.api import CompileOptions, compile_batch, load_data, load_spec
from edbc.bench.suite import WORKLOADS, load_workload
from edbc.data import encode, parse_ptb, spec_vocabs
from edbc.errors import DataError, VerificationError
from edbc.graph import CELL, OP, build_graph
from edbc.memory.layout import Layout
from edbc.memory.operands import operand_table
from edbc.memory.planner import pq_layout, unplanned
from edbc.schedule import POLICIES
from edbc.settings import MODELS_DIR

from . import compile_oracle

MODELS = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
TABLE_COLUMNS = ("batch", "position", "kind", "arena", "first_row", "rows_read", "nbytes", "ptr", "rows")


def assert_same_arrays(got: dict, want: dict) -> None:
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and np.array_equal(g, w), name


def assert_same_graphs(got, want) -> None:
    assert [(t.name, t.program) for t in got.types] == [(t.name, t.program) for t in want.types]
    assert got.num_instances == want.num_instances
    assert_same_arrays(got.arrays(), want.arrays())


def assert_same_layouts(got, want) -> None:
    (got_schedule, got_layout), (want_schedule, want_layout) = got, want
    assert_same_arrays(got_schedule.arrays(), want_schedule.arrays())
    assert got_layout.mode == want_layout.mode and got_layout.arena_shapes == want_layout.arena_shapes
    assert_same_arrays(got_layout.arrays(), want_layout.arrays())


def assert_same_tables(graph, schedule, layout) -> None:
    got, want = operand_table(graph, schedule, layout), compile_oracle.operand_table(graph, schedule, layout)
    assert_same_arrays({c: getattr(got, c) for c in TABLE_COLUMNS}, {c: getattr(want, c) for c in TABLE_COLUMNS})


def random_cases(count: int):
    rng = np.random.default_rng(14)
    policies = sorted(POLICIES)
    for case in range(count):
        yield (MODELS[case % len(MODELS)], int(rng.integers(1 << 16)), int(rng.integers(1, 20)),
               policies[int(rng.integers(len(policies)))], (CELL, OP)[int(rng.integers(2))])


@pytest.fixture(scope="module")
def specs():
    return {name: load_spec(MODELS_DIR / f"{name}.yaml")[0] for name in MODELS}


def assert_same_compile(spec, instances, policy: str, granularity: str) -> None:
    assert_same_graphs(build_graph(spec, instances), compile_oracle.build_graph(spec, instances))
    c = compile_batch(spec, instances, CompileOptions(policy, granularity, "none"))
    none = unplanned(c.graph, c.schedule)
    assert_same_layouts(none, compile_oracle.unplanned(c.graph, c.schedule))
    assert_same_tables(c.graph, *none)
    assert_same_tables(c.graph, *pq_layout(c.graph, c.schedule))


@pytest.mark.parametrize("model, seed, size, policy, granularity", list(random_cases(500)))
def test_native_graphs_layouts_and_operands_equal_the_oracles(specs, model, seed, size, policy, granularity):
    spec = specs[model]
    assert_same_compile(spec, load_data(spec, None, limit=size, seed=seed).instances, policy, granularity)


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.model)
def test_bundled_workloads_compile_as_the_oracles_do(workload):
    spec, _, batches = load_workload(workload, 64, max_minibatches=2)
    for instances in batches:
        assert_same_compile(spec, instances, "fsm", CELL)


def test_an_operand_outside_its_arena_is_reported_as_the_oracle_reports_it(specs):
    spec = specs["bilstm_tagger"]
    c = compile_batch(spec, load_data(spec, None, limit=8, seed=1).instances, CompileOptions("agenda", CELL, "none"))
    assert len(c.layout.arena_shapes) >= 2
    # The arenas' shapes listed the other way round: every real operand reads the wrong arena.
    swapped = Layout("none", c.layout.arena_shapes[::-1], c.layout.arena_rows, c.layout.value_arena,
                     c.layout.value_row)
    with pytest.raises(VerificationError) as want:
        compile_oracle.operand_table(c.graph, c.schedule, swapped)
    with pytest.raises(VerificationError) as got:
        operand_table(c.graph, c.schedule, swapped)
    assert str(got.value) == str(want.value)


def test_a_node_of_another_arity_is_reported_in_its_tree_as_the_oracle_reports_it(specs):
    spec = specs["treelstm"]
    lines = ["(3 (2 a) (2 b))", "(3 (2 a) (1 (2 b) (2 c) (2 d)))", "(3 (2 a) (1 (2 b)))"]
    trees = encode([parse_ptb(line, "f.txt", i + 1) for i, line in enumerate(lines)], spec_vocabs(spec))
    errors = []
    for build in (build_graph, compile_oracle.build_graph):
        with pytest.raises(DataError) as e:
            build(spec, trees)
        errors.append((e.value.message, e.value.path, e.value.line, e.value.column))
    assert errors[0] == errors[1] and errors[0][2] == 2
