"""Structure kinds: the roles cells fill and what a role's inputs may be bound to.

A role names the token fields it may read (e.g. a tree leaf's `word`) and its
neighbours (e.g. an internal node's `left` child), each neighbour filled by
calls of one of a few roles. The readout role reads neighbours too; which ones
depends on where it is placed (`at`). Roles a kind marks optional may be left
out of a spec; `required` lists groups of which each needs one role.

A role may also read *sets* of neighbours (a tree node's `children`, any
number of them): a cell input bound to a set reduces it, `sum(children.h)`
(`edbc.spec.ops.SET_REDUCTIONS`), so one cell serves every arity.

The `dag` kind has open roles: any role name, any token field, and neighbours
`arg0`, `arg1`, ... (a node's arguments as the data file lists them), filled by
any role; those are checked per instance when the graph is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANY = "*"  # in `tokens`: any field; in a neighbour's roles: any role
_ARG = re.compile(r"arg(\d+)\Z")


@dataclass(frozen=True, slots=True)
class RoleDef:
    tokens: tuple[str, ...] = ()
    neighbors: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (neighbour, roles that fill it)
    arg_neighbors: bool = False  # dag: `argK` neighbours
    sets: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (set of neighbours, roles that fill its members)

    def set_roles(self, name: str) -> tuple[str, ...] | None:
        return dict(self.sets).get(name)

    def neighbor_roles(self, name: str) -> tuple[str, ...] | None:
        for n, roles in self.neighbors:
            if n == name:
                return roles
        if self.arg_neighbors and _ARG.match(name):
            return (ANY,)
        return None

    def accepts_token(self, field: str) -> bool:
        return field in self.tokens or ANY in self.tokens

    def describe_neighbors(self) -> str:
        names = [n for n, _ in self.neighbors] + (["arg0", "arg1", "..."] if self.arg_neighbors else [])
        names += [f"{n} (a set)" for n, _ in self.sets]
        return ", ".join(names) or "(none)"


@dataclass(frozen=True, slots=True)
class KindDef:
    name: str
    doc: str
    roles: tuple[tuple[str, RoleDef], ...]
    required: tuple[tuple[str, ...], ...]  # each group needs at least one of its roles
    readout_at: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...]  # at -> neighbours
    open_roles: RoleDef | None = None  # dag: every role name is allowed, with this definition

    def role(self, name: str) -> RoleDef | None:
        if self.open_roles is not None:
            return None if name == "kind" else self.open_roles
        return dict(self.roles).get(name)

    def role_names(self) -> str:
        return "any name" if self.open_roles is not None else ", ".join(r for r, _ in self.roles)


def arg_index(neighbor: str) -> int | None:
    m = _ARG.match(neighbor)
    return int(m.group(1)) if m else None


_TREE_NODE = ("leaf", "internal")
_LATTICE_STATE = ("char", "merge")  # a lattice node's state: its char arc, or its last merge

KINDS: dict[str, KindDef] = {
    "tree": KindDef(
        name="tree",
        doc="trees: a leaf cell per word, an internal cell per node fed by its `left` and `right` children "
            "(binary trees) or by the set of its `children` (any number); an optional edge cell per child, "
            "fed by the `child`, whose outputs its parent reads as the set `edges`",
        roles=(
            ("leaf", RoleDef(tokens=("word",))),
            ("internal", RoleDef(neighbors=(("left", _TREE_NODE), ("right", _TREE_NODE)),
                                 sets=(("children", _TREE_NODE), ("edges", ("edge",))))),
            ("edge", RoleDef(neighbors=(("child", _TREE_NODE),))),
        ),
        required=(("leaf",), ("internal",)),
        readout_at=(("root", (("node", _TREE_NODE),)), ("nodes", (("node", _TREE_NODE),))),
    ),
    "chain": KindDef(
        name="chain",
        doc="sequences: an optional input cell per token, forward and/or backward recurrent cells",
        roles=(
            ("input", RoleDef(tokens=("word",))),
            ("forward", RoleDef(tokens=("word",), neighbors=(("prev", ("forward",)), ("input", ("input",))))),
            ("backward", RoleDef(tokens=("word",), neighbors=(("next", ("backward",)), ("input", ("input",))))),
        ),
        required=(("forward", "backward"),),
        readout_at=(
            ("nodes", (("forward", ("forward",)), ("backward", ("backward",)), ("input", ("input",)))),
            ("ends", (("forward", ("forward",)), ("backward", ("backward",)))),
        ),
    ),
    "seq2seq": KindDef(
        name="seq2seq",
        doc="sentence pairs: an encoder chain over the source, a decoder chain over the target "
            "whose first step continues from the encoder's last (teacher forcing)",
        roles=(
            ("encoder", RoleDef(tokens=("source",), neighbors=(("prev", ("encoder",)),))),
            ("decoder", RoleDef(tokens=("target",), neighbors=(("prev", ("encoder", "decoder")),))),
        ),
        required=(("encoder",), ("decoder",)),
        readout_at=(("nodes", (("decoder", ("decoder",)),)),),
    ),
    "lattice": KindDef(
        name="lattice",
        doc="lattices: a char cell per character arc and a word cell per word arc, each fed by the "
            "state of the arc's source node; the arcs entering a node are folded by a merge cell, "
            "character arc first",
        roles=(
            ("char", RoleDef(tokens=("char",), neighbors=(("src", _LATTICE_STATE),))),
            ("word", RoleDef(tokens=("word",), neighbors=(("src", _LATTICE_STATE),))),
            ("merge", RoleDef(neighbors=(("acc", _LATTICE_STATE), ("arc", ("word",))))),
        ),
        required=(("char",), ("word",), ("merge",)),
        readout_at=(("nodes", (("node", _LATTICE_STATE),)), ("last", (("node", _LATTICE_STATE),))),
    ),
    "dag": KindDef(
        name="dag",
        doc="any DAG given per instance (JSON lines): each node names its role and lists its "
            "argument nodes; input i binds to `argK.output`",
        roles=(),
        required=(),
        readout_at=(("outputs", (("node", (ANY,)),)), ("nodes", (("node", (ANY,)),))),
        open_roles=RoleDef(tokens=(ANY,), arg_neighbors=True),
    ),
}


def readout_role(kind: KindDef, at: str) -> RoleDef:
    return RoleDef(neighbors=dict(kind.readout_at)[at])
