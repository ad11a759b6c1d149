"""The unbatched reference: every instance on its own, every cell call on its own.

It shares nothing with the batched path but the op implementations: no
schedule, no arenas, no gathers, no fused affines. `--check` compares the two.
"""

from __future__ import annotations

import numpy as np
import torch

from ..graph.ir import CELL, Graph
from ..spec.ops import Noise, set_reduction_of
from ..spec.program import TOKEN
from .dropout import Dropout, call_keys
from .kernels import interpret


def reference_outputs(graph: Graph, weights: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                      dropout: Dropout | None = None) -> torch.Tensor:
    """Results of a cell-level graph, `[num_results, *shape]`, computed one call at a time (noisy
    ops as in training with `dropout`, drawing the batched path's masks; else the identity)."""
    if graph.granularity != CELL:
        raise ValueError("the reference runs on the cell-level graph")
    keys = call_keys(graph, dropout).tolist() if dropout is not None else None
    by_instance = np.argsort(graph.instance, kind="stable")
    bounds = np.searchsorted(graph.instance[by_instance], np.arange(graph.num_instances + 1))
    result_of: dict[int, list[int]] = {}
    for r, node in enumerate(graph.out_node.tolist()):
        result_of.setdefault(node, []).append(r)
    results: list[torch.Tensor | None] = [None] * len(graph.out_node)
    for i in range(graph.num_instances):
        values: dict[int, list[torch.Tensor]] = {}  # this instance's node -> its outputs
        for v in by_instance[bounds[i]:bounds[i + 1]].tolist():
            program = graph.types[graph.node_type[v]].program
            if set_reduction_of(program) is not None:  # its one input: the whole set, stacked
                rows = [values[u][s] for u, s in graph.args(v)]
                shape = program.inputs[0].shape
                values[v] = interpret(program, [torch.cat(rows) if rows else torch.zeros((0,) + shape, device=device)],
                                      weights)
                continue
            args = iter(graph.args(v))
            imms = iter(graph.imms(v))
            inputs = []
            for value in program.inputs:
                if value.dtype == TOKEN:
                    inputs.append(torch.tensor([next(imms)], dtype=torch.long, device=device))
                    continue
                u, s = next(args)
                inputs.append(values[u][s] if u >= 0 else torch.zeros((1,) + value.shape, device=device))
            noise = None if keys is None else Noise(dropout.seed, torch.tensor([keys[v]], device=device))
            values[v] = interpret(program, inputs, weights, noise)
            for r in result_of.get(v, ()):
                results[r] = values[v][graph.out_slot[r]]
    return torch.cat(results, dim=0)
