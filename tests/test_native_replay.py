"""The native replay (`csrc/replay.cpp`): every bundled model's results equal the generated
Python kernels' (the oracle) and the reference, on the fused CPU path and on the ATen path other
devices take; the bundled cells lower to native programs; matrix products, forward and backward;
the fused math keeps NaN and inf."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edbc.api import CompileOptions, compile_batch, load_data, load_spec
from edbc.graph import CELL, OP
from edbc.native import core
from edbc.runtime import Runtime
from edbc.runtime.module import WeightsModule
from edbc.runtime.reference import reference_outputs
from edbc.runtime.native import CODE, FIELDS, NONE
from edbc.settings import MODELS_DIR

from .test_models import MODELS, SMALL


def python_replay(executable) -> torch.Tensor:
    """The oracle: each batch through its generated Python kernel."""
    with torch.no_grad():
        executable._run_python(executable._quiet)
        return torch.index_select(executable._result_arena, 0, executable._result_rows)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    spec, _ = load_spec(MODELS_DIR / f"{request.param}.yaml")
    data = load_data(spec, None, limit=SMALL.get(spec.name, 12), seed=3)
    return spec, data.instances


@pytest.mark.parametrize("granularity", [CELL, OP])
@pytest.mark.parametrize("fused", [True, False])
def test_native_replay_equals_the_python_kernels(model, granularity, fused):
    spec, instances = model
    runtime = Runtime(spec, fused=fused)
    for memory in ("none", "pq"):
        c = compile_batch(spec, instances, CompileOptions("typewise", granularity, memory))
        executable = runtime.prepare(c)
        got = executable.run().clone()
        want = python_replay(executable)
        ref = runtime.reference(c.cell_graph)
        assert (got - want).abs().max().item() <= 2e-5, (spec.name, granularity, memory)
        assert (got - ref).abs().max().item() <= 1e-4, (spec.name, granularity, memory)


@pytest.mark.parametrize("name", MODELS)
def test_every_bundled_cell_lowers_to_a_native_program(name):
    spec, _ = load_spec(MODELS_DIR / f"{name}.yaml")
    data = load_data(spec, None, limit=4, seed=1)
    runtime = Runtime(spec)
    c = compile_batch(spec, data.instances, CompileOptions("typewise", CELL, "none"))
    for cell in c.cells:
        if cell is None:  # a set reduction: native without a program
            continue
        assert runtime.native_kernel(cell) is not None, (name, cell.program.name)


# Every form of matrix product the lowering knows: matvec and matmul of two values, or with a
# parameter on either side; products only a sum reads (accumulated in place) and one read twice;
# elementwise ops on matrices.
PRODUCTS = """
model: products
seed: 0
dims: {vocab: 16, h: 3, hh: 9, classes: 2}
vocab:
  word: {size: vocab}
params:
  E: {shape: [vocab, h]}
  EM: {shape: [vocab, hh], init: normal, std: 0.5}
  P: {shape: [h, h], init: normal, std: 0.5}
  Q: {shape: [h, h], init: normal, std: 0.5}
  v: {shape: [h], init: normal, std: 0.5}
  W: {shape: [h, classes]}
cells:
  leaf:
    inputs: {word: token}
    ops:
      - a = embed(E, word)
      - A = reshape(embed(EM, word), [h, h])
    outputs: [a, A]
  node:
    inputs: {a_l: [h], A_l: [h, h], a_r: [h], A_r: [h, h]}
    ops:
      - x = matvec(A_l, a_r)
      - y = matvec(P, a_l)
      - z = matvec(A_r, v)
      - a = tanh(add(add(x, y), z))
      - M = matmul(A_l, A_r)
      - S = add(matmul(P, A_l), matmul(A_r, Q))
      - T = sum(matmul(Q, A_r), matmul(A_l, P), matmul(A_l, A_r))
      - A = tanh(add(mul(M, S), sub(T, M)))
    outputs: [a, A]
  classify:
    inputs: {a: [h]}
    ops:
      - logits = log_softmax(affine(a @ W))
    outputs: [logits]
structure:
  kind: tree
  leaf:     {cell: leaf, bind: {word: word}}
  internal: {cell: node, bind: {a_l: left.a, A_l: left.A, a_r: right.a, A_r: right.A}}
readout: {cell: classify, at: root, bind: {a: node.a}}
"""


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("granularity", [CELL, OP])
def test_matrix_products_equal_the_oracle_and_their_gradients_the_reference(tmp_path, granularity, fused):
    path = tmp_path / "products.yaml"
    path.write_text(PRODUCTS)
    spec, _ = load_spec(path)
    instances = load_data(spec, None, limit=6, seed=4).instances
    runtime = Runtime(spec, fused=fused)
    params = list(WeightsModule(runtime).parameters())
    for memory in ("none", "pq"):
        c = compile_batch(spec, instances, CompileOptions("typewise", granularity, memory))
        if granularity == CELL:
            assert all(runtime.native_kernel(cell) is not None for cell in c.cells if cell is not None)
        executable = runtime.prepare(c)
        got = executable.forward()
        assert executable._replay_native.can_backward()
        assert (got.detach() - python_replay(executable)).abs().max().item() <= 1e-5, memory
        ref = reference_outputs(c.cell_graph, runtime.weights)
        assert (got.detach() - ref.detach()).abs().max().item() <= 1e-5, memory
        weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
        want = torch.autograd.grad((ref * weight).sum(), params, allow_unused=True)
        grads = torch.autograd.grad((got * weight).sum(), params)
        for name, g, w in zip(runtime.weights, grads, want):
            w = torch.zeros_like(g) if w is None else w
            assert (g - w).abs().max().item() <= 1e-5 * max(1.0, w.abs().max().item()), (memory, name)


def test_the_fused_kernels_keep_nan_and_inf():
    """A NaN or inf input reaches the output as torch's own ops give it, so `--check` sees it."""
    spec, _ = load_spec(MODELS_DIR / "treelstm.yaml")
    data = load_data(spec, None, limit=6, seed=1)
    c = compile_batch(spec, data.instances, CompileOptions("typewise", CELL, "none"))
    for poison in (float("nan"), float("inf"), -float("inf")):
        runtime = Runtime(spec)
        with torch.no_grad():
            runtime.weights["U_l"][0, 0] = poison
        executable = runtime.prepare(c)
        got = executable.run().clone()
        want = python_replay(executable)
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())


