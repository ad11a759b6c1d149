import pytest
import torch

from edbc.api import CompileOptions, compile_batch, run
from edbc.graph import CELL, OP
from edbc.cell import compile_cell
from edbc.runtime import Runtime
from edbc.runtime.kernels import interpret
from edbc.runtime.weights import init_weights
from edbc.schedule import POLICIES

TOL = 1e-4


@pytest.fixture(scope="module")
def runtime(treelstm):
    return Runtime(treelstm)


@pytest.mark.parametrize("memory", ["pq", "none"])
@pytest.mark.parametrize("granularity", [CELL, OP])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_batched_equals_reference(treelstm, synthetic_trees, runtime, policy, granularity, memory):
    compiled = compile_batch(treelstm, synthetic_trees, CompileOptions(policy, granularity, memory), verify=True)
    out = runtime.prepare(compiled).run()
    ref = runtime.reference(compiled.cell_graph)
    assert out.shape == (len(synthetic_trees), 5)
    assert (out - ref).abs().max().item() <= TOL
    # log-softmax rows: probabilities sum to one
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(len(synthetic_trees)), atol=1e-5)


def test_fused_kernel_equals_op_by_op_interpretation(treelstm, runtime):
    shapes = {n: p.shape for n, p in treelstm.params.items()}
    g = torch.Generator().manual_seed(0)
    for program in treelstm.cells.values():
        inputs = [torch.randint(0, 256, (7,), generator=g) if v.dtype == "token"
                  else torch.randn((7,) + v.shape, generator=g) for v in program.inputs]
        fused = runtime.kernel(compile_cell(program, shapes, "pq"))(inputs)
        plain = interpret(program, inputs, runtime.weights)
        for a, b in zip(fused, plain):
            assert torch.allclose(a, b, atol=1e-6)


def test_weights_are_deterministic_and_seeded(treelstm):
    a = init_weights(treelstm)
    b = init_weights(treelstm)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["U_l"], a["U_r"])  # each parameter has its own stream
    assert a["b_node"].abs().max() > 0  # biases are not zero, so checks see them


def test_executable_runs_twice_with_same_result(treelstm, synthetic_trees, runtime):
    compiled = compile_batch(treelstm, synthetic_trees, "agenda")
    ex = runtime.prepare(compiled)
    assert torch.equal(ex.run(), ex.run())


def test_eager_operands_are_all_views(treelstm, synthetic_trees, runtime):
    compiled = compile_batch(treelstm, synthetic_trees[:3], "eager")
    stats = compiled.memory_stats()
    assert stats.gathers == 0 and stats.operand_bytes > 0


def test_run_reports_minibatches_and_check(treelstm):
    from edbc.api import load_data
    data = load_data(treelstm, None, limit=40, seed=1)
    report = run(treelstm, data, batch_size=16, options="typewise", check=True)
    assert report.num_minibatches == 3 and report.num_instances == 40
    assert report.num_batches >= report.lower_bound > 0
    assert report.check_passed and report.max_abs_error <= TOL
    assert len(report.per_minibatch_ms) == 3
