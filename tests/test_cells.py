"""Tests for the cell compiler (`edbc.cell`) and the kernels that replay compiled cells."""

from __future__ import annotations

import re

import pytest
import torch

from edbc.api import CompileOptions, compile_batch, load_data
from edbc.cell import BROADCAST, GATHER, STACKED, VIEW, compile_cell, format_cell_plan
from edbc.runtime import Kernel, Runtime
from edbc.runtime.kernels import interpret
from edbc.spec.load import parse_model

from .conftest import TREELSTM

# A node cell written so that program order misaligns its sigmoid batch (it reads the
# second half of the gates before the first), and with two muls by different weights.
ODD_NODE = '''  node:
    inputs: {h_l: [hidden], c_l: [hidden], h_r: [hidden], c_r: [hidden]}
    ops:
      - a, b = chunk(affine(h_l @ U_l, h_r @ U_r, b_node), 2)
      - p = sigmoid(b)
      - q = sigmoid(a)
      - h = mul(p, q)
      - c = add(add(mul(p, W_a), mul(q, W_b)), c_l)
    outputs: [h, c]
'''


@pytest.fixture(scope="module")
def odd_spec():
    text = TREELSTM.read_text(encoding="utf-8")
    text = re.sub(r"  node:\n(    .*\n)+", ODD_NODE, text)
    text = text.replace("U_l:    {shape: [hidden, 5*hidden]}",
                        "U_l:    {shape: [hidden, 2*hidden]}\n  W_a:    {shape: [hidden]}\n  W_b:    {shape: [hidden]}")
    text = text.replace("U_r:    {shape: [hidden, 5*hidden]}", "U_r:    {shape: [hidden, 2*hidden]}")
    text = text.replace("b_node: {shape: [5*hidden]}", "b_node: {shape: [2*hidden]}")
    return parse_model(text, "odd.yaml")


def plan_cell(program, shapes, memory="pq"):
    return compile_cell(program, shapes, memory, verify=True).plan


def shapes(spec):
    return {n: p.shape for n, p in spec.params.items()}


def kinds(plan):
    return [[o.kind for o in s.operands] for s in plan.steps]


def random_inputs(program, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (k,), generator=g) if v.dtype == "token" else torch.randn((k,) + v.shape, generator=g)
            for v in program.inputs]


def test_treelstm_node_plan(treelstm):
    plan = plan_cell(treelstm.cells["node"], shapes(treelstm), "pq")
    # as kernels run it: the two forget-gate products folded into addcmuls, so 8 internal batches
    assert len(plan.schedule.batches) == plan.schedule.lower_bound == 8
    sigmoids = next(s for s in plan.steps if len(s.ops) == 4)
    assert sigmoids.operands[0].kind == VIEW  # four chunks of the gate vector, side by side
    assert [len(s.ops) for s in plan.steps] == [1, 4, 1, 1, 1, 1, 1, 1]
    assert all(o.kind != GATHER for s in plan.steps for o in s.operands)


def test_pq_orders_an_internal_batch_that_program_order_misaligns(odd_spec):
    node = odd_spec.cells["node"]
    pq, none = plan_cell(node, shapes(odd_spec), "pq"), plan_cell(node, shapes(odd_spec), "none")
    # the sigmoids read (b, a): a gather in program order, so `none` runs them one by one
    assert [len(s.ops) for s in none.steps][:3] == [1, 1, 1]
    assert kinds(pq)[1] == [VIEW] and len(pq.steps) < len(none.steps)
    # mul(p, W_a) and mul(q, W_b): one batch, reading the sigmoids' block, weights stacked once
    assert [VIEW, STACKED] in kinds(pq) and pq.stacked_weights == 1 and none.stacked_weights == 0
    assert "sigmoid x2" in format_cell_plan(pq) and "view" in format_cell_plan(pq)


