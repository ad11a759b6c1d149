"""Build the cell-level graph of a mini-batch from encoded instances.

Each structure kind has a builder that numbers the structure's nodes in a
topological order and says, per role, which nodes fill it, their neighbours
and their token ids (`Calls`). `assemble` then turns that into a `Graph`.
Both run in the native core (`csrc/compile.cpp`; the DAG builder, mostly
validation of files, in numpy): no Python work per node or per instance
beyond gathering the instances' arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import DataError
from ..native import core
from ..spec.model import ModelSpec
from ..spec.ops import set_reduction_program
from ..spec.structure import arg_index
from .ir import CELL, Graph, NodeType, csr_ptr


@dataclass
class Calls:
    """What a structure builder hands to `assemble`; arrays are aligned with `roles[role]`."""

    instance: np.ndarray  # int32 [N]: the instance of each structure node
    roles: dict[str, np.ndarray] = field(default_factory=dict)  # role -> its node ids
    neighbors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (role, name) -> ids, -1 none
    # (role, set name) -> (ptr, members): the set of the role's i-th node is members[ptr[i]:ptr[i + 1]]
    sets: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tokens: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (role, field) -> token ids
    # readout `at` -> the readout's neighbours (name -> node ids, -1 none), one entry per readout call
    anchors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def build_graph(spec: ModelSpec, instances: list) -> Graph:
    """The merged cell-level graph of `instances` (already encoded with the vocabularies)."""
    if not instances:
        raise DataError("a mini-batch needs at least one instance")
    return assemble(spec, BUILDERS[spec.kind](spec, instances), len(instances))


@dataclass(frozen=True, eq=False)
class _Argument:
    """A float input of a role's cell: bound to a neighbour's output, or to a set's reduction."""

    position: int
    ref: str  # the neighbour's or the set's name
    reduction: int  # the set's reduction node type; -1 for a neighbour
    # The slot of the bound output in each type's outputs (0 where it has none), then 0 for "no producer".
    slot_of_type: np.ndarray


@dataclass(frozen=True, eq=False)
class _Role:
    type: int
    arguments: tuple[_Argument, ...]
    tokens: tuple[str, ...]  # the token field of each immediate


@dataclass(frozen=True, eq=False)
class _Assembly:
    """What `assemble` needs of a spec, derived once per spec rather than once per mini-batch."""

    types: tuple[NodeType, ...]
    roles: dict[str, _Role]
    num_imms: np.ndarray  # int64 [types]
    num_outs: np.ndarray  # int64 [types]


@lru_cache(maxsize=64)
def _assembly(spec: ModelSpec) -> _Assembly:
    reductions = {role: {position: set_reduction_program(source.reduce, value.shape).name
                         for position, (value, source) in enumerate(_float_bindings(spec, r)) if source.kind == "set"}
                  for role, r in spec.roles.items()}
    cell_names = list(dict.fromkeys([r.cell for r in spec.roles.values()] +
                                    [name for sets in reductions.values() for name in sets.values()]))
    type_of = {name: i for i, name in enumerate(cell_names)}
    types = tuple(NodeType(name, spec.cells[name]) for name in cell_names)
    roles = {}
    for role, r in spec.roles.items():
        arguments = tuple(
            _Argument(position, source.ref, type_of.get(reductions[role].get(position), -1),
                      np.array([t.program.output_slot(source.output) or 0 for t in types] + [0], dtype=np.int32))
            for position, (_, source) in enumerate(_float_bindings(spec, r)))
        roles[role] = _Role(type_of[r.cell], arguments,
                            tuple(r.bind[v].ref for v in spec.cells[r.cell].token_inputs))
    return _Assembly(types, roles, np.array([len(t.program.token_inputs) for t in types], dtype=np.int64),
                     np.array([t.num_outputs for t in types], dtype=np.int64))


