"""Tests for whole-mini-batch memory planning (`edbc.memory.planner`) and operand figures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edbc.api import CompileOptions, compile_batch, compile_plan, load_data, load_spec, memory_comparison
from edbc.errors import VerificationError
from edbc.graph import CELL, OP
from edbc.graph.ir import Graph, NodeType, csr_ptr
from edbc.memory import PLANNERS
from edbc.memory.layout import Layout, verify_layout
from edbc.memory.operands import GATHER, VIEW, batch_operands
from edbc.runtime import Runtime
from edbc.runtime.executor import _GATHER
from edbc.schedule import POLICIES, schedule, verify_schedule
from edbc.spec.program import TOKEN, Op, Program, Value

from .conftest import TREELSTM, shared


def sorted_batches(s):
    return [sorted(s.batch(b).tolist()) for b in range(s.num_batches)]


@pytest.mark.parametrize("granularity", [CELL, OP])
def test_pq_reorders_within_batches_only(treelstm, synthetic_trees, granularity):
    none = compile_batch(treelstm, synthetic_trees, CompileOptions("agenda", granularity, "none"))
    pq = compile_batch(treelstm, synthetic_trees, CompileOptions("agenda", granularity, "pq"), verify=True)
    assert sorted_batches(pq.schedule) == sorted_batches(none.schedule)
    assert np.array_equal(pq.schedule.batch_type, none.schedule.batch_type)


def test_tree_left_and_right_children_become_views(treelstm, synthetic_trees):
    """The first internal batch reads only leaves: all four operands are views with pq."""
    for memory, views in (("pq", 4), ("none", 0)):
        c = compile_batch(treelstm, synthetic_trees, CompileOptions("agenda", CELL, memory))
        node = next(b for b in range(c.schedule.num_batches)
                    if c.graph.types[c.schedule.batch_type[b]].name == "node")
        kinds = [o.kind for o in batch_operands(c.graph, c.schedule, c.layout, node)]
        assert kinds.count(VIEW) == views and kinds.count(GATHER) == 4 - views


@pytest.mark.parametrize("granularity", [CELL, OP])
def test_pq_moves_fewer_bytes(treelstm, granularity):
    data = load_data(treelstm, None, limit=64, seed=5)
    stats = {}
    for memory in ("pq", "none"):
        c = compile_batch(treelstm, data.instances, CompileOptions("agenda", granularity, memory))
        stats[memory] = c.memory_stats()
    assert stats["pq"].gather_bytes < stats["none"].gather_bytes
    if granularity == OP:
        assert stats["pq"].gather_bytes * 2 <= stats["none"].gather_bytes


def test_memory_comparison_agrees_with_the_executor(treelstm):
    spec, text = load_spec(TREELSTM)
    plan = compile_plan(spec, text, load_data(spec, None, limit=20, seed=2), batch_size=10)
    by_mode = memory_comparison(plan)
    assert set(by_mode) == set(PLANNERS)
    executed = [b.memory_stats() for b in plan.batches]
    assert by_mode["pq"] == executed[0] + executed[1]
    # the figures count what the executor really gathers
    runtime = Runtime(spec)
    gathers = [sum(kind == _GATHER for _, inputs, _ in runtime.prepare(b)._python_steps()[0] for kind, _ in inputs)
               for b in plan.batches]
    assert gathers == [s.gathers for s in executed] and sum(gathers) > 0
    assert by_mode["pq"].view_fraction > by_mode["none"].view_fraction


def test_layout_verifier_rejects_broken_layouts(treelstm, synthetic_trees):
    c = compile_batch(treelstm, synthetic_trees, CompileOptions("agenda", CELL, "pq"))
    g, s, lay = c.graph, c.schedule, c.layout
    first = s.batch(0)
    v0, v1 = g.value_ptr[first[0]], g.value_ptr[first[1]]

    def broken(row=None, rows=None):
        return Layout(lay.mode, lay.arena_shapes, lay.arena_rows if rows is None else rows,
                      lay.value_arena, lay.value_row if row is None else row)

    row = lay.value_row.copy()
    row[[v0, v1]] = row[[v1, v0]]
    with pytest.raises(VerificationError, match="not consecutive rows in batch order"):
        verify_layout(g, s, broken(row=row))
    row = lay.value_row.copy()
    row[v0] = row[v1]
    with pytest.raises(VerificationError, match="share a row"):
        verify_layout(g, s, broken(row=row))
    with pytest.raises(VerificationError, match="hold no value"):
        verify_layout(g, s, broken(rows=lay.arena_rows + 1))


def test_planning_sst_64_trees_is_fast_enough_to_report(treelstm):
    """Not a timing assertion: planning records its time for `run --json`."""
    data = load_data(treelstm, str(shared("sst/test.txt")), limit=64)
    timings = {}
    compile_batch(treelstm, data.instances, CompileOptions("agenda", CELL, "pq"), timings=timings)
    assert timings["memory"] > 0


@st.composite
def programs_graphs(draw):
    """Random cell-level graphs: types of fixed arity (0 reads a token) and one or two outputs,
    arguments any earlier output or zeros, values read any number of times."""
    n_types = draw(st.integers(1, 4))
    types = []
    for t in range(n_types):
        arity, outs = draw(st.integers(0, 3)), draw(st.integers(1, 2))
        if arity == 0:
            values = [Value("tok", (), TOKEN), Value("y0", (4,))]
            ops = [Op("embed", ("E", 0), (1,))]
        else:
            values = [Value(f"x{i}", (4,)) for i in range(arity)] + [Value("y0", (4,))]
            ops = [Op("sum", tuple(range(arity)), (arity,))]
        if outs == 2:
            values.append(Value("y1", (4,)))
            ops.append(Op("tanh", (len(values) - 2,), (len(values) - 1,)))
        n_in = 1 if arity == 0 else arity
        types.append(NodeType(f"t{t}", Program(f"t{t}", tuple(values), n_in, tuple(ops),
                                               tuple(range(n_in, len(values))))))
    n = draw(st.integers(1, 30))
    node_type = [draw(st.integers(0, n_types - 1)) for _ in range(n)]
    arg_node, arg_slot, imm = [], [], []
    for v, t in enumerate(node_type):
        program = types[t].program
        if not program.float_inputs:
            imm.append(draw(st.integers(0, 7)))
        for _ in program.float_inputs:
            u = draw(st.integers(-1, v - 1))
            arg_node.append(u)
            arg_slot.append(draw(st.integers(0, len(types[node_type[u]].program.outputs) - 1)) if u >= 0 else 0)
    n_args = [len(types[t].program.float_inputs) for t in node_type]
    n_imm = [0 if types[t].program.float_inputs else 1 for t in node_type]
    return Graph(CELL, tuple(types), node_type, csr_ptr(np.array(n_args)), arg_node, arg_slot,
                 csr_ptr(np.array(n_imm)), imm, np.zeros(n), 1, [n - 1], [0])


@settings(max_examples=200, deadline=None)
@given(programs_graphs(), st.sampled_from(sorted(POLICIES)))
def test_pq_layouts_of_random_graphs_verify(graph, policy):
    sched = schedule(graph, policy)
    planned, layout = PLANNERS["pq"](graph, sched)
    verify_schedule(graph, planned)
    verify_layout(graph, planned, layout)
    assert sorted_batches(planned) == sorted_batches(sched)


def test_pq_plans_a_mini_batch_only_where_its_runs_repay_planning(treelstm, synthetic_trees):
    from edbc.api import Compiler
    from edbc.memory.planner import planning_pays
    from edbc.passes import CompileOptions
    options = CompileOptions("agenda", "op", "pq")
    once = Compiler(treelstm, options, runs=1).compile_batch(synthetic_trees)
    often = Compiler(treelstm, options, runs=10_000).compile_batch(synthetic_trees)
    ahead = Compiler(treelstm, options).compile_batch(synthetic_trees)  # a plan: planned always
    assert (once.layout.mode, often.layout.mode, ahead.layout.mode) == ("none", "pq", "pq")
    table = once.operand_table()
    assert not planning_pays(table, once.graph, once.schedule, 1)
    assert planning_pays(table, once.graph, once.schedule, 10_000)
    assert often.memory_stats().gather_bytes < once.memory_stats().gather_bytes
    # the table the decision made is the one the mini-batch runs with
    assert once.known_operands is table


def test_the_cost_model_counts_only_the_gathers_the_replay_copies():
    """A gathered operand that only elementwise ops or row-by-row matrix products read is read in
    place: planning cannot save on it."""
    from edbc.api import load_spec
    from edbc.memory.planner import copied_inputs
    from edbc.settings import MODELS_DIR
    cells = {name: load_spec(MODELS_DIR / f"{name}.yaml")[0].cells for name in ("treelstm", "mvrnn")}
    node = cells["treelstm"]["node"]
    names = [node.values[v].name for v in node.float_inputs]
    copied = dict(zip(names, copied_inputs(node)))
    assert copied == {"h_l": True, "c_l": False, "h_r": True, "c_r": False}  # h: affines; c: f * c
    assert not copied_inputs(cells["mvrnn"]["node"]).any()  # matvec and matmul rows, all in place
    assert copied_inputs(cells["mvrnn"]["classify"]).all()  # an affine


# Found by the property test: at op level, `affine(mean(...) @ P)` leaves a `[1]`-shaped type that no
# node has once the mini-batch is lowered; its shape once got an arena of zero rows, which the
# layout verifier refuses.
SPEC_WITH_A_NODELESS_TYPE = """\
model: nodeless
seed: 0
dims: {vocab: 8, h: 2, classes: 3}
vocab:
  word: {size: vocab}
