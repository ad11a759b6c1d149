"""The primitive ops a cell may use: the one op table.

`OPS` maps an op kind to its `OpDef`: arity, attributes, shape rule, the flags
every stage reads (elementwise, batchable inside a cell, alias of its input's
memory, noisy) and its torch implementation. Adding a primitive op is one
registration here (plus its line in the README's op list). Shape rules see
operands as `Operand(is_param, shape, dtype)` and raise `ShapeError` with a
message fit for the user. The affine argument layout (`x1, W1, x2, W2, ...,
bias?`) is decoded only by `program.affine_terms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .program import F32, TOKEN, Op, Program, Shape, Value, affine_terms


class ShapeError(Exception):
    """Raised by shape rules; the spec loader adds file, cell and op."""


@dataclass(frozen=True, slots=True)
class Operand:
    is_param: bool
    shape: Shape
    dtype: str = F32


Impl = Callable[[list, dict], tuple]  # (operands, attributes) -> outputs, values with a batch dimension


@dataclass(frozen=True, slots=True)
class OpDef:
    kind: str
    doc: str
    infer: Callable[[list[Operand], dict], list[Shape]]
    impl: Impl
    arity: int | None = None  # operand count; None: variadic (the shape rule checks)
    attrs: tuple[str, ...] = ()  # trailing positional arguments that are attributes, in order
    pairs: bool = False  # arguments written `x @ W` (affine)
    elementwise: bool = False  # a batch of m runs as one call on `[k, m*d]` columns
    batchable: bool = False  # m ops of one cell run as one call on `[k, m, ...]` operands
    alias: Callable[[Shape], bool] | None = None  # given its input's shape: outputs are views of it
    direct: str | None = None  # generated call, `{0}`.. the operands, `{out}` `, out=dest` (else `impl`)
    # Random in training: `impl(args, attrs, noise)` also takes the call's `Noise` (None: inference), and
    # the spec parser numbers the cell's noisy ops in the attribute `site`, so each draws its own mask.
    noisy: bool = False
    # Set reductions only (`set_sum`, ...): `segment(rows, owner, k)` reduces the rows of k nodes' sets at
    # once, row j belonging to node owner[j]; `impl` reduces one node's set, stacked `[n, ...]`.
    segment: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None
    # Its instruction in the native core's cell programs (`edbc.runtime.native.OPCODES`); None: a cell
    # using it runs its generated Python kernel.
    native: str | None = None


OPS: dict[str, OpDef] = {}


def _register(kind: str, doc: str, impl: Impl, arity: int | None = None, **flags):
    def wrap(fn):
        OPS[kind] = OpDef(kind, doc, fn, impl, arity, **flags)
        return fn
    return wrap


def is_alias(program: Program, op: Op) -> bool:
    """Ops that only re-read their input's memory (a reshape; chunk or split of a vector)."""
    alias = OPS[op.kind].alias
    return alias is not None and alias(program.values[op.args[0]].shape)


def computing_producers(program: Program) -> dict[int, int]:
    """Value -> the op computing it, looking through aliases (a slice is its input's memory);
    cell inputs, and slices of them, have none. Ops are taken in program order."""
    producer: dict[int, int] = {}
    for j, op in enumerate(program.ops):
        if is_alias(program, op):
            source = producer.get(op.args[0])
            producer.update({v: source for v in op.outs if source is not None})
        else:
            producer.update({v: j for v in op.outs})
    return producer


def op_signature(program: Program, op: Op, param_key: Callable[[str], object] = lambda name: name) -> tuple:
    """Ops with equal signatures may run as one batch: kind, attributes, operand shapes and
    dtypes, and parameters as `param_key` sees them (by name across calls; inside a cell, by
    shape, since different parameters are stacked once when the kernel is built)."""
    args = tuple(("p", param_key(a)) if isinstance(a, str)
                 else ("v", program.values[a].shape, program.values[a].dtype) for a in op.args)
    return (op.kind, args, op.attrs)


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _needs_value(ops: list[Operand], kind: str) -> None:
    if all(o.is_param for o in ops):
        raise ShapeError(f"{kind} needs at least one value operand, not only parameters")


