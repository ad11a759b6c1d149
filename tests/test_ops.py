"""The op table (`edbc/spec/ops.py`) and what is written about it."""

import re

import pytest
import torch

from edbc.api import CompileOptions, Compiler, compile_batch, load_data
from edbc.errors import SpecError
from edbc.graph import CELL, OP
from edbc.memory import PLANNERS
from edbc.runtime import Runtime
from edbc.runtime.module import WeightsModule
from edbc.runtime.reference import reference_outputs
from edbc.schedule import POLICIES
from edbc.settings import REPO_ROOT
from edbc.spec import parse_model
from edbc.spec.ops import OPS, SET_REDUCTIONS, Operand

from .test_gradients import relative_error


def readme_op_names() -> set[str]:
    """The op names of the README's list (`Primitive ops: ...` in The spec format)."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("Primitive ops:")
    paragraph = text[start:text.index("\n\n", start)]
    listed = paragraph[:paragraph.index("; the operands of")]
    return set(re.findall(r"`([a-z_]+)", listed))


def test_the_readme_lists_exactly_the_ops_of_the_table():
    names = readme_op_names()
    cell_ops = {kind for kind, d in OPS.items() if d.segment is None}
    assert names == cell_ops, (f"missing from the README: {sorted(cell_ops - names)}; "
                               f"not ops: {sorted(names - cell_ops)}")
    # the set reductions are bound in the structure, and the README says which there are
    text = (REPO_ROOT / "README.md").read_text()
    sets = text[text.index("A cell input may read a *set* of nodes"):]
    listed = set(re.findall(r"`([a-z]+)\(", sets[:sets.index("\n\n")]))
    assert listed == set(SET_REDUCTIONS) == {kind.removeprefix("set_") for kind in set(OPS) - cell_ops}


# Every op added for issue 18 inside one cell, twice where ops of a kind batch inside the cell (two
# softmaxes, two layer norms with their own parameters, stacked when they run as one call); their
# operands are halves of one vector, so that the batch reads them as one view.
NEW_OPS = """\
model: new_ops
seed: 3
dims: {vocab: 8, h: 4, classes: 3}
vocab:
  word: {size: vocab}
params:
  E: {shape: [vocab, h], init: normal, std: 1.0}
  g1: {shape: [h], init: ones}
  b1: {shape: [h]}
  g2: {shape: [h]}
  b2: {shape: [h]}
  D: {shape: [h], init: ones}
  N: {shape: [h]}
  U1: {shape: [1, h]}
  U2: {shape: [1, h]}
  Wo: {shape: [h, classes]}
  bo: {shape: [classes]}
cells:
  word_cell:
    inputs: {word: token}
    ops:
      - h = tanh(embed(E, word))
    outputs: [h]
  pair:
    inputs: {a: [h], b: [h]}
    ops:
      - u, v = chunk(concat(a, b), 2)
      - sa = softmax(u)
      - sb = softmax(v)
      - la = layer_norm(u, g1, b1)
      - lb = layer_norm(v, g2, b2)
      - q = div(sa, exp(tanh(sb)))
      - r = div(lb, D)
      - s = div(N, exp(tanh(la)))
      - t = affine(mean(la) @ U1, max(lb) @ U2)
      - h = tanh(sum(q, r, s, t))
    outputs: [h]
  classify:
    inputs: {h: [h]}
    ops:
      - logits = log_softmax(affine(h @ Wo, bo))
    outputs: [logits]
structure:
  kind: dag
  word: {cell: word_cell, bind: {word: word}}
  pair: {cell: pair, bind: {a: arg0.h, b: arg1.h}}
readout: {cell: classify, at: nodes, bind: {h: node.h}}
"""


@pytest.mark.parametrize("granularity", [CELL, OP])
def test_new_ops_batched_results_and_gradients_equal_the_reference(granularity):
    spec = parse_model(NEW_OPS, "new_ops.yaml")
    data = load_data(spec, None, limit=6, seed=1).instances
    runtime = Runtime(spec)
    params = list(WeightsModule(runtime).parameters())
    graph = compile_batch(spec, data, "eager").cell_graph
    ref = reference_outputs(graph, runtime.weights)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    want = torch.autograd.grad((ref * weight).sum(), params, allow_unused=True)
    for policy in POLICIES:
        for memory in PLANNERS:
            compiled = compile_batch(spec, data, CompileOptions(policy, granularity, memory), verify=True)
            executable = runtime.prepare(compiled)
            assert (executable.run() - ref.detach()).abs().max() <= 1e-4, (policy, memory)
            got = torch.autograd.grad((executable.forward() * weight).sum(), params)
            for name, g, w in zip(runtime.weights, got, want):
                w = torch.zeros_like(g) if w is None else w
                assert relative_error(g, w) <= 1e-4, (name, policy, memory)
    pair = spec.cells["pair"]
    steps = Compiler(spec).cell(pair).plan.steps
    batched = {pair.ops[step.ops[0]].kind for step in steps if len(step.ops) > 1}
    assert {"softmax", "layer_norm"} <= batched  # two ops of each ran as one call


@pytest.mark.parametrize("line, message", [
    ("sa = softmax(u, v)", "softmax takes 1 operand, got 2"),
    ("la = layer_norm(u, g1, a)", "layer_norm's b must be a parameter of shape [4], got a value"),
    ("la = layer_norm(u, U1, b1)", "layer_norm's g must be a parameter of shape [4], got a parameter of shape [1, 4]"),
    ("r = div(lb, U1)", "div operands must have equal shapes"),
])
def test_new_ops_shape_errors(line, message):
    old = {"sa": "sa = softmax(u)", "la": "la = layer_norm(u, g1, b1)", "r": "r = div(lb, D)"}[line.split(" =")[0]]
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_model(NEW_OPS.replace(old, line), "new_ops.yaml")


def test_mean_and_max_keep_the_last_dimension_as_size_one():
    x = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    assert OPS["mean"].impl([x], {})[0].tolist() == [[2.0], [1.0]]
    assert OPS["max"].impl([x], {})[0].tolist() == [[3.0], [4.0]]
    assert OPS["mean"].infer([Operand(False, (3,))], {}) == [(1,)]
