"""Compiled cells as native programs, and compiled mini-batches as a native replay.

`lower` turns a cell plan into the native core's instructions (`csrc/replay.cpp`):
each internal batch becomes one instruction on column ranges of `[k, width]` bases,
exactly as the generated Python kernel (`kernels.py`) slices them; on the CPU the core
runs affines as one sgemm on the rows in place, matrix products one sgemm per row, each
run of elementwise instructions as one fused pass over the rows, and embeddings and
softmaxes through ATen; dropout in training draws the Python kernels' masks (the same hash of
the step's seed, the row's cell call, the op's site and the column). A cell with an op that has
no instruction (the op table's `native` field is None) or a batch shape the instructions do
not cover lowers to None and runs its Python kernel, called from the replay loop.

`native_replay` hands a compiled mini-batch's flat arrays (schedule, operand table,
layout) to the core's `Replay`, which runs every batch with no Python per batch.
"""

from __future__ import annotations

from math import prod

import numpy as np
import torch

from ..cell.ir import BROADCAST, SHARED, STACKED, TOKENS, VALUE, VIEW, CompiledCell
from ..spec.ops import OPS, set_reduction_of
from ..spec.program import TOKEN, affine_terms, value_uses

# The core's opcodes, in its order (`enum Code`); the op table's `native` field names one.
OPCODES = ("add", "sub", "mul", "div", "addcmul", "lerp", "sigmoid", "tanh", "relu", "exp", "copy", "dropout",
           "affine", "affine_add", "embed", "log_softmax", "softmax", "matmul", "matmul_add", "matvec")
CODE = {name: i for i, name in enumerate(OPCODES)}
SET_HOWS = ("set_sum", "set_mean", "set_max")  # the core's `SetHow`
FIELDS = 12  # code, dst base, dst col, width, three (base, col) operands, the left operand's [p, q] (dropout: site, rate)
NONE = -(2 ** 63)  # an operand field not used


class NotNative(Exception):
    """The cell has an op or batch shape without a native instruction."""


