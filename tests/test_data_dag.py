import json

import pytest

from edbc.api import load_data, load_spec
from edbc.data import encode, spec_vocabs
from edbc.data.dag import format_dag, parse_dag, read_dags
from edbc.errors import DataError
from edbc.graph import build_graph, verify_graph
from edbc.settings import MODELS_DIR

LINE = json.dumps({"nodes": [{"role": "word", "tokens": {"word": "a"}}, {"role": "word", "tokens": {"word": "b"}},
                             {"role": "binary", "args": [0, 1]}, {"role": "unary", "args": [2]}],
                   "outputs": [3, 2]})


@pytest.fixture(scope="module")
def dag_rnn():
    return load_spec(MODELS_DIR / "dag_rnn.yaml")[0]


def test_parse_and_format_roundtrip():
    d = parse_dag(LINE)
    assert d.roles == ("word", "word", "binary", "unary") and d.outputs.tolist() == [3, 2]
    assert d.args.tolist() == [0, 1, 2] and d.arg_ptr.tolist() == [0, 0, 0, 2, 3]
    assert parse_dag(format_dag(d)).values == d.values


def test_graph_of_a_dag(dag_rnn):
    (inst,) = encode([parse_dag(LINE)], spec_vocabs(dag_rnn))
    g = build_graph(dag_rnn, [inst])
    verify_graph(g)
    assert [g.types[t].name for t in g.node_type] == ["word_cell", "word_cell", "binary_cell", "unary_cell",
                                                       "classify", "classify"]
    assert g.args(2) == [(0, 0), (1, 0)] and g.args(4) == [(3, 0)] and g.args(5) == [(2, 0)]


@pytest.mark.parametrize("line, message", [
    ("{", "not valid JSON"),
    ('{"nodes": []}', "at least one node"),
    ('{"nodes": [{"role": "word"}], "extra": 1}', "unknown key 'extra'"),
    ('{"nodes": [{"args": []}]}', 'expected {"role"'),
    ('{"nodes": [{"role": "word"}, {"role": "unary", "args": [1]}]}', "not an earlier node"),
    ('{"nodes": [{"role": "word"}, {"role": "unary", "args": [-1]}]}', "is negative"),
    ('{"nodes": [{"role": "word", "tokens": {"word": 3}}]}', "tokens must map"),
    ('{"nodes": [{"role": "word"}], "outputs": [1]}', "outputs must be"),
])
def test_malformed_dag_lines(line, message):
    with pytest.raises(DataError) as e:
        parse_dag(line, "d.jsonl", 3)
    assert message in e.value.message and e.value.line == 3


@pytest.mark.parametrize("nodes, message", [
    ([{"role": "leaf"}], "role 'leaf' is not a role of model 'dag_rnn'"),
    ([{"role": "word", "tokens": {"word": "a"}}, {"role": "binary", "args": [0]}], "takes 2 arguments"),
    ([{"role": "word"}], "needs token field 'word'"),
])
def test_dag_instances_checked_against_the_spec(tmp_path, dag_rnn, nodes, message):
    f = tmp_path / "d.jsonl"
    f.write_text("\n" + json.dumps({"nodes": nodes}) + "\n")
    with pytest.raises(DataError) as e:
        load = load_data(dag_rnn, str(f))
        build_graph(dag_rnn, load.instances)
    assert message in e.value.message and e.value.path == str(f) and e.value.line == 2


def test_synthetic_dags_fit_the_spec(dag_rnn):
    data = load_data(dag_rnn, None, limit=30, seed=5)
    g = build_graph(dag_rnn, data.instances)
    verify_graph(g)
    assert g.num_instances == 30 and set(t.name for t in g.types) >= {"word_cell", "binary_cell"}


def test_read_dags_skips_blank_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(LINE + "\n\n" + LINE + "\n")
    assert len(read_dags(str(f))) == 2
