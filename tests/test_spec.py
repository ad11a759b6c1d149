import pytest

from edbc.errors import SpecError
from edbc.spec import format_program, load_model, parse_model
from edbc.spec.program import Program

from .conftest import TREELSTM

BASE = """\
model: tiny
dims: {vocab: 8, hidden: 4}
vocab:
  word: {size: vocab}
params:
  E: {shape: [vocab, hidden]}
  W: {shape: [hidden, 2*hidden]}
  U: {shape: [hidden, 2*hidden]}
  V: {shape: [hidden, hidden]}
cells:
  leaf:
    inputs: {word: token}
    ops:
      - h = tanh(embed(E, word))
    outputs: [h]
  node:
    inputs: {l: [hidden], r: [hidden]}
    ops:
      - a, b = chunk(affine(l @ W, r @ U), 2)
      - h = mul(sigmoid(a), tanh(b))
    outputs: [h]
  out:
    inputs: {h: [hidden]}
    ops:
      - y = log_softmax(affine(h @ V))
    outputs: [y]
structure:
  kind: tree
  leaf: {cell: leaf, bind: {word: word}}
  internal: {cell: node, bind: {l: left.h, r: right.h}}
readout: {cell: out, at: root, bind: {h: node.h}}
"""


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as e:
        parse_model(text, "m.yaml")
    return e.value


def test_treelstm_spec_loads_with_expected_cells():
    spec = load_model(TREELSTM)
    assert set(spec.cells) == {"leaf", "node", "classify"}
    node = spec.cells["node"]
    assert [v.name for v in node.inputs] == ["h_l", "c_l", "h_r", "c_r"]
    assert node.output_shapes == ((128,), (128,))
    assert spec.cells["classify"].output_shapes == ((5,),)
    assert spec.params["U_l"].shape == (128, 640)
    assert spec.vocabs["word"].size == 256
    assert spec.roles["internal"].cell == "node"


def test_program_roundtrips_through_json_and_prints():
    spec = load_model(TREELSTM)
    for program in spec.cells.values():
        assert Program.from_json(program.to_json()) == program
    text = format_program(spec.cells["node"])
    assert "affine(h_l @ U_l, h_r @ U_r, b_node)" in text
    assert "chunk(" in text and "n=5" in text


def test_digest_ignores_comments_but_not_content():
    a = parse_model(BASE)
    b = parse_model("# a comment\n" + BASE)
    c = parse_model(BASE.replace("hidden: 4", "hidden: 6"))
    assert a.digest == b.digest != c.digest


def test_unknown_op_names_file_cell_op_and_line():
    e = spec_error(BASE.replace("h = tanh(embed(E, word))", "h = tahn(embed(E, word))"))
    assert e.path == "m.yaml" and e.line == 14
    assert "cell 'leaf'" in str(e) and "op 1" in str(e) and "unknown op 'tahn'" in str(e)


def test_unknown_parameter_or_value():
    e = spec_error(BASE.replace("l @ W,", "l @ W2,"))
    assert "unknown value or parameter 'W2'" in str(e) and "cell 'node'" in str(e)


def test_shape_mismatch_in_affine():
    e = spec_error(BASE.replace("y = log_softmax(affine(h @ V))", "y = log_softmax(affine(h @ W, h @ V))"))
    assert "cell 'out'" in str(e) and "affine term 2" in str(e)


def test_shape_mismatch_between_bound_output_and_input():
    e = spec_error(BASE.replace("inputs: {l: [hidden], r: [hidden]}", "inputs: {l: [hidden], r: [2*hidden]}")
                   .replace("r @ U", "r @ W2").replace("  V: {", "  W2: {shape: [2*hidden, 2*hidden]}\n  V: {"))
    assert "shape mismatch" in str(e) and "input 'r'" in str(e)


def test_unbound_and_unknown_inputs():
    e = spec_error(BASE.replace("bind: {l: left.h, r: right.h}", "bind: {l: left.h}"))
    assert "input 'r' is not bound" in str(e)
    e = spec_error(BASE.replace("bind: {l: left.h, r: right.h}", "bind: {l: left.h, r: middle.h}"))
    assert "'middle' is not a neighbour" in str(e)


def test_yaml_syntax_error_has_position():
    e = spec_error(BASE.replace("dims: {vocab: 8, hidden: 4}", "dims: {vocab: 8, hidden: 4"))
    assert "YAML syntax error" in str(e) and e.line is not None


def test_wrong_arity_and_results():
    e = spec_error(BASE.replace("h = mul(sigmoid(a), tanh(b))", "h = mul(sigmoid(a))"))
    assert "mul takes 2 operands" in str(e)
    e = spec_error(BASE.replace("a, b = chunk(", "a, b, c = chunk("))
    assert "3 expected" in str(e)


def test_embedding_table_must_cover_vocabulary():
    e = spec_error(BASE.replace("word: {size: vocab}", "word: {size: 20}"))
    assert "has only 8 rows" in str(e)


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such model spec file"):
        load_model(tmp_path / "nope.yaml")


def test_single_assignment_and_no_shadowing():
    e = spec_error(BASE.replace("h = mul(sigmoid(a), tanh(b))", "a = mul(sigmoid(a), tanh(b))"))
    assert "assigned twice" in str(e)
    e = spec_error(BASE.replace("h = tanh(embed(E, word))", "W = tanh(embed(E, word))"))
    assert "may not shadow" in str(e)


def test_cycle_between_values_is_reported():
    e = spec_error(BASE.replace("- h = mul(sigmoid(a), tanh(b))", "- g = tanh(h)\n      - h = mul(sigmoid(a), g)"))
    assert "used before the op that assigns it" in str(e) and "'h'" in str(e)