def assemble(spec: ModelSpec, calls: Calls, num_instances: int) -> Graph:
    """The graph of `calls`: their nodes, then one reduction node per set a call reads, placed just
    before the call (so node order stays topological), then the readout calls (native:
    `assemble_graph`; the readout reads no sets: the spec loader refuses them)."""
    assembly = _assembly(spec)
    anchors = calls.anchors[spec.roles["readout"].at]
    roles = []
    for role in [*calls.roles, "readout"]:
        r = assembly.roles[role]
        arguments = [(a.position, a.reduction, a.slot_of_type, None, *calls.sets[(role, a.ref)]) if a.reduction >= 0
                     else (a.position, -1, a.slot_of_type,
                           anchors[a.ref] if role == "readout" else calls.neighbors[(role, a.ref)], None, None)
                     for a in r.arguments]
        roles.append((None if role == "readout" else calls.roles[role], r.type, len(arguments), arguments,
                      [calls.tokens[(role, name)] for name in r.tokens]))
    node_type, arg_ptr, arg_node, arg_slot, imm_ptr, imm, instance, readout_ids, value_ptr = core().assemble_graph(
        calls.instance, roles, list(anchors.values()), assembly.num_imms, assembly.num_outs)
    return Graph(CELL, assembly.types, node_type, arg_ptr, arg_node, arg_slot, imm_ptr, imm, instance,
                 num_instances, out_node=readout_ids, out_slot=np.zeros(len(readout_ids)), value_ptr=value_ptr)


def _float_bindings(spec: ModelSpec, role) -> list:
    """(value, source) of a role's float inputs, in the cell's input order: its graph arguments."""
    program = spec.cells[role.cell]
    return [(program.values[v], role.bind[v]) for v in program.float_inputs]


def _require_encoded(instances: list, attribute: str) -> None:
    if any(getattr(inst, attribute) is None for inst in instances):
        raise ValueError("instances must be encoded (token ids) before building a graph")


def _tree_calls(spec: ModelSpec, trees: list) -> Calls:
    """Per tree, in post-order: each node, preceded by the edge calls of its children when the model
    has an edge role. A model that reads `left` and `right` needs every internal node to have two.
    Native (`tree_calls`, reading the trees' arrays where they are): a mini-batch holds thousands of
    nodes, numpy would take ~25 passes."""
    binary = any(s.kind == "state" for s in spec.roles["internal"].bind)
    with_edges = "edge" in spec.roles
    found = core().tree_calls(trees, binary, with_edges)
    if len(found) == 1:  # a node of another arity than two, for a binary model
        sizes = np.cumsum([t.num_nodes for t in trees])
        tree = int(np.searchsorted(sizes, found[0], side="right"))
        node = found[0] - (int(sizes[tree - 1]) if tree else 0)
        n = int(trees[tree].arity[node])
        raise trees[tree].fail(f"node with {n} child{'ren' if n != 1 else ''}; model '{spec.name}' reads `left` "
                               "and `right`, so every internal node needs exactly two (a model reading the set "
                               "`children` takes any number)", node)
    instance, node_id, leaves, internal, leaf_tokens, roots, children_ptr, children, left, right, edges, _ = found
    calls = Calls(instance=instance, roles={"leaf": leaves, "internal": internal},
                  tokens={("leaf", "word"): leaf_tokens},
                  anchors={"root": {"node": roots}, "nodes": {"node": node_id}},
                  sets={("internal", "children"): (children_ptr, children)})
    if binary:
        calls.neighbors[("internal", "left")] = left
        calls.neighbors[("internal", "right")] = right
    if with_edges:
        calls.roles["edge"] = edges
        calls.neighbors[("edge", "child")] = children
        calls.sets[("internal", "edges")] = (children_ptr, edges)
    return calls


