"""The graph verifier: structure, topological order, arities, slots and shapes."""

from __future__ import annotations

import numpy as np

from ..errors import VerificationError
from ..spec.ops import set_reduction_of
from .ir import Graph
from .printer import format_nodes


def verify_graph(graph: Graph) -> None:
    """Raise `VerificationError` naming the first offending node, with the IR around it."""
    n = graph.num_nodes
    t = len(graph.types)

    def fail(node: int | None, message: str):
        if node is None:
            raise VerificationError(f"graph verifier: {message}")
        context = format_nodes(graph, max(0, node - 2), min(n, node + 3))
        raise VerificationError(f"graph verifier: node %{node}: {message}\n{context}")

    for name, ptr, data in (("arg", graph.arg_ptr, graph.arg_node), ("imm", graph.imm_ptr, graph.imm)):
        if len(ptr) != n + 1 or ptr[0] != 0 or ptr[-1] != len(data) or np.any(np.diff(ptr) < 0):
            fail(None, f"{name}_ptr is not a CSR index over {n} nodes and {len(data)} entries")
    if len(graph.arg_slot) != len(graph.arg_node) or len(graph.instance) != n:
        fail(None, "column lengths disagree")
    bad = np.flatnonzero((graph.node_type < 0) | (graph.node_type >= t))
    if len(bad):
        fail(int(bad[0]), f"type {graph.node_type[bad[0]]} is not one of the {t} types")
    bad = np.flatnonzero((graph.instance < 0) | (graph.instance >= graph.num_instances))
    if len(bad):
        fail(int(bad[0]), f"instance {graph.instance[bad[0]]} is out of range")

    outputs = np.diff(graph.value_ptr)  # a builder may hand the values' CSR over with the graph
    if len(outputs) != n or graph.value_ptr[0] != 0:
        fail(None, f"value_ptr is not a CSR index over {n} nodes")
    bad = np.flatnonzero(outputs != graph.num_outputs_per_type[graph.node_type])
    if len(bad):
        fail(int(bad[0]), f"value_ptr gives {outputs[bad[0]]} values, its type has "
                          f"{graph.num_outputs_per_type[graph.node_type[bad[0]]]} outputs")

    owner = np.repeat(np.arange(n), np.diff(graph.arg_ptr))
    producer = graph.arg_node.astype(np.int64)
    bad = np.flatnonzero((producer < -1) | (producer >= owner))
    if len(bad):
        fail(int(owner[bad[0]]), f"argument refers to node {producer[bad[0]]}; arguments must refer "
                                 "to earlier nodes (this also rules out cycles)")
    real = producer >= 0
    n_out = graph.num_outputs_per_type
    slots_ok = (graph.arg_slot >= 0) & (~real | (graph.arg_slot < n_out[graph.node_type[np.maximum(producer, 0)]]))
    bad = np.flatnonzero(~slots_ok)
    if len(bad):
        fail(int(owner[bad[0]]), f"argument slot {graph.arg_slot[bad[0]]} does not exist")
    bad = np.flatnonzero(real & (graph.instance[np.maximum(producer, 0)] != graph.instance[owner]))
    if len(bad):
        fail(int(owner[bad[0]]), "argument comes from another instance")

    if all(ty.program is not None for ty in graph.types):
        _verify_programs(graph, owner, producer, fail)

    if len(graph.out_node) != len(graph.out_slot):
        fail(None, "result columns disagree")
    bad = np.flatnonzero((graph.out_node < 0) | (graph.out_node >= n))
    if len(bad):
        fail(None, f"result {bad[0]} refers to node {graph.out_node[bad[0]]}, not in the graph")
    bad = np.flatnonzero((graph.out_slot < 0) | (graph.out_slot >= n_out[graph.node_type[graph.out_node]]))
    if len(bad):
        fail(int(graph.out_node[bad[0]]), f"result {bad[0]} takes output slot {graph.out_slot[bad[0]]}, "
                                          "which the node does not have")


def _verify_programs(graph: Graph, owner, producer, fail) -> None:
    types = graph.types
    n_args = np.array([len(ty.program.float_inputs) for ty in types])
    n_imms = np.array([len(ty.program.token_inputs) for ty in types])
    variadic = np.array([set_reduction_of(ty.program) is not None for ty in types])  # a set: any number
    bad = np.flatnonzero((np.diff(graph.arg_ptr) != n_args[graph.node_type]) & ~variadic[graph.node_type])
    if len(bad):
        v = int(bad[0])
        fail(v, f"{np.diff(graph.arg_ptr)[v]} arguments, type '{types[graph.node_type[v]].name}' "
                f"takes {n_args[graph.node_type[v]]}")
    bad = np.flatnonzero(np.diff(graph.imm_ptr) != n_imms[graph.node_type])
    if len(bad):
        v = int(bad[0])
        fail(v, f"{np.diff(graph.imm_ptr)[v]} token ids, type '{types[graph.node_type[v]].name}' "
                f"takes {n_imms[graph.node_type[v]]}")
    # Shapes as small ids, so that every edge is checked with array lookups.
    shape_id: dict[tuple, int] = {}
    width_in = max(1, max(n_args))
    width_out = max(ty.num_outputs for ty in types)
    in_shape = np.full((len(types), width_in), -1)
    out_shape = np.full((len(types), width_out), -1)
    for ti, ty in enumerate(types):
        p = ty.program
        for q, v in enumerate(p.float_inputs):
            in_shape[ti, q] = shape_id.setdefault(p.values[v].shape, len(shape_id))
        for s, shape in enumerate(p.output_shapes):
            out_shape[ti, s] = shape_id.setdefault(shape, len(shape_id))
    position = np.where(variadic[graph.node_type[owner]], 0, np.arange(len(owner)) - graph.arg_ptr[owner])
    want = in_shape[graph.node_type[owner], position]
    have = out_shape[graph.node_type[np.maximum(producer, 0)], graph.arg_slot]
    bad = np.flatnonzero((producer >= 0) & (want != have))
    if len(bad):
        names = {i: list(s) for s, i in shape_id.items()}
        e = int(bad[0])
        fail(int(owner[e]), f"argument {e - graph.arg_ptr[owner[e]] + 1} has shape {names[have[e]]}, "
                            f"the input expects {names[want[e]]}")
