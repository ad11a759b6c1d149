"""The primitive ops a cell may use: arity, argument kinds, attributes and shape rules.

One table, `OPS`, from op kind to its `OpDef`; the runtime keeps its own table
of torch implementations under the same keys. Shape rules see operands as
`Operand(is_param, shape, dtype)` and raise `ShapeError` with a message fit for
the user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .program import F32, TOKEN, Shape


class ShapeError(Exception):
    """Raised by shape rules; the spec loader adds file, cell and op."""


@dataclass(frozen=True, slots=True)
class Operand:
    is_param: bool
    shape: Shape
    dtype: str = F32


@dataclass(frozen=True, slots=True)
class OpDef:
    kind: str
    doc: str
    infer: Callable[[list[Operand], dict], list[Shape]]
    attrs: tuple[str, ...] = ()  # trailing positional arguments that are attributes, in order
    pairs: bool = False  # arguments written `x @ W` (affine)


OPS: dict[str, OpDef] = {}


def _register(kind: str, doc: str, attrs: tuple[str, ...] = (), pairs: bool = False):
    def wrap(fn):
        OPS[kind] = OpDef(kind, doc, fn, attrs, pairs)
        return fn
    return wrap


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


@_register("embed", "embed(TABLE, token): row `token` of the [rows, dim] parameter TABLE")
def _embed(ops, attrs):
    _count(ops, "embed", 2)
    table, index = ops
    if not table.is_param or len(table.shape) != 2:
        raise ShapeError("embed's first operand must be a 2-D parameter [rows, dim]")
    if index.dtype != TOKEN:
        raise ShapeError("embed's second operand must be a token input")
    return [(table.shape[1],)]


@_register("affine", "affine(x1 @ W1, x2 @ W2, ..., b): sum of x_i·W_i plus an optional bias b "
                     "(a parameter, or a value of the result's shape)", pairs=True)
def _affine(ops, attrs):
    has_bias = len(ops) % 2 == 1
    pairs = [(ops[i], ops[i + 1]) for i in range(0, len(ops) - has_bias, 2)]
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
    if has_bias:
        b = ops[-1]
        if b.dtype != F32 or b.shape != (out if not b.is_param else out[-1:]):
            raise ShapeError(f"affine bias must be a parameter of shape {_fmt(out[-1:])}, "
                             f"got {_fmt(b.shape)}")
    return [out]


def _elementwise(kind: str, arity: int, doc: str):
    @_register(kind, doc)
    def rule(ops, attrs):
        _count(ops, kind, arity)
        _needs_value(ops, kind)
        return [_same_shapes(ops, kind)]


for _kind, _what in (("add", "a + b"), ("sub", "a - b"), ("mul", "a * b")):
    _elementwise(_kind, 2, f"{_kind}(a, b): elementwise {_what}; either may be a parameter of the same shape")
_elementwise("addcmul", 3, "addcmul(a, b, c): elementwise a + b * c")
_elementwise("lerp", 3, "lerp(x, y, w): elementwise x + w * (y - x)")


@_register("sum", "sum(a, b, ...): elementwise sum of one or more operands")
def _sum(ops, attrs):
    if not ops:
        raise ShapeError("sum needs at least one operand")
    _needs_value(ops, "sum")
    return [_same_shapes(ops, "sum")]


for _kind, _what in (("sigmoid", "elementwise logistic sigmoid"), ("tanh", "elementwise tanh"),
                     ("relu", "elementwise max(x, 0)"), ("identity", "x itself (a copy)"),
                     ("log_softmax", "log-softmax over the last dimension")):
    _elementwise(_kind, 1, f"{_kind}(x): {_what}")


@_register("concat", "concat(a, b, ...): join along the last dimension")
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


@_register("chunk", "chunk(x, n): n equal parts of the last dimension", attrs=("n",))
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
           attrs=("sizes",))
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


@_register("matmul", "matmul(A, B): matrix product [p, q] x [q, r] -> [p, r]; either may be a parameter")
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


@_register("matvec", "matvec(A, v): matrix times vector [p, q] x [q] -> [p]; either may be a parameter")
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


@_register("reshape", "reshape(x, [d1, d2, ...]): the same numbers in another shape", attrs=("shape",))
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