def _chain_calls(spec: ModelSpec, seqs: list) -> Calls:
    """Per sequence: the input block, then forward calls in order, then backward calls in
    reverse order, so every call comes after what it reads. Native (`chain_calls`)."""
    _require_encoded(seqs, "tokens")
    present = [r for r in ("input", "forward", "backward") if r in spec.roles]
    instance, blocks = core().chain_calls(np.array([s.num_nodes for s in seqs], dtype=np.int64), len(present),
                                          present.index("backward") if "backward" in present else -1)
    tokens = np.concatenate([s.tokens for s in seqs]).astype(np.int64)
    calls = Calls(instance=instance, anchors={"nodes": {}, "ends": {}})
    for role, (ids, prev, next_ids, firsts, lasts) in zip(present, blocks):
        calls.roles[role] = calls.anchors["nodes"][role] = ids
        calls.tokens[(role, "word")] = tokens
        if role == "forward":
            calls.neighbors[("forward", "prev")] = prev
            calls.anchors["ends"][role] = lasts
        elif role == "backward":
            calls.neighbors[("backward", "next")] = next_ids
            calls.anchors["ends"][role] = firsts
    if "input" in present:
        for role in present[1:]:
            calls.neighbors[(role, "input")] = calls.roles["input"]
    return calls


def _seq2seq_calls(spec: ModelSpec, pairs: list) -> Calls:
    """Per pair: the encoder calls, then the decoder calls; the first decoder step continues
    from the last encoder step. Native (`seq2seq_calls`)."""
    _require_encoded(pairs, "source_tokens")
    instance, encoder, decoder, encoder_prev, decoder_prev = core().seq2seq_calls(
        np.array([len(p.source) for p in pairs], dtype=np.int64), np.array([len(p.target) for p in pairs], dtype=np.int64))
    return Calls(
        instance=instance,
        roles={"encoder": encoder, "decoder": decoder},
        neighbors={("encoder", "prev"): encoder_prev, ("decoder", "prev"): decoder_prev},
        tokens={("encoder", "source"): np.concatenate([p.source_tokens for p in pairs]).astype(np.int64),
                ("decoder", "target"): np.concatenate([p.target_tokens for p in pairs]).astype(np.int64)},
        anchors={"nodes": {"decoder": decoder}},
    )


def _lattice_calls(spec: ModelSpec, lattices: list) -> Calls:
    """Per lattice node i >= 1, in node order: its char arc call, its word arc calls, then one
    merge call per word arc folding it into the node's state (char arc first). Native
    (`lattice_calls`)."""
    _require_encoded(lattices, "tokens")
    (instance, char_ids, word_ids, merge_ids, char_src, word_src, merge_acc, char_tokens, word_tokens, nodes,
     last) = core().lattice_calls(
        np.array([lat.num_nodes for lat in lattices], dtype=np.int64),
        np.array([len(lat.arc_dst) for lat in lattices], dtype=np.int64),
        np.concatenate([lat.arc_dst for lat in lattices]), np.concatenate([lat.arc_src for lat in lattices]),
        np.concatenate([lat.arc_char for lat in lattices]), np.concatenate([lat.tokens for lat in lattices]))
    return Calls(
        instance=instance,
        roles={"char": char_ids, "word": word_ids, "merge": merge_ids},
        neighbors={("char", "src"): char_src, ("word", "src"): word_src,
                   ("merge", "acc"): merge_acc, ("merge", "arc"): word_ids},
        tokens={("char", "char"): char_tokens, ("word", "word"): word_tokens},
        anchors={"nodes": {"node": nodes}, "last": {"node": last}},
    )


