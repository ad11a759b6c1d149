import numpy as np
import pytest

from edbc.data.chain import parse_sequence, read_sequences, synthetic_sequences
from edbc.data.pairs import parse_pair, read_pairs, synthetic_pairs
from edbc.errors import DataError

from .conftest import shared


def test_tagged_and_plain_sequences():
    s = parse_sequence("The|O Mad|I-ORG a|b|O\n")
    assert s.words == ("The", "Mad", "a|b") and s.tags == ("O", "I-ORG", "O")
    p = parse_sequence("just  plain\ttokens\n")
    assert p.words == ("just", "plain", "tokens") and p.tags is None


@pytest.mark.parametrize("line, message, column", [
    ("   \n", "empty sequence", None),
    ("a|O |O c|O", "expected `word|TAG`", 5),
    ("a|O b|", "expected `word|TAG`", 5),
])
def test_sequence_errors(line, message, column):
    with pytest.raises(DataError) as e:
        parse_sequence(line, "s.txt", 4)
    assert message in e.value.message and e.value.line == 4 and e.value.column == column


def test_read_sequences_and_empty_file(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("a b c\n\nd e\n")
    assert [s.num_nodes for s in read_sequences(f)] == [3, 2]
    f.write_text("\n")
    with pytest.raises(DataError, match="no sequences"):
        read_sequences(f)


def test_synthetic_sequences_match_wikiner_lengths():
    lengths = np.array([s.num_nodes for s in synthetic_sequences(3000, seed=0)])
    assert 21 < lengths.mean() < 25 and 11 < lengths.std() < 15  # WikiNER: 23.0, 13.1
    assert lengths.min() >= 1 and lengths.max() <= 150


def test_reads_wikiner_dev():
    seqs = read_sequences(shared("wikiner/dev.txt"))
    assert len(seqs) == 1696 and all(s.tags is not None for s in seqs)
    assert abs(np.mean([s.num_nodes for s in seqs]) - 23.0) < 0.1


def test_pairs_and_their_errors(tmp_path):
    p = parse_pair("a b c ||| x y\n")
    assert p.source == ("a", "b", "c") and p.target == ("x", "y") and p.num_nodes == 5
    for line, message in [("a b x y", "one |||"), ("a ||| b ||| c", "one |||"),
                          (" ||| x", "source side is empty"), ("a |||  ", "target side is empty")]:
        with pytest.raises(DataError, match=message):
            parse_pair(line, "p.txt", 1)
    f = tmp_path / "p.txt"
    f.write_text("a ||| b\n\nc d ||| e\n")
    assert len(read_pairs(f)) == 2


def test_synthetic_pairs_have_realistic_lengths():
    pairs = synthetic_pairs(2000, seed=1)
    src = np.array([len(p.source) for p in pairs])
    tgt = np.array([len(p.target) for p in pairs])
    assert 21 < src.mean() < 25 and 1.0 < tgt.mean() / src.mean() < 1.2
