"""Torch implementations of the primitive ops, and cell programs compiled into kernels.

`OP_IMPLS` has one entry per op kind of `edbc.spec.ops.OPS`. Values carry a
leading batch dimension; parameters do not and broadcast. A `Kernel` runs a
program for a whole batch; it folds each multi-term affine into a single
matmul over concatenated inputs, with the weights stacked once.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from math import prod

from ..memory.cells import BROADCAST, SHARED, STACKED, TOKENS, VALUE, VIEW, CellPlan, plan_cell
from ..spec.program import Program


def _affine(args, attrs):
    has_bias = len(args) % 2
    out = None
    for i in range(0, len(args) - has_bias, 2):
        term = args[i] @ args[i + 1]
        out = term if out is None else out + term
    return (out + args[-1] if has_bias else out,)


def _sum(args, attrs):
    out = args[0]
    for a in args[1:]:
        out = out + a
    return (out,)


def _matvec(args, attrs):
    a, v = args  # a: [p, q] parameter or [k, p, q] values; v: [q] parameter or [k, q] values
    if a.dim() == 2:
        return (v @ a.T,)
    if v.dim() == 1:
        return (a @ v,)
    return (torch.bmm(a, v.unsqueeze(-1)).squeeze(-1),)


OP_IMPLS: dict[str, Callable] = {
    "embed": lambda a, attrs: (F.embedding(a[1], a[0]),),
    "affine": _affine,
    "add": lambda a, attrs: (a[0] + a[1],),
    "sub": lambda a, attrs: (a[0] - a[1],),
    "addcmul": lambda a, attrs: (torch.addcmul(a[0], a[1], a[2]),),
    "lerp": lambda a, attrs: (torch.lerp(a[0], a[1], a[2]),),
    "mul": lambda a, attrs: (a[0] * a[1],),
    "sum": _sum,
    "sigmoid": lambda a, attrs: (torch.sigmoid(a[0]),),
    "tanh": lambda a, attrs: (torch.tanh(a[0]),),
    "relu": lambda a, attrs: (torch.relu(a[0]),),
    "identity": lambda a, attrs: (a[0],),
    "log_softmax": lambda a, attrs: (torch.log_softmax(a[0], dim=-1),),
    "concat": lambda a, attrs: (torch.cat(a, dim=-1),),
    "chunk": lambda a, attrs: tuple(torch.chunk(a[0], attrs["n"], dim=-1)),
    "split": lambda a, attrs: tuple(torch.split(a[0], list(attrs["sizes"]), dim=-1)),
    "matmul": lambda a, attrs: (torch.matmul(a[0], a[1]),),
    "matvec": _matvec,
    "reshape": lambda a, attrs: (a[0].reshape((a[0].shape[0],) + tuple(attrs["shape"])),),
}


def fast_tanh(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh(x) = 2·sigmoid(2x) - 1: on large CPU tensors torch's tanh takes ~5x sigmoid's time
    (measured on this build), so four cheap calls beat one; small tensors keep tanh."""
    if x.numel() < _TANH_SPLIT or x.device.type != "cpu":
        return torch.tanh(x, out=out) if out is not None else torch.tanh(x)
    y = torch.mul(x, 2, out=out) if out is not None else x * 2
    return y.sigmoid_().mul_(2).sub_(1)


_TANH_SPLIT = 4096  # elements; below, the call overhead of the split outweighs tanh's cost

# Elementwise ops: a batch of m of them runs on `[k, m*d]` columns as one op on `[k, d]`.
ELEMENTWISE = frozenset({"add", "sub", "mul", "sum", "addcmul", "lerp", "sigmoid", "tanh", "relu", "identity"})

# Ops generated as direct torch calls, `{a}` the operands (`{out}`: `, out=dest` when the result
# goes straight to a kernel output); all others call `OP_IMPLS`.
_DIRECT = {
    "add": "torch.add({0}, {1}{out})",
    "sub": "torch.sub({0}, {1}{out})",
    "mul": "torch.mul({0}, {1}{out})",
    "addcmul": "torch.addcmul({0}, {1}, {2}{out})",
    "lerp": "torch.lerp({0}, {1}, {2}{out})",
    "sigmoid": "torch.sigmoid({0}{out})",
    "tanh": "fast_tanh({0}{out})",
    "relu": "torch.clamp_min({0}, 0{out})",
}


