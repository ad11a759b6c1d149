"""The pure-Python (numpy) implementations that the native compile paths replaced, kept as test
oracles only (`test_compile_native.py`): the native results must equal theirs. `build_graph` is the
graph builder as it was: its own tree calls (per tree), chain, seq2seq and lattice calls, the
product's DAG builder, and assembly with array operations."""

from __future__ import annotations

from math import prod

import numpy as np

from edbc.errors import VerificationError
from edbc.graph.build import BUILDERS, Calls, _float_bindings, _require_encoded
from edbc.graph.ir import CELL, Graph, NodeType, csr_gather, csr_ptr
from edbc.memory.layout import Layout, value_owner, value_shapes
from edbc.memory.operands import BROADCAST_CODE, GATHER_CODE, VIEW_CODE, OperandTable, arena_of_shape
from edbc.schedule.ir import Schedule
from edbc.spec.model import ModelSpec
from edbc.spec.ops import set_reduction_of, set_reduction_program


def unplanned(graph: Graph, schedule: Schedule) -> tuple[Schedule, Layout]:
    """Memory planning off: each batch's nodes in graph order, each arena filled in run order."""
    owner = np.repeat(np.arange(schedule.num_batches), schedule.sizes)
    in_order = Schedule(schedule.policy, schedule.ptr, schedule.nodes[np.lexsort((schedule.nodes, owner))],
                        schedule.batch_type)
    return in_order, batch_order_layout(graph, in_order)


def batch_order_layout(graph: Graph, schedule: Schedule) -> Layout:
    """Each arena filled in run order, batch by batch, slot by slot."""
    shapes, arena = value_shapes(graph)
    owner, slot = value_owner(graph)
    batch_of = schedule.batch_of_node(graph.num_nodes)
    position = np.empty(graph.num_nodes, dtype=np.int64)
    position[schedule.nodes] = np.arange(len(schedule.nodes)) - np.repeat(schedule.ptr[:-1], schedule.sizes)
    order = np.lexsort((position[owner], slot, batch_of[owner], arena))
    rows_per_arena = np.bincount(arena, minlength=len(shapes))
    first_row = np.concatenate([[0], np.cumsum(rows_per_arena)])[:-1]
    row = np.empty(graph.num_values, dtype=np.int64)
    row[order] = np.arange(graph.num_values) - first_row[arena[order]]
    return Layout("none", tuple(shapes), rows_per_arena, arena, row)


def operand_table(graph: Graph, schedule: Schedule, layout: Layout) -> OperandTable:
    """Every batch operand classified with array operations, one pass per (type, input position)."""
    sizes = schedule.sizes
    parts = []
    for t in np.unique(schedule.batch_type).tolist():
        program = graph.types[t].program
        batches = np.flatnonzero(schedule.batch_type == t)
        pos, seg = csr_gather(schedule.ptr, batches)  # the batches' nodes, batch by batch
        nodes = schedule.nodes[pos]
        if set_reduction_of(program) is not None:
            e, owner = csr_gather(graph.arg_ptr, nodes)
            rows_per_batch = np.bincount(seg[owner], minlength=len(batches))
            operands = [(0, program.float_inputs[0], e, seg[owner], rows_per_batch)]
        else:
            operands = [(p, value, graph.arg_ptr[nodes] + p, seg, sizes[batches])
                        for p, value in enumerate(program.float_inputs)]
        for p, value, e, row_seg, k in operands:
            parts.append(_classify(graph, layout, batches, p, program.values[value].shape, e, row_seg, k))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return OperandTable(empty, empty, empty.astype(np.int8), empty, empty, empty, empty,
                            np.zeros(1, np.int64), empty)
    cols = [np.concatenate(c) for c in zip(*parts)]
    order = np.lexsort((cols[1], cols[0]))
    counts = cols[7]
    ptr_unsorted = csr_ptr(counts)
    rows = cols[8]
    pos, _ = csr_gather(ptr_unsorted, order)
    return OperandTable(cols[0][order], cols[1][order], cols[2][order], cols[3][order], cols[4][order],
                        cols[5][order], cols[6][order], csr_ptr(counts[order]), rows[pos])


