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
from operator import itemgetter

from ..memory.cells import BROADCAST, GATHER, SHARED, STACKED, VALUE, VIEW, CellPlan, plan_cell
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


def _fused_affine(weight: torch.Tensor, bias: torch.Tensor | None):
    """x1·W1 + x2·W2 + b as one matmul of [x1 x2] by the stacked [W1; W2].

    With per-op weights stacked to `[m, in, out]` (and biases to `[m, out]`),
    `m` affines run as one batched matmul over `[k, m, in]`.
    """
    per_op = weight.dim() == 3

    def run(args, attrs, out=None):
        x = args[0] if len(args) == 1 else torch.cat(args, dim=-1)
        if bias is not None and x.dim() == 2 and not per_op:
            return (torch.addmm(bias, x, weight, out=out) if out is not None else torch.addmm(bias, x, weight),)
        y = torch.bmm(x.transpose(0, 1), weight).transpose(0, 1) if per_op else x @ weight
        if bias is not None:
            y = y + bias
        return (y if out is None else out.copy_(y),)
    run.writes_out = True
    return run


def _binary_out(fn):
    def run(args, attrs, out=None):
        return (fn(args[0], args[1], out=out),) if out is not None else (fn(args[0], args[1]),)
    run.writes_out = True
    return run


def _unary_out(fn):
    def run(args, attrs, out=None):
        return (fn(args[0], out=out),) if out is not None else (fn(args[0]),)
    run.writes_out = True
    return run


def _sum_out(args, attrs, out=None):
    if len(args) == 1:
        return (args[0] if out is None else out.copy_(args[0]),)
    acc = torch.add(args[0], args[1], out=out) if out is not None else args[0] + args[1]
    for a in args[2:]:
        acc.add_(a)
    return (acc,)


_sum_out.writes_out = True

# Ops that can write their result into a given tensor (an arena row block), so the
# executor copies nothing after them; others are computed and then copied there.
OUT_IMPLS: dict[str, Callable] = {
    "add": _binary_out(torch.add),
    "sub": _binary_out(torch.sub),
    "mul": _binary_out(torch.mul),
    "sigmoid": _unary_out(torch.sigmoid),
    "tanh": _unary_out(torch.tanh),
    "sum": _sum_out,
}

# Ops that act on each element alone: a batch of them runs on `[k, m*d]` as on `[k, d]`.
ELEMENTWISE = frozenset({"add", "sub", "mul", "sum", "sigmoid", "tanh", "relu", "identity"})


