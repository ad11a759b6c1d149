"""Fuzz every text reader: whatever the input, only edbc's own errors may escape.

Inputs are random text biased towards each format's alphabet, and mutations
of valid files (characters deleted, inserted or replaced), read and then, where
the reader accepts them, built into graphs of a bundled model.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edbc.api import load_spec
from edbc.data import encode, spec_vocabs
from edbc.data.chain import read_sequences
from edbc.data.dag import read_dags
from edbc.data.lattice import read_lattices
from edbc.data.pairs import read_pairs
from edbc.data.tree import read_trees
from edbc.data.typed_dag import read_typed_dag
from edbc.errors import EdbcError
from edbc.graph import build_graph
from edbc.policy.file import load_policy
from edbc.settings import MODELS_DIR, PLANS_DIR
from edbc.spec import parse_model

FUZZ = settings(max_examples=150, deadline=None)
MODELS = {name: load_spec(MODELS_DIR / f"{name}.yaml")[0]
          for name in ("treelstm", "bilstm_tagger", "lstm_seq2seq", "lattice_lstm", "dag_rnn")}


@st.composite
def mutated(draw, text: str, alphabet: str) -> str:
    chars = list(text)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(chars)))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        if action == "delete" and i < len(chars):
            del chars[i]
        elif action == "insert":
            chars.insert(i, draw(st.sampled_from(alphabet)))
        elif i < len(chars):
            chars[i] = draw(st.sampled_from(alphabet))
    return "".join(chars)


def texts(valid: str, alphabet: str):
    return st.one_of(st.text(alphabet=alphabet, max_size=200), mutated(valid, alphabet),
                     st.text(max_size=60))


def survives(tmp_path_factory, text: str, read, model: str | None = None) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "input.txt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        instances = read(str(path))
        if model is not None:
            spec = MODELS[model]
            build_graph(spec, encode(instances, spec_vocabs(spec)))
    except EdbcError:
        pass


TREES = "(3 (2 An) (3 (4 imaginative) (3 (2 comedy\\/thriller) (2 .))))\n(1 (2 a) (2 b))\n"
SEQUENCES = "This|O album|O proved|O\nThe|I-ORG Mad|I-ORG\n"
PAIRS = "a b c ||| x y\nd ||| e f\n"
LATTICES = "1\n4\n0 3 3 3\n0\n1 0 17\n2 1 5 0 900\n2 2 6 1 901\n"
TYPED = "4\n1 0\n1 0\n2 2 0 1\n0 1 2\n"
DAGS = json.dumps({"nodes": [{"role": "word", "tokens": {"word": "a"}}, {"role": "unary", "args": [0]},
                             {"role": "binary", "args": [0, 1]}], "outputs": [2]}) + "\n"


@FUZZ
@given(texts(TREES, "() 0123abc\\/-\n\t"))
def test_tree_reader(tmp_path_factory, text):
    survives(tmp_path_factory, text, read_trees, "treelstm")


@FUZZ
@given(texts(SEQUENCES, "ab|OI-RG \n\t"))
def test_sequence_reader(tmp_path_factory, text):
    survives(tmp_path_factory, text, read_sequences, "bilstm_tagger")


@FUZZ
@given(texts(PAIRS, "abxy |\n"))
def test_pair_reader(tmp_path_factory, text):
    survives(tmp_path_factory, text, read_pairs, "lstm_seq2seq")


@FUZZ
@given(texts(LATTICES, "0123456789 -\n"))
def test_lattice_reader(tmp_path_factory, text):
    survives(tmp_path_factory, text, read_lattices, "lattice_lstm")


@FUZZ
@given(texts(TYPED, "0123 -\n"))
def test_typed_dag_reader(tmp_path_factory, text):
    survives(tmp_path_factory, text, read_typed_dag)


@FUZZ
@given(texts(DAGS, '{}[]":,0123 aargsroletokensnodesoutputswordunarybinary\n'))
def test_dag_reader(tmp_path_factory, text):
    survives(tmp_path_factory, text, read_dags, "dag_rnn")


SPEC = (MODELS_DIR / "treelstm.yaml").read_text()


@settings(max_examples=300, deadline=None)
@given(mutated(SPEC, "()[]{}:,=@ \n-abchx0123456789#"))
def test_spec_loader(text):
    try:
        parse_model(text, "fuzzed.yaml")
    except EdbcError:
        pass


# Hostile values: nesting deeper than Python's stack, integers of any length, divisions by zero,
# NUL bytes, alias bombs; put where each format reads a value, they must still be answered by
# edbc's own errors.
def digits():
    return st.integers(1, 5000).map(lambda n: "9" * n)


@st.composite
def nested(draw, opening: str, closing: str, inner) -> str:
    depth = draw(st.integers(1, 3000))
    return opening * depth + draw(inner) + closing * depth


def yaml_values():
    return st.one_of(nested("[", "]", digits()), nested("{a: ", "}", digits()), digits(),
                     st.builds(lambda n: "1+" * n + "1", st.integers(1, 5000)),
                     st.builds(lambda n: "-" * n + "3", st.integers(1, 5000)),
                     st.builds(lambda n: "(" * n + "3" + ")" * n, st.integers(1, 3000)),
                     st.sampled_from(["128//0", "3//(hidden-hidden)", '"1\\02"', "*nowhere", "2001-02-30"]))


def alias_bombs():
    def bomb(depth: int, width: int) -> str:
        return "".join(f"k{i}: &a{i} [{', '.join([f'*a{i - 1}' if i else 'x'] * width)}]\n" for i in range(depth))
    return st.one_of(st.builds(bomb, st.integers(1, 12), st.integers(1, 12)), st.just("loop: &loop [*loop]\n"))


def substituted(text: str, places: list[str], values) -> st.SearchStrategy[str]:
    """`text` with one of `places` replaced by a drawn value."""
    return st.builds(lambda place, value: text.replace(place, value, 1), st.sampled_from(places), values)


HOSTILE_SPECS = st.one_of(
    alias_bombs().map(lambda bomb: bomb + SPEC),
    yaml_values().map(lambda value: f"extra: {value}\n" + SPEC),
    substituted(SPEC, ["128", "3*hidden", "0.1", "5)", "treelstm"], yaml_values()))


@settings(max_examples=80, deadline=None)
@given(HOSTILE_SPECS)
def test_spec_loader_with_hostile_yaml(text):
    try:
        parse_model(text, "fuzzed.yaml")
    except EdbcError:
        pass


def json_values():
    return st.one_of(nested("[", "]", digits()), nested('{"a": ', "}", digits()), digits(),
                     digits().map(lambda d: "-" + d), st.sampled_from(["1e999999", "-1e999999", "1.5", "null"]))


@settings(max_examples=60, deadline=None)
@given(substituted(DAGS, ["0", "1", "2", '"a"', '"word"', "[0, 1]", "[2]"], json_values()))
def test_dag_reader_with_hostile_json(tmp_path_factory, text):
    survives(tmp_path_factory, text, read_dags, "dag_rnn")


POLICY = (PLANS_DIR / "treelstm.policy.json").read_text()


@settings(max_examples=60, deadline=None)
@given(substituted(POLICY, ["0", "1", "2", '"1.0"', '"sorted"', "[", '"treelstm"'], json_values()))
def test_policy_loader_with_hostile_json(tmp_path_factory, text):
    survives(tmp_path_factory, text, load_policy)
