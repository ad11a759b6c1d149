"""The dropout op: identity at inference (and gone from the compiled cells), seeded masks in training
that the batched kernels and the unbatched reference draw alike, whatever the batching, so that
results and gradients still compare exactly."""

from pathlib import Path

import pytest
import torch

from edbc.api import CompileOptions, Compiler, load, load_spec, train_model
from edbc.checkpoint import load_checkpoint
from edbc.errors import SpecError, UsageError
from edbc.graph import CELL, OP
from edbc.memory import PLANNERS
from edbc.runtime import Runtime
from edbc.runtime.dropout import Dropout
from edbc.runtime.module import WeightsModule
from edbc.runtime.reference import reference_outputs
from edbc.schedule import POLICIES
from edbc.spec import parse_model
from edbc.spec.ops import Noise, dropout_keep
from edbc.train import TrainSettings
from edbc.train.loop import output_paths

from .test_gradients import relative_error

SPEC = Path(__file__).parent / "fixtures" / "treelstm_dropout.yaml"


@pytest.fixture(scope="module")
def model():
    """The spec, a few trees, a runtime, and the reference's results and gradients with dropout."""
    spec, _ = load_spec(SPEC)
    data = load(SPEC).data(None, 5, seed=3).instances
    runtime = Runtime(spec)
    params = list(WeightsModule(runtime).parameters())
    dropout = Dropout(11, (40, 41, 42, 43, 44))
    graph = Compiler(spec, CompileOptions("agenda")).compile_batch(data).cell_graph
    ref = reference_outputs(graph, runtime.weights, dropout=dropout)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    want = torch.autograd.grad((ref * weight).sum(), params)
    return spec, data, runtime, params, dropout, ref.detach(), weight, want


def training_batch(spec, data, options=CompileOptions("agenda")):
    return Compiler(spec, options, inference=False).compile_batch(data)


@pytest.mark.parametrize("granularity", [CELL, OP])
@pytest.mark.parametrize("memory", list(PLANNERS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_batched_dropout_draws_the_reference_masks(model, policy, memory, granularity):
    spec, data, runtime, params, dropout, ref, weight, want = model
    executable = runtime.prepare(training_batch(spec, data, CompileOptions(policy, granularity, memory)))
    out = executable.forward(dropout)
    assert (out.detach() - ref).abs().max().item() <= 1e-5
    got = torch.autograd.grad((out * weight).sum(), params)
    for name, g, w in zip(runtime.weights, got, want):
        assert relative_error(g, w) <= 1e-4, name


def test_dropout_is_the_identity_at_inference_and_gone_from_the_compiled_cells(model):
    spec, data, runtime, *_ = model
    compiler = Compiler(spec, CompileOptions("agenda"))
    compiled = compiler.compile_batch(data)
    assert all(op.kind != "dropout" for c in compiled.cells if c is not None for op in c.program.ops)
    assert compiler.cell(spec.cells["leaf"]).derived  # with dropout gone, the embedding folds again
    plain = reference_outputs(compiled.cell_graph, runtime.weights)
    assert (runtime.prepare(compiled).run() - plain).abs().max().item() <= 1e-5
    # A mini-batch compiled for training runs without dropout when given none.
    assert (runtime.prepare(training_batch(spec, data)).run() - plain).abs().max().item() <= 1e-5
    with pytest.raises(UsageError, match="compiled for inference"):
        runtime.prepare(compiled).forward(Dropout(1))


def test_masks_depend_on_the_seed_and_the_instance_not_on_the_mini_batch(model):
    spec, data, runtime, *_ = model
    together = runtime.prepare(training_batch(spec, data))
    alone = runtime.prepare(training_batch(spec, data[3:]))
    both = together.run(Dropout(5, (10, 11, 12, 13, 14)))
    assert not torch.equal(both, together.run(Dropout(6, (10, 11, 12, 13, 14))))
    assert torch.equal(both, together.run(Dropout(5, (10, 11, 12, 13, 14))))
    rows = together.graph.instance[together.graph.out_node] >= 3
    assert (alone.run(Dropout(5, (13, 14))) - both[torch.as_tensor(rows)]).abs().max().item() <= 1e-6


def test_a_mask_drops_its_rate_and_rows_sites_and_seeds_draw_apart():
    keys = torch.arange(400, dtype=torch.int64) + (7 << 32)
    keep = dropout_keep(Noise(3, keys), 0, 256, 30)
    assert abs(keep.float().mean().item() - 0.70) < 0.01
    assert abs(keep[:, :128].float().mean().item() - keep[:, 128:].float().mean().item()) < 0.02
    assert (keep[0] != keep[1]).any()  # rows
    assert (keep != dropout_keep(Noise(3, keys), 1, 256, 30)).float().mean() > 0.3  # sites
    assert (keep != dropout_keep(Noise(4, keys), 0, 256, 30)).float().mean() > 0.3  # seeds
    assert dropout_keep(Noise(3, keys), 0, 256, 0).all()


@pytest.mark.parametrize("line, message", [
    ("h = dropout(x, 100)", "dropout's percent must be an integer from 0 to 99, got 100"),
    ("h = dropout(x, -5)", "dropout's percent must be an integer from 0 to 99, got -5"),
    ("h = dropout(x)", "dropout needs its 'rate' argument"),
    ("h = dropout(x, 10, site=2)", "dropout has no attribute 'site'"),
])
def test_bad_dropout_lines_are_refused(line, message):
    text = SPEC.read_text().replace("- h = dropout(mul(sigmoid(o), tanh(c)), 20)", "- x = mul(sigmoid(o), tanh(c))\n"
                                    f"      - {line}")
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_model(text, "bad.yaml")


def test_training_with_dropout_is_deterministic_and_its_rate_a_dimension(tmp_path):
    settings = TrainSettings(epochs=1, batch_size=4, optimizer="sgd", lr=0.5, seed=2)
    ends = []
    for run, dims in (("a", None), ("b", None), ("c", {"drop": 0})):
        out = tmp_path / f"{run}.safetensors"
        train_model(str(SPEC), None, str(out), None, None, settings, dims, limit=24, policy="agenda")
        ends.append(load_checkpoint(output_paths(str(out))["last"], load_spec(SPEC, dims)[0]).weights)
    assert all(torch.equal(ends[0][n], ends[1][n]) for n in ends[0])
    assert any(not torch.equal(ends[0][n], ends[2][n]) for n in ends[0])  # the leaves' dropout, turned off


def test_the_example_spec_with_dropout_is_the_bundled_treelstm_plus_dropout():
    from edbc.settings import MODELS_DIR

    example = Path(__file__).parent.parent / "configs" / "examples" / "treelstm_dropout.yaml"
    ours, _ = load_spec(example)
    bundled, _ = load_spec(MODELS_DIR / "treelstm.yaml")
    assert {n: p.shape for n, p in ours.params.items()} == {n: p.shape for n, p in bundled.params.items()}
    for name, program in ours.cells.items():
        kept = [op.kind for op in program.ops if op.kind != "dropout"]
        assert kept == [op.kind for op in bundled.cells[name].ops], name
    assert sum(op.kind == "dropout" for p in ours.cells.values() for op in p.ops) == 2
