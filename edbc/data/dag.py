"""Instances given as DAGs, for models that are neither chains, trees nor lattices.

JSON lines: one instance a line,

    {"nodes": [{"role": "leaf", "tokens": {"word": "the"}},
               {"role": "leaf", "tokens": {"word": "cat"}},
               {"role": "pair", "args": [0, 1]}],
     "outputs": [2]}

A node names the structure role (of the model spec's `structure:`) that
computes it, lists its argument nodes (earlier nodes, by position) and gives
its token fields. `outputs` (default: the last node) are the nodes a readout
`at: outputs` reads. How many arguments a role takes, and whether they fit,
is checked against the spec when the graph is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError
from ..graph.ir import csr_ptr
from ..inputs import load_json
from ..spec.structure import arg_index
from .text import gamma_lengths, read_records, zipf_words


@dataclass(frozen=True, eq=False)
class DagInstance:
    roles: tuple[str, ...]  # per node
    arg_ptr: np.ndarray  # int64 [nodes + 1]
    args: np.ndarray  # int64: argument node positions, always earlier
    values: dict[str, tuple[str | None, ...]]  # token field -> per node value (None if absent)
    outputs: np.ndarray  # int64 node positions
    origin: tuple[str | None, int | None] = (None, None)  # (path, line) for error messages
    tokens: dict[str, np.ndarray] | None = None  # field -> per node id, -1 if absent

    @property
    def num_nodes(self) -> int:
        return len(self.roles)

    def token_fields(self) -> dict[str, list[str]]:
        return {f: [v for v in vals if v is not None] for f, vals in self.values.items()}

    def label_texts(self) -> list[str]:
        return []  # DAG instances carry no labels

    def encode(self, ids: dict) -> "DagInstance":
        tokens = {f: np.array([-1 if v is None else ids[f](v) for v in vals], dtype=np.int64)
                  for f, vals in self.values.items() if f in ids}
        return replace(self, tokens=tokens)

    def fail(self, message: str) -> DataError:
        path, line = self.origin
        return DataError(message, path=path, line=line)


def parse_dag(line: str, path: str | None = None, lineno: int | None = None) -> DagInstance:
    def fail(message: str, column: int | None = None):
        raise DataError(message, path=path, line=lineno, column=column)

    try:
        obj = load_json(line)
    except json.JSONDecodeError as e:
        fail(f"not valid JSON ({e.msg})", e.colno)
    if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list) or not obj["nodes"]:
        fail('expected an object {"nodes": [...], "outputs": [...]} with at least one node')
    unknown = set(obj) - {"nodes", "outputs"}
    if unknown:
        fail(f"unknown key {sorted(unknown)[0]!r}; expected nodes and outputs")
    roles, counts, args = [], [], []
    values: dict[str, list[str | None]] = {}
    for v, node in enumerate(obj["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("role"), str):
            fail(f'node {v}: expected {{"role": name, "args": [...], "tokens": {{...}}}}')
        extra = set(node) - {"role", "args", "tokens"}
        if extra:
            fail(f"node {v}: unknown key {sorted(extra)[0]!r}; expected role, args, tokens")
        node_args = node.get("args", [])
        if not isinstance(node_args, list) or not all(type(a) is int for a in node_args):
            fail(f"node {v}: args must be a list of node numbers")
        for a in node_args:
            if a < 0:
                fail(f"node {v}: argument {a} is negative; arguments are node numbers")
            if a >= v:
                fail(f"node {v}: argument {a} is not an earlier node; arguments must come first")
        tokens = node.get("tokens", {})
        if not isinstance(tokens, dict) or not all(isinstance(t, str) for t in tokens.values()):
            fail(f"node {v}: tokens must map field names to strings")
        for field, value in tokens.items():
            values.setdefault(field, [None] * len(obj["nodes"]))[v] = value
        roles.append(node["role"])
        counts.append(len(node_args))
        args.extend(node_args)
    n = len(roles)
    outputs = obj.get("outputs", [n - 1])
    if not isinstance(outputs, list) or not outputs or \
            not all(type(o) is int and 0 <= o < n for o in outputs):
        fail(f"outputs must be a non-empty list of node numbers below {n}")
    return DagInstance(tuple(roles), csr_ptr(np.array(counts, dtype=np.int64)), np.array(args, dtype=np.int64),
                       {f: tuple(vals) for f, vals in sorted(values.items())},
                       np.array(outputs, dtype=np.int64), (path, lineno))


def read_dags(path: str, limit: int | None = None) -> list[DagInstance]:
    return read_records(path, parse_dag, limit, "no instances in the file; expected one JSON object a line")


def format_dag(inst: DagInstance) -> str:
    nodes = []
    for v, role in enumerate(inst.roles):
        node: dict = {"role": role}
        a = inst.args[inst.arg_ptr[v]:inst.arg_ptr[v + 1]].tolist()
        if a:
            node["args"] = a
        tokens = {f: vals[v] for f, vals in inst.values.items() if vals[v] is not None}
        if tokens:
            node["tokens"] = tokens
        nodes.append(node)
    return json.dumps({"nodes": nodes, "outputs": inst.outputs.tolist()}, separators=(",", ":"))


# Synthetic DAGs: 24 nodes an instance (sd 10); each node's arguments are drawn among the
# last few compatible nodes, so that instances are deep rather than flat.
_NODES_MEAN, _NODES_STD, _NODES_MAX = 24.0, 10.0, 100
_RECENT = 4
_LEXICON = 5_000


def synthetic_dags(n: int, seed: int = 0, spec=None) -> list[DagInstance]:
    """Random instances for `spec`'s roles: arities and argument outputs as its bindings say."""
    rng = np.random.default_rng(seed)
    roles = {name: r for name, r in spec.roles.items() if name != "readout"}
    needs: dict[str, dict[int, list[tuple[str, tuple]]]] = {}  # role -> arg k -> (output, shape)
    fields: dict[str, list[str]] = {}
    for name, r in roles.items():
        needs[name], fields[name] = {}, []
        for value, source in zip(spec.cells[r.cell].inputs, r.bind):
            k = arg_index(source.ref) if source.kind == "state" else None
            if k is not None:
                needs[name].setdefault(k, []).append((source.output, value.shape))
            elif source.kind == "token":
                fields[name].append(source.ref)
    arity = {name: max(needs[name]) + 1 if needs[name] else 0 for name in roles}

    def provides(producer: str, wants: list[tuple[str, tuple]]) -> bool:
        program = spec.cells[roles[producer].cell]
        slots = [program.output_slot(o) for o, _ in wants]
        return all(s is not None and program.output_shapes[s] == shape for s, (_, shape) in zip(slots, wants))

    fits = {(name, k): {p for p in roles if provides(p, needs[name].get(k, []))}
            for name in roles for k in range(arity[name])}
    readout = spec.roles["readout"]
    read_wants = [(s.output, v.shape) for v, s in zip(spec.cells[readout.cell].inputs, readout.bind)
                  if s.kind == "state"]
    if not any(arity[name] == 0 for name in roles):
        raise ValueError("the spec has no role without arguments to start a DAG with")
    out = []
    while len(out) < n:
        size = int(gamma_lengths(rng, 1, _NODES_MEAN, _NODES_STD, 1, _NODES_MAX)[0])
        node_roles: list[str] = []
        counts, args = [], []
        values: dict[str, list[str | None]] = {}
        for v in range(size):
            candidates = {name: [[u for u in range(v) if node_roles[u] in fits[(name, k)]][-_RECENT:]
                                 for k in range(arity[name])] for name in roles}
            choices = [name for name, per_arg in candidates.items() if all(per_arg)]
            name = choices[int(rng.integers(len(choices)))]
            chosen = [ok[int(rng.integers(len(ok)))] for ok in candidates[name]]
            for f in fields[name]:
                values.setdefault(f, [None] * size)[v] = zipf_words(rng, 1, _LEXICON)[0]
            node_roles.append(name)
            counts.append(len(chosen))
            args.extend(chosen)
        readable = [v for v in range(size) if provides(node_roles[v], read_wants)]
        if readable:
            out.append(DagInstance(tuple(node_roles), csr_ptr(np.array(counts, dtype=np.int64)),
                                   np.array(args, dtype=np.int64),
                                   {f: tuple(vals) for f, vals in sorted(values.items())},
                                   np.array([readable[-1]], dtype=np.int64)))
    return out
