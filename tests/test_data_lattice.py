import numpy as np
import pytest

from edbc.data.lattice import format_lattices, read_lattices, synthetic_lattices
from edbc.errors import DataError

from .conftest import shared

GOOD = """2
4
0 3 3 3
0
1 0 17
2 1 5 0 900
2 2 6 1 901
2
0 1
0
1 0 2
"""


def write(tmp_path, text):
    f = tmp_path / "l.txt"
    f.write_text(text)
    return str(f)


def test_reads_lattices_in_fold_order(tmp_path):
    a, b = read_lattices(write(tmp_path, GOOD))
    assert a.num_nodes == 4 and a.tags.tolist() == [0, 3, 3, 3]
    assert a.arc_dst.tolist() == [1, 2, 2, 3, 3]
    assert a.arc_src.tolist() == [0, 1, 0, 2, 1]
    assert a.arc_char.tolist() == [True, True, False, True, False]
    assert a.labels == ("17", "5", "900", "6", "901")
    assert a.token_fields() == {"char": ["17", "5", "6"], "word": ["900", "901"]}
    assert b.num_nodes == 2


def test_character_arc_listed_after_word_arcs_is_folded_first(tmp_path):
    text = "1\n3\n0 0 0\n0\n1 0 4\n2 0 77 1 5\n"
    (lat,) = read_lattices(write(tmp_path, text))
    assert lat.arc_char.tolist() == [True, True, False] and lat.labels == ("4", "5", "77")


@pytest.mark.parametrize("text, message, line", [
    ("", "empty file", None),
    ("2\n4\n0 3 3 3\n0\n1 0 17\n2 1 5 0 900\n2 2 6 1 901\n", "truncated", 7),
    ("1\n3\n0 0 0\n0\n1 0 4\n1 2 5\n", "comes from node 2", 6),
    ("1\n3\n0 0 0\n0\n1 0 4\n2 1 5\n", "truncated", 6),
    ("1\n3\n0 0 0\n0\n1 0 4\n2 1 5\n0 3\n", "fewer arcs than its count 2", 6),
    ("1\n3\n0 0 0\n0\n1 0 4\n1 1 5 7\n", "more values on its line", 6),
    ("1\n3\n0 0\n0\n1 0 4\n1 1 5\n", "continues onto the next line", 4),
    ("1\n3\n0 0 0\n1 0 3\n1 0 4\n1 1 5\n", "node 0 has 1 arcs", 4),
    ("1\n3\n0 0 0\n0\n1 0 4\n1 0 5\n", "node 2 has 0 character arcs", 6),
    ("1\n3\n0 0 0\n0\n1 0 4\n2 1 5 1 6\n", "node 2 has 2 character arcs", 6),
    ("1\n1\n0\n0\n", "at least 2", 2),
    ("1\n3\n0 x 0\n0\n1 0 4\n1 1 5\n", "got 'x'", 3),
    ("1\n3\n0 0 0\n0\n1 0 -4\n1 1 5\n", "at least 0", 5),
    ("1\n2\n0 0\n0\n1 0 4\n9\n", "extra data", 6),
])
def test_malformed_lattices(tmp_path, text, message, line):
    with pytest.raises(DataError) as e:
        read_lattices(write(tmp_path, text))
    assert message in e.value.message and e.value.line == line


def test_synthetic_lattices_match_statistics_and_roundtrip(tmp_path):
    lats = synthetic_lattices(600, seed=0)
    nodes = np.array([lat.num_nodes for lat in lats])
    words = np.array([int((~lat.arc_char).sum()) for lat in lats])
    assert 40 < nodes.mean() < 48 and 24 < nodes.std() < 32  # real: 44.1, 27.7
    assert 0.45 < words.sum() / nodes.sum() < 0.6  # real: 0.53 word arcs a node
    back = read_lattices(write(tmp_path, format_lattices(lats[:20])))
    for a, b in zip(lats, back):
        assert a.labels == b.labels and np.array_equal(a.arc_src, b.arc_src)


def test_reads_the_lattice_data():
    lats = read_lattices(str(shared("lattice/test.txt")))
    assert len(lats) == 316
    assert all(lat.arc_char.sum() == lat.num_nodes - 1 for lat in lats)
