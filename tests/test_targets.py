"""Targets of a readout's rows and the metrics over them (edbc.train.targets)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from edbc.api import CompileOptions, Model, load_spec
from edbc.data import build_labels, parse_ptb, read_instances
from edbc.data.chain import parse_sequence
from edbc.data.lattice import parse_lattice
from edbc.errors import DataError, UsageError
from edbc.settings import MODELS_DIR
from edbc.spec.model import Source
from edbc.train import evaluate, readout_targets, with_readout_at

from .conftest import shared

SST = ("0", "1", "2", "3", "4")
TREES = ["(3 (2 a) (4 (2 good) (X film)))", "(1 x)", "(0 (2 (2 not) (1 bad)) (2 .))"]
SENTENCES = ["John|I-PER lives|O in|O Paris|I-LOC", "plain tokens here", "Acme|I-ORG Corp|I-ORG .|O"]
LATTICES = ["3\n0 4 5\n0\n1 0 7\n2 1 8 0 9\n", "4\n0 2 3 1\n0\n1 0 5\n1 1 6\n2 2 7 1 9\n"]


def spec_of(name: str, at: str | None = None):
    spec = load_spec(MODELS_DIR / f"{name}.yaml")[0]
    return with_readout_at(spec, at) if at else spec


def model(spec) -> Model:
    # A changed readout changes the spec's digest, which the shipped FSM policies are keyed by.
    return Model(spec, options=CompileOptions("agenda"))


def log_probs(row: list[float]) -> torch.Tensor:
    """One instance's one row of log-probabilities."""
    return torch.log(torch.tensor([row], dtype=torch.float64))


def one_hot_rows(classes: list[int], width: int) -> torch.Tensor:
    return torch.log_softmax(5 * torch.nn.functional.one_hot(torch.tensor(classes), width).double(), dim=1)


# --- targets -----------------------------------------------------------------------------------

def test_tree_targets_at_root_and_nodes():
    trees = [parse_ptb(t) for t in TREES]
    root = readout_targets(spec_of("treelstm"), trees, SST)
    assert [r.tolist() for r in root] == [[3], [1], [0]]
    nodes = readout_targets(spec_of("treelstm", "nodes"), trees, SST)
    # Post-order, root last; "X" is not an integer label.
    assert [r.tolist() for r in nodes] == [[2, 2, -1, 4, 3], [1], [2, 1, 2, 2, 0]]
    assert all(r.dtype == np.int64 for r in root + nodes)


def test_chain_and_lattice_targets():
    seqs = [parse_sequence(s) for s in SENTENCES]
    labels = ("O", "I-PER", "I-LOC", "I-ORG", "I-MISC")
    got = readout_targets(spec_of("bilstm_tagger"), seqs, labels)
    assert [r.tolist() for r in got] == [[1, 0, 0, 2], [-1, -1, -1], [3, 3, 0]]
    lattices = [parse_lattice(t) for t in LATTICES]
    labels18 = tuple(str(k) for k in range(18))
    assert [r.tolist() for r in readout_targets(spec_of("lattice_lstm"), lattices, labels18)] == [[4, 5], [2, 3, 1]]
    last = readout_targets(spec_of("lattice_lstm", "last"), lattices, labels18)
    assert [r.tolist() for r in last] == [[5], [1]]


CASES = [("treelstm", None, TREES), ("treelstm", "nodes", TREES), ("treegru", "nodes", TREES),
         ("treelstm_onnx", None, TREES), ("bilstm_tagger", None, SENTENCES), ("lattice_lstm", None, LATTICES),
         ("lattice_gru", "last", LATTICES)]


@pytest.mark.parametrize("name,at,texts", CASES, ids=[f"{n}-{a or 'spec'}" for n, a, _ in CASES])
def test_targets_align_with_predicted_rows(name, at, texts):
    spec = spec_of(name, at)
    m = model(spec)
    instances = m.instances(texts)
    labels = build_labels([k for inst in instances for k in inst.label_texts()], spec.classes)
    targets = readout_targets(spec, instances, labels)
    rows = m.predict(texts, batch_size=2)  # several mini-batches
    assert [len(t) for t in targets] == [len(r) for r in rows]
    metrics = evaluate(spec, instances, rows, targets, labels)
    assert metrics["rows"] == sum(len(r) for r in rows) and metrics["instances"] == len(texts)
    assert math.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


def test_rows_at_nodes_are_post_order_with_the_root_last():
    """The alignment `readout_targets` assumes: at nodes, a tree's rows are its nodes in post-order."""
    at_nodes = model(spec_of("treelstm", "nodes")).predict(["(2 (2 good) (3 film))"])[0]
    at_root = model(spec_of("treelstm")).predict(["(2 (2 good) (3 film))", "(2 good)", "(3 film)"])
    assert torch.allclose(at_nodes[2], at_root[0][0], atol=1e-6)
    assert torch.allclose(at_nodes[0], at_root[1][0], atol=1e-6)
    assert torch.allclose(at_nodes[1], at_root[2][0], atol=1e-6)
    lattice = model(spec_of("lattice_lstm")).predict(LATTICES[1:])[0]
    last = model(spec_of("lattice_lstm", "last")).predict(LATTICES[1:])[0]
    assert torch.allclose(lattice[-1], last[0], atol=1e-6)