def _float_only(ops: list[Operand], kind: str) -> None:
    for i, o in enumerate(ops):
        if o.dtype != F32:
            raise ShapeError(f"{kind} operand {i + 1} is a token id; only embed takes tokens")


def _count(ops: list[Operand], kind: str, n: int) -> None:
    if len(ops) != n:
        raise ShapeError(f"{kind} takes {n} operand{'s' if n != 1 else ''}, got {len(ops)}")


def _same_shapes(ops: list[Operand], kind: str) -> Shape:
    _float_only(ops, kind)
    first = ops[0].shape
    for i, o in enumerate(ops[1:], start=2):
        if o.shape != first:
            raise ShapeError(f"{kind} operands must have equal shapes: operand 1 is "
                             f"{_fmt(first)}, operand {i} is {_fmt(o.shape)}")
    return first


@_register("embed", "embed(TABLE, token): row `token` of the [rows, dim] parameter TABLE",
           lambda a, attrs: (F.embedding(a[1], a[0]),), 2, batchable=True, native="embed")
def _embed(ops, attrs):
    _count(ops, "embed", 2)
    table, index = ops
    if not table.is_param or len(table.shape) != 2:
        raise ShapeError("embed's first operand must be a 2-D parameter [rows, dim]")
    if index.dtype != TOKEN:
        raise ShapeError("embed's second operand must be a token input")
    return [(table.shape[1],)]


def _affine_impl(args, attrs):
    pairs, bias = affine_terms(tuple(range(len(args))))
    out = None
    for x, w in pairs:
        term = args[x] @ args[w]
        out = term if out is None else out + term
    return (out if bias is None else out + args[bias],)


@_register("affine", "affine(x1 @ W1, x2 @ W2, ..., b): sum of x_i·W_i plus an optional bias b "
                     "(a parameter, or a value of the result's shape)", _affine_impl, pairs=True, batchable=True,
           native="affine")
def _affine(ops, attrs):
    pairs, bias = affine_terms(tuple(ops))
    if not pairs:
        raise ShapeError("affine needs at least one `x @ W` term")
    out = None
    for k, (x, w) in enumerate(pairs, start=1):
        if x.is_param or x.dtype != F32 or not x.shape:
            raise ShapeError(f"affine term {k}: the left of `@` must be a value with a feature dimension")
        if not w.is_param or len(w.shape) != 2:
            raise ShapeError(f"affine term {k}: the right of `@` must be a 2-D parameter [in, out]")
        if x.shape[-1] != w.shape[0]:
            raise ShapeError(f"affine term {k}: value {_fmt(x.shape)} does not fit weight "
                             f"{_fmt(w.shape)} (expected {x.shape[-1]} rows)")
        term = x.shape[:-1] + (w.shape[1],)
        if out is not None and term != out:
            raise ShapeError(f"affine term {k} gives {_fmt(term)}, earlier terms give {_fmt(out)}")
        out = term
    if bias is not None:
        b = bias
        if b.dtype != F32 or b.shape != (out if not b.is_param else out[-1:]):
            raise ShapeError(f"affine bias must be a parameter of shape {_fmt(out[-1:])}, "
                             f"got {_fmt(b.shape)}")
    return [out]


def _elementwise(kind: str, arity: int, doc: str, impl: Impl, direct: str | None = None,
                 elementwise: bool = True, native: str | None = None):
    @_register(kind, doc, impl, arity, elementwise=elementwise, batchable=True, direct=direct, native=native)
    def rule(ops, attrs):
        _count(ops, kind, arity)
        _needs_value(ops, kind)
        return [_same_shapes(ops, kind)]


_elementwise("add", 2, "add(a, b): elementwise a + b; either may be a parameter of the same shape",
             lambda a, attrs: (a[0] + a[1],), "torch.add({0}, {1}{out})", native="add")
_elementwise("sub", 2, "sub(a, b): elementwise a - b; either may be a parameter of the same shape",
             lambda a, attrs: (a[0] - a[1],), "torch.sub({0}, {1}{out})", native="sub")