def _classify(graph: Graph, layout: Layout, batches: np.ndarray, p: int, shape, e: np.ndarray,
              seg: np.ndarray, k: np.ndarray) -> tuple:
    a = arena_of_shape(layout.arena_shapes, shape)
    starts = np.cumsum(k) - k
    producer, slot = graph.arg_node[e], graph.arg_slot[e]
    real = producer >= 0
    values = graph.value_ptr[np.maximum(producer, 0)] + slot
    if np.any(real & (layout.value_arena[values] != a)):
        b = int(batches[seg[np.flatnonzero(real & (layout.value_arena[values] != a))[0]]])
        raise VerificationError(f"batch {b}: operand {p} is not in the arena of its shape")
    zero_row = layout.arena_rows[a] if a >= 0 else 0
    rows = np.where(real, layout.value_row[values], zero_row)
    any_real = np.add.reduceat(real, starts) > 0
    all_real = np.add.reduceat(real, starts) == k
    same_seg = seg[1:] == seg[:-1]
    breaks = np.bincount(seg[1:][same_seg & (rows[1:] != rows[:-1] + 1)], minlength=len(batches))
    differ = np.bincount(seg[np.flatnonzero(rows != rows[starts][seg])], minlength=len(batches))
    first = rows[starts]
    kind = np.full(len(batches), GATHER_CODE, dtype=np.int8)
    kind[differ == 0] = BROADCAST_CODE
    kind[(k == 1) | (all_real & (breaks == 0))] = VIEW_CODE
    kind[~any_real] = BROADCAST_CODE
    first = np.where(~any_real, zero_row, first)
    gathered = kind == GATHER_CODE
    counts = np.where(gathered, k, 0)
    return (batches, np.full(len(batches), p), kind, np.where(any_real | (a >= 0), a, -1),
            first, k, k * prod(shape) * 4, counts, rows[gathered[seg]])


def build_graph(spec: ModelSpec, instances: list) -> Graph:
    builder = {"tree": _tree_calls, "chain": _chain_calls, "seq2seq": _seq2seq_calls, "lattice": _lattice_calls}.get(spec.kind, BUILDERS[spec.kind])
    return assemble(spec, builder(spec, instances), len(instances))


