import numpy as np
import pytest

from edbc.data import build_vocabs, encode, parse_ptb
from edbc.data.typed_dag import format_typed_dag, parse_typed_dag
from edbc.errors import DataError, VerificationError
from edbc.graph import CELL, OP, Graph, build_graph, format_graph, lower_to_ops, verify_graph


@pytest.fixture
def two_trees(treelstm):
    trees = [parse_ptb("(1 (2 a) (3 (2 b) (2 c)))"), parse_ptb("(2 a)")]
    return encode(trees, build_vocabs(treelstm, trees))  # "a" is the most frequent word: id 1


def test_cell_graph_of_two_trees(treelstm, two_trees):
    g = build_graph(treelstm, two_trees)
    verify_graph(g)
    names = [g.types[t].name for t in g.node_type]
    assert names == ["leaf", "leaf", "leaf", "node", "node", "leaf", "classify", "classify"]
    assert g.instance.tolist() == [0, 0, 0, 0, 0, 1, 0, 1]
    # node 3 = (b c): children 1 and 2, outputs h (slot 0) and c (slot 1)
    assert g.args(3) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert g.args(4) == [(0, 0), (0, 1), (3, 0), (3, 1)]
    # readouts read the roots' h: tree 0's root is node 4, tree 1 is a single leaf
    assert g.args(6) == [(4, 0)] and g.args(7) == [(5, 0)]
    assert g.out_node.tolist() == [6, 7]
    assert g.imms(0) == [1] and g.imms(3) == []


def test_op_level_lowering_keeps_counts_and_results(treelstm, two_trees):
    g = build_graph(treelstm, two_trees)
    o = lower_to_ops(g)
    verify_graph(o)
    assert o.granularity == OP and g.granularity == CELL
    ops_per_cell = {t.name: len(t.program.ops) for t in g.types}
    assert o.num_nodes == sum(ops_per_cell[g.types[t].name] for t in g.node_type)
    # results come from the readout's last op (log_softmax)
    assert all(o.types[o.node_type[v]].name.startswith("log_softmax") for v in o.out_node)
    # equal op signatures share a type across cells: sigmoid(128) of leaf and node cells
    sig = [t.name for t in o.types]
    assert len(sig) == len(set(sig)) and "sigmoid(128)" in sig


def test_build_scales_without_python_work_per_node(treelstm, synthetic_trees):
    g = build_graph(treelstm, synthetic_trees)
    verify_graph(g)
    assert g.num_instances == len(synthetic_trees)
    assert g.num_nodes == sum(t.num_nodes for t in synthetic_trees) + len(synthetic_trees)


def _corrupt(g: Graph, **columns) -> Graph:
    cols = dict(g.arrays(), **columns)
    return Graph(g.granularity, g.types, num_instances=g.num_instances, **cols)


def test_verifier_rejects_forward_reference(treelstm, two_trees):
    g = build_graph(treelstm, two_trees)
    arg_node = g.arg_node.copy()
    arg_node[g.arg_ptr[3]] = 4
    with pytest.raises(VerificationError, match="node %3: argument refers to node 4"):
        verify_graph(_corrupt(g, arg_node=arg_node))


def test_verifier_rejects_wrong_arity(treelstm, two_trees):
    g = build_graph(treelstm, two_trees)
    keep = np.ones(g.num_edges, dtype=bool)
    keep[g.arg_ptr[3]] = False
    ptr = g.arg_ptr.copy()
    ptr[4:] -= 1
    with pytest.raises(VerificationError, match="3 arguments, type 'node' takes 4"):
        verify_graph(_corrupt(g, arg_node=g.arg_node[keep], arg_slot=g.arg_slot[keep], arg_ptr=ptr))


def test_verifier_rejects_bad_slot(treelstm, two_trees):
    g = build_graph(treelstm, two_trees)
    arg_slot = g.arg_slot.copy()
    arg_slot[g.arg_ptr[3]] = 2
    with pytest.raises(VerificationError, match="slot 2 does not exist"):
        verify_graph(_corrupt(g, arg_slot=arg_slot))


def test_verifier_rejects_shape_mismatch(treelstm, two_trees):
    o = lower_to_ops(build_graph(treelstm, two_trees))
    # op 3 is sigmoid(128) over chunk output %2.0; feed it the affine's [384] output instead
    assert o.types[o.node_type[3]].name == "sigmoid(128)" and o.args(3) == [(2, 0)]
    arg_node = o.arg_node.copy()
    arg_node[o.arg_ptr[3]] = 1
    with pytest.raises(VerificationError, match=r"shape \[384\], the input expects \[128\]"):
        verify_graph(_corrupt(o, arg_node=arg_node))


def test_verifier_rejects_cross_instance_arguments(treelstm, two_trees):
    g = build_graph(treelstm, two_trees)
    instance = g.instance.copy()
    instance[1] = 1
    with pytest.raises(VerificationError, match="another instance"):
        verify_graph(_corrupt(g, instance=instance))


def test_printer_shows_types_nodes_and_results(treelstm, two_trees):
    text = format_graph(build_graph(treelstm, two_trees))
    assert "graph (cell level): 8 nodes, 3 types" in text
    assert "%3 = node(%1.0, %1.1, %2.0, %2.1)" in text
    assert "results: %6.0 %7.0" in text


def test_typed_dag_roundtrip_and_unbatchable():
    text = "5\n1 0\n0 0\n2 2 0 1\n1 1 2\n2 2 3 2\n"
    g = parse_typed_dag(text)
    verify_graph(g)
    assert g.node_type.tolist() == [1, 0, 2, 1, 2]
    assert not g.types[0].batchable and g.types[1].batchable
    assert format_typed_dag(g) == text


@pytest.mark.parametrize("text, line, message", [
    ("", None, "empty graph file"),
    ("x\n", 1, "node count"),
    ("3\n1 0\n1 0\n", 3, "says 3 nodes but 2"),
    ("1\n1 0\n1 0\n", 3, "says 1 nodes but 2"),
    ("2\n1 0\n1 1 1\n", 3, "not an earlier node"),
    ("2\n1 0\n1 1 -1\n", 3, "is negative"),
    ("2\n1 0\n1 2 0\n", 3, "n_args is 2 but 1"),
    ("1\n-1 0\n", 2, "type -1 is negative"),
    ("1\n1 a\n", 2, "expected integers"),
])
def test_typed_dag_errors(text, line, message):
    with pytest.raises(DataError) as e:
        parse_typed_dag(text, "g.txt")
    assert message in e.value.message and e.value.line == line and e.value.path == "g.txt"