class Kernel:
    """A cell program compiled for batched execution with bound weights.

    It replays the cell's internal schedule (`edbc.memory.cells.CellPlan`):
    each internal batch of `m` ops is one torch call. Every tensor is a
    `[k, width]` row per call; a value is a column range of a base (a cell
    input or a batch output), and an operand whose `m` values sit side by side
    is a view, otherwise it is concatenated (a gather). Elementwise batches
    run on `[k, m*d]` directly; others see `[k, m, *shape]`.
    """

    __slots__ = ("program", "plan", "_steps", "_outputs", "_finals", "_shaped", "_env_size")

    def __init__(self, program: Program, weights: dict[str, torch.Tensor], plan: CellPlan | None = None):
        self.program = program
        self.plan = plan = plan or plan_cell(program, {n: tuple(w.shape) for n, w in weights.items()})
        values = program.values
        homes = plan.homes
        self._env_size = program.n_inputs + len(plan.base_of)
        # a cell output computed whole by a single-op step may be written straight into its destination
        last_step = {}
        for b, step in enumerate(plan.steps):
            for j in step.ops:
                for v in program.ops[j].outs:
                    last_step[v] = b
        finals: dict[int, int] = {}  # step -> the output it may write in place
        for i, v in enumerate(program.outputs):
            b = last_step.get(v)
            if b is not None and len(plan.steps[b].ops) == 1 and program.outputs.index(v) == i \
                    and len(program.ops[plan.steps[b].ops[0]].outs) == 1:
                finals.setdefault(b, i)

        def value(v: int):
            h = homes[v]
            shape = values[v].shape
            if h.start == 0 and h.size == _width(plan, program, h.base):
                get = itemgetter(h.base)
            else:
                get = lambda env, base=h.base, lo=h.start, hi=h.start + h.size: env[base][:, lo:hi]
            if len(shape) <= 1:
                return get
            return lambda env: get(env).unflatten(1, shape)

        steps = []
        for b, step in enumerate(plan.steps):
            op = program.ops[step.ops[0]]
            m = len(step.ops)
            flat = m == 1 or (op.kind in ELEMENTWISE and all(o.kind != BROADCAST for o in step.operands)
                              and all(len(values[o.values[0]].shape) <= 1 for o in step.operands
                                      if o.kind not in (SHARED, STACKED)))
            getters = [self._operand(o, m, flat, value, weights, program,
                                     _width(plan, program, o.base) if o.kind == VIEW else 0)
                       for o in step.operands]
            if op.kind == "affine":
                has_bias = len(op.args) % 2
                pairs = range(0, len(op.args) - has_bias, 2)
                weight = torch.cat([_param(step.operands[i + 1], weights, m, False) for i in pairs], dim=-2)
                bias = _param(step.operands[-1], weights, m, False) if has_bias else None
                fn, getters = _fused_affine(weight, bias), [getters[i] for i in pairs]
            else:
                fn = OUT_IMPLS.get(op.kind) or _no_out(OP_IMPLS[op.kind])
            targets = [plan.base_of[(b, k)] for k in range(len(op.outs))]
            final = finals.get(b, -1) if getattr(fn, "writes_out", False) else -1
            unflat = not flat or any(len(values[v].shape) > 1 for v in op.outs)
            steps.append((fn, getters, dict(op.attrs), targets, unflat, final))
        self._steps = tuple(steps)
        self._outputs = tuple(value(v) for v in program.outputs)
        self._finals = frozenset(s[-1] for s in steps if s[-1] >= 0)
        self._shaped = tuple(i for i in range(program.n_inputs) if len(values[i].shape) > 1)

    @staticmethod
    def _operand(o, m: int, flat: bool, value, weights, program: Program, width: int):
        """How to fetch one operand (`[k, m*d]` when flat, else `[k, m, *shape]`) from `env`."""
        if o.kind in (SHARED, STACKED):
            t = _param(o, weights, m, flat)
            return lambda env: t
        if o.kind == VALUE:
            return value(o.values[0])
        shape = program.values[o.values[0]].shape
        if o.kind == VIEW:
            base, lo, hi = o.base, o.start, o.start + m * prod(shape)
            whole = lo == 0 and hi == width
            if flat:
                return itemgetter(base) if whole else (lambda env: env[base][:, lo:hi])
            return lambda env: env[base][:, lo:hi].unflatten(1, (m,) + shape)
        parts = [value(v) for v in o.values]
        if o.kind == BROADCAST:
            get = parts[0]
            return lambda env: get(env).unsqueeze(1).expand(-1, m, *shape)
        if o.kind == GATHER:
            raise ValueError("cell plans run batches that would gather op by op; this plan gathers")
        return lambda env: torch.stack([g(env) for g in parts], dim=1)  # token ids

    def __call__(self, inputs: list[torch.Tensor], out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """`inputs` in the program's input order; returns the program's outputs.

        With `out` (one tensor per output), results are written there, in place
        where the op producing them can, and `out` is returned.
        """
        env: list = list(inputs) + [None] * (self._env_size - len(inputs))
        for i in self._shaped:
            env[i] = env[i].flatten(1)
        for fn, getters, attrs, targets, unflat, final in self._steps:
            args = [g(env) for g in getters]
            results = fn(args, attrs) if final < 0 or out is None else fn(args, attrs, out=out[final])
            if unflat:
                results = [t.flatten(1) for t in results]
            for target, t in zip(targets, results):
                env[target] = t
        if out is None:
            return [g(env) for g in self._outputs]
        for i, (dest, g) in enumerate(zip(out, self._outputs)):
            if i not in self._finals:
                dest.copy_(g(env))
        return out


def _width(plan: CellPlan, program: Program, base: int) -> int:
    """Columns of a base per call."""
    if base < program.n_inputs:
        return prod(program.values[base].shape)
    for (b, k), number in plan.base_of.items():
        if number == base:
            step = plan.steps[b]
            return len(step.ops) * prod(program.values[program.ops[step.ops[0]].outs[k]].shape)
    raise KeyError(base)


def _no_out(fn):
    def run(args, attrs, out=None):
        return fn(args, attrs)
    return run


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
