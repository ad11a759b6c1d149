"""The batched executor: run a compiled mini-batch on a torch device.

`Runtime` holds a model's weights on a device and the kernels it made from
compiled cells (binding weights, and the derived tables cells ask for).
`Runtime.prepare` binds one compiled mini-batch (`edbc.plan.CompiledBatch`):
it allocates the arenas and turns the batch's operand table (each operand a
view, a broadcast row or a gather index) into tensors, and each output into
the arena rows the kernel writes in place. `Executable.run` then only
dispatches kernels: no per-node Python work.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cell.ir import CompiledCell, Derived
from ..errors import UsageError, VerificationError
from ..graph.ir import Graph, csr_gather, csr_ptr
from ..plan.plan import CompiledBatch
from ..schedule.ir import Schedule
from ..spec.model import ModelSpec
from ..spec.program import TOKEN
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
    """A model's weights on a device, and the kernels of the compiled cells that run with them.

    `weights` (parameter name -> tensor) may be changed in place, as an optimizer does, or entry
    by entry: before each run, tables derived from them (folded embeddings, stacked weights) are
    recomputed when a weight's version counter or identity has moved since they were made.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu", weights: dict[str, torch.Tensor] | None = None):
        self.spec = spec
        self.device = resolve_device(device)
        check_params_fit(spec, self.device)
        if weights is None:
            self.weights = init_weights(spec, self.device)
        else:
            self.weights = {name: weights[name].to(self.device, torch.float32) for name in spec.params}
        self._derived: dict[str, torch.Tensor] = {}  # what cells derive from the weights, by name
        self._recipes: dict[str, Derived] = {}
        self._kernels: dict[int, tuple[CompiledCell, Kernel]] = {}  # by the compiled cell's identity
        self._seen = self._versions()

    def _versions(self) -> tuple:
        # An in-place update bumps a tensor's version counter; replacing an entry changes its identity.
        return tuple((name, id(t), t._version) for name, t in self.weights.items())

    def _bound(self) -> dict[str, torch.Tensor]:
        return {**self.weights, **self._derived}

    def _derive(self, name: str, d: Derived) -> None:
        table = self.weights[d.table] @ self.weights[d.weight]
        self._derived[name] = table + self.weights[d.bias] if d.bias else table

    def kernel(self, cell: CompiledCell) -> Kernel:
        """The kernel of a compiled cell, with this runtime's weights bound."""
        known = self._kernels.get(id(cell))
        if known is not None and known[0] is cell:
            return known[1]
        self.refresh()
        for name, d in cell.derived.items():
            if name not in self._derived:
                self._recipes[name] = d
                self._derive(name, d)
        k = Kernel(cell, self._bound())
        self._kernels[id(cell)] = (cell, k)  # the entry keeps `cell` alive, so its id stays its own
        return k

    def refresh(self) -> None:
        """Recompute the derived tables and rebind every kernel if a weight changed since they were made."""
        seen = self._versions()
        if seen == self._seen:
            return
        self._seen = seen
        with torch.no_grad():
            for name, d in self._recipes.items():
                self._derive(name, d)
            bound = self._bound()
            for _, k in self._kernels.values():
                k.bind(bound)

    def prepare(self, compiled: CompiledBatch) -> "Executable":
        return Executable(self, compiled)

    def reference(self, cell_graph: Graph) -> torch.Tensor:
        with torch.no_grad():
            return reference_outputs(cell_graph, self.weights, self.device)


class Executable:
    def __init__(self, runtime: Runtime, compiled: CompiledBatch):
        device = runtime.device
        self._runtime = runtime
        graph, schedule, layout = compiled.graph, compiled.schedule, compiled.layout
        self.graph = graph
        self.device = device
        self.arenas = [torch.empty((int(rows) + 1,) + shape, device=device)
                       for shape, rows in zip(layout.arena_shapes, layout.arena_rows)]
        for a in self.arenas:
            a[-1].zero_()
        programs = [t.program for t in graph.types]
        kernels = [runtime.kernel(cell) if cell is not None else None for cell in compiled.cells]
        table = compiled.operand_table()
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
                if kind == table.VIEW_CODE:
                    inputs.append((_VIEW, arena[first:first + k]))
                elif kind == table.BROADCAST_CODE:
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
        self._runtime.refresh()
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

