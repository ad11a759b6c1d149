"""Build the cell-level graph of a mini-batch from encoded instances.

Each structure kind has a builder that numbers the structure's nodes in a
topological order and says, per role, which nodes fill it, their neighbours
and their token ids (`Calls`). `assemble` then turns that into a `Graph`
with numpy only: its cost does not grow with Python work per node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from ..spec.model import ModelSpec
from .ir import CELL, Graph, NodeType, csr_ptr


@dataclass
class Calls:
    """What a structure builder hands to `assemble`; arrays are aligned with `roles[role]`."""

    instance: np.ndarray  # int32 [N]: the instance of each structure node
    roles: dict[str, np.ndarray] = field(default_factory=dict)  # role -> its node ids
    neighbors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (role, name) -> ids, -1 none
    tokens: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (role, field) -> token ids
    anchors: dict[str, np.ndarray] = field(default_factory=dict)  # readout `at` -> structure node ids


def build_graph(spec: ModelSpec, instances: list) -> Graph:
    """The merged cell-level graph of `instances` (already encoded with the vocabularies)."""
    if not instances:
        raise DataError("a mini-batch needs at least one instance")
    return assemble(spec, BUILDERS[spec.kind](instances), len(instances))


def assemble(spec: ModelSpec, calls: Calls, num_instances: int) -> Graph:
    cell_names = list(dict.fromkeys(r.cell for r in spec.roles.values()))
    type_of = {name: i for i, name in enumerate(cell_names)}
    types = tuple(NodeType(name, spec.cells[name]) for name in cell_names)

    readout = spec.roles["readout"]
    anchors = calls.anchors[readout.at]
    n_struct = len(calls.instance)
    readout_ids = np.arange(n_struct, n_struct + len(anchors), dtype=np.int64)
    roles = dict(calls.roles, readout=readout_ids)
    neighbors = dict(calls.neighbors)
    neighbors[("readout", "node")] = anchors.astype(np.int64)

    node_type = np.empty(n_struct + len(anchors), dtype=np.int32)
    for role, ids in roles.items():
        node_type[ids] = type_of[spec.roles[role].cell]
    instance = np.concatenate([calls.instance, calls.instance[anchors]])

    n_args = np.array([len(t.program.float_inputs) for t in types], dtype=np.int64)
    n_imms = np.array([len(t.program.token_inputs) for t in types], dtype=np.int64)
    arg_ptr = csr_ptr(n_args[node_type])
    imm_ptr = csr_ptr(n_imms[node_type])
    arg_node = np.full(arg_ptr[-1], -1, dtype=np.int32)
    arg_slot = np.zeros(arg_ptr[-1], dtype=np.int32)
    imm = np.zeros(imm_ptr[-1], dtype=np.int64)

    for role, ids in roles.items():
        r = spec.roles[role]
        program = spec.cells[r.cell]
        for position, value_id in enumerate(program.float_inputs):
            source = r.bind[value_id]
            producers = neighbors[(role, source.ref)]
            # The slot of the named output differs between the cells that may fill a neighbour.
            slot_of_type = np.array([t.program.output_slot(source.output) or 0 for t in types],
                                    dtype=np.int32)
            where = arg_ptr[ids] + position
            arg_node[where] = producers
            arg_slot[where] = np.where(producers >= 0, slot_of_type[node_type[np.maximum(producers, 0)]], 0)
        for position, value_id in enumerate(program.token_inputs):
            imm[imm_ptr[ids] + position] = calls.tokens[(role, r.bind[value_id].ref)]

    return Graph(CELL, types, node_type, arg_ptr, arg_node, arg_slot, imm_ptr, imm, instance,
                 num_instances, out_node=readout_ids, out_slot=np.zeros(len(readout_ids)))


def _tree_calls(trees: list) -> Calls:
    if any(t.tokens is None for t in trees):
        raise ValueError("trees must be encoded (token ids) before building a graph")
    sizes = np.array([t.num_nodes for t in trees], dtype=np.int64)
    offsets = csr_ptr(sizes)
    instance = np.repeat(np.arange(len(trees), dtype=np.int32), sizes)
    base = offsets[:-1][instance]
    left = np.concatenate([t.left for t in trees]).astype(np.int64)
    right = np.concatenate([t.right for t in trees]).astype(np.int64)
    tokens = np.concatenate([t.tokens for t in trees]).astype(np.int64)
    is_leaf = left < 0
    leaves = np.flatnonzero(is_leaf)
    internal = np.flatnonzero(~is_leaf)
    return Calls(
        instance=instance,
        roles={"leaf": leaves, "internal": internal},
        neighbors={("internal", "left"): left[internal] + base[internal],
                   ("internal", "right"): right[internal] + base[internal]},
        tokens={("leaf", "word"): tokens[leaves]},
        anchors={"root": offsets[1:] - 1, "nodes": np.arange(len(instance), dtype=np.int64)},
    )


# Structure kind -> builder of its `Calls`.
BUILDERS = {"tree": _tree_calls}
