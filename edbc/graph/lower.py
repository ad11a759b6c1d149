"""Lower a cell-level graph to op level: one node per primitive op of every cell call.

An op-level type is the op's batching signature (`edbc.spec.ops.op_signature`):
op kind + the parameters it reads, by name + operand shapes + attributes. Ops of different cells with equal
signatures share a type and may batch together. A call's ops get consecutive
node ids in program order, so topological order is kept.
"""

from __future__ import annotations

import numpy as np

from ..spec.ops import op_signature, set_reduction_of
from ..spec.program import TOKEN, Op, Program, Value
from .build import build_graph
from .ir import CELL, OP, Graph, NodeType, csr_gather, csr_ptr


def single_op_program(program: Program, op: Op) -> Program:
    """A program of one op whose inputs are the op's value operands, in order."""
    values: list[Value] = []
    args: list[int | str] = []
    for a in op.args:
        if isinstance(a, str):
            args.append(a)
        else:
            args.append(len(values))
            values.append(Value(f"x{len(values)}", program.values[a].shape, program.values[a].dtype))
    n_inputs = len(values)
    outs = []
    for k, v in enumerate(op.outs):
        outs.append(len(values))
        values.append(Value(f"y{k}", program.values[v].shape))
    return Program(_type_name(program, op), tuple(values), n_inputs,
                   (Op(op.kind, tuple(args), tuple(outs), op.attrs),), tuple(outs))


def _type_name(program: Program, op: Op) -> str:
    params = [a for a in op.args if isinstance(a, str)]
    shapes = ["token" if program.values[a].dtype == TOKEN else "x".join(map(str, program.values[a].shape))
              for a in op.args if not isinstance(a, str)]
    attrs = [f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in op.attrs]
    name = op.kind + (f"[{','.join(params)}]" if params else "")
    return f"{name}({','.join(shapes + attrs)})"


def lower_to_ops(graph: Graph) -> Graph:
    if graph.granularity != CELL:
        raise ValueError(f"lower_to_ops takes a cell-level graph, not {graph.granularity}")
    types: list[NodeType] = []
    type_of_sig: dict[tuple, int] = {}
    op_types = []  # per cell type: the op-level type of each of its ops
    for t in graph.types:
        ids = []
        for op in t.program.ops:
            sig = op_signature(t.program, op)
            if sig not in type_of_sig:
                type_of_sig[sig] = len(types)
                types.append(NodeType(_type_name(t.program, op), single_op_program(t.program, op)))
            ids.append(type_of_sig[sig])
        op_types.append(np.array(ids, dtype=np.int32))

    # Where each cell output comes from: (op index, output position) within the cell's program.
    width = max(len(t.program.outputs) for t in graph.types)
    prod_op = np.zeros((len(graph.types), width), dtype=np.int64)
    prod_out = np.zeros((len(graph.types), width), dtype=np.int32)
    for ti, t in enumerate(graph.types):
        made_by = {v: (j, k) for j, op in enumerate(t.program.ops) for k, v in enumerate(op.outs)}
        for s, v in enumerate(t.program.outputs):
            prod_op[ti, s], prod_out[ti, s] = made_by[v]

    n_ops = np.array([len(t.program.ops) for t in graph.types], dtype=np.int64)
    base = csr_ptr(n_ops[graph.node_type])  # a call's ops are consecutive nodes: see `cell_call_of`
    node_type = np.empty(base[-1], dtype=np.int32)
    n_args = np.array([len(t.program.float_inputs) for t in types], dtype=np.int64)
    n_imms = np.array([len(t.program.token_inputs) for t in types], dtype=np.int64)
    # A set reduction is one op already: its node stays one node, with all its arguments.
    sets = [ti for ti, t in enumerate(graph.types) if set_reduction_of(t.program) is not None]

    def source(cell_nodes: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Op-level (node, slot) of cell-level values; node -1 (zeros) stays -1."""
        safe = np.maximum(cell_nodes, 0)
        ct = graph.node_type[safe]
        nodes = np.where(cell_nodes >= 0, base[safe] + prod_op[ct, slots], -1)
        return nodes, np.where(cell_nodes >= 0, prod_out[ct, slots], 0)

    per_type_nodes = [np.flatnonzero(graph.node_type == ti) for ti in range(len(graph.types))]
    for ti, calls in enumerate(per_type_nodes):
        for j in range(len(graph.types[ti].program.ops)):
            node_type[base[calls] + j] = op_types[ti][j]
    counts = n_args[node_type]
    reducing = np.flatnonzero(np.isin(graph.node_type, sets))
    counts[base[reducing]] = np.diff(graph.arg_ptr)[reducing]
    arg_ptr = csr_ptr(counts)
    imm_ptr = csr_ptr(n_imms[node_type])
    arg_node = np.empty(arg_ptr[-1], dtype=np.int32)
    arg_slot = np.empty(arg_ptr[-1], dtype=np.int32)
    imm = np.empty(imm_ptr[-1], dtype=np.int64)

    for ti, calls in enumerate(per_type_nodes):
        program = graph.types[ti].program
        if ti in sets:
            e, _ = csr_gather(graph.arg_ptr, calls)
            where, _ = csr_gather(arg_ptr, base[calls])
            arg_node[where], arg_slot[where] = source(graph.arg_node[e], graph.arg_slot[e])
            continue
        float_pos = {v: q for q, v in enumerate(program.float_inputs)}
        token_pos = {v: q for q, v in enumerate(program.token_inputs)}
        made_by = {v: (j, k) for j, op in enumerate(program.ops) for k, v in enumerate(op.outs)}
        for j, op in enumerate(program.ops):
            ids = base[calls] + j
            value_args = [a for a in op.args if not isinstance(a, str)]
            n_float = 0
            n_token = 0
            for a in value_args:
                if program.values[a].dtype == TOKEN:
                    imm[imm_ptr[ids] + n_token] = graph.imm[graph.imm_ptr[calls] + token_pos[a]]
                    n_token += 1
                    continue
                where = arg_ptr[ids] + n_float
                n_float += 1
                if a in float_pos:
                    e = graph.arg_ptr[calls] + float_pos[a]
                    arg_node[where], arg_slot[where] = source(graph.arg_node[e], graph.arg_slot[e])
                else:
                    jj, k = made_by[a]
                    arg_node[where] = base[calls] + jj
                    arg_slot[where] = k

    out_node, out_slot = source(graph.out_node, graph.out_slot)
    instance = np.repeat(graph.instance, n_ops[graph.node_type])
    return Graph(OP, tuple(types), node_type, arg_ptr, arg_node, arg_slot, imm_ptr, imm, instance,
                 graph.num_instances, out_node, out_slot)


def cell_call_of(cell_graph: Graph) -> np.ndarray:
    """For each node of `lower_to_ops(cell_graph)`, the cell-level node (call) it is an op of."""
    n_ops = np.array([len(t.program.ops) for t in cell_graph.types], dtype=np.int64)
    return np.repeat(np.arange(cell_graph.num_nodes), n_ops[cell_graph.node_type])


def graph_at(spec, instances: list, granularity: str) -> Graph:
    """The merged graph of `instances` at `granularity`: built at cell level, lowered for op level."""
    graph = build_graph(spec, instances)
    return lower_to_ops(graph) if granularity == OP else graph