_elementwise("mul", 2, "mul(a, b): elementwise a * b; either may be a parameter of the same shape",
             lambda a, attrs: (a[0] * a[1],), "torch.mul({0}, {1}{out})", native="mul")
_elementwise("div", 2, "div(a, b): elementwise a / b; either may be a parameter of the same shape",
             lambda a, attrs: (a[0] / a[1],), "torch.div({0}, {1}{out})", native="div")
_elementwise("addcmul", 3, "addcmul(a, b, c): elementwise a + b * c",
             lambda a, attrs: (torch.addcmul(a[0], a[1], a[2]),), "torch.addcmul({0}, {1}, {2}{out})", native="addcmul")
_elementwise("lerp", 3, "lerp(x, y, w): elementwise x + w * (y - x)",
             lambda a, attrs: (torch.lerp(a[0], a[1], a[2]),), "torch.lerp({0}, {1}, {2}{out})", native="lerp")


def _sum_impl(args, attrs):
    out = args[0]
    for a in args[1:]:
        out = out + a
    return (out,)


@_register("sum", "sum(a, b, ...): elementwise sum of one or more operands", _sum_impl,
           elementwise=True, batchable=True, native="add")
def _sum(ops, attrs):
    if not ops:
        raise ShapeError("sum needs at least one operand")
    _needs_value(ops, "sum")
    return [_same_shapes(ops, "sum")]


_elementwise("sigmoid", 1, "sigmoid(x): elementwise logistic sigmoid",
             lambda a, attrs: (torch.sigmoid(a[0]),), "torch.sigmoid({0}{out})", native="sigmoid")
_elementwise("tanh", 1, "tanh(x): elementwise tanh", lambda a, attrs: (torch.tanh(a[0]),), "fast_tanh({0}{out})", native="tanh")
_elementwise("relu", 1, "relu(x): elementwise max(x, 0)", lambda a, attrs: (torch.relu(a[0]),),
             "torch.clamp_min({0}, 0{out})", native="relu")
_elementwise("exp", 1, "exp(x): elementwise e to the x", lambda a, attrs: (torch.exp(a[0]),), "torch.exp({0}{out})", native="exp")
_elementwise("identity", 1, "identity(x): x itself (a copy)", lambda a, attrs: (a[0],), native="copy")
# Not elementwise: they read the whole last dimension, so m of them cannot share columns.
_elementwise("log_softmax", 1, "log_softmax(x): log-softmax over the last dimension",
             lambda a, attrs: (torch.log_softmax(a[0], dim=-1),), elementwise=False, native="log_softmax")
_elementwise("softmax", 1, "softmax(x): softmax over the last dimension",
             lambda a, attrs: (torch.softmax(a[0], dim=-1),), elementwise=False, native="softmax")


def _last_dim_value(ops: list[Operand], kind: str) -> Operand:
    _needs_value(ops[:1], kind)
    _float_only(ops[:1], kind)
    if not ops[0].shape:
        raise ShapeError(f"{kind}'s first operand must be a value with a feature dimension")
    return ops[0]


def _reduction(kind: str, doc: str, impl: Impl):
    @_register(kind, doc, impl, 1, batchable=True)
    def rule(ops, attrs):
        _count(ops, kind, 1)
        x = _last_dim_value(ops, kind)
        return [x.shape[:-1] + (1,)]


_reduction("mean", "mean(x): the mean over the last dimension, kept as a dimension of size 1 ([d] -> [1])",
           lambda a, attrs: (a[0].mean(dim=-1, keepdim=True),))
_reduction("max", "max(x): the largest entry of the last dimension, kept as a dimension of size 1 ([d] -> [1]); "
                  "its gradient is shared among tied largest entries",
           lambda a, attrs: (a[0].amax(dim=-1, keepdim=True),))

