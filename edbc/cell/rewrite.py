"""Rewrites of a cell program for the batched kernels (`Program -> Program`); `edbc.passes` runs them.

They keep what the program computes (up to fp32 rounding) and make the
kernel cheaper; the unbatched reference still interprets the program as
written, so `--check` covers them.

- `strip_dropout`: for inference, a dropout is its input (a copy where it is
  a cell output), so that nothing is left to run and the folds below see through it.
- `fold_embeddings`: an affine term `embed(E, t) @ W` becomes a row of the
  table `E·W` (plus the affine's bias), computed once when the kernel is
  built, so the matmul over the embedding disappears.
- `fuse_lerp`: `add(x, mul(w, sub(y, x)))` becomes `lerp(x, y, w)`.
- `fuse_addcmul`: `add`/`sum` terms that are single-use `mul`s become
  `addcmul(acc, a, b)` steps.

Folded tables are derived parameters: `Derived` says how to compute one from
the model's parameters.
"""

from __future__ import annotations

from ..spec.program import Op, Program, Shape, Value, affine_terms, live_ops, value_uses
from .ir import Derived


def _made_by(program: Program) -> dict[int, Op]:
    return {v: op for op in program.ops for v in op.outs}


def _rebuild(program: Program, ops: list[Op], values: list[Value]) -> Program:
    """Drop ops whose outputs nobody reads any more, and renumber nothing (ids stay valid)."""
    return Program(program.name, tuple(values), program.n_inputs, tuple(live_ops(ops, program.outputs)),
                   program.outputs)


def strip_dropout(program: Program) -> Program:
    source: dict[int, int] = {}  # a dropout's output -> the value it reads, through chains of them
    ops: list[Op] = []
    for op in program.ops:
        args = tuple(source.get(a, a) if not isinstance(a, str) else a for a in op.args)
        if op.kind == "dropout":
            if op.outs[0] in program.outputs:  # an output needs a row of its own
                ops.append(Op("identity", args, op.outs))
            else:
                source[op.outs[0]] = args[0]
            continue
        ops.append(Op(op.kind, args, op.outs, op.attrs))
    return _rebuild(program, ops, list(program.values))


def fold_embeddings(program: Program, param_shapes: dict[str, Shape]) -> tuple[Program, dict[str, Derived]]:
    made_by = _made_by(program)
    values = list(program.values)
    derived: dict[str, Derived] = {}
    ops: list[Op] = []
    for op in program.ops:
        if op.kind != "affine":
            ops.append(op)
            continue
        pairs, bias = affine_terms(op.args)
        fold = next((i for i, (x, _) in enumerate(pairs) if x in made_by and made_by[x].kind == "embed"
                     and isinstance(bias, (str, type(None)))), None)
        if fold is None:
            ops.append(op)
            continue
        x, weight = pairs[fold]
        embed = made_by[x]
        table, token = embed.args
        name = f"{table}@{weight}" + (f"+{bias}" if bias is not None else "")
        derived[name] = Derived(table, weight, bias, (param_shapes[table][0], param_shapes[weight][1]))
        rest = [a for i, p in enumerate(pairs) if i != fold for a in p]
        if not rest:  # the whole affine is a row of the folded table
            ops.append(Op("embed", (name, token), op.outs))
            continue
        rows = len(values)
        values.append(Value(f"{values[op.outs[0]].name}_rows", values[op.outs[0]].shape))
        ops.append(Op("embed", (name, token), (rows,)))
        ops.append(Op("affine", tuple(rest) + (rows,), op.outs))
    return _rebuild(program, ops, values), derived


def _single(uses: dict[int, int], made_by: dict[int, Op], v, kind: str) -> Op | None:
    """The op of kind `kind` making value `v`, if `v` is read exactly once."""
    if isinstance(v, str) or uses.get(v, 0) != 1:
        return None
    op = made_by.get(v)
    return op if op is not None and op.kind == kind and len(op.args) == 2 else None


def fuse_lerp(program: Program) -> Program:
    uses, made_by = value_uses(program.ops, program.outputs), _made_by(program)
    ops = []
    for op in program.ops:
        if op.kind == "add":
            for x, m in (op.args, op.args[::-1]):
                mul = _single(uses, made_by, m, "mul")
                if mul is None or isinstance(x, str):
                    continue
                for w, d in (mul.args, mul.args[::-1]):
                    sub = _single(uses, made_by, d, "sub")
                    if sub is not None and sub.args[1] == x and not isinstance(w, str) \
                            and not isinstance(sub.args[0], str):
                        op = Op("lerp", (x, sub.args[0], w), op.outs)
                        break
                if op.kind == "lerp":
                    break
        ops.append(op)
    return _rebuild(program, ops, list(program.values))


def fuse_addcmul(program: Program) -> Program:
    uses, made_by = value_uses(program.ops, program.outputs), _made_by(program)
    values = list(program.values)
    ops: list[Op] = []
    for op in program.ops:
        if op.kind not in ("add", "sum") or len(op.args) < 2:
            ops.append(op)
            continue
        muls = [_single(uses, made_by, a, "mul") for a in op.args]
        products = [m for a, m in zip(op.args, muls) if m is not None and all(not isinstance(x, str) for x in m.args)]
        others = [a for a, m in zip(op.args, muls) if m is None or m not in products]
        if not products or (not others and len(products) < 2):
            ops.append(op)
            continue
        # Accumulate into a value that is not a fused product; if all terms are, start with one.
        if others:
            acc, rest = others[0], others[1:]
        else:
            acc, rest = products[0].outs[0], []
            products = products[1:]
        steps = [("add", (acc, r)) for r in rest] + [("addcmul", (None,) + m.args) for m in products]
        for n, (kind, args) in enumerate(steps):
            last = n == len(steps) - 1
            out = op.outs[0] if last else len(values)
            if not last:
                values.append(Value(f"{values[op.outs[0]].name}_{n}", values[op.outs[0]].shape))
            args = (acc,) + args[1:] if kind == "addcmul" else args
            ops.append(Op(kind, args, (out,)))
            acc = out
    return _rebuild(program, ops, values)