def test_unknown_label_is_a_data_error():
    with pytest.raises(DataError, match=r"label '7' is not one of the model's 5 labels; expected one of: 0, 1, 2, 3, 4"):
        readout_targets(spec_of("treelstm", "nodes"), [parse_ptb("(3 (7 a) (2 b))")], SST)
    with pytest.raises(DataError, match=r"label 'I-FOO' .* expected one of: O, I-PER$"):
        readout_targets(spec_of("bilstm_tagger"), [parse_sequence("a|O b|I-FOO")], ("O", "I-PER"))


def test_kinds_and_places_without_labels_are_usage_errors():
    with pytest.raises(UsageError, match="seq2seq carries no labels"):
        readout_targets(spec_of("lstm_seq2seq"), [], SST)
    with pytest.raises(UsageError, match="dag carries no labels"):
        readout_targets(spec_of("dag_rnn"), [], SST)
    with pytest.raises(UsageError, match="reads at 'ends'.*labels are read at: nodes"):
        readout_targets(spec_of("bilstm_tagger", "ends"), [parse_sequence("a|O")], ("O",))


def test_with_readout_at():
    spec = spec_of("treelstm")
    moved = with_readout_at(spec, "nodes")
    assert moved.roles["readout"].at == "nodes" and spec.roles["readout"].at == "root"
    assert moved.roles["leaf"] is spec.roles["leaf"] and moved.params is spec.params
    assert with_readout_at(spec, "root") is spec
    with pytest.raises(UsageError, match="'last': not a place of a tree; expected one of: root, nodes"):
        with_readout_at(spec, "last")
    tagger = spec_of("bilstm_tagger")
    readout = replace(tagger.roles["readout"], bind=(Source("state", "input", "h"),) + tagger.roles["readout"].bind[1:])
    odd = replace(tagger, roles={**tagger.roles, "readout": readout})
    with pytest.raises(UsageError, match="binds 'input.h', but at ends its neighbours are: forward, backward"):
        with_readout_at(odd, "ends")


# --- metrics -----------------------------------------------------------------------------------

def test_tree_metrics_binary_roots_drop_neutral():
    spec = spec_of("treelstm")
    trees = [parse_ptb(f"({k} w)") for k in (4, 0, 3, 2, 1)]
    rows = [log_probs([0.35, 0.0001, 0.05, 0.3, 0.2999]),  # fine: 0 (wrong); binary: 0.6 > 0.35, right
            log_probs([0.45, 0.15, 0.0001, 0.3999, 0.0]),  # fine right; binary: 0.6 > 0.4, right
            log_probs([0.3, 0.3, 0.0, 0.4, 0.0]),  # fine right; binary: 0.4 < 0.6, wrong
            log_probs([0.1, 0.1, 0.6, 0.1, 0.1]),  # neutral: fine right, not in the binary figure
            log_probs([0.15, 0.1, 0.6, 0.1, 0.05])]  # fine wrong; binary: 0.25 > 0.15, right
    targets = readout_targets(spec, trees, SST)
    got = evaluate(spec, trees, rows, targets, SST)
    assert got["root_accuracy"] == got["accuracy"] == 3 / 5
    assert got["binary_roots"] == 4 and got["binary_root_accuracy"] == 3 / 4
    nll = -sum(float(r[0, t[0]]) for r, t in zip(rows, targets)) / 5
    assert got["loss"] == pytest.approx(nll)
    assert "node_accuracy" not in got
    # Labels other than SST's five classes: no binary figure.
    three = evaluate(spec, trees[1:2], [r[:, :3] for r in rows[1:2]], [np.array([0])], ("0", "1", "2"))
    assert "binary_roots" not in three and "binary_root_accuracy" not in three
    # Only neutral roots: the count, not the ratio.
    only_neutral = evaluate(spec, trees[3:4], rows[3:4], targets[3:4], SST)
    assert only_neutral["binary_roots"] == 0 and "binary_root_accuracy" not in only_neutral


def test_tree_metrics_at_nodes_read_the_root_from_the_last_row():
    spec = spec_of("treelstm", "nodes")
    trees = [parse_ptb("(3 (1 a) (X b))"), parse_ptb("(0 c)")]
    targets = readout_targets(spec, trees, SST)
    rows = [one_hot_rows([2, 2, 3], 5), one_hot_rows([4], 5)]
    got = evaluate(spec, trees, rows, targets, SST)
    assert got["rows"] == 4 and got["labelled_rows"] == 3
    assert got["root_accuracy"] == 1 / 2 and got["node_accuracy"] == got["accuracy"] == 1 / 3
    assert got["binary_roots"] == 2 and got["binary_root_accuracy"] == 1 / 2