def test_the_fused_math_matches_torch_across_the_range():
    """sigmoid, tanh and exp of the fused pass against torch's, over every magnitude that matters: to
    a few ulps of the larger of the value and 1, and near 0 to a few ulps of the value itself."""
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([0.0, -0.0, 1e-8, -1e-8, 1e-30, 0.6249, 0.6251, 88.7, -87.3])])
    k = x.numel()
    for code, fn, tol in (("sigmoid", torch.sigmoid, 2e-7), ("tanh", torch.tanh, 4e-7), ("exp", torch.exp, 3e-7)):
        instrs = torch.tensor([[CODE[code], 1, 0, 1, 0, 0, NONE, 0, NONE, 0, 0, 0]], dtype=torch.long).reshape(-1, FIELDS)
        kernel = core().NativeKernel(instrs, [1, 1], [0], [(1, 0, 1)], [])
        out = torch.empty(k, 1)
        arena_in = torch.cat([x, torch.zeros(1)]).view(-1, 1)
        replay = _single_batch_replay(kernel, arena_in, out, k)
        replay.run()
        want = fn(x)
        finite = want.isfinite()
        err = ((out[:, 0] - want).abs() / want.abs().clamp_min(1.0))[finite]
        assert err.max().item() <= tol, code
        if code != "exp":  # near 0, relative to the value itself: tanh(1e-30) is 1e-30, not 0
            small = (x.abs() < 1) & (want != 0)
            assert ((out[:, 0] - want).abs() / want.abs())[small].max().item() <= 1e-6, code
        assert torch.equal(out[:, 0].isinf(), want.isinf()), code


def _single_batch_replay(kernel, arena_in: torch.Tensor, out: torch.Tensor, k: int):
    """A replay of one batch of `k` rows: input rows 0..k-1 of `arena_in` (a view), output rows of `out`."""
    native = core()
    i32 = lambda *v: np.array(v, dtype=np.int32)  # noqa: E731
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    # k nodes of one type, one argument and one output each; the batch's operand a view of rows 0..k-1
    # of arena 0, its outputs (values 0..k-1) rows 0..k-1 of arena 1.
    each = np.arange(k + 1, dtype=np.int64)
    return native.Replay([arena_in, out], [native.TypeKernel(kernel, -1, None, [0], 1)], True,
                         batch_type=i32(0), ptr=i64(0, k), nodes=np.arange(k, dtype=np.int32), value_ptr=each,
                         arg_ptr=each, imm_ptr=np.zeros(k + 1, dtype=np.int64), imm=i64(), n_float=i64(1), n_tokens=0,
                         kind=np.zeros(1, dtype=np.int8), arena=i64(0), first_row=i64(0), table_ptr=i64(0, 0),
                         rows=i64(), value_arena=np.ones(k, dtype=np.int32), value_row=np.arange(k, dtype=np.int64))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("granularity", [CELL, OP])
def test_training_dropout_runs_natively_with_the_python_kernels_masks(granularity, fused):
    """With dropout every cell still lowers; the core draws the masks the Python kernels draw (the
    same hash), forward and backward, on the fused path and the ATen path."""
    from edbc.api import Compiler
    from edbc.runtime.dropout import Dropout

    spec, _ = load_spec(Path(__file__).parent / "fixtures" / "treelstm_dropout.yaml")
    instances = load_data(spec, None, limit=6, seed=5).instances
    runtime = Runtime(spec, fused=fused)
    params = list(WeightsModule(runtime).parameters())
    c = Compiler(spec, CompileOptions("typewise", granularity, "pq"), inference=False).compile_batch(instances)
    assert any(op.kind == "dropout" for cell in c.cells if cell is not None for op in cell.program.ops)
    executable = runtime.prepare(c)
    assert executable._replay_native.can_backward()  # every type native: no Python kernel runs
    dropout = Dropout(7, tuple(range(3, 9)))
    got = executable.forward(dropout)
    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((got * weight).sum(), params)
    noise = executable._noise(dropout)
    with torch.no_grad():
        executable._run_python(noise.batches())
        want = torch.index_select(executable._result_arena, 0, executable._result_rows)
    assert (got.detach() - want).abs().max().item() <= 1e-5
    ref = reference_outputs(c.cell_graph, runtime.weights, dropout=dropout)
    want_grads = torch.autograd.grad((ref * weight).sum(), params)
    for name, g, w in zip(runtime.weights, grads, want_grads):
        assert (g - w).abs().max().item() <= 1e-4 * max(1.0, w.abs().max().item()), name
    quiet = executable.run()  # no draws: dropout is the identity
    assert (quiet - runtime.reference(c.cell_graph)).abs().max().item() <= 1e-4
    assert (quiet - got.detach()).abs().max().item() > 1e-2  # the draws did drop entries