class Kernel:
    """A cell program compiled for batched execution with bound weights.

    It replays the cell's internal schedule (`edbc.memory.cells.CellPlan`):
    each internal batch of `m` ops is one torch call. Every tensor is a
    `[k, width]` row per call; a value is a column range of a base (a cell
    input or a batch output). Elementwise batches run on `[k, m*d]` columns;
    others see `[k, m, *shape]`. The replay is generated as Python source once,
    when the kernel is built, so a call runs straight-line torch calls with no
    interpretation; results that are kernel outputs are written into them in place.
    """

    __slots__ = ("program", "plan", "source", "_run")

    def __init__(self, program: Program, weights: dict[str, torch.Tensor], plan: CellPlan | None = None):
        self.program = program
        self.plan = plan = plan or plan_cell(program, {n: tuple(w.shape) for n, w in weights.items()})
        self.source, constants = _generate(program, plan, weights)
        namespace = {"torch": torch, "F": F, "fast_tanh": fast_tanh, "OP_IMPLS": OP_IMPLS, **constants}
        exec(compile(self.source, f"<kernel {program.name}>", "exec"), namespace)
        self._run = namespace["kernel"]

    def __call__(self, inputs: list[torch.Tensor], out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """`inputs` in the program's input order; returns the program's outputs, written into
        `out` (one tensor per output) when given."""
        return self._run(inputs, out)


def _generate(program: Program, plan: CellPlan, weights: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """The source of `kernel(inputs, out)` replaying `plan`, and the constants it reads."""
    values = program.values
    homes = plan.homes
    constants: dict[str, object] = {}
    body: list[str] = []
    names: dict[tuple, str] = {}  # (base, lo, hi, shaped) -> local holding that slice

    def constant(obj) -> str:
        name = f"c{len(constants)}"
        constants[name] = obj
        return name

    def width(base: int) -> int:
        return _width(plan, program, base)

    def columns(base: int, lo: int, hi: int, shape: tuple | None) -> str:
        """A local holding columns lo:hi of a base, unflattened to `shape` when given."""
        whole = lo == 0 and hi == width(base)
        if whole and shape is None:
            return f"e{base}"
        key = (base, lo, hi, shape)
        if key not in names:
            expr = f"e{base}" if whole else f"e{base}[:, {lo}:{hi}]"
            if shape is not None:
                expr += f".unflatten(1, {shape})"
            names[key] = f"t{len(names)}"
            body.append(f"{names[key]} = {expr}")
        return names[key]

    def value(v: int) -> str:
        h = homes[v]
        shape = values[v].shape
        return columns(h.base, h.start, h.start + h.size, shape if len(shape) > 1 else None)

    n_in = program.n_inputs
    body.append(f"{', '.join(f'e{i}' for i in range(n_in))}{',' if n_in == 1 else ''} = inputs")
    for i in range(n_in):
        if len(values[i].shape) > 1:
            body.append(f"e{i} = e{i}.flatten(1)")

    # An output computed whole by a single-op step is written straight into its destination.
    last_step = {v: b for b, step in enumerate(plan.steps) for j in step.ops for v in program.ops[j].outs}
    finals: dict[int, int] = {}
    for i, v in enumerate(program.outputs):
        b = last_step.get(v)
        if b is not None and len(plan.steps[b].ops) == 1 and program.outputs.index(v) == i \
                and len(program.ops[plan.steps[b].ops[0]].outs) == 1 and values[v].dtype != "token":
            finals.setdefault(b, i)

    for b, step in enumerate(plan.steps):
        op = program.ops[step.ops[0]]
        m = len(step.ops)
        flat = m == 1 or (op.kind in ELEMENTWISE and all(o.kind != BROADCAST for o in step.operands)
                          and all(len(values[o.values[0]].shape) <= 1 for o in step.operands
                                  if o.kind not in (SHARED, STACKED)))
        args = []
        for o in step.operands:
            if o.kind in (SHARED, STACKED):
                args.append(constant(_param(o, weights, m, flat)))
            elif o.kind == VALUE:
                args.append(value(o.values[0]))
            elif o.kind == VIEW:
                shape = values[o.values[0]].shape
                hi = o.start + m * prod(shape)
                args.append(columns(o.base, o.start, hi, None if flat else (m,) + tuple(shape)))
            elif o.kind == BROADCAST:
                shape = values[o.values[0]].shape
                args.append(f"{value(o.values[0])}.unsqueeze(1).expand(-1, {m}, *{tuple(shape)})")
            elif o.kind == TOKENS:
                args.append(f"torch.stack([{', '.join(value(v) for v in o.values)}], dim=1)")
            else:
                raise ValueError("cell plans run batches that would gather op by op; this plan gathers")
        final = finals.get(b)
        targets = [f"e{plan.base_of[(b, k)]}" for k in range(len(op.outs))]
        dest = f"o{final}" if final is not None else None
        unflat = not flat or any(len(values[v].shape) > 1 for v in op.outs)
        call = _call(program, op, args, m, flat, weights, step, constant, dest)
        if unflat:
            if len(targets) == 1:
                body.append(f"{targets[0]} = ({call}).flatten(1)")
            else:
                body.append(f"{', '.join(targets)} = [t.flatten(1) for t in {call}]")
        elif len(targets) == 1:
            body.append(f"{targets[0]} = {call}")
        else:
            body.append(f"{', '.join(targets)} = {call}")
        if dest is not None and not _writes_out(program, op, flat, m):
            shaped = value(op.outs[0])  # the output's own shape, as its destination has
            body.append(f"if {dest} is not None:")
            body.append(f"    {dest}.copy_({shaped})")

    written = set(finals.values())
    results = [value(v) for v in program.outputs]
    copies = [f"out[{i}].copy_({r})" for i, r in enumerate(results) if i not in written]
    # Outputs written in place come from `out` when given (None otherwise: torch allocates).
    head = [f"o{i} = None if out is None else out[{i}]" for i in sorted(written)]
    code = ["def kernel(inputs, out=None):"] + [f"    {line}" for line in head + body]
    code.append("    if out is None:")
    code.append(f"        return [{', '.join(results)}]")
    code += [f"    {c}" for c in copies]
    code.append("    return out")
    return "\n".join(code) + "\n", constants


def _writes_out(program: Program, op, flat: bool, m: int) -> bool:
    """Whether the generated call for `op` writes its result into `out=` itself (an output
    tensor of the op's own shape: one op, not a batch of them)."""
    if m != 1:
        return False
    if op.kind == "affine":
        return _rows_affine(program, op)
    if op.kind == "sum":
        return len(op.args) > 1
    return op.kind in _DIRECT or op.kind == "embed"


def _rows_affine(program: Program, op) -> bool:
    """An affine whose inputs are vectors: `addmm` on `[k, in]` rows."""
    pairs = range(0, len(op.args) - len(op.args) % 2, 2)
    return all(len(program.values[op.args[i]].shape) == 1 for i in pairs)


def _call(program: Program, op, args: list[str], m: int, flat: bool, weights, step, constant,
          dest: str | None) -> str:
    """The expression computing one internal batch (one op, or m ops side by side)."""
    out = f", out={dest}" if dest is not None and _writes_out(program, op, flat, m) else ""
    if op.kind == "affine":
        has_bias = len(op.args) % 2
        pairs = list(range(0, len(op.args) - has_bias, 2))
        bias = args[-1] if has_bias else None
        if m == 1 and _rows_affine(program, op):
            x, w = args[pairs[0]], args[pairs[0] + 1]
            first = f"torch.mm({x}, {w}{out})" if bias is None else f"torch.addmm({bias}, {x}, {w}{out})"
            return first + "".join(f".addmm_({args[i]}, {args[i + 1]})" for i in pairs[1:])
        weight = torch.cat([_param(step.operands[i + 1], weights, m, False) for i in pairs], dim=-2)
        fused = constant(_stacked_affine(weight))
        return f"{fused}([{', '.join(args[i] for i in pairs)}], {bias if bias is not None else 'None'})"
    if op.kind == "embed" and m == 1:
        return f"torch.index_select({args[0]}, 0, {args[1]}{out})"
    if op.kind == "sum" and flat and len(args) > 1:
        return f"torch.add({args[0]}, {args[1]}{out})" + "".join(f".add_({a})" for a in args[2:])
    if op.kind in _DIRECT:
        return _DIRECT[op.kind].format(*args, out=out)
    attrs = constant(dict(op.attrs))
    impl = constant(OP_IMPLS[op.kind])
    call = f"{impl}([{', '.join(args)}], {attrs})"
    return f"{call}[0]" if len(op.outs) == 1 else call


def _stacked_affine(weight: torch.Tensor):
    """x1·W1 + x2·W2 + b over `[k, m, in]` operands with per-op weights `[m, in, out]` (or one
    shared `[in, out]`): one batched matmul of the concatenated inputs."""
    per_op = weight.dim() == 3

    def run(xs: list[torch.Tensor], bias) -> torch.Tensor:
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=-1)
        y = torch.bmm(x.transpose(0, 1), weight).transpose(0, 1) if per_op else x @ weight
        return y if bias is None else y + bias
    return run


def _width(plan: CellPlan, program: Program, base: int) -> int:
    """Columns of a base per call."""
    if base < program.n_inputs:
        return prod(program.values[base].shape)
    for (b, k), number in plan.base_of.items():
        if number == base:
            step = plan.steps[b]
            return len(step.ops) * prod(program.values[program.ops[step.ops[0]].outs[k]].shape)
    raise KeyError(base)


def _param(operand, weights: dict[str, torch.Tensor], m: int, flat: bool) -> torch.Tensor:
    """A parameter operand: shared, or per-op parameters stacked once (`[m, ...]`, or
    side by side `[m*d]` for a flat elementwise batch)."""
    if operand.kind == SHARED:
        t = weights[operand.values[0]]
        return t.repeat(m) if flat and m > 1 else t
    ts = [weights[n] for n in operand.values]
    return torch.cat(ts) if flat else torch.stack(ts)


def interpret(program: Program, inputs: list[torch.Tensor], weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run a program op by op as written: no fusion, no precomputation (the reference)."""
    env: list = list(inputs) + [None] * (len(program.values) - len(inputs))
    for op in program.ops:
        args = [weights[a] if isinstance(a, str) else env[a] for a in op.args]
        for v, t in zip(op.outs, OP_IMPLS[op.kind](args, dict(op.attrs))):
            env[v] = t
    return [env[v] for v in program.outputs]
