"""Structure kinds: the roles cells fill and what a role's inputs may be bound to.

A role names the token fields it may read (e.g. a tree leaf's `word`) and its
neighbours (e.g. an internal node's `left` child), each neighbour filled by
calls of one of a few roles. The readout role reads one neighbour, `node`,
whose roles depend on where it is placed (`at`). Builders in
`edbc.graph.build` follow the same table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoleDef:
    tokens: tuple[str, ...] = ()
    neighbors: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (neighbour, roles that fill it)

    def neighbor_roles(self, name: str) -> tuple[str, ...] | None:
        return dict(self.neighbors).get(name)


@dataclass(frozen=True, slots=True)
class KindDef:
    name: str
    roles: tuple[tuple[str, RoleDef], ...]
    readout_at: tuple[tuple[str, tuple[str, ...]], ...]  # `at` value -> roles `node` may be
    doc: str

    def role(self, name: str) -> RoleDef | None:
        return dict(self.roles).get(name)


_TREE_NODE = ("leaf", "internal")

KINDS: dict[str, KindDef] = {
    "tree": KindDef(
        name="tree",
        roles=(
            ("leaf", RoleDef(tokens=("word",))),
            ("internal", RoleDef(neighbors=(("left", _TREE_NODE), ("right", _TREE_NODE)))),
        ),
        readout_at=(("root", _TREE_NODE), ("nodes", _TREE_NODE)),
        doc="binary trees: a leaf cell per word, an internal cell per node fed by its two children",
    ),
}


def readout_role(kind: KindDef, at: str) -> RoleDef:
    return RoleDef(neighbors=(("node", dict(kind.readout_at)[at]),))
