"""Cells given as ONNX files: every supported operator against onnx's reference
evaluator, torch-exported cells, the bundled example against its YAML twin,
plans without the file, and the errors."""

import re
import shutil
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edbc.api import CompileOptions, compile_batch, compile_plan, load_data, load_spec, run, run_plan
from edbc.errors import EXIT_INPUT, SpecError
from edbc.plan import load_plan, save_plan
from edbc.runtime import Runtime
from edbc.cell import compile_cell
from edbc.runtime.kernels import Kernel, interpret
from edbc.runtime.weights import init_param
from edbc.schedule import POLICIES
from edbc.settings import CONFIG_DIR, REPO_ROOT
from edbc.spec import load_model
from edbc.spec.onnx_cell import SUPPORTED, import_onnx_cell

from .conftest import TREELSTM
from .test_cli import edbc, one_line_error

TREELSTM_ONNX = CONFIG_DIR / "models" / "treelstm_onnx.yaml"
NODE_ONNX = CONFIG_DIR / "cells" / "treelstm_node.onnx"
F, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model(nodes, inputs, outputs, inits=None, opset=18):
    """A model from nodes; inputs/outputs are (name, dims) or (name, dims, elem type).

    Dims None: [batch, unknown] (the checker wants a shape; the importer reads only the inputs').
    """
    def info(spec):
        name, dims, *elem = spec
        return helper.make_tensor_value_info(name, elem[0] if elem else F, ["N", None] if dims is None else dims)

    graph = helper.make_graph(nodes, "cell", [info(i) for i in inputs], [info(o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def node(op, ins, outs, name=None, **attrs):
    return helper.make_node(op, ins, outs, name=name or f"{op.lower()}_{outs[0]}", **attrs)


def check(m: onnx.ModelProto, batch: int = 3, rows: int = 10, reference: onnx.ModelProto | None = None):
    """Import `m`, run it with edbc (op by op, and as a fused kernel) and with onnx's reference
    evaluator (on `reference`, a model computing the same, if given) on the same random inputs;
    they must agree. Returns the imported cell."""
    cell = import_onnx_cell("c", m.SerializeToString(), "m.onnx")
    feeds = {}
    for vi in m.graph.input:
        dims = [batch] + [d.dim_value for d in vi.type.tensor_type.shape.dim[1:]]
        feeds[vi.name] = RNG.integers(0, rows, size=dims) if vi.type.tensor_type.elem_type == I64 \
            else rand(*dims)
    expected = ReferenceEvaluator(reference or m).run(None, feeds)
    inputs = [torch.tensor(feeds[v.name].reshape(batch) if v.dtype == "token"
                           else feeds[v.name].reshape(batch, -1)) for v in cell.program.inputs]
    weights = {k: init_param(p) for k, p in cell.params.items()}
    compiled = compile_cell(cell.program, {k: p.shape for k, p in cell.params.items()}, verify=True)
    for got in (interpret(cell.program, inputs, weights), Kernel(compiled, weights)(inputs)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g.numpy(), e.reshape(batch, -1), rtol=1e-5, atol=1e-5)
    return cell


def kinds(cell):
    return [op.kind for op in cell.program.ops]


# -- every supported operator ------------------------------------------------------------------

def test_matmul_then_bias_add_is_one_affine():
    cell = check(model([node("MatMul", ["x", "W"], ["y"]), node("Add", ["y", "b"], ["z"])],
                       [("x", ["N", 4])], [("z", ["N", 6])], {"W": rand(4, 6), "b": rand(6)}))
    assert kinds(cell) == ["affine"] and len(cell.program.ops[0].args) == 3
    assert sorted(cell.params) == ["c.W", "c.b"] and cell.params["c.W"].shape == (4, 6)


def test_gemm_transposed_scaled_with_broadcast_bias():
    cell = check(model([node("Gemm", ["x", "W", "C"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                       [("x", ["N", 4])], [("y", ["N", 6])], {"W": rand(6, 4), "C": rand(1, 6)}))
    assert kinds(cell) == ["affine"] and cell.params["c.W"].shape == (4, 6)


def test_gemm_without_c_and_with_a_per_call_c():
    check(model([node("Gemm", ["x", "W"], ["y"])], [("x", ["N", 4])], [("y", ["N", 6])], {"W": rand(4, 6)}))
    cell = check(model([node("Gemm", ["x", "W", "h"], ["y"])], [("x", ["N", 4]), ("h", ["N", 6])],
                       [("y", ["N", 6])], {"W": rand(4, 6)}))
    assert kinds(cell) == ["affine", "add"]


def test_two_biased_linears_fuse_into_one_affine_with_summed_bias():
    # What torch exports for an LSTM cell: W_ih x + b_ih + W_hh h + b_hh.
    cell = check(model([node("Gemm", ["x", "Wi", "bi"], ["a"], transB=1),
                        node("Gemm", ["h", "Wh", "bh"], ["b"], transB=1),
                        node("Add", ["a", "b"], ["y"])],
                       [("x", ["N", 3]), ("h", ["N", 4])], [("y", ["N", 8])],
                       {"Wi": rand(8, 3), "bi": rand(8), "Wh": rand(8, 4), "bh": rand(8)}))
    assert kinds(cell) == ["affine"] and len(cell.program.ops[0].args) == 5
    assert "c.bi_plus_bh" in cell.params and "c.bi" not in cell.params


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_elementwise_with_values_and_constants(op):
    cell = check(model([node(op, ["x", "h"], ["a"]), node(op, ["one", "a"], ["b"]), node(op, ["b", "v"], ["y"])],
                       [("x", ["N", 5]), ("h", ["N", 5])], [("y", ["N", 5])],
                       {"one": np.array(1.0, np.float32), "v": rand(1, 5)}))
    assert kinds(cell) == (["sum"] if op == "Add" else [op.lower()] * 3)
    assert cell.params["c.one"].shape == (5,)  # the scalar, materialised to the operand's shape


def test_add_chain_becomes_one_sum():
    cell = check(model([node("Add", ["x", "y"], ["a"]), node("Add", ["a", "z"], ["b"]),
                        node("Add", ["w", "b"], ["s"])],
                       [("x", ["N", 3]), ("y", ["N", 3]), ("z", ["N", 3]), ("w", ["N", 3])], [("s", ["N", 3])]))
    assert kinds(cell) == ["sum"] and len(cell.program.ops[0].args) == 4


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Relu"])
def test_unary(op):
    assert kinds(check(model([node(op, ["x"], ["y"])], [("x", ["N", 7])], [("y", ["N", 7])]))) == [op.lower()]


def test_exp_and_div_by_values_and_constants():
    cell = check(model([node("Exp", ["x"], ["e"]), node("Div", ["e", "h"], ["a"]), node("Div", ["two", "a"], ["b"]),
                        node("Div", ["b", "v"], ["y"])],
                       [("x", ["N", 5]), ("h", ["N", 5])], [("y", ["N", 5])],
                       {"two": np.array(2.0, np.float32), "v": rand(5) + 3}))
    assert kinds(cell) == ["exp", "div", "div", "div"]
    assert cell.program.ops[2].args[0] == "c.two" and cell.params["c.two"].shape == (5,)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset, axis, dims", [
    (18, None, [6]), (18, 1, [6]), (13, -1, [1, 6]), (13, 2, [1, 6]),
    # Before opset 13: axes axis.. (default 1) flattened into one; [6, 1] by default over the 6.
    (11, None, [6]), (11, None, [6, 1]), (11, None, [1, 6]), (11, -2, [1, 6, 1]),
])
def test_softmax_and_log_softmax_along_the_feature_axis(op, opset, axis, dims):
    attrs = {} if axis is None else {"axis": axis}
    io = [("x", ["N"] + dims)], [("y", ["N"] + dims)]
    reference = None
    if opset < 13:  # onnx's evaluator ignores the old semantics: flatten from the axis, then the last axis
        reference = model([node("Flatten", ["x"], ["f"], axis=attrs.get("axis", 1)), node(op, ["f"], ["s"]),
                           node("Shape", ["x"], ["shape"]), node("Reshape", ["s", "shape"], ["y"])], *io)
    cell = check(model([node(op, ["x"], ["y"], **attrs)], *io, opset=opset), reference=reference)
    assert kinds(cell) == ["softmax" if op == "Softmax" else "log_softmax"]


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_normalization(with_bias):
    inits = {"g": rand(6), "B": rand(6)} if with_bias else {"g": rand(6)}
    ins = ["x", "g", "B"] if with_bias else ["x", "g"]
    # Mean and InvStdDev named but unused, as exporters may write them; axis 1 is the last axis here.
    cell = check(model([node("LayerNormalization", ins, ["y", "mean", "inv_std"], axis=1)],
                       [("x", ["N", 6])], [("y", ["N", 6])], inits))
    assert kinds(cell) == ["layer_norm"]
    bias = cell.params[cell.program.ops[0].args[2]]
    np.testing.assert_array_equal(bias.values, inits["B"] if with_bias else np.zeros(6))
    # Over the axes from the first size-1 one: the same features, normalised alike.
    check(model([node("LayerNormalization", ["x", "g"], ["y"], axis=-2, epsilon=1e-5)],
                [("x", ["N", 1, 6])], [("y", ["N", 1, 6])], {"g": rand(1, 6)}))


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims, dims, axes, out", [
    (1, [6], [-1], [1]), (0, [6], [1], []), (None, [1, 6], [2], [1, 1]), (0, [1, 6], [-1, -2], [])])
def test_reductions_over_the_feature_axis(op, opset, keepdims, dims, axes, out):
    attrs, inits, ins = {}, {}, ["x"]
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    if opset >= 18:
        inits["axes"] = np.array(axes, np.int64)
        ins.append("axes")
    else:
        attrs["axes"] = axes
    cell = check(model([node(op, ins, ["y"], **attrs)], [("x", ["N"] + dims)], [("y", ["N"] + out)], inits, opset))
    assert kinds(cell) == ["mean" if op == "ReduceMean" else "max"] and cell.program.output_shapes == ((1,),)


def test_reduction_with_no_axes_as_a_no_op():
    cell = check(model([node("ReduceMax", ["x"], ["m"], noop_with_empty_axes=1), node("Tanh", ["m"], ["y"])],
                       [("x", ["N", 4])], [("y", ["N", 4])]))
    assert kinds(cell) == ["tanh"]


def test_concat_on_the_feature_axis_also_of_unsqueezed_values():
    check(model([node("Concat", ["x", "h"], ["y"], axis=-1)], [("x", ["N", 2]), ("h", ["N", 3])], [("y", ["N", 5])]))
    axes = {"ax": np.array([1], np.int64)}
    cell = check(model([node("Unsqueeze", ["x", "ax"], ["xu"]), node("Unsqueeze", ["h", "ax"], ["hu"]),
                        node("Concat", ["xu", "hu"], ["y"], axis=2)],
                       [("x", ["N", 2]), ("h", ["N", 3])], [("y", ["N", 1, 5])], axes))
    assert kinds(cell) == ["concat"]


@pytest.mark.parametrize("opset, how", [(11, "attr"), (13, "input"), (18, "num_outputs"), (13, "equal")])
def test_split(opset, how):
    inits, ins, attrs = {}, ["x"], {"axis": 1}
    outs = ["a", "b", "c"]
    if how == "attr":
        attrs["split"] = [2, 5, 1]
    elif how == "input":
        inits["s"] = np.array([2, 5, 1], np.int64)
        ins.append("s")
    elif how == "num_outputs":
        attrs["num_outputs"] = 3  # 8 -> 3, 3, 2
    n = 9 if how == "equal" else 8
    m = model([node("Split", ins, outs, **attrs)], [("x", ["N", n])], [(o, None) for o in outs], inits, opset)
    cell = check(m)
    assert kinds(cell) == (["chunk"] if how == "equal" else ["split"])


def test_slices_that_tile_a_vector_become_one_chunk():
    # The legacy exporter's torch.chunk: Slices with constant bounds (INT64_MAX meaning "to the end").
    ints = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {"s0": ints(0), "s1": ints(4), "s2": ints(-4), "end": ints(2 ** 63 - 1), "ax": ints(1)}
    cell = check(model([node("Slice", ["x", "s0", "s1", "ax"], ["a"]),
                        node("Slice", ["x", "s1", "s2", "ax"], ["b"]),
                        node("Slice", ["x", "s2", "end", "ax"], ["c"])],
                       [("x", ["N", 12])], [("a", None), ("b", None), ("c", None)], inits))
    assert kinds(cell) == ["chunk"]


def test_slice_of_the_middle_and_whole_batch_and_old_opset():
    ints = lambda *v: np.array(v, np.int64)  # noqa: E731
    cell = check(model([node("Slice", ["x", "st", "en", "ax"], ["y"])], [("x", ["N", 10])], [("y", None)],
                       {"st": ints(0, 3), "en": ints(2 ** 63 - 1, 7), "ax": ints(0, -1)}))
    assert kinds(cell) == ["split"] and cell.program.output_shapes == ((4,),)
    check(model([node("Slice", ["x"], ["y"], starts=[2], ends=[5], axes=[1])], [("x", ["N", 6])],
                [("y", None)], opset=9))


def test_gather_rows_of_a_table_by_token_ids():
    m = model([node("Gather", ["E", "ids"], ["x"]), node("Tanh", ["x"], ["y"])],
              [("ids", ["N"], I64)], [("y", ["N", 4])], {"E": rand(10, 4)})
    cell = check(m)
    assert kinds(cell) == ["embed", "tanh"] and cell.program.inputs[0].dtype == "token"
    # [batch, 1] ids, as torch often exports them, squeezed after the lookup.
    check(model([node("Gather", ["E", "ids"], ["x"]), node("Squeeze", ["x", "ax"], ["y"])],
                [("ids", ["N", 1], I64)], [("y", ["N", 4])], {"E": rand(10, 4), "ax": np.array([1], np.int64)}))


def test_gather_one_feature_of_a_value():
    cell = check(model([node("Gather", ["x", "i"], ["y"], axis=1)], [("x", ["N", 5])], [("y", ["N"])],
                       {"i": np.array(-2, np.int64)}))
    assert cell.program.output_shapes == ((1,),)


@pytest.mark.parametrize("opset", [11, 18])
def test_reshapes_that_keep_the_batch_axis_are_free(opset):
    new_api = opset >= 13
    inits = {"shape": np.array([0, -1], np.int64), "shape2": np.array([-1, 2, 1, 3], np.int64)}
    if new_api:
        inits["ax"] = np.array([1, 3], np.int64)
    axes = {} if new_api else {"axes": [1, 3]}
    nodes = [node("Unsqueeze", ["x", "ax"] if new_api else ["x"], ["u"], **axes),  # [N, 1, 6, 1]
             node("Squeeze", ["u", "ax"] if new_api else ["u"], ["s"], **axes),
             node("Reshape", ["s", "shape2"], ["r"]),  # [N, 2, 1, 3] is not a vector: only passed on
             node("Flatten", ["u"], ["f"]),
             node("Reshape", ["f", "shape"], ["g"]),
             node("Identity", ["g"], ["i"]),
             node("Cast", ["i"], ["y"], to=F),
             node("Tanh", ["y"], ["t"])]
    with pytest.raises(SpecError, match="edbc cell values are vectors"):
        check(model(nodes, [("x", ["N", 6])], [("t", ["N", 6])], inits, opset))
    nodes[2] = node("Identity", ["s"], ["r"])
    cell = check(model(nodes, [("x", ["N", 6])], [("t", ["N", 6])], inits, opset))
    assert kinds(cell) == ["tanh"]


def test_constants_and_shape_arithmetic_are_evaluated_at_import():
    # The legacy exporter's chunk with a dynamic batch: sizes computed from Shape(x).
    ints = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [node("Shape", ["x"], ["sh"]),
             node("Constant", [], ["one"], value=numpy_helper.from_array(ints(1))),
             node("Gather", ["sh", "one"], ["n"]),  # 8, known although the batch size is not
             node("Constant", [], ["two"], value=numpy_helper.from_array(ints(2))),
             node("Div", ["n", "two"], ["half"]),
             node("Slice", ["x", "zero", "half", "one"], ["a"]),
             node("Slice", ["x", "half", "n", "one"], ["b"]),
             node("Mul", ["a", "b"], ["p"]),
             # x.view(x.size(0), -1) on an unsqueezed value: the batch entry of Shape feeds Reshape.
             node("Unsqueeze", ["p", "one"], ["pu"]),
             node("Shape", ["pu"], ["sh2"], end=1),
             node("Concat", ["sh2", "minus"], ["target"], axis=0),
             node("Reshape", ["pu", "target"], ["y"])]
    cell = check(model(nodes, [("x", ["N", 8])], [("y", ["N", 4])], {"zero": ints(0), "minus": ints(-1)}))
    assert kinds(cell) == ["chunk", "mul"]


def test_static_batch_of_one():
    cell = check(model([node("Gemm", ["x", "W", "b"], ["y"], transB=1),
                        node("Reshape", ["y", "shape"], ["z"])],
                       [("x", [1, 4])], [("z", [1, 6])],
                       {"W": rand(6, 4), "b": rand(6), "shape": np.array([1, -1], np.int64)}), batch=1)
    assert kinds(cell) == ["affine"]


def test_local_functions_are_inlined():
    gate = helper.make_function("local", "Gate", ["a"], ["b"], [node("Sigmoid", ["a"], ["b"])],
                                [helper.make_opsetid("", 18)])
    m = model([helper.make_node("Gate", ["x"], ["y"], domain="local")], [("x", ["N", 3])], [("y", ["N", 3])])
    m.opset_import.append(helper.make_opsetid("local", 1))
    m.functions.append(gate)
    assert kinds(check(m)) == ["sigmoid"]


def test_inputs_passed_through_or_output_twice_get_rows_of_their_own():
    cell = check(model([node("Identity", ["x"], ["a"]), node("Tanh", ["x"], ["t"]), node("Identity", ["t"], ["b"])],
                       [("x", ["N", 3])], [("a", None), ("t", None), ("b", None)]))
    assert kinds(cell) == ["tanh", "identity", "identity"]
    assert [cell.program.values[v].name for v in cell.program.outputs] == ["a", "t", "b"]


# -- cells exported by torch.onnx.export -------------------------------------------------------

class _LSTMCell(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = torch.nn.LSTMCell(6, 8)

    def forward(self, x, h, c):
        return self.cell(x, (h, c))


class _GRUCell(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = torch.nn.GRUCell(6, 8)

    def forward(self, x, h):
        return self.cell(x, h)


class _NormedScores(torch.nn.Module):
    """LayerNorm (its weights drawn, not torch's ones and zeros), softmaxes, exp, div and reductions."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 8)
        self.norm = torch.nn.LayerNorm(8)
        torch.nn.init.normal_(self.norm.weight)
        torch.nn.init.normal_(self.norm.bias)

    def forward(self, x):
        h = self.norm(self.linear(x))
        z = torch.exp(h) / (1 + torch.softmax(h, dim=-1))
        return torch.log_softmax(z, dim=-1), h.mean(-1, keepdim=True), h.amax(-1)


def _export(module, names, outputs, path, dynamo):
    torch.manual_seed(1)
    module = module().eval()
    args = (torch.randn(2, 6),) + tuple(torch.randn(2, 8) for _ in names[1:])
    kw = ({"dynamic_shapes": tuple({0: torch.export.Dim("batch")} for _ in names), "external_data": False}
          if dynamo else {"dynamic_axes": {n: {0: "batch"} for n in names + outputs}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=dynamo, input_names=names, output_names=outputs, **kw)
    return onnx.load(str(path))


@pytest.mark.parametrize("module, names, outputs", [(_LSTMCell, ["x", "h", "c"], ["h2", "c2"]),
                                                    (_GRUCell, ["x", "h"], ["h2"])], ids=["lstm", "gru"])
def test_cells_exported_by_the_torchscript_exporter(module, names, outputs, tmp_path):
    cell = check(_export(module, names, outputs, tmp_path / "m.onnx", dynamo=False))
    if module is _LSTMCell:
        assert kinds(cell).count("affine") == 1  # both matmuls and both biases in one affine


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_a_normalising_cell_exported_by_torch(dynamo, tmp_path):
    if dynamo:
        pytest.importorskip("onnxscript")
    cell = check(_export(_NormedScores, ["x"], ["y", "m", "mx"], tmp_path / "m.onnx", dynamo))
    assert {"layer_norm", "softmax", "exp", "div", "log_softmax", "mean", "max"} <= set(kinds(cell))


def test_a_cell_exported_by_the_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    cell = check(_export(_LSTMCell, ["x", "h", "c"], ["h2", "c2"], tmp_path / "m.onnx", dynamo=True))
    assert kinds(cell).count("affine") == 1


# -- the bundled example: the TreeLSTM node cell -----------------------------------------------

def _yaml_weights_from_onnx() -> dict[str, torch.Tensor]:
    """treelstm.yaml's node parameters holding the ONNX file's weights (nn.Linear stores W^T)."""
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(NODE_ONNX)).graph.initializer}
    return {"U_l": torch.tensor(init["U_l.weight"].T.copy()), "U_r": torch.tensor(init["U_r.weight"].T.copy()),
            "b_node": torch.tensor(init["U_l.bias"])}


def test_onnx_cell_equals_the_yaml_cell():
    yaml_spec, onnx_spec = load_model(TREELSTM), load_model(TREELSTM_ONNX)
    yaml_node, onnx_node = yaml_spec.cells["node"], onnx_spec.cells["node"]
    assert [v.name for v in onnx_node.inputs] == [v.name for v in yaml_node.inputs]
    assert onnx_node.output_shapes == yaml_node.output_shapes
    assert [op.kind for op in onnx_node.ops] == [op.kind for op in yaml_node.ops]  # fused as written in YAML
    yaml_weights = {k: init_param(p) for k, p in yaml_spec.params.items()} | _yaml_weights_from_onnx()
    onnx_weights = {k: init_param(p) for k, p in onnx_spec.params.items()}
    inputs = [torch.randn(5, 128, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    for a, b in zip(interpret(yaml_node, inputs, yaml_weights), interpret(onnx_node, inputs, onnx_weights)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("granularity", ["cell", "op"])
def test_onnx_model_equals_the_yaml_model_batched(granularity):
    yaml_spec, onnx_spec = load_model(TREELSTM), load_model(TREELSTM_ONNX)
    trees = load_data(yaml_spec, None, limit=12, seed=5).instances  # the vocabularies are the same
    yaml_rt, onnx_rt = Runtime(yaml_spec), Runtime(onnx_spec)
    yaml_rt.weights.update(_yaml_weights_from_onnx())
    outs = []
    for spec, rt in ((yaml_spec, yaml_rt), (onnx_spec, onnx_rt)):
        b = compile_batch(spec, trees, CompileOptions("agenda", granularity), verify=True)
        outs.append(rt.prepare(b).run())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("granularity", ["cell", "op"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_onnx_model_runs_equal_to_the_reference(policy, granularity):
    spec, _ = load_spec(TREELSTM_ONNX)
    report = run(spec, load_data(spec, None, limit=16, seed=1), batch_size=8,
                 options=CompileOptions(policy, granularity), check=True, verify=True)
    assert report.check_passed and report.num_batches >= report.lower_bound


def _copy_example(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "cells").mkdir()
    shutil.copy(TREELSTM_ONNX, tmp_path / "models" / "m.yaml")
    shutil.copy(NODE_ONNX, tmp_path / "cells" / "treelstm_node.onnx")
    return tmp_path / "models" / "m.yaml", tmp_path / "cells" / "treelstm_node.onnx"


def test_plan_embeds_the_onnx_file_and_runs_without_it(tmp_path):
    spec_path, onnx_path = _copy_example(tmp_path)
    spec, text = load_spec(spec_path)
    plans = []
    for name in ("a.plan", "b.plan"):
        plan = compile_plan(spec, text, load_data(spec, None, limit=10, seed=4), batch_size=5, options=CompileOptions(None, "op"))
        save_plan(plan, tmp_path / name)
        plans.append((tmp_path / name).read_bytes())
    assert plans[0] == plans[1]  # deterministic
    onnx_path.unlink()
    loaded = load_plan(tmp_path / "a.plan")
    assert loaded.spec.digest == spec.digest
    assert run_plan(loaded, check=True).check_passed
    r = edbc("run", tmp_path / "a.plan", "--check")
    assert r.exit_code == 0, r.output


def test_the_digest_covers_the_onnx_weights(tmp_path):
    spec_path, onnx_path = _copy_example(tmp_path)
    before = load_model(spec_path).digest
    assert load_model(spec_path).digest == before == load_model(TREELSTM_ONNX).digest
    m = onnx.load(str(onnx_path))
    bias = m.graph.initializer[[t.name for t in m.graph.initializer].index("U_l.bias")]
    values = numpy_helper.to_array(bias).copy()
    values[0] += 1
    bias.CopyFrom(numpy_helper.from_array(values, "U_l.bias"))
    onnx.save(m, str(onnx_path))
    assert load_model(spec_path).digest != before


# -- errors ------------------------------------------------------------------------------------

TINY = """\
model: tiny
dims: {vocab: 8, hidden: 4}
vocab:
  word: {size: vocab}
params:
  E: {shape: [vocab, hidden]}
cells:
  leaf:
    inputs: {word: token}
    ops:
      - h = tanh(embed(E, word))
    outputs: [h]
  node:
    onnx: CELL
  out:
    inputs: {h: [hidden]}
    ops:
      - y = log_softmax(h)
    outputs: [y]
structure:
  kind: tree
  leaf: {cell: leaf, bind: {word: word}}
  internal: {cell: node, bind: {l: left.h, r: right.h}}
readout: {cell: out, at: root, bind: {h: node.h}}
"""


def _tiny(tmp_path, m: onnx.ModelProto | bytes, extra: str = ""):
    path = tmp_path / "cell.onnx"
    path.write_bytes(m if isinstance(m, bytes) else m.SerializeToString())
    spec = tmp_path / "m.yaml"
    spec.write_text(TINY.replace("onnx: CELL", "onnx: cell.onnx" + extra))
    return spec, path


def _tiny_cell(op="Add", **attrs):
    return model([node(op, ["l", "r"], ["h"], name="the_node", **attrs)], [("l", ["N", 4]), ("r", ["N", 4])],
                 [("h", ["N", 4])])


def test_the_readme_names_every_supported_operator():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("- Supported operators:"):readme.index("- Anything else is one line")]
    assert [op for op in SUPPORTED if not re.search(rf"\b{op}\b", section)] == []


def test_a_tiny_spec_with_an_onnx_cell_runs(tmp_path):
    spec, _ = _tiny(tmp_path, _tiny_cell())
    r = edbc("run", spec, "--limit", 8, "--check", "--granularity", "op")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("op, attrs", [("Conv", {}), ("Max", {})])
def test_unsupported_operator_is_a_one_line_error(op, attrs, tmp_path):
    spec, path = _tiny(tmp_path, _tiny_cell(op, **attrs))
    one_line_error(edbc("run", spec), EXIT_INPUT, f"{path}:", "cell 'node'", "ONNX node 'the_node'",
                   f"unsupported operator '{op}'", "expected one of: Add,")


def test_lstm_operator_is_unsupported(tmp_path):
    m = model([node("LSTM", ["x", "W", "R"], ["", "h"], name="rnn", hidden_size=4)],
              [("x", ["N", 1, 4])], [("h", None)], {"W": rand(1, 16, 4), "R": rand(1, 16, 4)})
    with pytest.raises(SpecError, match=r"ONNX node 'rnn' \(LSTM\): unsupported operator 'LSTM'"):
        import_onnx_cell("c", m.SerializeToString(), "m.onnx")


def test_malformed_and_foreign_files(tmp_path):
    spec, path = _tiny(tmp_path, b"not an onnx file at all \x00\xff")
    one_line_error(edbc("run", spec), EXIT_INPUT, f"{path}:", "not an ONNX model")
    spec, path = _tiny(tmp_path, b"")
    one_line_error(edbc("run", spec), EXIT_INPUT, f"{path}:", "not a valid ONNX model")
    spec, path = _tiny(tmp_path, _tiny_cell())
    path.unlink()
    one_line_error(edbc("run", spec), EXIT_INPUT, f"{spec}:14:11:", "no such file")


def test_declared_inputs_and_outputs_must_match_the_graph(tmp_path):
    spec, _ = _tiny(tmp_path, _tiny_cell(), "\n    inputs: {l: [hidden], r: [hidden]}\n    outputs: [h]")
    assert edbc("run", spec, "--limit", 2).exit_code == 0
    spec, _ = _tiny(tmp_path, _tiny_cell(), "\n    inputs: {l: [hidden], r: [2*hidden]}")
    one_line_error(edbc("run", spec), EXIT_INPUT, f"{spec}:15:13:", "do not match the ONNX graph's inputs",
                   "l: [4], r: [4]")
    spec, _ = _tiny(tmp_path, _tiny_cell(), "\n    outputs: [y]")
    one_line_error(edbc("run", spec), EXIT_INPUT, "do not match the ONNX graph's outputs: h")


@pytest.mark.parametrize("nodes, inputs, inits, message", [
    ([node("Split", ["x"], ["a", "b"], axis=0)], [("x", ["N", 4])], {}, "axis 0, the batch axis"),
    ([node("MatMul", ["x", "h"], ["y"])], [("x", ["N", 4]), ("h", [4, 4])], {}, "disagree on axis 0"),
    ([node("MatMul", ["x", "h"], ["y"])], [("x", ["N", 4]), ("h", ["N", 4])], {},
     "the second operand \\(the weight\\) must be a constant"),
    ([node("Mul", ["x", "h"], ["y"])], [("x", ["N", 1]), ("h", ["N", 4])], {}, "no broadcasting"),
    ([node("Add", ["x", "v"], ["y"])], [("x", ["N", 4])], {"v": np.ones((3, 4), np.float32)},
     "may neither vary along the batch axis"),
    ([node("Reshape", ["x", "s"], ["y"])], [("x", ["N", 4])], {"s": np.array([4, -1], np.int64)},
     "does not keep the batch axis first"),
    ([node("Tanh", ["x"], ["y"])], [("x", ["N", "M"])], {}, "only axis 0 may be dynamic"),
    ([node("Tanh", ["input.1"], ["y"])], [("input.1", ["N", 4])], {}, "input_names"),
    ([node("Tanh", ["ids"], ["y"])], [("ids", ["N"], I64)], {}, "token"),
    ([node("Gather", ["x", "ids"], ["y"])], [("x", ["N", 4]), ("ids", ["N"], I64)], {},
     "both operands are per-call values"),
    ([node("Slice", ["x", "s", "e", "a", "st"], ["y"])], [("x", ["N", 4])],
     {"s": np.array([0]), "e": np.array([4]), "a": np.array([1]), "st": np.array([2])}, "step 2"),
    ([node("Shape", ["x"], ["s"]), node("Add", ["s", "one"], ["y"])], [("x", ["N", 4])],
     {"one": np.array([1])}, "computes with the batch size, which is dynamic"),
])
def test_what_the_mapping_cannot_honour(nodes, inputs, inits, message):
    refused(model(nodes, inputs, [(nodes[-1].output[-1], None)], inits), message)


def refused(m: onnx.ModelProto, message: str):
    with pytest.raises(SpecError, match=message) as e:
        import_onnx_cell("c", m.SerializeToString(), "m.onnx")
    assert "\n" not in str(e.value) and str(e.value).startswith("m.onnx: cell 'c'")


NOT_FEATURES = "not along its feature axis"


@pytest.mark.parametrize("opset, nodes, dims, inits, message", [
    (13, [node("Softmax", ["x"], ["y"], axis=0)], [6], {}, "axis 0, the batch axis"),
    (13, [node("Softmax", ["x"], ["y"], axis=1)], [1, 6], {}, f"axis 1 of \\[batch, 1, 6\\], {NOT_FEATURES}"),
    (11, [node("Softmax", ["x"], ["y"], axis=0)], [6], {}, "axis 0, the batch axis"),
    (11, [node("LogSoftmax", ["x"], ["y"], axis=2)], [6, 1], {}, f"axis 2 of \\[batch, 6, 1\\], {NOT_FEATURES}"),
    (18, [node("LayerNormalization", ["x", "g"], ["y"], epsilon=1e-3)], [6], {"g": rand(6)},
     "epsilon is 0.001; edbc's layer_norm uses 1e-05"),
    (18, [node("LayerNormalization", ["x", "g"], ["y", "mean"])], [6], {"g": rand(6)},
     "its output 'mean' .* is used"),
    (18, [node("LayerNormalization", ["x", "g"], ["y"], axis=0)], [6], {"g": rand(6)}, "the batch axis"),
    (18, [node("LayerNormalization", ["x", "g"], ["y"])], [6, 1], {"g": rand(1)}, f"axis 2 .*{NOT_FEATURES}"),
    (18, [node("LayerNormalization", ["x", "x"], ["y"])], [6], {}, "the scale must be a constant"),
    (18, [node("ReduceMean", ["x", "ax"], ["y"])], [6], {"ax": np.array([0], np.int64)}, "the batch axis"),
    (18, [node("ReduceMean", ["x"], ["y"])], [6], {}, "reduces every axis, the batch axis too"),
    (13, [node("ReduceMax", ["x"], ["y"], axes=[-1])], [6, 1], {}, f"axis 2 .*{NOT_FEATURES}"),
    (18, [node("Shape", ["x"], ["s"]), node("ReduceMax", ["x", "s"], ["y"])], [6], {},
     "axes depends on the batch size"),
])
def test_what_the_normalising_and_reducing_ops_refuse(opset, nodes, dims, inits, message):
    refused(model(nodes, [("x", ["N"] + dims)], [(nodes[-1].output[-1], None)], inits, opset), message)