class _Lowering:
    """Instructions and parameter rows of one cell plan, given the weights its constants come from."""

    def __init__(self, cell: CompiledCell, weights: dict[str, torch.Tensor]):
        self.program = program = cell.program
        self.plan = plan = cell.plan
        self.params: list[torch.Tensor] = []
        self.instrs: list[tuple[int, ...]] = []
        self.widths = [prod(v.shape) if v.dtype != TOKEN else 0 for v in program.inputs]
        self.summed = self._summed_products()
        for (b, slot), base in sorted(plan.base_of.items(), key=lambda item: item[1]):
            step = plan.steps[b]
            assert base == len(self.widths), "bases are numbered in run order"
            # A product summed in place is never made on its own: its base holds nothing.
            width = 0 if b in self.summed else prod(program.values[program.ops[step.ops[0]].outs[slot]].shape)
            self.widths.append(len(step.ops) * width)
        for b, step in enumerate(plan.steps):
            self._step(b, step, weights)
        self.instrs = _products_together(self.instrs)

    def _summed_products(self) -> dict[int, int]:
        """Matrix products that only a sum reads (`add(matmul(..), matmul(..))`): each runs as a
        GEMM accumulating into the sum's destination (beta = 1), so the products are never
        written out and read back. Product step -> the sum's step."""
        program, plan = self.program, self.plan
        uses = value_uses(program.ops, program.outputs)
        made_by = {program.ops[s.ops[0]].outs[0]: b for b, s in enumerate(plan.steps) if len(s.ops) == 1}
        summed = {}
        for b, step in enumerate(plan.steps):
            op = program.ops[step.ops[0]]
            if op.kind not in ("add", "sum") or len(step.ops) != 1:
                continue
            products = [made_by.get(o.values[0]) if o.kind == VALUE else None for o in step.operands]
            if all(p is not None and program.ops[plan.steps[p].ops[0]].kind == "matmul"
                   and uses[o.values[0]] == 1 for p, o in zip(products, step.operands)):
                summed.update((p, b) for p in products)
        return summed

    def _param(self, t: torch.Tensor) -> tuple[int, int]:
        self.params.append(t.reshape(-1).contiguous())
        return -len(self.params), 0

    def _value(self, v: int) -> tuple[int, int]:
        h = self.plan.homes[v]
        return h.base, h.start

    def _operand(self, o, m: int, weights) -> tuple[int, int]:
        """An elementwise operand as (base, first column) covering the batch's m*d columns."""
        if o.kind == VALUE:
            return self._value(o.values[0])
        if o.kind == VIEW:
            return o.base, o.start
        if o.kind == SHARED:
            t = weights[o.values[0]]
            return self._param(t.repeat(m) if m > 1 else t)
        if o.kind == STACKED:
            return self._param(torch.cat([weights[n].reshape(-1) for n in o.values]))
        raise NotNative(f"operand kind {o.kind}")

    def _emit(self, code: str, dst: tuple[int, int], width: int, *operands: tuple[int, int],
              left: tuple[int, int] = (0, 0)) -> None:
        fields = [CODE[code], *dst, width]
        for a in operands:
            fields += a
        fields += [NONE, 0] * (3 - len(operands))
        self.instrs.append((*fields, *left))

    def _step(self, b: int, step, weights) -> None:
        program, plan = self.program, self.plan
        op = program.ops[step.ops[0]]
        opdef = OPS[op.kind]
        m = len(step.ops)
        if opdef.native is None:
            raise NotNative(op.kind)
        if len(op.outs) != 1:
            raise NotNative(f"{op.kind} with {len(op.outs)} outputs")
        dst = (plan.base_of[(b, 0)], 0)
        width = self.widths[dst[0]]
        if b in self.summed.values():
            return  # its products accumulated into its destination already
        if any(o.kind in (BROADCAST, TOKENS) for o in step.operands):
            raise NotNative("a broadcast or stacked-token operand")
        if op.kind == "dropout":  # the core draws training's masks as `dropout_keep` does; [p, q] = site, rate
            self._emit("dropout", dst, width, self._operand(step.operands[0], m, weights),
                       left=(op.attr("site"), op.attr("rate")))
            return
        if opdef.elementwise:
            args = [self._operand(o, m, weights) for o in step.operands]
            if op.kind == "sum":
                if len(args) == 1:
                    self._emit("copy", dst, width, args[0])
                    return
                self._emit("add", dst, width, args[0], args[1])
                for a in args[2:]:
                    self._emit("add", dst, width, dst, a)
                return
            self._emit(opdef.native, dst, width, *args)
            return
        if m != 1:
            raise NotNative(f"{m} {op.kind} ops side by side")
        out_shape = program.values[op.outs[0]].shape
        if op.kind == "embed":
            table, ids = step.operands
            if table.kind != SHARED or len(out_shape) != 1:
                raise NotNative("embed of a non-vector")
            self._emit("embed", dst, width, self._value(ids.values[0]), self._param_matrix(weights[table.values[0]]))
            return
        if op.kind == "affine":
            pairs, bias = affine_terms(tuple(range(len(step.operands))))
            if len(out_shape) != 1 or any(len(program.values[step.operands[x].values[0]].shape) != 1
                                          or step.operands[w].kind != SHARED for x, w in pairs):
                raise NotNative("an affine of matrices")
            if bias is None:
                b_ref = (NONE, 0)
            elif step.operands[bias].kind == SHARED:
                b_ref = self._param(weights[step.operands[bias].values[0]])
            else:
                b_ref = self._value(step.operands[bias].values[0])
            for n, (x, w) in enumerate(pairs):
                weight = self._param_matrix(weights[step.operands[w].values[0]])
                x_ref = self._value(step.operands[x].values[0])
                self._emit("affine" if n == 0 else "affine_add", dst, width, x_ref, weight, b_ref)
            return
        if op.kind in ("matmul", "matvec"):
            self._product(b, step, weights)
            return
        if op.kind in ("log_softmax", "softmax") and len(out_shape) == 1:
            self._emit(op.kind, dst, width, self._value(step.operands[0].values[0]))
            return
        raise NotNative(op.kind)

    def _product(self, b: int, step, weights) -> None:
        """matmul / matvec of two operands, either a parameter (kept whole) or a value."""
        program, plan = self.program, self.plan
        op = program.ops[step.ops[0]]
        refs, shapes = [], []
        for o in step.operands:
            if o.kind == SHARED:
                refs.append(self._param_matrix(weights[o.values[0]]))
                shapes.append(tuple(weights[o.values[0]].shape))
            else:
                refs.append(self._value(o.values[0]))
                shapes.append(program.values[o.values[0]].shape)
        if refs[0][0] < 0 and refs[1][0] < 0:
            raise NotNative(f"a {op.kind} of two parameters")
        code, dst = op.kind, (plan.base_of[(b, 0)], 0)
        if b in self.summed:
            total = self.summed[b]
            dst = (plan.base_of[(total, 0)], 0)
            code = "matmul_add" if any(p < b and t == total for p, t in self.summed.items()) else "matmul"
        self._emit(code, dst, prod(program.values[op.outs[0]].shape), *refs, left=shapes[0])

    def _param_matrix(self, t: torch.Tensor) -> tuple[int, int]:
        """A 2-D parameter (weight, table), kept 2-D: ATen or BLAS reads it whole, row-major."""
        self.params.append(t.contiguous())
        return -len(self.params), 0

    def outputs(self) -> list[tuple[int, int, int]]:
        homes = self.plan.homes
        return [(homes[v].base, homes[v].start, homes[v].size) for v in self.program.outputs]


