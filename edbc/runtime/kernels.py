"""Compiled cells turned into kernels: generated Python that replays a cell plan with bound weights.

The op table (`edbc.spec.ops.OPS`) gives each op's torch implementation, its
direct call and whether it is elementwise. A `Kernel` runs a compiled cell for
a whole batch; it folds each multi-term affine into a single matmul over
concatenated inputs, with the weights stacked once. `interpret` runs a program
op by op as written: the unbatched reference.
"""

from __future__ import annotations

from math import prod

import torch
import torch.nn.functional as F

from ..cell.ir import BROADCAST, SHARED, STACKED, TOKENS, VALUE, VIEW, CellPlan, CompiledCell
from ..spec.ops import OPS, Noise, set_reduction_of
from ..spec.program import Program, affine_terms


def fast_tanh(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh(x) = 2·sigmoid(2x) - 1: on large CPU tensors torch's tanh takes ~5x sigmoid's time
    (measured on this build), so four cheap calls beat one; small tensors keep tanh."""
    # Under autograd the in-place tail would overwrite the sigmoid's output its backward needs.
    if x.numel() < _TANH_SPLIT or x.device.type != "cpu" or x.requires_grad:
        return torch.tanh(x, out=out) if out is not None else torch.tanh(x)
    y = torch.mul(x, 2, out=out) if out is not None else x * 2
    return y.sigmoid_().mul_(2).sub_(1)


_TANH_SPLIT = 4096  # elements; below, the call overhead of the split outweighs tanh's cost


class Kernel:
    """A compiled cell with bound weights, for batched execution.

    It replays the cell's plan (`edbc.cell.CellPlan`):
    each internal batch of `m` ops is one torch call. Every tensor is a
    `[k, width]` row per call; a value is a column range of a base (a cell
    input or a batch output). Elementwise batches run on `[k, m*d]` columns;
    others see `[k, m, *shape]`. The replay is generated as Python source once,
    when the kernel is built, so a call runs straight-line torch calls with no
    interpretation; results that are kernel outputs are written into them in place.
    """

    __slots__ = ("program", "plan", "source", "_run", "_namespace")

    def __init__(self, cell: CompiledCell, weights: dict[str, torch.Tensor]):
        """`weights` holds the model's parameters and the cell's derived ones."""
        self.program = program = cell.program
        self.plan = plan = cell.plan
        self.source, constants = _generate(program, plan, weights)
        self._namespace = {"torch": torch, "F": F, "fast_tanh": fast_tanh, **constants}
        exec(compile(self.source, f"<kernel {program.name}>", "exec"), self._namespace)
        self._run = self._namespace["kernel"]

    def bind(self, weights: dict[str, torch.Tensor]) -> None:
        """Rebuild the constants (weights, stacked weights) from new weights. The source is the same:
        it depends only on the plan, and reads its constants as globals at each call."""
        _, constants = _generate(self.program, self.plan, weights)
        self._namespace.update(constants)

    def bind_leaves(self, weights: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Bind constants made from `weights` (which autograd tracks) as autograd leaves of their own,
        so that many calls sum their gradients before one pass takes them back to `weights`. Returns
        (constant as made, its leaf) pairs; `bind` restores plain constants."""
        _, constants = _generate(self.program, self.plan, weights)
        pairs = []
        for name, value in constants.items():
            if isinstance(value, torch.Tensor) and value.requires_grad:
                leaf = value.detach().requires_grad_()
                pairs.append((value, leaf))
                constants[name] = leaf
        self._namespace.update(constants)
        return pairs

    def __call__(self, inputs: list[torch.Tensor], out: list[torch.Tensor] | None = None,
                 noise: Noise | None = None) -> list[torch.Tensor]:
        """`inputs` in the program's input order; returns the program's outputs, written into
        `out` (one tensor per output) when given. `noise`: what noisy ops (dropout) draw from in
        training; None at inference."""
        return self._run(inputs, out, noise)


class SetKernel:
    """One batch of a set reduction: `k` nodes' sets, the operand's row j in the set of node
    `owner[j]`, reduced by the op's `segment` in one call. It has no weights to bind."""

    __slots__ = ("segment", "owner", "k")

    def __init__(self, program: Program, owner: torch.Tensor, k: int):
        self.segment = set_reduction_of(program).segment
        self.owner = owner
        self.k = k

    def __call__(self, inputs: list[torch.Tensor], out: list[torch.Tensor] | None = None,
                 noise: Noise | None = None) -> list[torch.Tensor]:
        reduced = self.segment(inputs[0], self.owner, self.k)
        if out is None:
            return [reduced]
        out[0].copy_(reduced)
        return out


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
        flat = m == 1 or (OPS[op.kind].elementwise and all(o.kind != BROADCAST for o in step.operands)
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
    code = ["def kernel(inputs, out=None, noise=None):"] + [f"    {line}" for line in head + body]
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
    return OPS[op.kind].direct is not None or op.kind == "embed"


def _rows_affine(program: Program, op) -> bool:
    """An affine whose inputs are vectors: `addmm` on `[k, in]` rows."""
    return all(len(program.values[x].shape) == 1 for x, _ in affine_terms(op.args)[0])


def _call(program: Program, op, args: list[str], m: int, flat: bool, weights, step, constant,
          dest: str | None) -> str:
    """The expression computing one internal batch (one op, or m ops side by side)."""
    out = f", out={dest}" if dest is not None and _writes_out(program, op, flat, m) else ""
    if op.kind == "affine":
        pairs, bias = affine_terms(tuple(range(len(args))))  # argument positions
        pairs = [x for x, _ in pairs]
        bias = args[bias] if bias is not None else None
        if m == 1 and _rows_affine(program, op):
            x, w = args[pairs[0]], args[pairs[0] + 1]
            first = f"torch.mm({x}, {w}{out})" if bias is None else f"torch.addmm({bias}, {x}, {w}{out})"
            return first + "".join(f".addmm_({args[i]}, {args[i + 1]})" for i in pairs[1:])
        weight = torch.cat([_param(step.operands[i + 1], weights, m, False) for i in pairs], dim=-2)
        # The stacked weight is a constant of its own, so that rebinding (and autograd) can reach it.
        fused = constant(_stacked_affine(weight.dim() == 3))
        return f"{fused}({constant(weight)}, [{', '.join(args[i] for i in pairs)}], {bias if bias is not None else 'None'})"
    if op.kind == "embed" and m == 1:
        return f"torch.index_select({args[0]}, 0, {args[1]}{out})"
    if op.kind == "sum" and flat and len(args) > 1:
        return f"torch.add({args[0]}, {args[1]}{out})" + "".join(f".add_({a})" for a in args[2:])
    direct = OPS[op.kind].direct
    if direct is not None:
        return direct.format(*args, out=out)
    attrs = constant(dict(op.attrs))
    impl = constant(OPS[op.kind].impl)
    call = f"{impl}([{', '.join(args)}], {attrs}{', noise' if OPS[op.kind].noisy else ''})"
    return f"{call}[0]" if len(op.outs) == 1 else call


def _stacked_affine(per_op: bool):
    """x1·W1 + x2·W2 + b over `[k, m, in]` operands with per-op weights `[m, in, out]` (or one
    shared `[in, out]`): one batched matmul of the concatenated inputs."""

    def run(weight: torch.Tensor, xs: list[torch.Tensor], bias) -> torch.Tensor:
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


def interpret(program: Program, inputs: list[torch.Tensor], weights: dict[str, torch.Tensor],
              noise: Noise | None = None) -> list[torch.Tensor]:
    """Run a program op by op as written: no fusion, no precomputation (the reference)."""
    env: list = list(inputs) + [None] * (len(program.values) - len(inputs))
    for op in program.ops:
        args = [weights[a] if isinstance(a, str) else env[a] for a in op.args]
        opdef = OPS[op.kind]
        outs = opdef.impl(args, dict(op.attrs), noise) if opdef.noisy else opdef.impl(args, dict(op.attrs))
        for v, t in zip(op.outs, outs):
            env[v] = t
    return [env[v] for v in program.outputs]
