"""Gradients of compiled mini-batches: the batched backward (batch by batch, in reverse schedule
order) equals the unbatched reference's autograd gradients for every bundled model, policy, memory
mode and granularity; optimizer updates between steps are seen by the next forward."""

import pytest
import torch

from edbc.api import CompileOptions, compile_batch, load, load_spec
from edbc.graph import CELL, OP
from edbc.memory import PLANNERS
from edbc.runtime import Runtime
from edbc.runtime.module import WeightsModule
from edbc.runtime.reference import reference_outputs
from edbc.schedule import POLICIES
from edbc.settings import MODELS_DIR

MODELS = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
INSTANCES = {"mvrnn": 2, "lattice_lstm": 3, "lattice_gru": 3}  # the rest: 4


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over the largest |want| (absolute where the gradient is all zeros)."""
    return ((got - want).abs().max() / want.abs().max().clamp(min=1.0 if not want.any() else 1e-12)).item()


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    """A bundled model, a few instances, and the reference's gradients of a random projection of its
    results (the same projection for every policy, memory mode and granularity)."""
    spec, _ = load_spec(MODELS_DIR / f"{request.param}.yaml")
    runtime = Runtime(spec)
    params = list(WeightsModule(runtime).parameters())
    m = load(MODELS_DIR / f"{request.param}.yaml")
    data = m.data(None, INSTANCES.get(spec.name, 4), seed=2).instances
    graph = compile_batch(spec, data, "eager").cell_graph
    ref = reference_outputs(graph, runtime.weights)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    want = torch.autograd.grad((ref * weight).sum(), params, allow_unused=True)
    return spec, data, runtime, params, weight, [torch.zeros_like(p) if g is None else g for p, g in zip(params, want)]


@pytest.mark.parametrize("granularity", [CELL, OP])
@pytest.mark.parametrize("memory", list(PLANNERS))
@pytest.mark.parametrize("policy", [*POLICIES, "fsm"])
def test_batched_gradients_equal_the_reference(model, policy, memory, granularity):
    spec, data, runtime, params, weight, want = model
    executable = runtime.prepare(compile_batch(spec, data, CompileOptions(policy, granularity, memory)))
    got = torch.autograd.grad((executable.forward() * weight).sum(), params)
    for name, g, w in zip(runtime.weights, got, want):
        assert relative_error(g, w) <= 1e-4, name


def test_an_optimizer_step_is_seen_by_the_next_forward():
    spec, _ = load_spec(MODELS_DIR / "treelstm.yaml")
    m = load(MODELS_DIR / "treelstm.yaml", policy="agenda")
    module = m.module()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    executable = m.runtime.prepare(m.compiler.compile_batch(m.data(None, 8).instances))
    before = executable.forward()
    before.sum().backward()
    optimizer.step()  # W_leaf moves: the folded table E @ W_leaf + b_leaf must follow
    after = executable.run()
    reference = m.runtime.reference(executable.graph)
    assert (after - before.detach()).abs().max() > 1e-3
    assert (after - reference).abs().max() <= 1e-5
