"""The native replay (`csrc/replay.cpp`): every bundled model's results equal the generated
Python kernels' (the oracle) and the reference, on the fused CPU path and on the ATen path other
devices take; the bundled cells lower to native programs; the fused math keeps NaN and inf."""

import pytest
import torch

from edbc.api import CompileOptions, compile_batch, load_data, load_spec
from edbc.graph import CELL, OP
from edbc.native import core
from edbc.runtime import Runtime
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


# Cells whose ops all have instructions run natively; only mvrnn's matrix cell keeps its Python kernel.
PYTHON_CELLS = {("mvrnn", "node")}


@pytest.mark.parametrize("name", MODELS)
def test_bundled_cells_lower_to_native_programs(name):
    spec, _ = load_spec(MODELS_DIR / f"{name}.yaml")
    data = load_data(spec, None, limit=4, seed=1)
    runtime = Runtime(spec)
    c = compile_batch(spec, data.instances, CompileOptions("typewise", CELL, "none"))
    for cell in c.cells:
        if cell is None:  # a set reduction: native without a program
            continue
        native = runtime.native_kernel(cell)
        assert (native is None) == ((name, cell.program.name) in PYTHON_CELLS), (name, cell.program.name)


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
        instrs = torch.tensor([[CODE[code], 1, 0, 1, 0, 0, NONE, 0, NONE, 0]], dtype=torch.long).reshape(-1, FIELDS)
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
    long = lambda *v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    arrays = [long(0), long(0, k), long(0, 1), long(0), long(0), long(0), long(0), long(0, 0),
              torch.zeros(0, dtype=torch.long), long(0), long(0), torch.zeros(k, dtype=torch.long)]
    arrays[9] = long(1)  # value 0 (the batch's first output) lives in arena 1, from row 0
    arrays[10] = long(0)
    return native.Replay([arena_in, out], [native.TypeKernel(kernel, -1, None, [0], 1)], arrays, [], True)
