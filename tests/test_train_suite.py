"""`edbc bench --train` end to end on tiny workloads: its three files, and every system training the
same model (the same first loss); the modules' every-node rows are edbc's readout at nodes."""

import json

import pytest

from edbc.api import compile_batch, load_data, load_spec
from edbc.bench.baselines import make_baseline
from edbc.bench.torch_models import build_module
from edbc.errors import EXIT_USAGE
from edbc.runtime import Runtime
from edbc.settings import MODELS_DIR
from edbc.train import with_readout_at

from .test_cli import edbc, one_line_error


@pytest.mark.parametrize("dynet", [False, True], ids=["no-dynet", "dynet"])
def test_bench_train_writes_its_three_files(tmp_path, dynet):
    pytest.importorskip("matplotlib")
    if dynet:
        pytest.importorskip("dynet_config")
    r = edbc("bench", "--train", "--batch-sizes", "2", "--samples", "1", "--max-minibatches", "1",
             "--dynet" if dynet else "--no-dynet", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_results.json", "train_results.md",
                                                          "train_throughput.png"]
    rows = json.loads((tmp_path / "train_results.json").read_text())["rows"]
    for model, baseline in (("treelstm", "PyTorch per node"), ("bilstm_tagger", "torch.nn.LSTM packed")):
        mine = {(row["system"], row["memory"]): row for row in rows if row["model"] == model}
        want = {("edbc", "pq"), ("edbc", "none"), (baseline, "")} | ({("DyNet agenda", "")} if dynet else set())
        assert set(mine) == want
        for row in mine.values():
            assert row["batch_size"] == 2 and row["samples"] == 1 and row["ms"] > 0
            assert set(row["phases"]) == {"forward", "backward", "update"}
        losses = [row["first_loss"] for row in mine.values()]
        assert max(losses) - min(losses) <= 1e-4, mine  # the same model, weights, data and loss
    assert "| 2 | edbc |" in (tmp_path / "train_results.md").read_text()
    assert (tmp_path / "train_throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_train_refuses_a_model_without_a_training_workload(tmp_path):
    r = edbc("bench", "--train", "--models", "treegru", "--no-dynet", "--out", tmp_path)
    one_line_error(r, EXIT_USAGE, "--models", "treegru", "treelstm, bilstm_tagger")
    assert not list(tmp_path.iterdir())


def test_treelstm_module_nodes_are_edbcs_readout_at_nodes():
    spec = with_readout_at(load_spec(MODELS_DIR / "treelstm.yaml")[0], "nodes")
    runtime = Runtime(spec)
    make_baseline(spec, runtime.weights)  # imports the module's weights
    module = build_module(spec, 0)
    data = load_data(spec, None, limit=5, seed=3).instances
    out = runtime.prepare(compile_batch(spec, data, "agenda")).run()
    assert out.shape[0] == sum(t.num_nodes for t in data)
    assert (out - module.nodes(data).detach()).abs().max().item() <= 1e-4
