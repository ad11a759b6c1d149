"""Import a cell given as an ONNX file into a `Program` of edbc's primitive ops.

The ONNX graph is one call of the cell. Axis 0 of every input is the batch axis
(dynamic, or static as exported) and is stripped; every other axis must be
static. edbc values are vectors, so apart from the batch axis a value may have
at most one axis longer than 1; extra axes of size 1 (from Unsqueeze, [b, 1]
ids, ...) are tracked here and cost nothing at run time.

- Float graph inputs become the cell's vector inputs, integer ones its `token`
  inputs; the graph's outputs become the cell's outputs, under their names.
- Initializers and Constant nodes are constants. A node whose inputs are all
  constants is evaluated at import with onnx's reference evaluator. A constant
  used by a per-call value becomes a parameter `<cell>.<initializer>` holding
  the values as the cell uses them (a Gemm's transB weight is stored
  transposed, a scalar is materialised to the operand's shape).
- `Shape` of a per-call value is known except for the batch size: it may feed
  constant arithmetic (Gather, Concat, ... of the static dims) and Reshape.
- Every other node is mapped by one rule of `_RULES` onto primitive ops of
  `edbc.spec.ops.OPS` (their shape rules check what is emitted). Then
  MatMul/Gemm + Add chains are fused into one `affine` with its bias, chains
  of Adds into one `sum`, and slices of one vector into one `split`.

Anything else is a `SpecError` naming the file, the cell, the ONNX node and
its operator.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data
from onnx.reference import ReferenceEvaluator

from ..errors import SpecError
from .model import ParamSpec
from .ops import LAYER_NORM_EPS, OPS, Operand, ShapeError
from .program import F32, TOKEN, Op, Program, Shape, Value, affine_terms, live_ops, value_uses

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
_INTS = (TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8,
         TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8)
# Never evaluated at import: their results are not determined by their inputs.
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
           "Multinomial", "Bernoulli"}
_WHOLE = 2 ** 31 - 1  # a Slice end at least this large means "to the end" (torch writes INT64_MAX)


@dataclass(frozen=True, slots=True)
class OnnxCell:
    """An imported cell: its program and the parameters it reads, with their values."""

    program: Program
    params: dict[str, ParamSpec]


@dataclass(frozen=True, slots=True)
class _Tensor:
    """A per-call tensor of the ONNX graph: an edbc value and its ONNX dims after the batch axis."""

    value: int
    dims: Shape

    @property
    def size(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64))


@dataclass(frozen=True, slots=True)
class _Dims:
    """An int vector made by `Shape` in which some entries are the (dynamic) batch size."""

    known: np.ndarray  # int64; 0 where is_batch
    is_batch: np.ndarray  # bool, same shape


def import_onnx_cell(cell: str, data: bytes, path: str) -> OnnxCell:
    """Import the ONNX model `data` (read from `path`, named in errors) as cell `cell`."""
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError) as e:
        raise SpecError(f"cell '{cell}': not an ONNX model ({str(e).splitlines()[0]}); "
                        f"expected a file written by onnx.save or torch.onnx.export", path=path) from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise SpecError(f"cell '{cell}': not a valid ONNX model ({first}); expected a file written "
                        f"by onnx.save or torch.onnx.export", path=path) from None
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    return _Importer(cell, path, model).run()


def _fmt(dims: Shape) -> str:
    return "[" + ", ".join(["batch"] + [str(d) for d in dims]) + "]"


def _sanitise(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "p_" + s


class _Importer:
    def __init__(self, cell: str, path: str, model: onnx.ModelProto):
        self.cell = cell
        self.path = path
        self.model = model
        self.opsets = {("" if d.domain == "ai.onnx" else d.domain): d.version for d in model.opset_import}
        self.opset = self.opsets.get("", 1)
        self.values: list[Value] = []
        self.ops: list[Op] = []
        self.env: dict[str, _Tensor | _Dims | np.ndarray] = {}
        self.params: dict[str, ParamSpec] = {}
        self._param_of: dict[tuple, str] = {}  # (shape, sha256 of the values) -> parameter name
        self.batch: int | None = None  # the static batch size of the export; None if dynamic
        self.where = ""
        # What some node or the graph's outputs read: a rule may refuse a node for an output that is used.
        self.consumed = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}

    # -- errors and helpers used by the rules -------------------------------------------------

    def error(self, message: str) -> SpecError:
        return SpecError(f"cell '{self.cell}'{self.where}: {message}", path=self.path)

    def data(self, x, what: str) -> _Tensor:
        """`x` as a per-call tensor (float or token ids), or an error saying what it is instead."""
        if isinstance(x, _Tensor):
            return x
        if isinstance(x, _Dims):
            raise self.error(f"{what} is computed from the batch size; only Reshape may use it")
        raise self.error(f"{what} is {'missing' if x is None else 'a constant'}; expected a per-call value")

    def tensor(self, x, what: str) -> _Tensor:
        """`x` as a per-call float tensor, or an error saying what it is instead."""
        x = self.data(x, what)
        if self.values[x.value].dtype == TOKEN:
                raise self.error(f"{what} is an integer (token) input; token ids may only index a "
                                 f"table with Gather")
        return x

    def const(self, x, what: str) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        if isinstance(x, _Dims):
            raise self.error(f"{what} depends on the batch size; it must be a constant")
        raise self.error(f"{what} must be a constant (an initializer or Constant), "
                         f"{'it is missing' if x is None else 'not a per-call value'}")

    def ints(self, x, what: str) -> list[int]:
        c = self.const(x, what)
        if not np.issubdtype(c.dtype, np.integer):
            raise self.error(f"{what} must be integers, got {c.dtype}")
        return [int(v) for v in c.reshape(-1)]

    def axis(self, axis: int, rank: int) -> int:
        if not -rank <= axis < rank:
            raise self.error(f"axis {axis} is out of range for rank {rank}")
        return axis + rank if axis < 0 else axis

    def feature_axes(self, x: _Tensor, axes) -> set[int]:
        """ONNX axes `axes` of `x`, made non-negative; together they must hold all its features (the
        feature axis, and any axes of size 1), so that working along them is working along the vector."""
        found = {self.axis(a, len(x.dims) + 1) for a in axes}
        if 0 in found:
            raise self.error("works along axis 0, the batch axis; edbc batches cell calls along it")
        if int(np.prod([x.dims[a - 1] for a in found], dtype=np.int64)) != x.size:
            listed = ", ".join(map(str, sorted(found)))
            raise self.error(f"works along {'axis' if len(found) == 1 else 'axes'} {listed} of {_fmt(x.dims)}, "
                             f"not along its feature axis")
        return found

    def feature_axis(self, x: _Tensor, axis: int) -> int:
        """Index into `x.dims` of ONNX axis `axis`, which must be the axis along the vector."""
        (a,) = self.feature_axes(x, [axis])
        return a - 1

    def checked(self, x: _Tensor) -> _Tensor:
        if sum(d != 1 for d in x.dims) > 1:
            raise self.error(f"gives shape {_fmt(x.dims)}; edbc cell values are vectors: one batch axis "
                             f"and one feature axis (other axes of size 1)")
        return x

    def param(self, source: str, array: np.ndarray) -> str:
        """A parameter holding `array`; equal arrays share one, named after their ONNX source."""
        if not np.issubdtype(array.dtype, np.floating):
            raise self.error(f"constant '{source}' is {array.dtype}; a parameter must be floating point")
        array = np.ascontiguousarray(array, dtype=np.float32)
        key = (array.shape, hashlib.sha256(array.tobytes()).digest())
        if key not in self._param_of:
            base = name = f"{self.cell}.{_sanitise(source)}"
            k = 1
            while name in self.params:
                k += 1
                name = f"{base}_{k}"
            self.params[name] = ParamSpec.given(name, array)
            self._param_of[key] = name
        return self._param_of[key]

    def broadcast_param(self, source: str, c: np.ndarray, dims: Shape) -> str:
        """Constant `c` as a parameter of a value's shape; it may not vary along the batch axis."""
        full = (1,) + dims
        try:
            fits = np.broadcast_shapes(c.shape, full) == full
        except ValueError:
            fits = False
        if not fits:
            raise self.error(f"constant '{source}' of shape {list(c.shape)} does not broadcast to "
                             f"{_fmt(dims)} (it may neither vary along the batch axis nor widen the value)")
        return self.param(source, np.broadcast_to(c, full).reshape(-1))

    def emit(self, kind: str, args: tuple, dims: list[Shape], attrs: dict | None = None) -> list[_Tensor]:
        """Append one primitive op; its shape rule checks it. Returns its outputs."""
        attrs = attrs or {}
        operands = [Operand(True, self.params[a].shape) if isinstance(a, str)
                    else Operand(False, self.values[a].shape, self.values[a].dtype) for a in args]
        try:
            shapes = OPS[kind].infer(operands, attrs)
        except ShapeError as e:
            raise self.error(f"{e}; {OPS[kind].doc}") from None
        outs = []
        for shape, d in zip(shapes, dims, strict=True):
            self.values.append(Value(f"%{len(self.values)}", shape))
            outs.append(self.checked(_Tensor(len(self.values) - 1, d)))
        self.ops.append(Op(kind, tuple(args), tuple(t.value for t in outs), tuple(sorted(attrs.items()))))
        return outs

    def take(self, x: _Tensor, lo: int, hi: int, dims: Shape) -> _Tensor:
        """Features lo:hi of vector `x`, as the middle part of a split (merged later)."""
        n = x.size
        if (lo, hi) == (0, n):
            return self.checked(_Tensor(x.value, dims))
        sizes = [s for s in (lo, hi - lo, n - hi) if s > 0]
        parts = self.emit("split", (x.value,), [(s,) for s in sizes], {"sizes": tuple(sizes)})
        return self.checked(_Tensor(parts[1 if lo > 0 else 0].value, dims))

    # -- the import ----------------------------------------------------------------------------

    def run(self) -> OnnxCell:
        graph = self.model.graph
        if graph.sparse_initializer:
            raise self.error("sparse initializers are not supported; expected dense initializers")
        for t in graph.initializer:
            if uses_external_data(t):
                raise self.error(f"initializer '{t.name}' is stored in an external file; expected the "
                                 f"weights inside the .onnx file (export with external_data=False)")
            self.env[t.name] = numpy_helper.to_array(t)
        self.inputs(graph)
        n_inputs = len(self.values)
        for index, node in enumerate(graph.node):
            self.node(node, index)
        outputs = self.outputs(graph, n_inputs)
        self.where = ""
        values, ops, outputs = _optimise(self.values, self.ops, n_inputs, outputs, self.params)
        program = Program(self.cell, values, n_inputs, ops, outputs)
        used = set(program.params())
        return OnnxCell(program, {k: p for k, p in self.params.items() if k in used})

    def inputs(self, graph: onnx.GraphProto) -> None:
        statics = set()
        for vi in graph.input:
            if vi.name in self.env:  # an initializer listed as an input (IR < 4): a constant
                continue
            self.where = f", input '{vi.name}'"
            if not _NAME.match(vi.name):
                raise self.error("the input name is not a valid name (letters, digits, _); name the inputs "
                                 "with torch.onnx.export(..., input_names=[...])")
            if not vi.type.HasField("tensor_type"):
                raise self.error("is not a tensor")
            t = vi.type.tensor_type
            if t.elem_type in _FLOATS:
                dtype = F32
            elif t.elem_type in _INTS:
                dtype = TOKEN
            else:
                raise self.error(f"has element type {TensorProto.DataType.Name(t.elem_type)}; "
                                 f"expected a float tensor or integer token ids")
            if not t.HasField("shape") or not t.shape.dim:
                raise self.error("needs a shape whose axis 0 is the batch axis")
            lead, *rest = t.shape.dim
            if lead.HasField("dim_value"):
                statics.add(lead.dim_value)
            else:
                statics.add(None)
            if not all(d.HasField("dim_value") and d.dim_value > 0 for d in rest):
                raise self.error("has a dynamic dimension after the batch axis; only axis 0 may be dynamic")
            dims = tuple(d.dim_value for d in rest)
            size = int(np.prod(dims, dtype=np.int64))
            if dtype == TOKEN and size != 1:
                raise self.error(f"integer input of shape {_fmt(dims)}; token ids are one id per call")
            self.values.append(Value(vi.name, () if dtype == TOKEN else (size,), dtype))
            self.env[vi.name] = self.checked(_Tensor(len(self.values) - 1, dims))
        self.where = ""
        if not self.values:
            raise self.error("the ONNX graph has no inputs besides its initializers")
        if len(statics) > 1:
            raise self.error(f"the inputs disagree on axis 0 (the batch axis): "
                             f"{sorted(str(s) if s else 'dynamic' for s in statics)}")
        self.batch = statics.pop()

    def node(self, node: onnx.NodeProto, index: int) -> None:
        label = f"'{node.name}'" if node.name else f"#{index} (output '{node.output[0]}')"
        self.where = f", ONNX node {label} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise self.error(f"operator '{node.domain}.{node.op_type}' is not an ONNX standard operator; "
                             f"expected one of: {', '.join(SUPPORTED)}")
        ins = []
        for name in node.input:
            if name and name not in self.env:
                raise self.error(f"input '{name}' is not produced by an earlier node")
            ins.append(self.env[name] if name else None)
        first_new = len(self.values)
        if any(isinstance(x, _Tensor) for x in ins):
            rule = _RULES.get(node.op_type)
            if rule is None:
                raise self.error(f"unsupported operator '{node.op_type}'; expected one of: "
                                 f"{', '.join(SUPPORTED)} (any other operator only on constants, "
                                 f"evaluated at import)")
            results = rule(self, node, ins, _attrs(node))
        elif any(isinstance(x, _Dims) for x in ins):
            results = self.move_dims(node, ins)
        elif node.op_type in _RANDOM:
            raise self.error(f"unsupported operator '{node.op_type}': random values cannot be part of a cell")
        else:
            results = self.fold(node, ins)
        for name, r in zip(node.output, results):
            if not name:
                continue
            self.env[name] = r
            if isinstance(r, _Tensor) and r.value >= first_new:
                self.values[r.value] = Value(name, self.values[r.value].shape, self.values[r.value].dtype)

    def fold(self, node: onnx.NodeProto, ins: list) -> list[np.ndarray]:
        """Evaluate a node of constants now, with onnx's reference evaluator."""
        feeds = {name: x for name, x in zip(node.input, ins) if name}
        try:
            return list(ReferenceEvaluator(node, opsets=self.opsets).run(None, feeds))
        except Exception as e:  # the evaluator raises whatever its op implementations raise
            raise self.error(f"cannot evaluate this node of constants ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None

    def move_dims(self, node: onnx.NodeProto, ins: list) -> list:
        """Data movement (Gather, Concat, Unsqueeze, ...) of `Shape` results, batch entries tracked."""
        if node.op_type not in _DIMS_MOVES:
            raise self.error(f"computes with the batch size, which is dynamic; a Shape that includes it "
                             f"may only pass through {', '.join(sorted(_DIMS_MOVES))} into a Reshape's target")
        data = range(len(ins)) if node.op_type == "Concat" else (0,)
        known, flags = [], []
        for k, x in enumerate(ins):
            if k in data and x is not None:
                known.append(x.known if isinstance(x, _Dims) else x)
                flags.append(x.is_batch.astype(np.int64) if isinstance(x, _Dims) else np.zeros(x.shape, np.int64))
            else:
                if isinstance(x, _Dims):
                    raise self.error(f"input {k + 1} depends on the batch size; it must be a constant")
                known.append(x)
                flags.append(x)
        (out_known,) = self.fold(node, known)[:1]
        (out_flags,) = self.fold(node, flags)[:1]
        is_batch = np.asarray(out_flags).astype(bool)
        return [_Dims(np.asarray(out_known, dtype=np.int64), is_batch) if is_batch.any() else out_known]

    def outputs(self, graph: onnx.GraphProto, n_inputs: int) -> list[int]:
        out: list[int] = []
        for vi in graph.output:
            self.where = f", output '{vi.name}'"
            if not _NAME.match(vi.name):
                raise self.error("the output name is not a valid name (letters, digits, _); name the outputs "
                                 "with torch.onnx.export(..., output_names=[...])")
            x = self.tensor(self.env.get(vi.name), "the output")
            v = x.value
            if v < n_inputs or v in out:
                # An input passed through, or one value under two names, needs a row of its own.
                (x,) = self.emit("identity", (v,), [x.dims])
                v = x.value
            self.values[v] = Value(vi.name, self.values[v].shape)
            out.append(v)
        if not out:
            raise self.error("the ONNX graph has no outputs")
        return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# -- rules: one per ONNX operator that touches per-call values ----------------------------------

_Rule = Callable[[_Importer, onnx.NodeProto, list, dict], list]
_RULES: dict[str, _Rule] = {}
# Ops that only move entries around: a Shape result (with batch entries) may pass through them.
_DIMS_MOVES = {"Gather", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Cast", "Slice", "Flatten"}


def _rule(*op_types: str):
    def wrap(fn):
        for t in op_types:
            _RULES[t] = fn
        return fn
    return wrap


@_rule("Identity")
def _identity(imp, node, ins, attrs):
    return [imp.data(ins[0], "the operand")]


@_rule("Cast")
def _cast(imp, node, ins, attrs):
    x = imp.data(ins[0], "the operand")
    token = imp.values[x.value].dtype == TOKEN
    if (attrs["to"] in _INTS) != token or (attrs["to"] not in _INTS and attrs["to"] not in _FLOATS):
        raise imp.error(f"Cast to {TensorProto.DataType.Name(attrs['to'])} changes what the value is; "
                        f"only float-to-float and int-to-int casts are supported")
    return [x]  # edbc computes in fp32 and keeps token ids as int64


@_rule("Sigmoid", "Tanh", "Relu", "Exp")
def _unary(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "the operand")
    return imp.emit(node.op_type.lower(), (x.value,), [x.dims])


@_rule("Add", "Sub", "Mul", "Div")
def _binary(imp, node, ins, attrs):
    kind = node.op_type.lower()
    a, b = ins
    if isinstance(a, _Tensor) and isinstance(b, _Tensor):
        a, b = imp.tensor(a, "operand 1"), imp.tensor(b, "operand 2")
        if a.dims != b.dims:
            raise imp.error(f"operands {_fmt(a.dims)} and {_fmt(b.dims)} differ; edbc's elementwise ops "
                            f"take per-call values of equal shapes (no broadcasting between them)")
        return imp.emit(kind, (a.value, b.value), [a.dims])
    if isinstance(a, _Tensor):
        x = imp.tensor(a, "operand 1")
        p = imp.broadcast_param(node.input[1], imp.const(b, "operand 2"), x.dims)
        return imp.emit(kind, (x.value, p), [x.dims])
    x = imp.tensor(b, "operand 2")
    p = imp.broadcast_param(node.input[0], imp.const(a, "operand 1"), x.dims)
    return imp.emit(kind, (p, x.value), [x.dims])


@_rule("Softmax", "LogSoftmax")
def _softmax(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "the operand")
    rank = len(x.dims) + 1
    if imp.opset >= 13:
        axes = [attrs.get("axis", -1)]
    else:  # opset < 13 flattens axes axis.. (default 1) into one and normalises over that
        axes = range(imp.axis(attrs.get("axis", 1), rank), rank)
    imp.feature_axes(x, axes)
    return imp.emit("softmax" if node.op_type == "Softmax" else "log_softmax", (x.value,), [x.dims])


@_rule("LayerNormalization")
def _layer_norm(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "the operand")
    for name in node.output[1:]:
        if name in imp.consumed:
            raise imp.error(f"its output '{name}' (the mean or inverse standard deviation) is used; "
                            f"edbc's layer_norm gives only the normalised value")
    eps = attrs.get("epsilon", LAYER_NORM_EPS)
    if np.float32(eps) != np.float32(LAYER_NORM_EPS):  # the attribute is a float32
        raise imp.error(f"epsilon is {eps:g}; edbc's layer_norm uses {LAYER_NORM_EPS:g} (torch's default)")
    rank = len(x.dims) + 1
    imp.feature_axes(x, range(imp.axis(attrs.get("axis", -1), rank), rank))
    scale = imp.broadcast_param(node.input[1], imp.const(ins[1], "the scale"), x.dims)
    if len(ins) > 2 and ins[2] is not None:
        bias = imp.broadcast_param(node.input[2], imp.const(ins[2], "the bias B"), x.dims)
    else:  # layer_norm always adds a bias: without B, one of zeros
        bias = imp.param("zeros", np.zeros(x.size, np.float32))
    return imp.emit("layer_norm", (x.value, scale, bias), [x.dims])


@_rule("MatMul")
def _matmul(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "MatMul's first operand")
    if not isinstance(ins[1], np.ndarray):
        raise imp.error("the second operand (the weight) must be a constant; MatMul of two per-call "
                        "values is not supported")
    w = ins[1]
    if w.ndim != 2:
        raise imp.error(f"the weight has shape {list(w.shape)}; expected a matrix [in, out]")
    if not x.dims or x.dims[-1] != x.size:
        raise imp.error(f"MatMul contracts the last axis of {_fmt(x.dims)}, which must be its feature axis")
    p = imp.param(node.input[1], w)
    return imp.emit("affine", (x.value, p), [x.dims[:-1] + (w.shape[1],)])


@_rule("Gemm")
def _gemm(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "Gemm's A")
    if len(x.dims) != 1:
        raise imp.error(f"A has shape {_fmt(x.dims)}; Gemm takes A of shape [batch, in]")
    if attrs.get("transA", 0):
        raise imp.error("transA=1 would contract the batch axis; expected transA=0")
    if not isinstance(ins[1], np.ndarray):
        raise imp.error("B (the weight) must be a constant; Gemm of two per-call values is not supported")
    w = ins[1].T if attrs.get("transB", 0) else ins[1]
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    w = w * np.float32(alpha) if alpha != 1.0 else w
    args = (x.value, imp.param(node.input[1], w))
    out_dims = (w.shape[1],)
    c = ins[2] if len(ins) > 2 else None
    if c is None:
        return imp.emit("affine", args, [out_dims])
    if isinstance(c, np.ndarray):
        bias = imp.broadcast_param(node.input[2], c * np.float32(beta) if beta != 1.0 else c, out_dims)
        return imp.emit("affine", args + (bias,), [out_dims])
    c = imp.tensor(c, "C")
    if beta != 1.0:
        raise imp.error("C is a per-call value and beta is not 1; expected beta=1")
    (y,) = imp.emit("affine", args, [out_dims])
    return imp.emit("add", (y.value, c.value), [out_dims])


@_rule("Concat")
def _concat(imp, node, ins, attrs):
    parts = [imp.tensor(x, f"operand {k}") for k, x in enumerate(ins, start=1)]
    ranks = {len(p.dims) for p in parts}
    if len(ranks) != 1:
        raise imp.error("the operands have different ranks")
    a = imp.axis(attrs["axis"], ranks.pop() + 1)
    if a == 0:
        raise imp.error("joins along axis 0, the batch axis; edbc batches cell calls along it")
    for k, p in enumerate(parts, start=1):
        if any(d != 1 for i, d in enumerate(p.dims) if i != a - 1):
            raise imp.error(f"operand {k} is {_fmt(p.dims)}; Concat must join vectors along their feature axis")
    dims = parts[0].dims[:a - 1] + (sum(p.dims[a - 1] for p in parts),) + parts[0].dims[a:]
    if len(parts) == 1:
        return [parts[0]]
    return imp.emit("concat", tuple(p.value for p in parts), [dims])


@_rule("Split")
def _split(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "the operand")
    j = imp.feature_axis(x, attrs.get("axis", 0))
    n, k = x.size, len(node.output)
    if len(ins) > 1 and ins[1] is not None:
        sizes = imp.ints(ins[1], "the split sizes")
    elif "split" in attrs:
        sizes = list(attrs["split"])
    elif "num_outputs" in attrs:  # opset 18: equal parts, the last one smaller if need be
        step = -(-n // attrs["num_outputs"])
        sizes = [min(step, n - i * step) for i in range(attrs["num_outputs"])]
    else:
        if n % k:
            raise imp.error(f"cannot cut {n} features into {k} equal parts")
        sizes = [n // k] * k
    if len(sizes) != k or sum(sizes) != n or min(sizes) < 1:
        raise imp.error(f"split sizes {sizes} do not cut {n} features into {k} non-empty parts")
    dims = [x.dims[:j] + (s,) + x.dims[j + 1:] for s in sizes]
    if len(set(sizes)) == 1:
        return imp.emit("chunk", (x.value,), dims, {"n": k})
    return imp.emit("split", (x.value,), dims, {"sizes": tuple(sizes)})


@_rule("Slice")
def _slice(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "the operand")
    if imp.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = imp.ints(ins[1], "starts"), imp.ints(ins[2], "ends")
        present = lambda k: len(ins) > k and ins[k] is not None  # noqa: E731
        axes = imp.ints(ins[3], "axes") if present(3) else list(range(len(starts)))
        steps = imp.ints(ins[4], "steps") if present(4) else [1] * len(starts)
    dims = list(x.dims)
    lo, hi = 0, x.size
    for axis, start, end, step in zip(axes, starts, ends, steps):
        a = imp.axis(axis, len(dims) + 1)
        if step != 1:
            raise imp.error(f"step {step}; only contiguous slices (step 1) are supported")
        if a == 0:
            whole = _WHOLE if imp.batch is None else imp.batch
            if start != 0 or end < whole:
                raise imp.error("slices axis 0, the batch axis; it must keep the whole batch")
            continue
        s, e, _ = slice(start, end).indices(dims[a - 1])
        if e <= s:
            raise imp.error(f"the slice {start}:{end} of axis {a} is empty")
        if dims[a - 1] > 1:  # the feature axis (others have size 1)
            lo, hi = s, e
        dims[a - 1] = e - s
    return [imp.take(x, lo, hi, tuple(dims))]


@_rule("Gather")
def _gather(imp, node, ins, attrs):
    data, index = ins[0], ins[1]
    axis = attrs.get("axis", 0)
    if isinstance(data, np.ndarray) and isinstance(index, _Tensor):
        if imp.values[index.value].dtype != TOKEN:
            raise imp.error("the indices are float values; Gather from a table needs integer token ids")
        if data.ndim != 2 or imp.axis(axis, 2) != 0:
            raise imp.error(f"Gather by token ids needs a [rows, dim] table indexed along axis 0, got a "
                            f"table of shape {list(data.shape)} and axis {axis}")
        table = imp.param(node.input[0], data)
        return imp.emit("embed", (table, index.value), [index.dims + (data.shape[1],)])
    if isinstance(data, _Tensor) and isinstance(index, np.ndarray):
        x = imp.tensor(data, "the data")
        j = imp.feature_axis(x, axis)
        if index.size != 1 or not np.issubdtype(index.dtype, np.integer):
            raise imp.error("Gather from a per-call value takes one constant integer index")
        i = int(index.reshape(-1)[0])
        i = i + x.size if i < 0 else i
        if not 0 <= i < x.size:
            raise imp.error(f"index {int(index.reshape(-1)[0])} is out of range for {x.size} features")
        return [imp.take(x, i, i + 1, x.dims[:j] + index.shape + x.dims[j + 1:])]
    raise imp.error("expected a constant table indexed by token ids, or a per-call value indexed by a "
                    "constant; both operands are per-call values here")


def _axes_of(imp: _Importer, node, ins, attrs) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return imp.ints(ins[1], "axes")
    return list(attrs["axes"]) if "axes" in attrs else None


@_rule("ReduceMean", "ReduceMax")
def _reduce(imp, node, ins, attrs):
    x = imp.tensor(ins[0], "the operand")
    axes = _axes_of(imp, node, ins, attrs)
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        raise imp.error("reduces every axis, the batch axis too; expected axes=[-1], the feature axis")
    reduced = imp.feature_axes(x, axes)
    keep = attrs.get("keepdims", 1)
    # All features reduce to one: [d] -> [1] (keepdims) or a scalar; edbc's value is [1] either way.
    dims = tuple(1 if a in reduced else d for a, d in enumerate(x.dims, start=1) if keep or a not in reduced)
    return imp.emit("mean" if node.op_type == "ReduceMean" else "max", (x.value,), [dims])


@_rule("Unsqueeze")
def _unsqueeze(imp, node, ins, attrs):
    x = imp.data(ins[0], "the operand")
    axes = _axes_of(imp, node, ins, attrs)
    rank = len(x.dims) + 1 + len(axes or ())
    axes = {imp.axis(a, rank) for a in axes or ()}
    if 0 in axes:
        raise imp.error("inserts an axis before the batch axis; axis 0 must stay the batch axis")
    rest = iter(x.dims)
    return [imp.checked(_Tensor(x.value, tuple(1 if a in axes else next(rest) for a in range(1, rank))))]


@_rule("Squeeze")
def _squeeze(imp, node, ins, attrs):
    x = imp.data(ins[0], "the operand")
    axes = _axes_of(imp, node, ins, attrs)
    if axes is None:
        if imp.batch == 1:
            raise imp.error("squeezes every axis of size 1, the static batch axis too; give its axes")
        axes = {a for a, d in enumerate(x.dims, start=1) if d == 1}
    else:
        axes = {imp.axis(a, len(x.dims) + 1) for a in axes}
    if 0 in axes:
        raise imp.error("squeezes axis 0, the batch axis; it must stay")
    for a in axes:
        if x.dims[a - 1] != 1:
            raise imp.error(f"axis {a} of {_fmt(x.dims)} has size {x.dims[a - 1]}, not 1")
    return [_Tensor(x.value, tuple(d for a, d in enumerate(x.dims, start=1) if a not in axes))]


@_rule("Reshape")
def _reshape(imp, node, ins, attrs):
    x = imp.data(ins[0], "the operand")
    target = ins[1]
    if isinstance(target, _Dims):
        entries, batch_at = [int(v) for v in target.known.reshape(-1)], list(target.is_batch.reshape(-1))
    else:
        entries = imp.ints(target, "the target shape")
        batch_at = [False] * len(entries)
    if not entries:
        raise imp.error("reshapes to a scalar; axis 0 must stay the batch axis")
    keep_zero = not attrs.get("allowzero", 0)
    rest = entries[1:]
    if any(batch_at[1:]):
        raise imp.error("moves the batch size to another axis; axis 0 must stay the batch axis")
    rest = [x.dims[k] if v == 0 and keep_zero and k < len(x.dims) else v for k, v in enumerate(rest)]
    first = entries[0]
    is_batch = batch_at[0] or (first == 0 and keep_zero) or (imp.batch is not None and first == imp.batch) \
        or (first == -1 and -1 not in rest and int(np.prod(rest, dtype=np.int64)) == x.size)
    if not is_batch:
        raise imp.error(f"reshapes to {entries}, which does not keep the batch axis first")
    if rest.count(-1) > 1 or any(v < -1 or v == 0 for v in rest):
        raise imp.error(f"cannot reshape {_fmt(x.dims)} to {entries}")
    if -1 in rest:
        known = int(np.prod([v for v in rest if v != -1], dtype=np.int64))
        if x.size % known:
            raise imp.error(f"cannot reshape {_fmt(x.dims)} to {entries}")
        rest[rest.index(-1)] = x.size // known
    if int(np.prod(rest, dtype=np.int64)) != x.size:
        raise imp.error(f"cannot reshape {_fmt(x.dims)} to {entries}: the number of features differs")
    return [imp.checked(_Tensor(x.value, tuple(rest)))]


@_rule("Flatten")
def _flatten(imp, node, ins, attrs):
    x = imp.data(ins[0], "the operand")
    a = imp.axis(attrs.get("axis", 1), len(x.dims) + 1) if len(x.dims) else 1
    if a == 0 or int(np.prod(x.dims[:a - 1], dtype=np.int64)) != 1:
        raise imp.error(f"Flatten at axis {a} merges feature axes into the batch axis")
    return [_Tensor(x.value, (x.size,))]


@_rule("Shape")
def _shape(imp, node, ins, attrs):
    x = imp.data(ins[0], "the operand")
    known = np.array((0,) + x.dims, dtype=np.int64)
    is_batch = np.zeros(len(known), dtype=bool)
    is_batch[0] = True
    part = slice(attrs.get("start", 0), attrs.get("end", len(known)))  # clamps as ONNX does
    known, is_batch = known[part], is_batch[part]
    if imp.batch is not None:
        known[is_batch] = imp.batch
        return [known]
    return [_Dims(known, is_batch) if is_batch.any() else known]


# What errors list as supported: the rules, and Constant (always evaluated at import).
SUPPORTED = tuple(sorted(set(_RULES) | {"Constant"}))


# -- fusion, then dead-code removal and renumbering ---------------------------------------------

def _terms(op: Op) -> tuple:
    return tuple(a for pair in affine_terms(op.args)[0] for a in pair)


def _bias(op: Op) -> tuple:
    bias = affine_terms(op.args)[1]
    return () if bias is None else (bias,)


def _fuse_adds(values: list[Value], ops: list[Op], outputs: list[int],
               params: dict[str, ParamSpec]) -> list[Op]:
    """affine + affine -> one affine; affine + bias -> affine with bias; add chains -> one sum.

    A fused-away op must have this add as its only use. Two biases become one
    new parameter, their sum. Sums keep the order of the additions, so results
    are bit-for-bit those of the Add chain.
    """
    uses = value_uses(ops, outputs)
    out: list[Op | None] = []
    made: dict[int, int] = {}  # value -> index in `out` of the op making it

    def sole(arg, kinds) -> int | None:
        if isinstance(arg, str) or uses[arg] != 1 or arg not in made:
            return None
        prev = out[made[arg]]
        return made[arg] if prev is not None and prev.kind in kinds and len(prev.outs) == 1 else None

    for op in ops:
        if op.kind == "add":
            op = _fused(op, out, sole, values, params) or op
        for v in op.outs:
            made[v] = len(out)
        out.append(op)
    return [op for op in out if op is not None]


def _fused(op: Op, out: list, sole, values: list[Value], params: dict[str, ParamSpec]) -> Op | None:
    a, b = op.args
    ia, ib = sole(a, ("affine",)), sole(b, ("affine",))
    if ia is not None and ib is not None:
        ta, tb = out[ia], out[ib]
        out[ia] = out[ib] = None
        biases = _bias(ta) + _bias(tb)
        if len(biases) == 2:
            biases = (_summed(params, *biases),)
        return Op("affine", _terms(ta) + _terms(tb) + biases, op.outs)
    for i, other in ((ia, b), (ib, a)):
        if i is not None and isinstance(other, str) and not _bias(out[i]) \
                and params[other].shape == values[op.outs[0]].shape:
            affine, out[i] = out[i], None
            return Op("affine", affine.args + (other,), op.outs)
    for i, other in ((sole(a, ("add", "sum")), b), (sole(b, ("add", "sum")), a)):
        if i is not None:
            inner, out[i] = out[i], None
            return Op("sum", inner.args + (other,), op.outs)
    return None


def _summed(params: dict[str, ParamSpec], a: str, b: str) -> str:
    """A new parameter a + b, named after both (e.g. an LSTM's two biases)."""
    base = name = f"{a}_plus_{b.partition('.')[2]}"
    k = 1
    while name in params:
        k += 1
        name = f"{base}_{k}"
    params[name] = ParamSpec.given(name, params[a].values + params[b].values)
    return name


def _merge_splits(values: list[Value], ops: list[Op], outputs: list[int]) -> tuple[list[Op], list[int]]:
    """Splits and chunks of one vector whose used parts line up become one split (or chunk)."""
    uses = value_uses(ops, outputs)
    groups: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        if op.kind in ("split", "chunk"):
            groups.setdefault(op.args[0], []).append(i)
    alias: dict[int, int] = {}
    ops = list(ops)
    for src, members in groups.items():
        if len(members) < 2:
            continue
        n = values[src].shape[-1]
        pieces = []  # (lo, hi, value) of every output of every member
        for i in members:
            op = ops[i]
            sizes = list(op.attr("sizes")) if op.kind == "split" else [n // op.attr("n")] * op.attr("n")
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            pieces += [(int(lo), int(hi), v) for lo, hi, v in zip(bounds[:-1], bounds[1:], op.outs)]
        cuts = sorted({c for lo, hi, _ in pieces for c in (lo, hi)})
        part = {(lo, hi): k for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:]))}
        used = [(lo, hi, v) for lo, hi, v in pieces if uses[v]]
        if not all((lo, hi) in part for lo, hi, _ in used):
            continue  # a used part would span several new parts
        outs = [None] * len(part)
        for lo, hi, v in used:
            k = part[(lo, hi)]
            if outs[k] is None:
                outs[k] = v
            else:
                alias[v] = outs[k]
        for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
            if outs[k] is None:
                values.append(Value(f"%{len(values)}", (hi - lo,)))
                outs[k] = len(values) - 1
        sizes = tuple(hi - lo for lo, hi in zip(cuts[:-1], cuts[1:]))
        attrs = (("n", len(sizes)),) if len(set(sizes)) == 1 else (("sizes", sizes),)
        ops[members[0]] = Op("chunk" if len(set(sizes)) == 1 else "split", (src,), tuple(outs), attrs)
        for i in members[1:]:
            ops[i] = None
    renamed = [Op(op.kind, tuple(alias.get(a, a) if not isinstance(a, str) else a for a in op.args),
                  op.outs, op.attrs) for op in ops if op is not None]
    return renamed, [alias.get(v, v) for v in outputs]


def _optimise(values: list[Value], ops: list[Op], n_inputs: int, outputs: list[int],
              params: dict[str, ParamSpec]) -> tuple[tuple[Value, ...], tuple[Op, ...], tuple[int, ...]]:
    ops = _fuse_adds(values, ops, outputs, params)
    ops, outputs = _merge_splits(values, ops, outputs)
    # Dead ops go; the rest are renumbered: inputs first, then op outputs in op order.
    kept = live_ops(ops, outputs)
    new_id = {v: v for v in range(n_inputs)}
    for op in kept:
        for v in op.outs:
            new_id[v] = len(new_id)
    new_values = [None] * len(new_id)
    for old, new in new_id.items():
        new_values[new] = values[old]
    new_ops = tuple(Op(op.kind, tuple(a if isinstance(a, str) else new_id[a] for a in op.args),
                       tuple(new_id[v] for v in op.outs), op.attrs) for op in kept)
    return tuple(new_values), new_ops, tuple(new_id[v] for v in outputs)
