"""Every bundled model: its spec loads, its synthetic data builds, and batched results equal
the unbatched reference under every policy, at cell and op granularity."""

from pathlib import Path

import numpy as np
import pytest

from edbc.api import CompileOptions, compile_batch, load_data, load_spec
from edbc.data.chain import Sequence
from edbc.data.lattice import Lattice
from edbc.data.pairs import Pair
from edbc.data import encode, spec_vocabs
from edbc.data import parse_ptb
from edbc.graph import CELL, OP, build_graph, lower_to_ops, verify_graph
from edbc.memory import PLANNERS
from edbc.runtime import Runtime
from edbc.schedule import POLICIES
from edbc.settings import MODELS_DIR

MODELS = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
SMALL = {"mvrnn": 4}  # 128x128 matrices per node: keep the reference cheap


def test_all_seven_benchmark_models_are_bundled():
    assert {"treelstm", "treegru", "mvrnn", "bilstm_tagger", "lstm_seq2seq", "lattice_lstm",
            "lattice_gru"} <= set(MODELS)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    spec, _ = load_spec(MODELS_DIR / f"{request.param}.yaml")
    data = load_data(spec, None, limit=SMALL.get(spec.name, 10), seed=7)
    return spec, data.instances, Runtime(spec)


@pytest.mark.parametrize("granularity", [CELL, OP])
def test_batched_equals_reference_for_every_policy(model, granularity):
    spec, instances, runtime = model
    ref = None
    for policy in POLICIES:
        for memory in PLANNERS:
            c = compile_batch(spec, instances, CompileOptions(policy, granularity, memory), verify=True)
            out = runtime.prepare(c).run()
            if ref is None:
                ref = runtime.reference(c.cell_graph)
                assert torch_finite(ref)
            assert (out - ref).abs().max().item() <= 1e-4, (spec.name, policy, granularity, memory)


def torch_finite(t) -> bool:
    return bool(t.isfinite().all())


def _spec(name):
    return load_spec(MODELS_DIR / f"{name}.yaml")[0]


def test_chain_links_forward_backward_and_input():
    spec = load_spec(Path(__file__).parent / "fixtures" / "chain_with_input.yaml")[0]
    (seq,) = encode([Sequence(("a", "b", "c"))], spec_vocabs(spec))
    g = build_graph(spec, [seq])
    verify_graph(g)
    names = [g.types[t].name for t in g.node_type]
    assert names == ["lookup"] * 3 + ["lstm_f"] * 3 + ["lstm_b"] * 3 + ["tag"] * 3
    assert g.args(3) == [(0, 0), (-1, 0), (-1, 0)]  # forward at 0: input 0, no previous state
    assert g.args(4) == [(1, 0), (3, 0), (3, 1)]  # forward at 1 reads forward at 0
    assert g.args(6) == [(2, 0), (-1, 0), (-1, 0)]  # backward starts at the last token
    assert g.args(8) == [(0, 0), (7, 0), (7, 1)]  # backward at 0 reads backward at 1
    assert g.args(9) == [(3, 0), (8, 0)]  # tag 0: forward 0 and backward 0


def test_seq2seq_decoder_starts_from_the_last_encoder_step():
    spec = _spec("lstm_seq2seq")
    (pair,) = encode([Pair(("a", "b"), ("x", "y", "z"))], spec_vocabs(spec))
    g = build_graph(spec, [pair])
    verify_graph(g)
    assert g.args(0) == [(-1, 0), (-1, 0)] and g.args(1) == [(0, 0), (0, 1)]
    assert g.args(2) == [(1, 0), (1, 1)] and g.args(3) == [(2, 0), (2, 1)]
    assert g.out_node.tolist() == [5, 6, 7] and g.args(5) == [(2, 0)]


