"""Training through plans: SGD steps give the weights plain PyTorch gives from the same start, an
interrupted and resumed run ends where an uninterrupted one does, and `edbc train` / `edbc eval`
work from the command line."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edbc.api import CompileOptions, Model, load_spec, train_model
from edbc.bench.torch_models import build_module
from edbc.checkpoint import import_weights, load_checkpoint, new_checkpoint, read_mapping
from edbc.data import build_labels, spec_vocabs, synthesize
from edbc.errors import ArtifactError
from edbc.settings import MAPPINGS_DIR, MODELS_DIR
from edbc.train import Batches, TrainSettings
from edbc.train.loop import loss_of, output_paths

from .conftest import TREELSTM
from .test_cli import edbc as run_cli


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LR = 0.5


@pytest.mark.parametrize("name", ["treelstm", "bilstm_tagger"])
def test_sgd_through_plans_gives_the_weights_plain_pytorch_gives(name):
    """The per-node TreeLSTM and the nn.LSTM tagger of edbc/bench/torch_models.py, started from the
    same weights and trained with SGD on the same mini-batches: the same weights after 20 steps."""
    spec, _ = load_spec(MODELS_DIR / f"{name}.yaml")
    module = build_module(spec, seed=3)
    if name == "bilstm_tagger":
        # nn.LSTM has two biases where the spec has their sum: SGD moves a sum of two parameters twice
        # as far. Held at zero, the second is the spec's parametrisation.
        with torch.no_grad():
            for suffix in ("", "_reverse"):
                getattr(module.lstm, f"bias_hh_l0{suffix}").zero_().requires_grad_(False)
    mapping = read_mapping(MAPPINGS_DIR / f"{name}.yaml")
    raw = synthesize(spec, 40, seed=4)
    labels = build_labels([k for inst in raw for k in inst.label_texts()], spec.classes)
    ckpt = new_checkpoint(spec, import_weights(spec, module.state_dict(), mapping), spec_vocabs(spec), labels, {})
    model = Model(spec, None, ckpt, options=CompileOptions("agenda"), training=True)
    batches = Batches(model, model.instances(raw), 4, seed=0)
    ours = torch.optim.SGD(model.module().parameters(), lr=LR)
    theirs = torch.optim.SGD(module.parameters(), lr=LR)
    for step in range(20):
        _, executable, targets, per_instance = batches.get(step % len(batches))
        ours.zero_grad()
        loss_of(executable.forward(), targets).backward()
        ours.step()
        theirs.zero_grad()
        rows = module(batches.groups[step % len(batches)])
        F.nll_loss(rows, torch.as_tensor(np.concatenate(per_instance)), ignore_index=-1).backward()
        theirs.step()
    final = import_weights(spec, module.state_dict(), mapping)
    moved = max((final[n] - ckpt.weights[n]).abs().max().item() for n in spec.params)
    assert moved > 1e-2  # the steps did something
    for n in spec.params:
        assert (model.weights[n].detach() - final[n]).abs().max().item() <= 1e-4, n


def _train(tmp_path, epochs: int, resume: bool = False, on_step=None):
    settings = TrainSettings(epochs=epochs, batch_size=8, optimizer="adam", lr=0.01, seed=5)
    return train_model(str(TREELSTM), None, str(tmp_path / "m.safetensors"), None, None, settings, limit=40,
                       resume=resume, policy="agenda", on_step=on_step)


def test_an_interrupted_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    _train(straight, 3)

    def interrupt(epoch, step, steps, loss):
        if epoch == 2 and step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(broken, 3, on_step=interrupt)
    spec, _ = load_spec(TREELSTM)
    last = output_paths(str(broken / "m.safetensors"))["last"]
    assert load_checkpoint(last, spec).provenance["epoch"] == 1  # the last good checkpoint, intact
    epochs = _train(broken, 3, resume=True)
    assert [e.epoch for e in epochs] == [1, 2, 3]
    a = load_checkpoint(output_paths(str(straight / "m.safetensors"))["last"], spec)
    b = load_checkpoint(last, spec)
    for n in spec.params:
        assert torch.equal(a.weights[n], b.weights[n]), n
    lines = (broken / "m.metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_refuses_another_run(tmp_path):
    _train(tmp_path, 1)
    settings = TrainSettings(epochs=2, batch_size=8, optimizer="sgd", lr=0.01, seed=5)
    with pytest.raises(ArtifactError, match="another training run"):
        train_model(str(TREELSTM), None, str(tmp_path / "m.safetensors"), None, None, settings, limit=40,
                    resume=True, policy="agenda")


def test_train_and_eval_from_the_command_line(tmp_path):
    out = tmp_path / "m.safetensors"
    r = run_cli("train", TREELSTM, "--limit", 30, "--epochs", 2, "-b", 10, "--loss-at", "nodes",
                "--set", "dims.hidden=16", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    assert summary["epochs"][1]["compile_s"] == 0.0  # the second epoch reuses every plan
    r = run_cli("eval", TREELSTM, "--weights", out, "--limit", 20, "--json")
    assert r.exit_code == 0, r.output
    figures = json.loads(r.stdout)
    assert {"loss", "root_accuracy", "node_accuracy"} <= set(figures)
    ckpt = load_checkpoint(str(out), load_spec(TREELSTM, {"hidden": 16})[0])
    assert ckpt.dims == {"hidden": 16} and ckpt.provenance["command"] == "train"


def test_the_readme_training_example(tmp_path):
    import edbc

    ckpt = tmp_path / "m.safetensors"
    assert run_cli("init", TREELSTM, "--limit", 10, "-o", ckpt).exit_code == 0
    model = edbc.load("configs/models/treelstm.yaml", weights=str(ckpt))
    optimizer = torch.optim.Adam(model.module().parameters(), lr=1e-3)
    executable = model.runtime.prepare(model.compiler.compile_batch(model.instances(["(3 (2 a) (3 good))"])))
    before = executable.run()[0, 3].item()
    loss = -executable.forward()[0, 3]
    loss.backward()
    optimizer.step()
    assert executable.run()[0, 3].item() > before  # the step raised the log-probability it followed