def assemble(spec: ModelSpec, calls: Calls, num_instances: int) -> Graph:
    """The graph of `calls`: their nodes, then one reduction node per set a call reads, placed just
    before the call (so node order stays topological), then the readout calls."""
    readout = spec.roles["readout"]
    # role -> (argument position, source, reduction type) of each input bound to a set, in input order
    reduced = {role: [(position, source, set_reduction_program(source.reduce, value.shape).name)
                      for position, (value, source) in enumerate(_float_bindings(spec, r)) if source.kind == "set"]
               for role, r in spec.roles.items()}
    cell_names = list(dict.fromkeys([r.cell for r in spec.roles.values()] +
                                    [name for sets in reduced.values() for _, _, name in sets]))
    type_of = {name: i for i, name in enumerate(cell_names)}
    types = tuple(NodeType(name, spec.cells[name]) for name in cell_names)

    n_struct = len(calls.instance)
    extra = np.zeros(n_struct, dtype=np.int64)  # reduction nodes placed before each structure node
    for role, sets in reduced.items():  # the readout reads no sets: the spec loader refuses them
        if sets:
            extra[calls.roles[role]] = len(sets)
    moved = np.arange(n_struct, dtype=np.int64) + np.cumsum(extra)  # structure node -> its id in the graph

    def renumber(ids: np.ndarray) -> np.ndarray:
        ids = ids.astype(np.int64)
        return np.where(ids >= 0, moved[np.maximum(ids, 0)], -1)

    n_before = n_struct + int(extra.sum())
    anchors = {name: renumber(ids) for name, ids in calls.anchors[readout.at].items()}
    n_readout = len(next(iter(anchors.values())))
    readout_ids = np.arange(n_before, n_before + n_readout, dtype=np.int64)
    roles = {role: renumber(ids) for role, ids in calls.roles.items()}
    roles["readout"] = readout_ids
    neighbors = {key: renumber(ids) for key, ids in calls.neighbors.items()}
    for name, ids in anchors.items():
        neighbors[("readout", name)] = ids

    total = n_before + n_readout
    node_type = np.empty(total, dtype=np.int32)
    instance = np.empty(total, dtype=np.int32)
    instance[moved] = calls.instance
    # A readout belongs to the instance of whichever neighbour it has.
    instance[readout_ids] = instance[np.max(np.stack(list(anchors.values())), axis=0)]
    n_args = np.zeros(total, dtype=np.int64)
    n_args_of_type = np.array([len(t.program.float_inputs) for t in types], dtype=np.int64)
    reductions = []  # (reduction node ids, producers' structure ids as a CSR, source)
    for role, ids in roles.items():
        node_type[ids] = type_of[spec.roles[role].cell]
        n_args[ids] = n_args_of_type[node_type[ids]]
        for j, (_, source, name) in enumerate(reduced[role]):
            ptr, members = calls.sets[(role, source.ref)]
            at = ids - len(reduced[role]) + j
            node_type[at] = type_of[name]
            instance[at] = instance[ids]
            n_args[at] = np.diff(ptr)
            reductions.append((at, ptr, members, source))
    n_imms = np.array([len(t.program.token_inputs) for t in types], dtype=np.int64)
    arg_ptr = csr_ptr(n_args)
    imm_ptr = csr_ptr(n_imms[node_type])
    arg_node = np.full(arg_ptr[-1], -1, dtype=np.int32)
    arg_slot = np.zeros(arg_ptr[-1], dtype=np.int32)
    imm = np.zeros(imm_ptr[-1], dtype=np.int64)

    def slots(source, producers: np.ndarray) -> np.ndarray:
        # The slot of the named output differs between the cells that may fill a neighbour.
        slot_of_type = np.array([t.program.output_slot(source.output) or 0 for t in types], dtype=np.int32)
        return np.where(producers >= 0, slot_of_type[node_type[np.maximum(producers, 0)]], 0)

    for role, ids in roles.items():
        r = spec.roles[role]
        sets = {position: j for j, (position, _, _) in enumerate(reduced[role])}
        for position, (_, source) in enumerate(_float_bindings(spec, r)):
            where = arg_ptr[ids] + position
            if position in sets:  # the reduction node just before the call, its output slot 0
                arg_node[where] = ids - len(sets) + sets[position]
                continue
            producers = neighbors[(role, source.ref)]
            arg_node[where] = producers
            arg_slot[where] = slots(source, producers)
        for position, value_id in enumerate(spec.cells[r.cell].token_inputs):
            imm[imm_ptr[ids] + position] = calls.tokens[(role, r.bind[value_id].ref)]
    for at, ptr, members, source in reductions:
        where, _ = csr_gather(arg_ptr, at)
        producers = renumber(members)
        arg_node[where] = producers
        arg_slot[where] = slots(source, producers)

    return Graph(CELL, types, node_type, arg_ptr, arg_node, arg_slot, imm_ptr, imm, instance,
                 num_instances, out_node=readout_ids, out_slot=np.zeros(len(readout_ids)))



