"""The batched executor: run a scheduled, laid-out graph on a torch device.

`Runtime` holds a model's weights on a device and its compiled kernels.
`Runtime.prepare` binds one graph + schedule + layout: it allocates the
arenas and precomputes, for every batch, each operand as a view, a zero
broadcast or a gather index, and each output as an arena slice. `Executable.run`
then only dispatches kernels: no per-node Python work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError, VerificationError
from ..graph.ir import Graph
from ..memory.layout import Layout
from ..schedule.ir import Schedule
from ..spec.model import ModelSpec
from ..spec.program import TOKEN, Program
from .kernels import Kernel
from .reference import reference_outputs
from .weights import init_weights

_VIEW, _GATHER = 0, 1


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{name}'; expected cpu or cuda")
    return torch.device(name)


@dataclass(frozen=True)
class GatherStats:
    gathers: int  # runtime gather operations per run
    gather_bytes: int  # bytes they copy
    operands: int  # float operands fed to kernels
    view_bytes: int  # operand bytes served without a copy (views and zero broadcasts)


class Runtime:
    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        self.spec = spec
        self.device = resolve_device(device)
        self.weights = init_weights(spec, self.device)
        self._kernels: dict[Program, Kernel] = {}

    def kernel(self, program: Program) -> Kernel:
        k = self._kernels.get(program)
        if k is None:
            k = self._kernels[program] = Kernel(program, self.weights)
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
        gathers = gather_bytes = operands = view_bytes = 0
        for b in range(schedule.num_batches):
            nodes = schedule.batch(b)
            k = len(nodes)
            program = graph.types[schedule.batch_type[b]].program
            inputs = []
            n_float = n_token = 0
            for value in program.inputs:
                if value.dtype == TOKEN:
                    ids = graph.imm[graph.imm_ptr[nodes] + n_token]
                    n_token += 1
                    inputs.append((_VIEW, torch.as_tensor(ids, dtype=torch.long, device=device)))
                    continue
                e = graph.arg_ptr[nodes] + n_float
                n_float += 1
                producer, slot = graph.arg_node[e], graph.arg_slot[e]
                real = producer >= 0
                nbytes = k * int(np.prod(value.shape)) * 4
                operands += 1
                if not real.any():  # all zeros: broadcast one zero row, no copy
                    zeros = self._zero_row(layout, value.shape)
                    inputs.append((_VIEW, zeros.expand((k,) + value.shape)))
                    view_bytes += nbytes
                    continue
                values = value_ptr[producer[real]] + slot[real]
                arena_ids = np.unique(layout.value_arena[values])
                if len(arena_ids) != 1:
                    raise VerificationError(f"batch {b}: operand {n_float} spans several arenas")
                a = int(arena_ids[0])
                rows = np.full(k, layout.arena_rows[a], dtype=np.int64)  # zero row by default
                rows[real] = layout.value_row[values]
                if real.all() and np.all(np.diff(rows) == 1):
                    inputs.append((_VIEW, self.arenas[a][rows[0]:rows[0] + k]))
                    view_bytes += nbytes
                else:
                    index = torch.as_tensor(rows, dtype=torch.long, device=device)
                    inputs.append((_GATHER, (self.arenas[a], index)))
                    gathers += 1
                    gather_bytes += nbytes
            outputs = []
            for s in range(len(program.outputs)):
                v = value_ptr[nodes[0]] + s
                a, r0 = int(layout.value_arena[v]), int(layout.value_row[v])
                outputs.append(self.arenas[a][r0:r0 + k])
            steps.append((runtime.kernel(program), tuple(inputs), tuple(outputs)))
        self._steps = tuple(steps)
        self.stats = GatherStats(gathers, gather_bytes, operands, view_bytes)

        out_values = value_ptr[graph.out_node] + graph.out_slot
        out_arena = np.unique(layout.value_arena[out_values])
        if len(out_arena) != 1:
            raise VerificationError("the results are spread over several arenas")
        self._result_arena = self.arenas[int(out_arena[0])]
        self._result_rows = torch.as_tensor(layout.value_row[out_values], dtype=torch.long, device=device)

    def _zero_row(self, layout: Layout, shape) -> torch.Tensor:
        for arena, arena_shape in zip(self.arenas, layout.arena_shapes):
            if arena_shape == tuple(shape):
                return arena[-1:]
        return torch.zeros((1,) + tuple(shape), device=self.device)

    def run(self) -> torch.Tensor:
        """Execute every batch; returns the results `[num_results, *shape]` in graph order."""
        with torch.no_grad():
            for kernel, inputs, outputs in self._steps:
                args = [src if kind == _VIEW else torch.index_select(src[0], 0, src[1])
                        for kind, src in inputs]
                for view, result in zip(outputs, kernel(args)):
                    view.copy_(result)
            return torch.index_select(self._result_arena, 0, self._result_rows)