@pytest.mark.parametrize("memory", ["pq", "none"])
def test_kernels_equal_op_by_op_interpretation(treelstm, odd_spec, memory):
    for spec in (treelstm, odd_spec):
        runtime = Runtime(spec)
        weights = runtime.weights
        for program in spec.cells.values():
            kernel = runtime.kernel(compile_cell(program, shapes(spec), memory, verify=True))
            for k in (1, 7):
                inputs = random_inputs(program, k)
                plain = interpret(program, inputs, weights)
                fresh = kernel(inputs)
                written = kernel(inputs, [torch.full_like(t, float("nan")) for t in plain])
                for a, b, c in zip(plain, fresh, written):
                    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)


def test_broadcast_operand_is_an_expanded_view():
    text = TREELSTM.read_text(encoding="utf-8").replace(
        "      - h = mul(sigmoid(o), tanh(c))\n    outputs: [h, c]\n  node:",
        "      - so = sigmoid(o)\n      - h = add(mul(so, E2), mul(so, E3))\n    outputs: [h, c]\n  node:", 1)
    text = text.replace("  W_leaf:", "  E2:     {shape: [hidden]}\n  E3:     {shape: [hidden]}\n  W_leaf:")
    spec = parse_model(text, "broadcast.yaml")
    leaf = spec.cells["leaf"]
    cell = compile_cell(leaf, shapes(spec), "pq", verify=True)
    assert [BROADCAST, STACKED] in kinds(cell.plan)
    runtime = Runtime(spec)
    inputs = random_inputs(leaf, 5)
    for a, b in zip(interpret(leaf, inputs, runtime.weights), runtime.kernel(cell)(inputs)):
        assert torch.allclose(a, b, atol=1e-6)


def test_odd_model_runs_equal_to_reference_in_both_modes(odd_spec):
    data = load_data(odd_spec, None, limit=12, seed=4)
    runtime = Runtime(odd_spec)
    for memory in ("pq", "none"):
        compiled = compile_batch(odd_spec, data.instances, CompileOptions("agenda", "cell", memory), verify=True)
        out = runtime.prepare(compiled).run()
        assert (out - runtime.reference(compiled.cell_graph)).abs().max().item() <= 1e-4


def test_every_single_op_kernel_writes_its_destination():
    """Op-level kernels write results straight into arena rows; none may leave them unwritten."""
    from edbc.spec.program import Op, Program, Value
    g = torch.Generator().manual_seed(1)
    weights = {"W": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g), "v": torch.randn(4, generator=g)}
    x, y = Value("x", (4,)), Value("y", (3,))
    cases = [
        Program("affine_no_bias", (x, y), 1, (Op("affine", (0, "W"), (1,)),), (1,)),
        Program("affine_bias", (x, y), 1, (Op("affine", (0, "W", "b"), (1,)),), (1,)),
        Program("mul_param", (x, Value("z", (4,))), 1, (Op("mul", (0, "v"), (1,)),), (1,)),
        Program("sum_one", (x, Value("z", (4,))), 1, (Op("sum", (0,), (1,)),), (1,)),
        Program("log_softmax", (x, Value("z", (4,))), 1, (Op("log_softmax", (0,), (1,)),), (1,)),
        Program("chunk", (x, Value("a", (2,)), Value("b", (2,))), 1,
                (Op("chunk", (0,), (1, 2), (("n", 2),)),), (1, 2)),
    ]
    shapes = {n: tuple(t.shape) for n, t in weights.items()}
    for program in cases:
        inputs = [torch.randn(5, 4, generator=g)]
        cell = compile_cell(program, shapes, verify=True)
        kernel = Kernel(cell, dict(weights, **{n: weights[d.table] @ weights[d.weight] for n, d in cell.derived.items()}))
        out = kernel(inputs, [torch.full((5,) + program.values[v].shape, float("nan")) for v in program.outputs])
        for a, b in zip(interpret(program, inputs, weights), out):
            assert torch.allclose(a, b, atol=1e-6), program.name