def _rowwise(ins: tuple[int, ...]) -> bool:
    """The core's `rowwise`: a product whose left operand is a matrix per row. On the CPU a run of
    them goes row by row, a row's matrices in cache."""
    return ins[0] in (CODE["matmul"], CODE["matmul_add"]) or (ins[0] == CODE["matvec"] and ins[4] >= 0)


def _products_together(instrs: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Each matrix product moved up past the instructions it does not depend on (nor they on it),
    to join the products before it: mvrnn's four products per node then share one pass over the
    rows, each row's two matrices read from memory once (~10 % of its execute time)."""
    def bases(ins):
        return ins[1], {x for x in (ins[4], ins[6], ins[8]) if x >= 0}  # written, read (parameters aside)

    out: list[tuple[int, ...]] = []
    for ins in instrs:
        at = len(out)
        if _rowwise(ins):
            dst, reads = bases(ins)
            while at > 0 and not _rowwise(out[at - 1]):
                d, r = bases(out[at - 1])
                if d in reads or dst in r or d == dst:
                    break
                at -= 1
        out.insert(at, ins)
    return out


def lower(cell: CompiledCell, weights: dict[str, torch.Tensor]):
    """The native kernel of a compiled cell, bound to `weights`; None where it has no native form."""
    from ..native import core

    try:
        low = _Lowering(cell, weights)
    except NotNative:
        return None
    instrs = torch.tensor(low.instrs, dtype=torch.long).reshape(-1, FIELDS)
    token = [int(v.dtype == TOKEN) for v in cell.program.inputs]
    return core().NativeKernel(instrs, low.widths, token, low.outputs(), [p.detach() for p in low.params])


def native_params(cell: CompiledCell, weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The parameter rows of `cell`'s native kernel, made from `weights` (after an update)."""
    return [p.detach() for p in _Lowering(cell, weights).params]


def differentiable_params(cell: CompiledCell, weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The same rows made from `weights` under autograd, so that their gradients (what the core's
    backward returns) reach the weights."""
    return _Lowering(cell, weights).params


def native_replay(runtime, compiled, arenas: list[torch.Tensor]):
    """The core's `Replay` of a compiled mini-batch into `arenas`: every batch's kernel (native,
    set reduction or Python), and the flat arrays saying what each batch reads and writes."""
    from ..native import core

    graph, schedule, layout = compiled.graph, compiled.schedule, compiled.layout
    device = runtime.device
    table = compiled.operand_table()
    kernels, n_float, n_tokens = runtime.remembered(("replay kernels", *graph.types, *compiled.cells),
                                                    lambda: type_kernels(runtime, graph.types, compiled.cells))

    # Operands of no arena (zeros of a shape no value has) read a zero row of their own.
    arena = table.arena
    arenas = list(arenas)
    missing = np.flatnonzero(arena < 0)
    if len(missing):
        arena = arena.copy()
        types = schedule.batch_type[table.batch[missing]]
        zeros: dict[tuple, int] = {}
        for i, t, p in zip(missing.tolist(), types.tolist(), table.position[missing].tolist()):
            program = graph.types[t].program
            shape = program.values[program.float_inputs[p]].shape
            if shape not in zeros:
                zeros[shape] = len(arenas)
                arenas.append(torch.zeros((1,) + tuple(shape), device=device))
            arena[i] = zeros[shape]

    # The core derives its flat arrays (each batch's first operand entry and first value, each
    # position's set size and token ids) from these, rows and tokens on the arenas' device.
    # Rows are read and written in place, elementwise runs fused, on the CPU (unless the runtime says not).
    return core().Replay(
        arenas, kernels, runtime.fused and device.type == "cpu", schedule.batch_type, schedule.ptr, schedule.nodes,
        graph.value_ptr, graph.arg_ptr, graph.imm_ptr, graph.imm, n_float, n_tokens, table.kind, arena,
        table.first_row, table.ptr, table.rows, layout.value_arena, layout.value_row)


def type_kernels(runtime, types: tuple, cells: tuple) -> tuple[list, np.ndarray, int]:
    """Per node type, what the replay runs (native program, set reduction or Python kernel), its
    float input count, and the most token inputs a type has: the same for every mini-batch of a model."""
    from ..native import core

    kernels = []
    for node_type, cell in zip(types, cells):
        program = node_type.program
        token = [int(v.dtype == TOKEN) for v in program.inputs]
        reduction = set_reduction_of(program)
        if reduction is not None:
            kernels.append(core().TypeKernel(None, SET_HOWS.index(reduction.native), None, token, 1))
            continue
        k = runtime.native_kernel(cell) if cell is not None else None
        python = runtime.kernel(cell) if cell is not None and k is None else None
        kernels.append(core().TypeKernel(k, -1, python, token, len(program.outputs)))
    programs = [t.program for t in types]
    return (kernels, np.array([len(p.float_inputs) for p in programs], dtype=np.int64),
            max((len(p.token_inputs) for p in programs), default=0))