# Set reductions: a structure binds a cell input to a set of nodes' outputs (a tree node's children)
# reduced by one of these, written `sum(children.h)`. Each becomes a node of its own, whose arguments
# are the set, however many; nodes of any arity batch together, reduced per node by `segment`. They
# are not for op lines: a cell's values are single vectors.
SET_REDUCTIONS = ("sum", "mean", "max")


def _segment_sum(rows: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    return rows.new_zeros((k,) + rows.shape[1:]).index_add(0, owner, rows)


def _segment_count(rows: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.bincount(owner, minlength=k).clamp(min=1).to(rows.dtype)
    return counts.view((k,) + (1,) * (rows.dim() - 1))


def _segment_max(rows: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    index = owner.view((-1,) + (1,) * (rows.dim() - 1)).expand_as(rows)
    # An empty set's row stays 0, as its sum and mean are.
    return rows.new_zeros((k,) + rows.shape[1:]).scatter_reduce(0, index, rows, "amax", include_self=False)


def _per_node(reduce):
    """One node's set `[n, ...]` -> `[1, ...]` (0 for an empty set), with torch's own reductions:
    the unbatched reference shares nothing with `segment`."""
    def impl(args, attrs):
        rows = args[0]
        if not len(rows):
            return (rows.new_zeros((1,) + rows.shape[1:]),)
        return (reduce(rows),)
    return impl


def _set_reduction(how: str, doc: str, per_node, segment):
    @_register(f"set_{how}", doc, _per_node(per_node), 1, segment=segment, native=f"set_{how}")
    def rule(ops, attrs):
        _count(ops, f"set_{how}", 1)
        _needs_value(ops, f"set_{how}")
        _float_only(ops, f"set_{how}")
        return [ops[0].shape]


_set_reduction("sum", "sum(set): the sum of a set's vectors (0 for an empty set)",
               lambda x: x.sum(0, keepdim=True), _segment_sum)
_set_reduction("mean", "mean(set): the mean of a set's vectors (0 for an empty set)",
               lambda x: x.mean(0, keepdim=True),
               lambda rows, owner, k: _segment_sum(rows, owner, k) / _segment_count(rows, owner, k))
_set_reduction("max", "max(set): the entrywise largest of a set's vectors (0 for an empty set); the gradient "
                      "is shared among tied largest entries",
               lambda x: x.amax(0, keepdim=True), _segment_max)


def set_reduction_program(how: str, shape: Shape) -> Program:
    """The node type that reduces sets of `shape` vectors by `how`: one op, any number of arguments."""
    name = f"set_{how}[{','.join(map(str, shape))}]"
    return Program(name, (Value("set", tuple(shape)), Value("reduced", tuple(shape))), 1,
                   (Op(f"set_{how}", (0,), (1,)),), (1,))


def set_reduction_of(program: Program | None) -> OpDef | None:
    """The set reduction a node type runs, or None for a cell (fixed arguments)."""
    if program is None or len(program.ops) != 1:
        return None
    opdef = OPS.get(program.ops[0].kind)
    return opdef if opdef is not None and opdef.segment is not None else None


LAYER_NORM_EPS = 1e-5  # torch's default, and ONNX LayerNormalization's


@_register("layer_norm", f"layer_norm(x, g, b): x normalised over its last dimension (mean 0, variance 1, "
                         f"eps {LAYER_NORM_EPS:g}), times g plus b, parameters of that dimension's size",
           lambda a, attrs: (F.layer_norm(a[0], a[0].shape[-1:], eps=LAYER_NORM_EPS) * a[1] + a[2],), 3,
           batchable=True)
def _layer_norm(ops, attrs):
    _count(ops, "layer_norm", 3)
    x = _last_dim_value(ops, "layer_norm")
    for name, o in zip("gb", ops[1:]):
        if not o.is_param or o.dtype != F32 or o.shape != x.shape[-1:]:
            raise ShapeError(f"layer_norm's {name} must be a parameter of shape {_fmt(x.shape[-1:])}, "
                             f"got {'a value' if not o.is_param else 'a parameter'} of shape {_fmt(o.shape)}")
    return [x.shape]


@dataclass(frozen=True, slots=True)
class Noise:
    """What a batch of noisy ops draws from: the training step's seed and one key per row (the cell
    call's, the same whatever the batching: see `edbc.runtime.dropout`)."""

    seed: int
    keys: torch.Tensor  # int64 [k]
    masks: dict = field(default_factory=dict)  # by site: drawn once, reused by the backward's recompute


_M32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply) on int64 tensors holding values below 2**32:
    every product stays below 2**59, so nothing overflows on any device."""
    h = ((h >> 16) ^ h) * 0x45D9F3B & _M32
    h = ((h >> 16) ^ h) * 0x45D9F3B & _M32
    return (h >> 16) ^ h


def dropout_keep(noise: Noise, site: int, width: int, rate: int) -> torch.Tensor:
    """Which of `width` entries each row keeps: [k, width] bools, a pure function of (seed, row key,
    site, column), so the batched kernels and the one-call-at-a-time reference draw the same masks."""
    keys = noise.keys
    row = _mix32((keys & _M32) ^ (noise.seed & _M32))
    row = _mix32(row ^ (keys >> 32) ^ (site * 0x9E3779B9 & _M32))
    columns = torch.arange(width, device=keys.device, dtype=torch.int64) * 0x85EBCA6B & _M32
    # One round per entry (the row's value is mixed already): half the calls of a full `_mix32`.
    h = row[:, None] ^ columns[None, :]
    h = ((h >> 16) ^ h) * 0x45D9F3B & _M32
    return (h ^ (h >> 16)) >> 8 >= (rate << 24) // 100  # 24 uniform bits against the rate


def _dropout_impl(args, attrs, noise: Noise | None = None):
    x = args[0]
    rate, site = attrs["rate"], attrs["site"]
    if noise is None or rate == 0:
        return (x,)
    scaled = noise.masks.get(site)
    if scaled is None:
        keep = dropout_keep(noise, site, x[0].numel(), rate).reshape(x.shape)
        scaled = noise.masks[site] = keep * torch.tensor(100 / (100 - rate), dtype=x.dtype, device=x.device)
    return (x * scaled,)


@_register("dropout", "dropout(x, percent): in training, zero each entry with probability percent/100 (an "
                      "integer 0..99, or a dimension) and scale the rest by 100/(100-percent); at inference, x",
           _dropout_impl, 1, attrs=("rate",), noisy=True, native="dropout")
def _dropout(ops, attrs):
    _count(ops, "dropout", 1)
    _needs_value(ops, "dropout")
    _float_only(ops, "dropout")
    rate, site = attrs["rate"], attrs.get("site")
    if type(rate) is not int or not 0 <= rate < 100:
        raise ShapeError(f"dropout's percent must be an integer from 0 to 99, got {rate!r}")
    if type(site) is not int or site < 0:
        raise ShapeError(f"dropout's site must be a non-negative integer, got {site!r}")
    return [ops[0].shape]


@_register("concat", "concat(a, b, ...): join along the last dimension", lambda a, attrs: (torch.cat(a, dim=-1),),
           batchable=True)
def _concat(ops, attrs):
    if not ops:
        raise ShapeError("concat needs at least one operand")
    _needs_value(ops, "concat")
    _float_only(ops, "concat")
    lead = ops[0].shape[:-1]
    for i, o in enumerate(ops, start=1):
        if not o.shape or o.shape[:-1] != lead:
            raise ShapeError(f"concat operand {i} is {_fmt(o.shape)}; all operands must agree "
                             f"except in the last dimension")
    return [lead + (sum(o.shape[-1] for o in ops),)]


def _of_vector(shape: Shape) -> bool:
    return len(shape) == 1  # pieces of a vector are column ranges of it; of a matrix they are not


@_register("chunk", "chunk(x, n): n equal parts of the last dimension",
           lambda a, attrs: tuple(torch.chunk(a[0], attrs["n"], dim=-1)), 1, attrs=("n",), alias=_of_vector)
def _chunk(ops, attrs):
    _count(ops, "chunk", 1)
    _needs_value(ops, "chunk")
    (x,) = ops
    n = attrs["n"]
    if not isinstance(n, int) or n < 1:
        raise ShapeError(f"chunk's n must be a positive integer, got {n!r}")
    if not x.shape or x.shape[-1] % n:
        raise ShapeError(f"chunk cannot cut {_fmt(x.shape)} into {n} equal parts")
    return [x.shape[:-1] + (x.shape[-1] // n,)] * n


@_register("split", "split(x, [s1, s2, ...]): parts of the last dimension of the given sizes",
           lambda a, attrs: tuple(torch.split(a[0], list(attrs["sizes"]), dim=-1)), 1, attrs=("sizes",),
           alias=_of_vector)
def _split(ops, attrs):
    _count(ops, "split", 1)
    _needs_value(ops, "split")
    (x,) = ops
    sizes = attrs["sizes"]
    if not isinstance(sizes, tuple) or not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ShapeError(f"split's sizes must be a list of positive integers, got {sizes!r}")
    if not x.shape or sum(sizes) != x.shape[-1]:
        raise ShapeError(f"split sizes {list(sizes)} do not add up to the last dimension of {_fmt(x.shape)}")
    return [x.shape[:-1] + (s,) for s in sizes]


@_register("matmul", "matmul(A, B): matrix product [p, q] x [q, r] -> [p, r]; either may be a parameter",
           lambda a, attrs: (torch.matmul(a[0], a[1]),), 2, native="matmul")
def _matmul(ops, attrs):
    _count(ops, "matmul", 2)
    _needs_value(ops, "matmul")
    _float_only(ops, "matmul")
    a, b = ops
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise ShapeError(f"matmul takes two matrices, got {_fmt(a.shape)} and {_fmt(b.shape)}; "
                         "use matvec for a matrix and a vector")
    if a.shape[1] != b.shape[0]:
        raise ShapeError(f"matmul: {_fmt(a.shape)} and {_fmt(b.shape)} do not fit "
                         f"({a.shape[1]} columns, {b.shape[0]} rows)")
    return [(a.shape[0], b.shape[1])]


def _matvec_impl(args, attrs):
    a, v = args  # a: [p, q] parameter or [k, p, q] values; v: [q] parameter or [k, q] values
    if a.dim() == 2:
        return (v @ a.T,)
    if v.dim() == 1:
        return (a @ v,)
    return (torch.bmm(a, v.unsqueeze(-1)).squeeze(-1),)


@_register("matvec", "matvec(A, v): matrix times vector [p, q] x [q] -> [p]; either may be a parameter",
           _matvec_impl, 2, native="matvec")
def _matvec(ops, attrs):
    _count(ops, "matvec", 2)
    _needs_value(ops, "matvec")
    _float_only(ops, "matvec")
    a, v = ops
    if len(a.shape) != 2 or len(v.shape) != 1:
        raise ShapeError(f"matvec takes a matrix and a vector, got {_fmt(a.shape)} and {_fmt(v.shape)}")
    if a.shape[1] != v.shape[0]:
        raise ShapeError(f"matvec: {_fmt(a.shape)} and {_fmt(v.shape)} do not fit ({a.shape[1]} columns, "
                         f"{v.shape[0]} entries)")
    return [(a.shape[0],)]


@_register("reshape", "reshape(x, [d1, d2, ...]): the same numbers in another shape",
           lambda a, attrs: (a[0].reshape((a[0].shape[0],) + tuple(attrs["shape"])),), 1, attrs=("shape",),
           alias=lambda shape: True)
def _reshape(ops, attrs):
    _count(ops, "reshape", 1)
    _needs_value(ops, "reshape")
    _float_only(ops, "reshape")
    (x,) = ops
    shape = attrs["shape"]
    if not isinstance(shape, tuple) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ShapeError(f"reshape's shape must be a list of positive integers, got {shape!r}")
    if math.prod(shape) != math.prod(x.shape):
        raise ShapeError(f"reshape cannot turn {_fmt(x.shape)} into {_fmt(shape)}: sizes differ")
    return [tuple(shape)]
