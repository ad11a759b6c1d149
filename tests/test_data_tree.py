import sys

import numpy as np
import pytest
import torch

from edbc.api import compile_batch, load_data, run
from edbc.data import build_vocab, encode, parse_ptb, read_trees, spec_vocabs, synthetic_trees
from edbc.data.tree import merge_same_label
from edbc.graph.build import build_graph
from edbc.spec import load_model
from edbc.errors import DataError, LimitError
from edbc.graph import lower_to_ops
from edbc.schedule import lower_bound
from edbc.spec.model import VocabSpec

from .conftest import shared


def test_parse_ptb_post_order_and_unescape():
    t = parse_ptb(r"(3 (2 An) (3 (4 -LRB-fine\/good-RRB-) (2 -LRB-)))")
    assert t.num_nodes == 5
    assert t.words == ("An", "-LRB-fine/good-RRB-", "(", None, None)
    assert t.left.tolist() == [-1, -1, -1, 1, 0]
    assert t.right.tolist() == [-1, -1, -1, 2, 3]
    assert t.labels.tolist() == [2, 4, 2, 3, 3]
    assert t.depth() == 3


def test_no_break_space_stays_inside_a_word():
    t = parse_ptb("(2 (2 8\xa01\\/2) (2 film))")
    assert t.words[0] == "8\xa01/2"


def test_to_ptb_roundtrips():
    for tree in synthetic_trees(20, seed=1):
        back = parse_ptb(tree.to_ptb())
        assert back.words == tree.words
        assert np.array_equal(back.left, tree.left) and np.array_equal(back.right, tree.right)


@pytest.mark.parametrize("line, message, column", [
    ("(3 (2 a) (2 b)", "unbalanced '('", 1),
    ("(3 (2 a) (2 b)))", "after the end of the tree", 16),
    ("(3 )", "expected a word or a bracketed child", 1),
    ("   ", "empty tree", 1),
    ("(3 (2 a b) (2 c))", "expected ')' after the word 'a'", 9),
    ("( (2 a) (2 b))", "expected a label", 1),
    ("word", "unexpected word", 1),
])
def test_malformed_trees_name_position(line, message, column):
    with pytest.raises(DataError) as e:
        parse_ptb(line, "f.txt", 7)
    assert message in e.value.message
    assert (e.value.path, e.value.line, e.value.column) == ("f.txt", 7, column)


def test_trees_may_have_any_number_of_children():
    t = parse_ptb("(3 (2 a) (1 (2 b)) (4 c) (0 (2 d) (2 e) (2 f)))")
    assert t.arity.tolist() == [0, 0, 1, 0, 0, 0, 0, 3, 4]
    assert t.children()[-1] == [0, 2, 3, 7]
    assert parse_ptb(t.to_ptb()).children() == t.children()
    with pytest.raises(ValueError):
        t.left


@pytest.mark.parametrize("line, message, column", [
    ("(3 (2 a) (1 (2 b)))", "node with 1 child", 10),
    ("(3 (2 a) (2 b) (2 c))", "node with 3 children", 1),
])
def test_a_binary_model_refuses_other_arities_at_the_node(line, message, column):
    spec = load_model("configs/models/treelstm.yaml")
    tree = encode([parse_ptb(line, "f.txt", 7)], spec_vocabs(spec))[0]
    with pytest.raises(DataError) as e:
        build_graph(spec, [tree])
    assert message in e.value.message and "exactly two" in e.value.message
    assert (e.value.path, e.value.line, e.value.column) == ("f.txt", 7, column)


def test_merge_same_label_makes_nary_trees_of_binarised_ones():
    t = parse_ptb("(3 (3 (2 a) (3 (2 b) (2 c))) (3 (1 d) (3 (2 e) (2 f))))")
    merged = merge_same_label(t, max_children=4)
    # bottom up: each 3-node takes its 3-child's children; the root then takes its left child's three,
    # but not its right child's too (that would make six)
    assert merged.to_ptb() == "(3 (2 a) (2 b) (2 c) (3 (1 d) (2 e) (2 f)))"
    assert merge_same_label(t, max_children=2).to_ptb() == t.to_ptb()
    assert merged.words == ("a", "b", "c", "d", "e", "f", None, None)
    assert merged.arity.tolist() == [0, 0, 0, 0, 0, 0, 3, 4]