CHAIN_LABELS = ("O", "I-PER", "I-ORG", "B-PER")


def test_entity_f1_by_hand():
    spec = spec_of("bilstm_tagger")
    gold = ["a|I-PER b|I-PER c|O d|I-ORG e|I-ORG",  # PER 0-1, ORG 3-4
            "f|I-ORG g|B-PER h|I-PER i|O",  # ORG 0-0, PER 1-2 (B- starts a new entity)
            "j|I-PER k|B-PER",  # PER 0-0, PER 1-1
            "no tags at all"]
    pred = [["I-PER", "I-PER", "O", "O", "I-ORG"],  # PER 0-1 right, ORG 4-4 wrong span
            ["I-ORG", "I-PER", "I-PER", "O"],  # both right: the ORG run of the sentence before ends there
            ["I-PER", "I-PER"],  # PER 0-1: wrong
            ["I-PER", "I-PER", "I-PER", "O"]]  # unlabelled: not counted
    seqs = [parse_sequence(s) for s in gold]
    targets = readout_targets(spec, seqs, CHAIN_LABELS)
    rows = [one_hot_rows([CHAIN_LABELS.index(t) for t in p], 4) for p in pred]
    got = evaluate(spec, seqs, rows, targets, CHAIN_LABELS)
    assert got["gold_entities"] == 6 and got["predicted_entities"] == 5
    assert got["precision"] == pytest.approx(3 / 5) and got["recall"] == pytest.approx(3 / 6)
    assert got["f1"] == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    assert got["token_accuracy"] == got["accuracy"] == pytest.approx(8 / 11)
    assert got["rows"] == 15 and got["labelled_rows"] == 11


def test_entity_metrics_need_tag_labels_and_predictions():
    spec = spec_of("bilstm_tagger")
    seqs = [parse_sequence("a|1 b|2")]
    got = evaluate(spec, seqs, [one_hot_rows([1, 2], 3)], readout_targets(spec, seqs, ("0", "1", "2")),
                   ("0", "1", "2"))
    assert got["token_accuracy"] == 1.0 and "f1" not in got
    seqs = [parse_sequence("a|I-PER b|O")]
    nothing = evaluate(spec, seqs, [one_hot_rows([0, 0], 4)], readout_targets(spec, seqs, CHAIN_LABELS),
                       CHAIN_LABELS)
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (0.0, 0.0, 0.0)


def test_lattice_metrics():
    spec = spec_of("lattice_lstm")
    lattices = [parse_lattice(t) for t in LATTICES]
    labels = tuple(str(k) for k in range(18))
    rows = [one_hot_rows([4, 0], 18), one_hot_rows([2, 3, 1], 18)]
    got = evaluate(spec, lattices, rows, readout_targets(spec, lattices, labels), labels)
    assert got["node_accuracy"] == got["accuracy"] == 4 / 5


def test_evaluate_errors():
    spec = spec_of("bilstm_tagger")
    seqs = [parse_sequence("no tags")]
    with pytest.raises(DataError, match="has a label"):
        evaluate(spec, seqs, [one_hot_rows([0, 0], 4)], readout_targets(spec, seqs, CHAIN_LABELS), CHAIN_LABELS)
    with pytest.raises(ValueError, match="instance 0 has 1 rows but 2 targets"):
        evaluate(spec, seqs, [one_hot_rows([0], 4)], [np.array([0, 1])], CHAIN_LABELS)
    with pytest.raises(UsageError, match="4 values a row; expected one score per label \\(2\\)"):
        evaluate(spec, seqs, [one_hot_rows([0, 0], 4)], [np.array([0, 1])], ("O", "I-PER"))


# --- real data ---------------------------------------------------------------------------------

def test_sst_dev_targets_at_nodes_count_every_node():
    trees = read_instances("tree", str(shared("sst/dev.txt")))
    targets = readout_targets(spec_of("treelstm", "nodes"), trees, SST)
    assert sum(len(t) for t in targets) == sum(t.num_nodes for t in trees)
    assert all((t >= 0).all() for t in targets)
    assert [t[-1] for t in targets] == [int(tree.labels[-1]) for tree in trees]


def test_wikiner_tags_all_map():
    spec = spec_of("bilstm_tagger")
    seqs = read_instances("chain", str(shared("wikiner/dev.txt")))
    labels = build_labels([k for s in seqs for k in s.label_texts()], spec.classes)
    targets = readout_targets(spec, seqs, labels)
    assert [len(t) for t in targets] == [s.num_nodes for s in seqs]
    assert all((t >= 0).all() for t in targets)
    assert labels[0] == "O"