def test_child_sum_nodes_read_their_children_and_edges_through_set_reductions():
    spec = _spec("childsum_treelstm")
    (tree,) = encode([parse_ptb("(1 (2 a) (2 b) (3 c))")], spec_vocabs(spec))
    g = build_graph(spec, [tree])
    verify_graph(g)
    # the root's block: an edge call per child, then one reduction per set it reads, then the root
    assert [g.types[t].name for t in g.node_type] == ["leaf"] * 3 + ["edge"] * 3 + ["set_sum[128]"] * 2 + \
        ["node", "classify"]
    assert g.args(3) == [(0, 0), (0, 1)]  # edge of child a: its h and c
    assert g.args(6) == [(0, 0), (1, 0), (2, 0)]  # sum(children.h): three arguments
    assert g.args(7) == [(3, 0), (4, 0), (5, 0)]  # sum(edges.fc)
    assert g.args(8) == [(6, 0), (7, 0)] and g.args(9) == [(8, 0)]
    # one reduction type serves every arity, at op level too
    (other,) = encode([parse_ptb("(1 (2 a) (2 b))")], spec_vocabs(spec))
    both = lower_to_ops(build_graph(spec, [tree, other]))
    verify_graph(both)
    reductions = [t for t, ty in enumerate(both.types) if ty.name.startswith("set_sum")]
    assert len(reductions) == 1
    arities = np.diff(both.arg_ptr)[both.node_type == reductions[0]]
    assert sorted(arities.tolist()) == [2, 2, 3, 3]


def test_lattice_arcs_are_folded_into_node_states():
    spec = _spec("lattice_gru")
    lat = Lattice(3, np.zeros(3, dtype=np.int32), np.array([0, 1, 0], dtype=np.int32),
                  np.array([1, 2, 2], dtype=np.int32), np.array([True, True, False]), ("c1", "c2", "w"))
    (lat,) = encode([lat], spec_vocabs(spec))
    g = build_graph(spec, [lat])
    verify_graph(g)
    # node 1: its char arc (%0); node 2: char arc (%1), word arc from node 0 (%2), merge (%3)
    assert [g.types[t].name for t in g.node_type] == ["char_cell", "char_cell", "word_cell", "merge_cell",
                                                       "tag", "tag"]
    assert g.args(0) == [(-1, 0)] and g.args(1) == [(0, 0)] and g.args(2) == [(-1, 0)]
    assert g.args(3) == [(1, 0), (2, 0)]
    assert g.args(4) == [(0, 0)] and g.args(5) == [(3, 0)]  # readouts of nodes 1 and 2


@pytest.mark.parametrize("name", ["treelstm", "treegru", "mvrnn", "childsum_treelstm", "bilstm_tagger",
                                  "lstm_seq2seq"])
def test_benchmark_baselines_compute_the_same_model(name):
    from edbc.bench.baselines import make_baseline
    spec = _spec(name)
    data = load_data(spec, None, limit=5, seed=3).instances
    runtime = Runtime(spec)
    baseline = make_baseline(spec, runtime.weights)  # may replace the weights
    c = compile_batch(spec, data, "agenda")
    out = runtime.prepare(c).run()
    assert (out - baseline(data)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["treelstm", "bilstm_tagger", "lattice_lstm"])
def test_dynet_anchors_compute_the_same_model(name, tmp_path):
    pytest.importorskip("dynet")
    import subprocess
    import sys
    spec = _spec(name)
    runtime = Runtime(spec)
    np.savez(tmp_path / "w.npz", **{k: v.numpy() for k, v in runtime.weights.items()})
    data = load_data(spec, None, limit=6, seed=0).instances
    proc = subprocess.run([sys.executable, "-m", "edbc.bench.dynet_anchor", "--model", name, "--batch-size", "6",
                           "--minibatches", "1", "--passes", "1", "--weights", str(tmp_path / "w.npz"),
                           "--dump", str(tmp_path / "out.npy"), "--limit", "6"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    c = compile_batch(spec, data, "agenda")
    out = runtime.prepare(c).run().numpy()
    assert np.abs(out - np.load(tmp_path / "out.npy").reshape(out.shape)).max() <= 1e-4
