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
from ..graph.ir import Graph
from ..memory.cells import plan_cell
from ..memory.layout import Layout
from ..memory.operands import GATHER, VIEW, MemoryStats, batch_operands, memory_stats
from ..schedule.ir import Schedule
from ..spec.model import ModelSpec
from ..spec.program import TOKEN, Program
from .kernels import Kernel
from .reference import reference_outputs
from .weights import init_weights

_VIEW, _GATHER = 0, 1

GatherStats = MemoryStats  # what `Executable.stats` reports: gathers and bytes per run


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
        self.weights = init_weights(spec, self.device)
        self.param_shapes = {name: p.shape for name, p in spec.params.items()}
        self._kernels: dict[tuple[Program, str], Kernel] = {}

    def kernel(self, program: Program, memory: str = "pq") -> Kernel:
        """The kernel of `program`, its internal batches laid out with memory mode `memory`."""
        k = self._kernels.get((program, memory))
        if k is None:
            plan = plan_cell(program, self.param_shapes, memory)
            k = self._kernels[(program, memory)] = Kernel(program, self.weights, plan)
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
        value_ptr = graph.value_ptr
        steps = []
        kernels: dict[Program, Kernel] = {}
        for b in range(schedule.num_batches):
            nodes = schedule.batch(b)
            k = len(nodes)
            program = graph.types[schedule.batch_type[b]].program
            kernel = kernels.get(program) or kernels.setdefault(program, runtime.kernel(program, layout.mode))
            floats = iter(batch_operands(graph, schedule, layout, b))
            inputs = []
            n_token = 0
            for value in program.inputs:
                if value.dtype == TOKEN:
                    ids = graph.imm[graph.imm_ptr[nodes] + n_token]
                    n_token += 1
                    inputs.append((_VIEW, torch.as_tensor(ids, dtype=torch.long, device=device)))
                    continue
                o = next(floats)
                arena = self.arenas[o.arena] if o.arena >= 0 else torch.zeros((1,) + value.shape, device=device)
                if o.kind == GATHER:
                    inputs.append((_GATHER, (arena, torch.as_tensor(o.rows, dtype=torch.long, device=device))))
                elif o.kind == VIEW:
                    inputs.append((_VIEW, arena[int(o.rows[0]):int(o.rows[0]) + k]))
                else:  # one row for every node
                    r = int(o.rows[0]) if o.arena >= 0 else 0
                    inputs.append((_VIEW, arena[r:r + 1].expand((k,) + value.shape)))
            outputs = []
            for s in range(len(program.outputs)):
                v = value_ptr[nodes[0]] + s
                a, r0 = int(layout.value_arena[v]), int(layout.value_row[v])
                outputs.append(self.arenas[a][r0:r0 + k])
            steps.append((kernel, tuple(inputs), outputs))
        self._steps = tuple(steps)
        self.stats = memory_stats(graph, schedule, layout, {p: kern.plan for p, kern in kernels.items()})

        out_values = value_ptr[graph.out_node] + graph.out_slot
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