def _tree_calls(spec: ModelSpec, trees: list) -> Calls:
    """Per tree, in post-order: each node, preceded by the edge calls of its children when the model
    has an edge role. A model that reads `left` and `right` needs every internal node to have two."""
    _require_encoded(trees, "tokens")
    binary = any(s.kind == "state" for s in spec.roles["internal"].bind)
    if binary:
        for t in trees:
            bad = np.flatnonzero((t.arity > 0) & (t.arity != 2))
            if len(bad):
                n = int(t.arity[bad[0]])
                raise t.fail(f"node with {n} child{'ren' if n != 1 else ''}; model '{spec.name}' reads `left` "
                             "and `right`, so every internal node needs exactly two (a model reading the set "
                             "`children` takes any number)", int(bad[0]))
    with_edges = "edge" in spec.roles
    sizes = np.array([t.num_nodes for t in trees], dtype=np.int64)
    tree_base = csr_ptr(sizes)[:-1]
    arity = np.concatenate([t.arity for t in trees])
    links = np.array([len(t.child) for t in trees], dtype=np.int64)
    child = np.concatenate([t.child for t in trees]).astype(np.int64) + np.repeat(tree_base, links)
    child_ptr = csr_ptr(arity)
    calls_per_node = 1 + arity if with_edges else np.ones(len(arity), dtype=np.int64)
    block = csr_ptr(calls_per_node)
    node_id = block[1:] - 1  # a node comes last in its block, after its children's edge calls
    tree_of = np.repeat(np.arange(len(trees), dtype=np.int32), sizes)
    tokens = np.concatenate([t.tokens for t in trees]).astype(np.int64)
    leaves = np.flatnonzero(arity == 0)
    internal = np.flatnonzero(arity > 0)
    calls = Calls(
        instance=np.repeat(tree_of, calls_per_node),
        roles={"leaf": node_id[leaves], "internal": node_id[internal]},
        tokens={("leaf", "word"): tokens[leaves]},
        anchors={"root": {"node": node_id[tree_base + sizes - 1]}, "nodes": {"node": node_id}},
    )
    children_ptr = csr_ptr(arity[internal])  # internal nodes in order own the links in order
    calls.sets[("internal", "children")] = (children_ptr, node_id[child])
    if binary:
        first = child_ptr[internal]
        calls.neighbors[("internal", "left")] = node_id[child[first]]
        calls.neighbors[("internal", "right")] = node_id[child[first + 1]]
    if with_edges:
        parent = np.repeat(np.arange(len(arity)), arity)
        edge_ids = block[parent] + np.arange(len(child)) - child_ptr[parent]
        calls.roles["edge"] = edge_ids
        calls.neighbors[("edge", "child")] = node_id[child]
        calls.sets[("internal", "edges")] = (children_ptr, edge_ids)
    return calls


def _lattice_calls(spec: ModelSpec, lattices: list) -> Calls:
    """Per lattice node i >= 1, in node order: its char arc call, its word arc calls, then one
    merge call per word arc folding it into the node's state (char arc first)."""
    _require_encoded(lattices, "tokens")
    nodes = np.array([lat.num_nodes for lat in lattices], dtype=np.int64)
    node_base = csr_ptr(nodes)[:-1]
    arcs_per = np.array([len(lat.arc_dst) for lat in lattices], dtype=np.int64)
    arc_lat = np.repeat(np.arange(len(lattices)), arcs_per)
    dst = np.concatenate([lat.arc_dst for lat in lattices]).astype(np.int64) + node_base[arc_lat]
    src = np.concatenate([lat.arc_src for lat in lattices]).astype(np.int64) + node_base[arc_lat]
    is_char = np.concatenate([lat.arc_char for lat in lattices])
    tokens = np.concatenate([lat.tokens for lat in lattices]).astype(np.int64)
    total = int(nodes.sum())
    node_lat = np.repeat(np.arange(len(lattices)), nodes)
    is_start = np.arange(total) == node_base[node_lat]

    words = np.flatnonzero(~is_char)  # in (target node, listed) order
    m = np.bincount(dst[words], minlength=total)
    calls_per_node = np.where(is_start, 0, 1 + 2 * m)
    base = csr_ptr(calls_per_node)
    state = np.where(is_start, -1, base[:-1] + 2 * m)  # the last merge, or the char arc
    rank = np.arange(len(words)) - csr_ptr(m)[:-1][dst[words]]  # a word arc's place among its node's

    chars = np.flatnonzero(is_char)
    char_ids = base[dst[chars]]
    word_ids = base[dst[words]] + 1 + rank
    merge_ids = base[dst[words]] + 1 + m[dst[words]] + rank
    merge_acc = np.where(rank == 0, base[dst[words]], merge_ids - 1)
    non_start = np.flatnonzero(~is_start)
    last = node_base + nodes - 1
    return Calls(
        instance=np.repeat(node_lat, calls_per_node).astype(np.int32),
        roles={"char": char_ids, "word": word_ids, "merge": merge_ids},
        neighbors={("char", "src"): state[src[chars]], ("word", "src"): state[src[words]],
                   ("merge", "acc"): merge_acc, ("merge", "arc"): word_ids},
        tokens={("char", "char"): tokens[chars], ("word", "word"): tokens[words]},
        anchors={"nodes": {"node": state[non_start]}, "last": {"node": state[last]}},
    )


