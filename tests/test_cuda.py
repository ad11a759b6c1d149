"""The CUDA path: every bundled model's results and gradients on the GPU equal the CPU reference's,
training on the GPU ends where training on the CPU does, and the command line runs, trains and
scores there. Skipped where CUDA is not available."""

import json

import pytest
import torch

from edbc.api import CompileOptions, compile_batch, load, load_spec, train_model
from edbc.graph import CELL, OP
from edbc.memory import PLANNERS
from edbc.runtime import Runtime
from edbc.runtime.dropout import Dropout
from edbc.runtime.module import WeightsModule
from edbc.runtime.reference import reference_outputs
from edbc.settings import MODELS_DIR
from edbc.checkpoint import load_checkpoint
from edbc.train import TrainSettings

from .conftest import TREELSTM
from .test_cli import edbc as run_cli
from .test_gradients import INSTANCES, MODELS, relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    """A bundled model, a few instances, and the CPU reference's results and gradients."""
    spec, _ = load_spec(MODELS_DIR / f"{request.param}.yaml")
    cpu = Runtime(spec)
    params = list(WeightsModule(cpu).parameters())
    data = load(MODELS_DIR / f"{request.param}.yaml").data(None, INSTANCES.get(spec.name, 4), seed=2).instances
    graph = compile_batch(spec, data, "eager").cell_graph
    ref = reference_outputs(graph, cpu.weights)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    want = torch.autograd.grad((ref * weight).sum(), params, allow_unused=True)
    want = [torch.zeros_like(p) if g is None else g for p, g in zip(params, want)]
    return spec, data, cpu, ref.detach(), weight, want


@pytest.mark.parametrize("granularity", [CELL, OP])
@pytest.mark.parametrize("memory", list(PLANNERS))
def test_results_and_gradients_on_cuda_equal_the_cpu_reference(model, memory, granularity):
    spec, data, cpu, ref, weight, want = model
    gpu = Runtime(spec, "cuda", cpu.weights)
    params = list(WeightsModule(gpu).parameters())
    executable = gpu.prepare(compile_batch(spec, data, CompileOptions("fsm", granularity, memory)))
    assert (executable.run().cpu() - ref).abs().max().item() <= 1e-4
    got = torch.autograd.grad((executable.forward() * weight.cuda()).sum(), params)
    for name, g, w in zip(gpu.weights, got, want):
        assert g.device.type == "cuda"
        assert relative_error(g.cpu(), w) <= 1e-4, name


def test_training_on_cuda_ends_where_training_on_the_cpu_does(tmp_path):
    settings = TrainSettings(epochs=2, batch_size=8, optimizer="sgd", lr=0.1, seed=5)
    spec, _ = load_spec(TREELSTM)
    ends = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.safetensors"
        train_model(str(TREELSTM), None, str(out), None, None, settings, limit=40, policy="agenda", device=device)
        ends[device] = load_checkpoint(str(out.with_suffix("")) + ".last.safetensors", spec).weights
    for name in spec.params:
        assert (ends["cpu"][name] - ends["cuda"][name]).abs().max().item() <= 1e-4, name


def test_the_command_line_runs_trains_and_scores_on_cuda(tmp_path):
    r = run_cli("run", "--device", "cuda", "--check", "--limit", 40, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["check"] == "passed"
    plan, out = tmp_path / "m.plan", tmp_path / "out.jsonl"
    assert run_cli("compile", TREELSTM, "--limit", 20, "-o", plan).exit_code == 0
    r = run_cli("run", plan, "--device", "cuda", "--check", "--output", out)
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 20
    ckpt = tmp_path / "t.safetensors"
    r = run_cli("train", TREELSTM, "--device", "cuda", "--limit", 30, "--epochs", 1, "-b", 10, "-o", ckpt)
    assert r.exit_code == 0, r.output
    figures = {}
    for device in ("cpu", "cuda"):
        r = run_cli("eval", TREELSTM, "--weights", ckpt, "--limit", 20, "--json", "--device", device)
        assert r.exit_code == 0, r.output
        figures[device] = json.loads(r.stdout)
    assert figures["cpu"]["root_accuracy"] == figures["cuda"]["root_accuracy"]
    assert abs(figures["cpu"]["loss"] - figures["cuda"]["loss"]) <= 1e-4


def test_dropout_on_cuda_draws_the_cpu_reference_masks():
    from .test_dropout import SPEC, training_batch

    spec, _ = load_spec(SPEC)
    data = load(SPEC).data(None, 5, seed=3).instances
    cpu = Runtime(spec)
    dropout = Dropout(11, (40, 41, 42, 43, 44))
    compiled = training_batch(spec, data, CompileOptions("agenda", OP))
    ref = reference_outputs(compiled.cell_graph, cpu.weights, dropout=dropout)
    gpu = Runtime(spec, "cuda", cpu.weights)
    assert (gpu.prepare(compiled).run(dropout).cpu() - ref).abs().max().item() <= 1e-5
