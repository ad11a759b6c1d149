"""Set reductions (`mean(children.h)`, `max(...)`; `sum` is the bundled child-sum TreeLSTM's, tested
with every bundled model): batched results and gradients equal the unbatched reference at cell and op
level in both memory modes, and nodes of every arity share one reduction type."""

import numpy as np
import pytest
import torch

from edbc.api import CompileOptions, compile_batch, load_data
from edbc.graph import CELL, OP
from edbc.memory import PLANNERS
from edbc.runtime import Runtime
from edbc.runtime.module import WeightsModule
from edbc.runtime.reference import reference_outputs
from edbc.settings import MODELS_DIR
from edbc.spec import parse_model

from .test_gradients import relative_error

CHILD_SUM = (MODELS_DIR / "childsum_treelstm.yaml").read_text()


@pytest.fixture(scope="module", params=["mean", "max"])
def model(request):
    text = CHILD_SUM.replace("h_sum: sum(children.h)", f"h_sum: {request.param}(children.h)")
    text = text.replace("fc_sum: sum(edges.fc)", f"fc_sum: {request.param}(edges.fc)")
    spec = parse_model(text.replace("hidden: 128", "hidden: 16"), f"{request.param}.yaml")
    runtime = Runtime(spec)
    params = list(WeightsModule(runtime).parameters())
    data = load_data(spec, None, limit=6, seed=4).instances
    graph = compile_batch(spec, data, "eager").cell_graph
    ref = reference_outputs(graph, runtime.weights)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    want = torch.autograd.grad((ref * weight).sum(), params)
    return spec, data, runtime, params, ref, weight, want


@pytest.mark.parametrize("granularity", [CELL, OP])
@pytest.mark.parametrize("memory", list(PLANNERS))
def test_mean_and_max_sets_equal_the_reference(model, memory, granularity):
    spec, data, runtime, params, ref, weight, want = model
    compiled = compile_batch(spec, data, CompileOptions("agenda", granularity, memory), verify=True)
    reducing = [i for i, t in enumerate(compiled.graph.types) if t.name.startswith("set_")]
    assert len(reducing) == 1  # one reduction type for both sets and every arity
    arities = np.diff(compiled.graph.arg_ptr)[compiled.graph.node_type == reducing[0]]
    assert {2, 3, 4} <= set(arities.tolist())
    executable = runtime.prepare(compiled)
    assert (executable.run() - ref).abs().max().item() <= 1e-5
    got = torch.autograd.grad((executable.forward() * weight).sum(), params)
    for name, g, w in zip(runtime.weights, got, want):
        assert relative_error(g, w) <= 1e-4, name
