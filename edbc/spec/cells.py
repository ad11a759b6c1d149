"""Parse a cell's op lines into a `Program`.

An op line is one assignment in Python syntax, parsed with `ast`:

    i, o, u = chunk(affine(x @ W_leaf, b_leaf), 3)

Calls may nest; every call is one primitive op of `ops.OPS`. A bare name is a
cell value, else a parameter. Integer arguments (also `3*hidden`, lists of
them) are the op's attributes, evaluated against the model's dimensions.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ..errors import SpecError, quoted
from ..inputs import MAX_INT
from .ops import OPS, Operand, ShapeError
from .program import F32, TOKEN, Op, Program, Shape, Value

_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
          ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b}


def eval_dim(node: ast.AST, dims: dict[str, int]) -> int:
    """Evaluate an integer expression over named dimensions; ValueError if it is not one, or if it
    (or any part of it) leaves the int64 range."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _int64(node.value, node)
    if isinstance(node, ast.Name):
        if node.id not in dims:
            raise ValueError(f"unknown dimension '{node.id}'")
        return dims[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        left, right = eval_dim(node.left, dims), eval_dim(node.right, dims)
        if isinstance(node.op, ast.FloorDiv) and right == 0:
            raise ValueError(f"'{quoted(ast.unparse(node))}' divides by zero")
        return _int64(_ARITH[type(node.op)](left, right), node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -eval_dim(node.operand, dims)
    raise ValueError(f"'{quoted(ast.unparse(node))}' is not an integer expression")


def _int64(value: int, node: ast.AST) -> int:
    if abs(value) > MAX_INT:
        raise ValueError(f"'{quoted(ast.unparse(node))}' is out of range; expected at most {MAX_INT}")
    return value


def eval_dim_text(text, dims: dict[str, int]) -> int:
    """A dimension written in YAML: an int, or an expression such as `4*hidden`."""
    if type(text) is int:
        return text
    if not isinstance(text, str):
        raise ValueError("expected an integer or a dimension expression such as 4*hidden")
    too_deep = f"'{quoted(text)}' is nested too deeply; expected an expression such as 4*hidden"
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):  # ValueError: a NUL byte, or an integer literal Python refuses
        raise ValueError(f"'{quoted(text)}' is not an integer expression") from None
    except (RecursionError, MemoryError):
        raise ValueError(too_deep) from None
    try:
        return eval_dim(node, dims)
    except RecursionError:
        raise ValueError(too_deep) from None


@dataclass(frozen=True, slots=True)
class OpLine:
    text: str
    line: int | None  # 1-based position of the line in the spec file
    column: int | None


class _CellBuilder:
    def __init__(self, cell: str, path: str | None, params: dict[str, Shape], dims: dict[str, int]):
        self.cell = cell
        self.path = path
        self.params = params
        self.dims = dims
        self.values: list[Value] = []
        self.env: dict[str, int] = {}
        self.ops: list[Op] = []
        self.op_index = 0
        self.where: OpLine | None = None
        self.assigned: set[str] = set()  # every name some op line assigns, for clearer errors
        self.sites = 0  # noisy ops so far: each gets its own site, so that each draws its own mask

    def error(self, message: str, node: ast.AST | None = None) -> SpecError:
        w = self.where
        prefix = f"cell '{self.cell}'"
        if w is not None:
            text = quoted(w.text, 200)
            prefix += f", op {self.op_index} `{text}`" if self.op_index else f", outputs: `{text}`"
        col = None
        if w is not None and w.column is not None:
            col = w.column + (getattr(node, "col_offset", 0) or 0)
        return SpecError(f"{prefix}: {message}", path=self.path,
                         line=w.line if w else None, column=col)

    def add_value(self, name: str, shape: Shape, dtype: str = F32) -> int:
        self.values.append(Value(name, tuple(shape), dtype))
        return len(self.values) - 1

    def bind(self, name: str, value: int, node: ast.AST | None = None) -> None:
        if name in self.params:
            raise self.error(f"'{name}' is a parameter; a cell value may not shadow it", node)
        if name in self.env:
            raise self.error(f"value '{name}' is assigned twice; cell values are single-assignment", node)
        self.env[name] = value

    def statement(self, line: OpLine) -> None:
        self.where = line
        try:
            self.assignment(line)
        except (RecursionError, MemoryError):  # the parser and `call` recurse with the nesting
            raise self.error("the op line is nested too deeply; expected `name = op(args)`") from None

    def assignment(self, line: OpLine) -> None:
        try:
            module = ast.parse(line.text.strip())
        except (SyntaxError, ValueError) as e:  # ValueError: an integer literal Python refuses
            raise self.error(f"not an op line ({quoted(getattr(e, 'msg', None) or str(e))}); "
                             "expected `name = op(args)`") from None
        if len(module.body) != 1 or not isinstance(module.body[0], ast.Assign) \
                or len(module.body[0].targets) != 1:
            raise self.error("expected one assignment `name = op(args)` or `a, b = op(args)`")
        stmt = module.body[0]
        target = stmt.targets[0]
        names = target.elts if isinstance(target, ast.Tuple) else [target]
        if not all(isinstance(n, ast.Name) for n in names):
            raise self.error("the left of `=` must be a name or names separated by commas", target)
        if not isinstance(stmt.value, ast.Call):
            raise self.error("the right of `=` must be an op call such as `tanh(x)`", stmt.value)
        outs = self.call(stmt.value, len(names))
        for n, v in zip(names, outs):
            self.values[v] = Value(n.id, self.values[v].shape, self.values[v].dtype)
            self.bind(n.id, v, n)

    def call(self, node: ast.Call, n_results: int) -> tuple[int, ...]:
        if not isinstance(node.func, ast.Name) or node.func.id not in OPS:
            name = ast.unparse(node.func)
            cell_ops = sorted(k for k, d in OPS.items() if d.segment is None)
            raise self.error(f"unknown op '{name}'; expected one of: {', '.join(cell_ops)}", node)
        opdef = OPS[node.func.id]
        if opdef.segment is not None:
            how = opdef.kind.removeprefix("set_")
            raise self.error(f"{opdef.kind} reduces a set of nodes, which no cell value is; bind a cell input "
                             f"to one in the structure instead, e.g. `h: {how}(children.h)`", node)
        positional = list(node.args)
        attrs: dict[str, object] = {}
        keywords = {k.arg: k.value for k in node.keywords}
        for k in keywords:
            if k not in opdef.attrs:
                raise self.error(f"{opdef.kind} has no attribute '{k}'", node)
        for name in reversed(opdef.attrs):
            if name in keywords:
                attrs[name] = self.attribute(keywords[name])
            elif positional and (opdef.arity is None or len(positional) > opdef.arity):
                attrs[name] = self.attribute(positional.pop())
            else:
                raise self.error(f"{opdef.kind} needs its '{name}' argument: {opdef.doc}", node)
        if opdef.noisy:
            attrs["site"] = self.sites
            self.sites += 1
        args: list[int | str] = []
        for arg in positional:
            if opdef.pairs and isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.MatMult):
                args += [self.operand(arg.left), self.operand(arg.right)]
            else:
                args.append(self.operand(arg))
        operands = [Operand(isinstance(a, str), self.params[a] if isinstance(a, str)
                            else self.values[a].shape,
                            F32 if isinstance(a, str) else self.values[a].dtype) for a in args]
        try:
            shapes = opdef.infer(operands, attrs)
        except ShapeError as e:
            raise self.error(f"{e}; {opdef.doc}", node) from None
        if len(shapes) != n_results:
            raise self.error(f"{opdef.kind} gives {len(shapes)} result{'s' if len(shapes) != 1 else ''}"
                             f", {n_results} expected here", node)
        outs = tuple(self.add_value(f"%{len(self.values)}", s) for s in shapes)
        self.ops.append(Op(opdef.kind, tuple(args), outs, tuple(sorted(attrs.items()))))
        return outs

    def operand(self, node: ast.AST) -> int | str:
        if isinstance(node, ast.Call):
            return self.call(node, 1)[0]
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            if node.id in self.params:
                return node.id
            if node.id in self.dims:
                raise self.error(f"'{node.id}' is a dimension, not a value or parameter", node)
            if node.id in self.assigned:
                raise self.error(f"value '{node.id}' is used before the op that assigns it; ops run in "
                                 "order, so values cannot depend on each other in a cycle", node)
            raise self.error(f"unknown value or parameter '{node.id}'", node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            raise self.error("`x @ W` is only allowed inside affine(...)", node)
        raise self.error(f"'{ast.unparse(node)}' is not a value, a parameter or an op call", node)

    def attribute(self, node: ast.AST):
        try:
            if isinstance(node, (ast.List, ast.Tuple)):
                return tuple(eval_dim(e, self.dims) for e in node.elts)
            return eval_dim(node, self.dims)
        except ValueError as e:
            raise self.error(str(e), node) from None


def parse_cell(cell: str, inputs: list[tuple[str, Shape | None]], lines: list[OpLine],
               outputs: list[tuple[str, OpLine | None]], params: dict[str, Shape],
               dims: dict[str, int], path: str | None = None) -> Program:
    """Build the `Program` of one cell.

    `inputs` are (name, shape), shape None meaning a token id; `outputs` are
    (name, where-declared) so that an error can point at the declaration.
    """
    b = _CellBuilder(cell, path, params, dims)
    for name, shape in inputs:
        b.bind(name, b.add_value(name, () if shape is None else shape,
                                 TOKEN if shape is None else F32))
    b.assigned = {name.strip() for line in lines if "=" in line.text
                  for name in line.text.split("=", 1)[0].split(",")}
    for b.op_index, line in enumerate(lines, start=1):
        b.statement(line)
    b.where = None
    b.op_index = 0
    n_inputs = len(inputs)
    out_ids = []
    for name, where in outputs:
        b.where = where
        if name not in b.env:
            raise b.error(f"output '{name}' is not a value of the cell")
        v = b.env[name]
        if v < n_inputs:
            if b.values[v].dtype == TOKEN:
                raise b.error(f"output '{name}' is a token input; outputs must be float values")
            # An input passed straight through still needs a row of its own in the outputs.
            copy = b.add_value(name, b.values[v].shape)
            b.ops.append(Op("identity", (v,), (copy,)))
            v = copy
        if v in out_ids:
            raise b.error(f"output '{name}' is listed twice")
        out_ids.append(v)
    if not out_ids:
        raise b.error("a cell needs at least one output")
    return Program(cell, tuple(b.values), n_inputs, tuple(b.ops), tuple(out_ids))