params:
  E: {shape: [vocab, h]}
  Wo: {shape: [h, classes]}
  bo: {shape: [classes]}
  P3: {shape: [h, 2*h]}
  P4: {shape: [h, h]}
  P5: {shape: [1, h]}
cells:
  word_cell:
    inputs: {word: token}
    ops:
      - x = embed(E, word)
      - v0, v0b = chunk(affine(x @ P3), 2)
      - h = tanh(v0)
    outputs: [h]
  cell0:
    inputs: {x0: [h], x1: [h]}
    ops:
      - v0 = affine(mean(affine(x0 @ P4)) @ P5)
      - h = tanh(v0)
    outputs: [h]
  cell1:
    inputs: {x0: [h], x1: [h]}
    ops:
      - v0 = sigmoid(x0)
      - h = tanh(v0)
    outputs: [h]
  cell2:
    inputs: {x0: [h], x1: [h]}
    ops:
      - v0 = sigmoid(x0)
      - h = tanh(v0)
    outputs: [h]
  classify:
    inputs: {h: [h]}
    ops:
      - logits = log_softmax(affine(h @ Wo, bo))
    outputs: [logits]
structure:
  kind: dag
  word: {cell: word_cell, bind: {word: word}}
  role0: {cell: cell0, bind: {x0: arg0.h, x1: arg1.h}}
  role1: {cell: cell1, bind: {x0: arg0.h, x1: arg1.h}}
  role2: {cell: cell2, bind: {x0: arg0.h, x1: arg1.h}}
readout: {cell: classify, at: outputs, bind: {h: node.h}}
"""


@pytest.mark.parametrize("memory", PLANNERS)
def test_a_type_without_nodes_gets_no_arena(memory):
    from edbc.spec import parse_model

    spec = parse_model(SPEC_WITH_A_NODELESS_TYPE, "nodeless.yaml")
    data = load_data(spec, None, limit=1, seed=309).instances
    for policy in ("eager", "typewise"):
        c = compile_batch(spec, data, CompileOptions(policy, OP, memory), verify=True)
        assert np.all(c.layout.arena_rows >= 1)
        out = Runtime(spec).prepare(c).run()
        assert (out - Runtime(spec).reference(c.cell_graph)).abs().max().item() <= 1e-4