def test_read_trees_skips_blank_lines_and_rejects_empty_files(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("(1 (2 a) (2 b))\n\n(2 c)\n")
    assert [t.num_nodes for t in read_trees(f)] == [3, 1]
    f.write_text("\n\n")
    with pytest.raises(DataError, match="no trees"):
        read_trees(f)
    with pytest.raises(DataError, match="no such data file"):
        read_trees(tmp_path / "missing.txt")
    f.write_text("(1 (2 a) (2 b))\n(1 (2 a)\n")
    with pytest.raises(DataError) as e:
        read_trees(f)
    assert e.value.line == 2


def test_synthetic_trees_match_sst_statistics():
    trees = synthetic_trees(1500, seed=0)
    nodes = np.array([t.num_nodes for t in trees])
    depth = np.array([t.depth() for t in trees])
    assert 34 < nodes.mean() < 41  # SST: 37.3
    assert 10 < depth.mean() < 12  # SST: 10.9
    assert depth.max() <= 30
    assert all(np.all(t.left[t.left >= 0] < np.flatnonzero(t.left >= 0)) for t in trees)


def test_synthetic_trees_are_seeded():
    a = synthetic_trees(5, seed=4)
    b = synthetic_trees(5, seed=4)
    c = synthetic_trees(5, seed=5)
    assert [t.words for t in a] == [t.words for t in b] != [t.words for t in c]


def test_frequency_vocab_caps_and_maps_unknown_to_zero():
    v = build_vocab(VocabSpec("word", 3, "frequency"), ["b", "a", "b", "c", "a", "b", "d"])
    assert v.lookup("b") == 1 and v.lookup("a") == 2
    assert v.lookup("c") == 0 and v.lookup("zzz") == 0


def test_hash_vocab_is_stable_and_in_range():
    v = build_vocab(VocabSpec("word", 16, "hash"), [])
    ids = [v.lookup(w) for w in ["a", "b", "the", "a"]]
    assert ids[0] == ids[3] and all(1 <= i < 16 for i in ids)


def test_encode_fills_token_ids_at_leaves():
    trees = [parse_ptb("(1 (2 a) (2 b))"), parse_ptb("(2 a)")]
    encoded = encode(trees, {"word": build_vocab(VocabSpec("word", 8, "frequency"), ["a", "b"])})
    assert encoded[0].tokens.tolist() == [1, 2, -1]
    assert encoded[1].tokens.tolist() == [1]


def test_reads_sst_dev():
    trees = read_trees(shared("sst/dev.txt"))
    assert len(trees) == 1107
    assert 36 < np.mean([t.num_nodes for t in trees]) < 39


def test_a_tree_deeper_than_the_recursion_limit_is_read_written_compiled_and_checked(tmp_path, treelstm):
    depth = 2 * sys.getrecursionlimit()
    path = tmp_path / "deep.txt"
    path.write_text("(1 (2 a) " * (depth - 1) + "(2 b)" + ")" * (depth - 1) + "\n")
    tree = read_trees(path)[0]
    assert tree.depth() == depth
    assert parse_ptb(tree.to_ptb()).num_nodes == tree.num_nodes == 2 * depth - 1
    dataset = load_data(treelstm, str(path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny batches: more threads only contend
    try:
        report = run(treelstm, dataset, options="agenda", check=True)
    finally:
        torch.set_num_threads(threads)
    assert report.check_passed
    op_graph = lower_to_ops(compile_batch(treelstm, dataset.instances, "agenda").cell_graph)
    assert lower_bound(op_graph) > depth


def test_running_out_of_memory_on_a_line_is_a_limit_error_naming_it(tmp_path, monkeypatch):
    import edbc.data.tree as tree_module

    def exhausted(line, path=None, lineno=None):
        if lineno == 2:
            raise MemoryError
        return parse_ptb(line, path, lineno)

    monkeypatch.setattr(tree_module, "parse_ptb", exhausted)
    path = tmp_path / "t.txt"
    path.write_text("(1 (2 a) (2 b))\n(1 (2 a) (2 b))\n")
    with pytest.raises(LimitError, match="this line is too large to parse in the memory available") as e:
        read_trees(path)
    assert (e.value.path, e.value.line) == (str(path), 2)
