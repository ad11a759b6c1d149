"""The batched executor: run a scheduled, laid-out graph on a torch device.

`Runtime` holds a model's weights on a device and its compiled kernels.
`Runtime.prepare` binds one graph + schedule + layout: it allocates the
arenas and precomputes, for every batch, each operand as a view, a broadcast
row or a gather index (`edbc.memory.operands`), and each output as the arena
rows the kernel writes in place. `Executable.run` then only dispatches
kernels: no per-node Python work.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UsageError, VerificationError
from ..graph.ir import Graph, csr_gather, csr_ptr
from ..memory.cells import plan_kernel
from ..memory.layout import Layout
from ..memory.operands import BROADCAST_CODE, VIEW_CODE, memory_stats, operand_table
from ..schedule.ir import Schedule
from ..spec.model import ModelSpec
from ..spec.program import TOKEN, Program
from .kernels import Kernel
from .limits import check_params_fit
from .reference import reference_outputs
from .weights import init_weights

_VIEW, _GATHER = 0, 1



def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{name}'; expected cpu or cuda")
    return torch.device(name)


class Runtime:
    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        self.spec = spec
        self.device = resolve_device(device)
        check_params_fit(spec, self.device)
        self.weights = init_weights(spec, self.device)
        self.param_shapes = {name: p.shape for name, p in spec.params.items()}
        self._kernels: dict[tuple[Program, str], Kernel] = {}
        self._by_id: dict[tuple[int, str], tuple[Program, Kernel]] = {}

    def kernel(self, program: Program, memory: str = "pq") -> Kernel:
        """The kernel of `program`, rewritten by `edbc.spec.passes` and its internal batches laid
        out with memory mode `memory`."""
        # By identity first: hashing a Program walks all of it, and a graph's types repeat.
        known = self._by_id.get((id(program), memory))
        if known is not None and known[0] is program:
            return known[1]
        k = self._kernels.get((program, memory))
        if k is None:
            optimized, derived, plan = plan_kernel(program, self.param_shapes, memory)
            for name, d in derived.items():
                if name not in self.weights:
                    table = self.weights[d.table] @ self.weights[d.weight]
                    self.weights[name] = table + self.weights[d.bias] if d.bias else table
            k = self._kernels[(program, memory)] = Kernel(optimized, self.weights, plan)
        self._by_id[(id(program), memory)] = (program, k)
        return k

    def prepare(self, graph: Graph, schedule: Schedule, layout: Layout) -> "Executable":
        return Executable(self, graph, schedule, layout)

    def reference(self, cell_graph: Graph) -> torch.Tensor:
        with torch.no_grad():
            return reference_outputs(cell_graph, self.weights, self.device)


class Executable:
    def __init__(self, runtime: Runtime, graph: Graph, schedule: Schedule, layout: Layout):
        device = runtime.device
        self.graph = graph
        self.device = device
        self.arenas = [torch.empty((int(rows) + 1,) + shape, device=device)
                       for shape, rows in zip(layout.arena_shapes, layout.arena_rows)]
        for a in self.arenas:
            a[-1].zero_()
        programs = [t.program for t in graph.types]
        used = np.unique(schedule.batch_type).tolist()
        kernels = [runtime.kernel(programs[t], layout.mode) if t in used else None for t in range(len(programs))]
        table = operand_table(graph, schedule, layout)
        self.stats = memory_stats(graph, schedule, layout, {programs[t]: kernels[t].plan for t in used}, table)
        # per type: (is token, shape) of each input, and the number of outputs
        signatures = [[(v.dtype == TOKEN, v.shape) for v in p.inputs] for p in programs]
        n_outputs = [len(p.outputs) for p in programs]

        # Everything below is computed with array operations; the loop over batches only slices.
        sizes = schedule.sizes.tolist()
        first_value = graph.value_ptr[schedule.nodes[schedule.ptr[:-1]]]
        n_float = np.array([len(p.float_inputs) for p in programs])[schedule.batch_type]
        entry = csr_ptr(n_float).tolist()
        kinds, arenas, firsts = table.kind.tolist(), table.arena.tolist(), table.first_row.tolist()
        gather_rows = torch.as_tensor(table.rows, dtype=torch.long, device=device)
        gather_ptr = table.ptr.tolist()
        tokens = _token_inputs(graph, schedule, device)
        zeros = {}
        steps = []
        out_arena = layout.value_arena.tolist()
        out_row = layout.value_row.tolist()
        for b, t in enumerate(schedule.batch_type.tolist()):
            k = sizes[b]
            inputs = []
            i = entry[b]
            token = tokens.get(b, ())
            n_token = 0
            for is_token, shape in signatures[t]:
                if is_token:
                    inputs.append((_VIEW, token[n_token]))
                    n_token += 1
                    continue
                a, first, kind = arenas[i], firsts[i], kinds[i]
                if a >= 0:
                    arena = self.arenas[a]
                else:
                    arena = zeros.get(shape)
                    if arena is None:
                        arena = zeros[shape] = torch.zeros((1,) + shape, device=device)
                if kind == VIEW_CODE:
                    inputs.append((_VIEW, arena[first:first + k]))
                elif kind == BROADCAST_CODE:
                    inputs.append((_VIEW, arena[first:first + 1].expand((k,) + shape)))
                else:
                    inputs.append((_GATHER, (arena, gather_rows[gather_ptr[i]:gather_ptr[i + 1]])))
                i += 1
            v = int(first_value[b])
            outputs = [self.arenas[out_arena[v + s]][out_row[v + s]:out_row[v + s] + k] for s in range(n_outputs[t])]
            steps.append((kernels[t], tuple(inputs), outputs))
        self._steps = tuple(steps)

        out_values = graph.value_ptr[graph.out_node] + graph.out_slot
        out_arena = np.unique(layout.value_arena[out_values])
        if len(out_arena) != 1:
            raise VerificationError("the results are spread over several arenas")
        self._result_arena = self.arenas[int(out_arena[0])]
        self._result_rows = torch.as_tensor(layout.value_row[out_values], dtype=torch.long, device=device)

    def run(self) -> torch.Tensor:
        """Execute every batch; returns the results `[num_results, *shape]` in graph order."""
        with torch.no_grad():
            for kernel, inputs, outputs in self._steps:
                kernel([src if kind == _VIEW else torch.index_select(src[0], 0, src[1]) for kind, src in inputs],
                       outputs)
            return torch.index_select(self._result_arena, 0, self._result_rows)


def _token_inputs(graph: Graph, schedule: Schedule, device) -> dict[int, list[torch.Tensor]]:
    """Each batch's token id tensors, in its program's token input order: one tensor per
    (type, token input) for all its batches, sliced."""
    out: dict[int, list[torch.Tensor]] = {}
    for t in np.unique(schedule.batch_type).tolist():
        n = len(graph.types[t].program.token_inputs)
        if not n:
            continue
        batches = np.flatnonzero(schedule.batch_type == t)
        pos, _ = csr_gather(schedule.ptr, batches)
        nodes = schedule.nodes[pos]
        bounds = csr_ptr(schedule.sizes[batches]).tolist()
        for q in range(n):
            ids = torch.as_tensor(graph.imm[graph.imm_ptr[nodes] + q], dtype=torch.long, device=device)
            for j, b in enumerate(batches.tolist()):
                out.setdefault(b, []).append(ids[bounds[j]:bounds[j + 1]])
    return out

