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
from ..graph.ir import OP, Graph, csr_gather, csr_ptr
from ..graph.lower import cell_call_of
from ..plan.plan import CompiledBatch
from ..schedule.ir import Schedule
from ..spec.model import ModelSpec
from ..spec.ops import OPS, Noise, set_reduction_of
from ..spec.program import TOKEN
from .dropout import Dropout, call_keys
from .kernels import Kernel, SetKernel
from .limits import check_params_fit
from .native import differentiable_params, lower, native_params, native_replay
from .pool import ArenaPool
from .reference import reference_outputs
from .weights import init_weights

_VIEW, _GATHER, _BROADCAST = 0, 1, 2


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{name}'; expected cpu or cuda")
    return torch.device(name)


REMEMBERED = 64  # entries `Runtime.remembered` keeps


class Runtime:
    """A model's weights on a device, and the kernels of the compiled cells that run with them.

    `weights` (parameter name -> tensor) may be changed in place, as an optimizer does, or entry
    by entry: before each run, tables derived from them (folded embeddings, stacked weights) are
    recomputed when a weight's version counter or identity has moved since they were made.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu", weights: dict[str, torch.Tensor] | None = None,
                 fused: bool = True):
        """`fused`: on the CPU the native replay reads and writes rows in place and runs each run of
        elementwise ops as one pass over the rows; False sends every op through ATen, as on other
        devices (so the CPU can test that path)."""
        self.spec = spec
        self.fused = fused
        self.device = resolve_device(device)
        check_params_fit(spec, self.device)
        if weights is None:
            self.weights = init_weights(spec, self.device)
        else:
            # Copies: training updates them in place, and the given tensors (a checkpoint's) stay as they are.
            self.weights = {name: weights[name].to(self.device, torch.float32, copy=True) for name in spec.params}
        self._derived: dict[str, torch.Tensor] = {}  # what cells derive from the weights, by name
        self._recipes: dict[str, Derived] = {}
        self._kernels: dict[int, tuple[CompiledCell, Kernel]] = {}  # by the compiled cell's identity
        self._natives: dict[int, tuple[CompiledCell, object]] = {}  # native kernels (or None), likewise
        self._remembered: dict[tuple, tuple] = {}  # `remembered`
        self._seen = self._versions()
        self.pool = ArenaPool(self.device)  # the arenas of executables, reused once they are gone

    def _versions(self) -> tuple:
        # An in-place update bumps a tensor's version counter; replacing an entry changes its identity.
        return tuple((name, id(t), t._version) for name, t in self.weights.items())

    def bound(self, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """What kernels bind: the weights and the tables derived from them (made now from `weights`
        when given, e.g. autograd leaves; else this runtime's, kept up to date by `refresh`)."""
        if weights is None:
            return {**self.weights, **self._derived}
        return {**weights, **{name: _derive(d, weights) for name, d in self._recipes.items()}}

    def kernel(self, cell: CompiledCell) -> Kernel:
        """The kernel of a compiled cell, with this runtime's weights bound."""
        known = self._kernels.get(id(cell))
        if known is not None and known[0] is cell:
            return known[1]
        self._derive_tables(cell)
        k = Kernel(cell, self.bound())
        self._kernels[id(cell)] = (cell, k)  # the entry keeps `cell` alive, so its id stays its own
        return k

    def _derive_tables(self, cell: CompiledCell) -> None:
        """Make the tables `cell` derives from the weights (folded embeddings) that are not made yet."""
        self.refresh()
        for name, d in cell.derived.items():
            if name not in self._derived:
                self._recipes[name] = d
                self._derived[name] = _derive(d, self.weights)

    def remembered(self, key: tuple, make):
        """`make()`, made once per key of objects this runtime keeps alive (a model's node types and
        compiled cells, the same from one mini-batch to the next), compared by identity."""
        ids = tuple(id(k) for k in key)
        known = self._remembered.get(ids)
        if known is not None and all(a is b for a, b in zip(known[0], key)):
            return known[1]
        value = make()
        if len(self._remembered) >= REMEMBERED:  # plans loaded from files may bring new objects each batch
            self._remembered.clear()
        self._remembered[ids] = (key, value)  # the entry keeps the key's objects alive, so their ids stay theirs
        return value

    def native_kernel(self, cell: CompiledCell):
        """The native kernel of a compiled cell (`native.lower`), with this runtime's weights bound;
        None for a cell the native programs cannot express."""
        known = self._natives.get(id(cell))
        if known is not None and known[0] is cell:
            return known[1]
        self._derive_tables(cell)
        k = lower(cell, self.bound())
        self._natives[id(cell)] = (cell, k)
        return k

    def refresh(self) -> None:
        """Recompute the derived tables and rebind every kernel if a weight changed since they were made."""
        seen = self._versions()
        if seen == self._seen:
            return
        self._seen = seen
        with torch.no_grad():
            for name, d in self._recipes.items():
                self._derived[name] = _derive(d, self.weights)
            bound = self.bound()
            for _, k in self._kernels.values():
                k.bind(bound)
            for cell, k in self._natives.values():
                if k is not None:
                    k.set_params(native_params(cell, bound))

    def prepare(self, compiled: CompiledBatch) -> "Executable":
        return Executable(self, compiled)

    def reference(self, cell_graph: Graph, dropout: Dropout | None = None) -> torch.Tensor:
        with torch.no_grad():
            return reference_outputs(cell_graph, self.weights, self.device, dropout)


def _derive(d: Derived, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    table = weights[d.table] @ weights[d.weight]
    return table + weights[d.bias] if d.bias else table


class Executable:
    def __init__(self, runtime: Runtime, compiled: CompiledBatch):
        device = runtime.device
        self._runtime = runtime
        graph, schedule, layout = compiled.graph, compiled.schedule, compiled.layout
        self.graph = graph
        self.device = device
        self.arenas = runtime.pool.arenas([(int(rows) + 1,) + shape for shape, rows in
                                           zip(layout.arena_shapes, layout.arena_rows)], self)
        for a in self.arenas:
            a[-1].zero_()
        programs = [t.program for t in graph.types]
        self._compiled = compiled
        self._python: tuple | None = None  # (steps, adjoints, kernels), made when first needed
        self._replay_native = native_replay(runtime, compiled, self.arenas)

        out_values = graph.value_ptr[graph.out_node] + graph.out_slot
        out_arena = np.unique(layout.value_arena[out_values])
        if len(out_arena) != 1:
            raise VerificationError("the results are spread over several arenas")
        self._result_index = int(out_arena[0])
        self._result_arena = self.arenas[self._result_index]
        self._result_rows = torch.as_tensor(layout.value_row[out_values], dtype=torch.long, device=device)

        # Noisy ops (dropout) draw from each row's cell call: the call of every schedule position.
        def noisy(programs) -> bool:
            return any(OPS[op.kind].noisy for p in programs for op in p.ops)

        self._stripped = compiled.inference and noisy(programs)
        self._cell_graph = compiled.cell_graph
        self._calls = None
        if noisy(c.program for c in compiled.cells if c is not None):
            self._calls = cell_call_of(compiled.cell_graph)[schedule.nodes] if graph.granularity == OP \
                else schedule.nodes
        self._bounds = schedule.ptr.tolist()
        self._quiet = (None,) * schedule.num_batches

    def _python_steps(self) -> tuple:
        """Each batch as (Python kernel, its input tensors, its output rows), where its gradients go,
        and the kernels: what the backward replay recomputes, and what noisy (dropout) forwards run."""
        if self._python is not None:
            return self._python
        runtime, compiled, device = self._runtime, self._compiled, self.device
        graph, schedule, layout = compiled.graph, compiled.schedule, compiled.layout
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
        rows_read = table.rows_read.tolist()
        sets = {t for t, p in enumerate(programs) if set_reduction_of(p) is not None}
        set_size = np.diff(graph.arg_ptr) if sets else None  # arguments a node: a set reduction's set
        gather_rows = torch.as_tensor(table.rows, dtype=torch.long, device=device)
        gather_ptr = table.ptr.tolist()
        tokens = _token_inputs(graph, schedule, device)
        zeros = {}
        steps = []
        adjoints = []  # per batch, where its gradients go: see `backward`
        out_arena = layout.value_arena.tolist()
        out_row = layout.value_row.tolist()
        for b, t in enumerate(schedule.batch_type.tolist()):
            k = sizes[b]
            inputs = []
            i = entry[b]
            token = tokens.get(b, ())
            n_token = 0
            reads = []  # (input position, arena, how, first row, rows, gather rows) of each float input from an arena
            for position, (is_token, shape) in enumerate(signatures[t]):
                if is_token:
                    inputs.append((_VIEW, token[n_token]))
                    n_token += 1
                    continue
                a, first, kind, n = arenas[i], firsts[i], kinds[i], rows_read[i]
                if a >= 0:
                    arena = self.arenas[a]
                else:
                    arena = zeros.get(shape)
                    if arena is None:
                        arena = zeros[shape] = torch.zeros((1,) + shape, device=device)
                if kind == table.VIEW_CODE:
                    inputs.append((_VIEW, arena[first:first + n]))
                    how = _VIEW
                elif kind == table.BROADCAST_CODE:
                    inputs.append((_VIEW, arena[first:first + 1].expand((n,) + shape)))
                    how = _BROADCAST
                else:
                    rows = gather_rows[gather_ptr[i]:gather_ptr[i + 1]]
                    inputs.append((_GATHER, (arena, rows)))
                    how = _GATHER
                if a >= 0:
                    reads.append((position, a, how, first, n, rows if how == _GATHER else None))
                i += 1
            v = int(first_value[b])
            written = [(out_arena[v + s], out_row[v + s]) for s in range(n_outputs[t])]
            outputs = [self.arenas[a][row:row + k] for a, row in written]
            kernel = kernels[t]
            if t in sets:  # each batch its own: which set each operand row belongs to
                owner = np.repeat(np.arange(k), set_size[schedule.batch(b)])
                kernel = SetKernel(programs[t], torch.as_tensor(owner, dtype=torch.long, device=device), k)
            steps.append((kernel, tuple(inputs), outputs))
            adjoints.append((k, tuple(reads), tuple(written)))
        self._python = (tuple(steps), tuple(adjoints), tuple({id(k): k for k in kernels if k is not None}.values()))
        return self._python


    def _noise(self, dropout: Dropout | None) -> "_StepNoise | None":
        """What the noisy ops draw from (None at inference, or where the model has none)."""
        if dropout is not None and self._stripped:
            raise UsageError("this mini-batch was compiled for inference, without its dropout ops; compile it "
                             "for training (`edbc.load(..., training=True)`, or `Compiler(..., inference=False)`)")
        if dropout is None or self._calls is None:
            return None
        return _StepNoise(dropout.seed, torch.from_numpy(call_keys(self._cell_graph, dropout)[self._calls]),
                          self._bounds, self.device)

    def run(self, dropout: Dropout | None = None) -> torch.Tensor:
        """Execute every batch; returns the results `[num_results, *shape]` in graph order. With
        `dropout`, noisy ops run as in training (masks drawn from it); else they are the identity."""
        return self._replay(self._noise(dropout))

    def _replay(self, noise: "_StepNoise | None", keep: bool = False) -> torch.Tensor:
        """`keep`: the native replay keeps each batch's intermediates for the backward (training)."""
        self._runtime.refresh()
        with torch.no_grad():
            if noise is None:
                self._replay_native.run(keep)
            elif self._replay_native.can_backward():  # every type native: the core draws the masks
                self._replay_native.run(keep, noise.seed, noise.keys)
            else:
                self._run_python(noise.batches())
            return torch.index_select(self._result_arena, 0, self._result_rows)

    def _run_python(self, noises) -> None:
        """Every batch through its generated Python kernel (the native replay's oracle in the tests)."""
        for (kernel, inputs, outputs), noise in zip(self._python_steps()[0], noises):
            kernel([src if kind == _VIEW else torch.index_select(src[0], 0, src[1]) for kind, src in inputs],
                   outputs, noise)

    def forward(self, dropout: Dropout | None = None) -> torch.Tensor:
        """`run`, as a node of the autograd graph: `loss.backward()` on what it returns fills the
        `.grad` of the runtime's weights (which must then require grad: `nn.Parameter`s)."""
        return _PlanFunction.apply(self, self._noise(dropout), *self._runtime.weights.values())

    def backward(self, grad_results: torch.Tensor, dropout: Dropout | None = None) -> list[torch.Tensor]:
        """`_backward` after `run(dropout)`."""
        return self._backward(grad_results, self._noise(dropout))

    def _backward(self, grad_results: torch.Tensor, noise: "_StepNoise | None") -> list[torch.Tensor]:
        """The gradient of every weight (in `Runtime.weights` order), given the results' gradient,
        after the forward replay with the same `noise` (the masks it drew): batch by batch
        in reverse schedule order, with the forward's batching and layout.

        Gradient arenas mirror the arenas: a batch reads its outputs' gradients as the same rows its
        forward wrote (views), recomputes its kernel on its inputs (which the arenas still hold) with
        autograd, and adds its inputs' gradients where it read them: onto the rows of a view, summed
        into a broadcast row, scattered (`index_add_`) for a gather. The kernels' constants (weights,
        stacked weights, folded tables) are autograd leaves while it runs, their gradients summed over
        every batch and taken back to the weights once at the end."""
        runtime = self._runtime
        grads = [torch.zeros_like(a) for a in self.arenas]
        grads[self._result_index].index_add_(0, self._result_rows, grad_results.to(self.device))
        if self._replay_native.can_backward():
            return self._native_backward(grads, noise)
        noises = self._quiet if noise is None else noise.batches()
        with torch.enable_grad():
            weights = {name: w.detach().requires_grad_() for name, w in runtime.weights.items()}
            bound = runtime.bound(weights)
            steps, adjoints, kernels = self._python_steps()
            leaves = [pair for k in kernels for pair in k.bind_leaves(bound)]
            try:
                backwards = zip(reversed(steps), reversed(adjoints), reversed(noises))
                for (kernel, inputs, _), (k, reads, written), noise in backwards:
                    xs = [src if kind == _VIEW else torch.index_select(src[0], 0, src[1]) for kind, src in inputs]
                    for position, *_ in reads:
                        xs[position] = xs[position].detach().requires_grad_()
                    outs = kernel(xs, None, noise)
                    pairs = [(o, grads[a][row:row + k]) for o, (a, row) in zip(outs, written) if o.requires_grad]
                    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
                    for position, a, how, first, n, rows in reads:
                        g = xs[position].grad
                        if g is None:  # an input the cell does not use
                            continue
                        if g.untyped_storage().data_ptr() == grads[a].untyped_storage().data_ptr():
                            g = g.clone()  # an op that passes its gradient through (a slice) hands back our rows
                        if how == _VIEW:
                            grads[a][first:first + n] += g
                        elif how == _BROADCAST:
                            grads[a][first] += g.sum(0)
                        else:
                            grads[a].index_add_(0, rows, g)
                made = [(made, leaf.grad) for made, leaf in leaves if leaf.grad is not None]
                if made:
                    torch.autograd.backward([m for m, _ in made], [g for _, g in made])
            finally:
                plain = runtime.bound()
                for k in kernels:
                    k.bind(plain)
        return [w.grad if w.grad is not None else torch.zeros_like(w) for w in weights.values()]


    def _native_backward(self, grads: list[torch.Tensor], noise: "_StepNoise | None") -> list[torch.Tensor]:
        """`_backward` in the native core: the same batch loop in reverse, each batch's program
        differentiated instruction by instruction. The core returns the gradients of the programs'
        parameter rows; autograd takes them back to the weights once, through the rows as made from
        the weights (stacked, repeated, derived tables)."""
        runtime = self._runtime
        by_type = self._replay_native.backward(grads) if noise is None else \
            self._replay_native.backward(grads, noise.seed, noise.keys)
        with torch.enable_grad():
            weights = {name: w.detach().requires_grad_() for name, w in runtime.weights.items()}
            bound = runtime.bound(weights)
            made, made_grads, seen = [], [], set()
            for cell, param_grads in zip(self._compiled.cells, by_type):
                if cell is None or not param_grads or id(cell) in seen:
                    continue
                seen.add(id(cell))
                for param, grad in zip(differentiable_params(cell, bound), param_grads):
                    if param.requires_grad:
                        made.append(param)
                        made_grads.append(grad)
            if made:
                torch.autograd.backward(made, made_grads)
        return [w.grad if w.grad is not None else torch.zeros_like(w) for w in weights.values()]


class _StepNoise:
    """A training step's dropout draws for one mini-batch: the step's seed and each schedule
    position's cell call key (int64, CPU), from which the core draws its masks; for Python kernels,
    each batch's `Noise` (made once: it keeps the masks the forward drew for the backward)."""

    def __init__(self, seed: int, keys: torch.Tensor, bounds: list[int], device: torch.device):
        self.seed, self.keys, self._bounds, self._device = seed, keys, bounds, device
        self._batches: list[Noise] | None = None

    def batches(self) -> list[Noise]:
        if self._batches is None:
            keys, b = self.keys.to(self._device), self._bounds
            self._batches = [Noise(self.seed, keys[lo:hi]) for lo, hi in zip(b[:-1], b[1:])]
        return self._batches


class _PlanFunction(torch.autograd.Function):
    """A compiled mini-batch's results as a function of the model's weights."""

    @staticmethod
    def forward(ctx, executable: Executable, noise, *weights: torch.Tensor) -> torch.Tensor:
        ctx.executable = executable
        ctx.noise = noise  # the backward draws the forward's masks again (or reuses those it kept)
        return executable._replay(noise, keep=True)

    @staticmethod
    def backward(ctx, grad_results: torch.Tensor):
        return (None, None, *ctx.executable._backward(grad_results, ctx.noise))


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