def _chain_calls(spec: ModelSpec, seqs: list) -> Calls:
    """Per sequence: the input block, then forward calls in order, then backward calls in
    reverse order, so every call comes after what it reads."""
    _require_encoded(seqs, "tokens")
    present = [r for r in ("input", "forward", "backward") if r in spec.roles]
    lengths = np.array([s.num_nodes for s in seqs], dtype=np.int64)
    seq, p = _positions(lengths)
    n = lengths[seq]
    base = csr_ptr(lengths * len(present))[:-1][seq]
    tokens = np.concatenate([s.tokens for s in seqs]).astype(np.int64)

    def ids(role: str, at: np.ndarray) -> np.ndarray:
        block = present.index(role) * n
        return base + block + (n - 1 - at if role == "backward" else at)

    calls = Calls(instance=np.repeat(np.arange(len(seqs), dtype=np.int32), lengths * len(present)))
    for role in present:
        calls.roles[role] = ids(role, p)
        calls.tokens[(role, "word")] = tokens
        if "input" in present and role != "input":
            calls.neighbors[(role, "input")] = ids("input", p)
    if "forward" in present:
        calls.neighbors[("forward", "prev")] = np.where(p > 0, ids("forward", p - 1), -1)
    if "backward" in present:
        calls.neighbors[("backward", "next")] = np.where(p < n - 1, ids("backward", p + 1), -1)
    at_nodes = {}
    at_ends = {}
    last = csr_ptr(lengths)[1:] - 1
    first = csr_ptr(lengths)[:-1]
    for role in present:
        at_nodes[role] = calls.roles[role]
        if role == "forward":
            at_ends[role] = calls.roles[role][last]
        elif role == "backward":
            at_ends[role] = calls.roles[role][first]
    calls.anchors = {"nodes": at_nodes, "ends": at_ends}
    return calls


def _seq2seq_calls(spec: ModelSpec, pairs: list) -> Calls:
    """Per pair: the encoder calls, then the decoder calls; the first decoder step continues
    from the last encoder step."""
    _require_encoded(pairs, "source_tokens")
    src_len = np.array([len(p.source) for p in pairs], dtype=np.int64)
    tgt_len = np.array([len(p.target) for p in pairs], dtype=np.int64)
    base = csr_ptr(src_len + tgt_len)[:-1]
    s_seq, s_pos = _positions(src_len)
    t_seq, t_pos = _positions(tgt_len)
    encoder = base[s_seq] + s_pos
    decoder = base[t_seq] + src_len[t_seq] + t_pos
    last_encoder = base[t_seq] + src_len[t_seq] - 1
    return Calls(
        instance=np.repeat(np.arange(len(pairs), dtype=np.int32), src_len + tgt_len),
        roles={"encoder": encoder, "decoder": decoder},
        neighbors={("encoder", "prev"): np.where(s_pos > 0, encoder - 1, -1),
                   ("decoder", "prev"): np.where(t_pos > 0, decoder - 1, last_encoder)},
        tokens={("encoder", "source"): np.concatenate([p.source_tokens for p in pairs]).astype(np.int64),
                ("decoder", "target"): np.concatenate([p.target_tokens for p in pairs]).astype(np.int64)},
        anchors={"nodes": {"decoder": decoder}},
    )


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sequences of the given lengths: each position's sequence and index within it."""
    seq = np.repeat(np.arange(len(lengths)), lengths)
    return seq, np.arange(int(lengths.sum())) - np.repeat(csr_ptr(lengths)[:-1], lengths)