def _dag_calls(spec: ModelSpec, dags: list) -> Calls:
    """Nodes in file order; each node's role, arguments and tokens as its instance gives them,
    checked against the spec's bindings here, where both are known."""
    _require_encoded(dags, "tokens")
    role_names = [r for r in spec.roles if r != "readout"]
    role_index = {r: i for i, r in enumerate(role_names)}
    sizes = np.array([d.num_nodes for d in dags], dtype=np.int64)
    offsets = csr_ptr(sizes)
    instance = np.repeat(np.arange(len(dags), dtype=np.int32), sizes)
    roles = np.empty(int(sizes.sum()), dtype=np.int64)
    arity = {}
    for name in role_names:
        ks = [arg_index(s.ref) for s in spec.roles[name].bind if s.kind == "state"]
        arity[name] = max(ks) + 1 if ks else 0
    arg_parts = []
    for d, inst in enumerate(dags):
        for v, name in enumerate(inst.roles):
            if name not in role_index:
                raise inst.fail(f"node {v}: role {name!r} is not a role of model '{spec.name}'; "
                                f"expected one of: {', '.join(role_names)}")
        local = np.array([role_index[name] for name in inst.roles], dtype=np.int64)
        roles[offsets[d]:offsets[d + 1]] = local
        counts = np.diff(inst.arg_ptr)
        want = np.array([arity[role_names[i]] for i in local])
        bad = np.flatnonzero(counts != want)
        if len(bad):
            v = int(bad[0])
            raise inst.fail(f"node {v}: role {inst.roles[v]!r} takes {want[v]} arguments, "
                            f"the node lists {counts[v]}")
        arg_parts.append(inst.args + offsets[d])
    # Every node lists exactly its role's arity, so the arguments index by the roles' arities.
    args = np.concatenate(arg_parts)
    arg_ptr = csr_ptr(np.array([arity[name] for name in role_names], dtype=np.int64)[roles])

    def fail_at(v: int, message: str) -> DataError:
        d = int(instance[v])
        return dags[d].fail(f"node {v - offsets[d]}: {message}")

    def check_argument(name: str, value, source, ids: np.ndarray, producers: np.ndarray) -> None:
        """The producers of a bound argument must have the named output, of the input's shape."""
        for r in np.unique(roles[producers]).tolist():
            other = spec.cells[spec.roles[role_names[r]].cell]
            slot = other.output_slot(source.output)
            if slot is not None and other.output_shapes[slot] == value.shape:
                continue
            why = (f"cell '{other.name}' has no output '{source.output}'" if slot is None else
                   f"its output '{source.output}' is {list(other.output_shapes[slot])}, input "
                   f"'{value.name}' expects {list(value.shape)}")
            v = int(ids[np.flatnonzero(roles[producers] == r)[0]])
            raise fail_at(v, f"argument {source.ref} of role {name!r} is a {role_names[r]!r} node, but {why}")

    calls = Calls(instance=instance)
    for name in role_names:
        ids = np.flatnonzero(roles == role_index[name])
        calls.roles[name] = ids
        program = spec.cells[spec.roles[name].cell]
        for value, source in zip(program.inputs, spec.roles[name].bind):
            if source.kind == "token":
                values = np.concatenate([d.tokens.get(source.ref, np.full(d.num_nodes, -1)) for d in dags])[ids]
                missing = np.flatnonzero(values < 0)
                if len(missing):
                    raise fail_at(int(ids[missing[0]]), f"role {name!r} needs token field {source.ref!r}")
                calls.tokens[(name, source.ref)] = values
                continue
            k = arg_index(source.ref)
            producers = args[arg_ptr[ids] + k]
            calls.neighbors[(name, source.ref)] = producers
            check_argument(name, value, source, ids, producers)
    calls.anchors = {
        "outputs": {"node": np.concatenate([d.outputs + offsets[i] for i, d in enumerate(dags)])},
        "nodes": {"node": np.arange(len(instance))},
    }
    readout = spec.roles["readout"]
    read = calls.anchors[readout.at]["node"]
    for value, source in zip(spec.cells[readout.cell].inputs, readout.bind):
        if source.kind == "state":
            check_argument("readout", value, source, read, read)
    return calls


# Structure kind -> builder of its `Calls`.
BUILDERS = {"tree": _tree_calls, "chain": _chain_calls, "seq2seq": _seq2seq_calls,
            "lattice": _lattice_calls, "dag": _dag_calls}
