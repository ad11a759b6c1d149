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
    """x1·W1 + x2·W2 + b as one matmul of [x1 x2] by the stacked [W1; W2]."""
    def run(args, attrs):
        x = args[0] if len(args) == 1 else torch.cat(args, dim=-1)
        if bias is not None and x.dim() == 2:
            return (torch.addmm(bias, x, weight),)
        out = x @ weight
        return (out + bias if bias is not None else out,)
    return run


class Kernel:
    """A program compiled for batched execution with bound weights."""

    __slots__ = ("program", "_steps")

    def __init__(self, program: Program, weights: dict[str, torch.Tensor]):
        self.program = program
        steps = []
        for op in program.ops:
            attrs = dict(op.attrs)
            if op.kind == "affine":
                has_bias = len(op.args) % 2
                pairs = range(0, len(op.args) - has_bias, 2)
                stacked = torch.cat([weights[op.args[i + 1]] for i in pairs], dim=0)
                bias = weights[op.args[-1]] if has_bias else None
                refs = tuple((True, op.args[i]) for i in pairs)
                steps.append((_fused_affine(stacked, bias), refs, attrs, op.outs))
                continue
            refs = tuple((False, weights[a]) if isinstance(a, str) else (True, a) for a in op.args)
            steps.append((OP_IMPLS[op.kind], refs, attrs, op.outs))
        self._steps = tuple(steps)

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """`inputs` in the program's input order; returns the program's outputs."""
        env: list = list(inputs) + [None] * (len(self.program.values) - len(inputs))
        for fn, refs, attrs, outs in self._steps:
            results = fn([env[r] if is_value else r for is_value, r in refs], attrs)
            for v, t in zip(outs, results):
                env[v] = t
        return [env[v] for v in self.program.outputs]


def interpret(program: Program, inputs: list[torch.Tensor], weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run a program op by op as written: no fusion, no precomputation (the reference)."""
    env: list = list(inputs) + [None] * (len(program.values) - len(inputs))
    for op in program.ops:
        args = [weights[a] if isinstance(a, str) else env[a] for a in op.args]
        for v, t in zip(op.outs, OP_IMPLS[op.kind](args, dict(op.attrs))):
            env[v] = t
    return [env[v] for v in program.outputs]
