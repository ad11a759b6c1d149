"""Frontier states for the learned policy: the type vocabulary and the three encodings.

A policy is trained for a model and names its types (cell names at cell level,
op signatures such as `sigmoid(128)` at op level, `t<k>` in bare typed DAGs),
so that it applies to any mini-batch of that model: `TypeVocab.map_graph`
turns a graph's type ids into vocabulary ids. Only batchable types are in the
vocabulary; unbatchable nodes run outside the policy.

A state is a tuple of vocabulary ids (method.md §2), made by the native
frontier (`Frontier.state`, csrc/frontier.cpp):

    set      the ready types, ascending
    sorted   the ready types by ready-node count, largest first (ties: lower id first)
    max      the set, then the type with the most ready nodes

The observation the network sees is a function of the state alone, so the
network's greedy choice is a function of the state, and distilling it into a
table loses nothing on the states it visits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.ir import Graph
from ..settings import ENCODINGS  # noqa: F401 (the three above; defined where the CLI reads them)

State = tuple[int, ...]


@dataclass(frozen=True)
class TypeVocab:
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def of_graphs(graphs: list[Graph]) -> "TypeVocab":
        """The batchable type names of `graphs`, in first-seen order."""
        names: dict[str, None] = {}
        for g in graphs:
            for t in g.types:
                if t.batchable:
                    names.setdefault(t.name, None)
        return TypeVocab(tuple(names))

    def map_graph(self, graph: Graph) -> np.ndarray:
        """For each type of `graph`, its vocabulary id; -1 for types the vocabulary lacks
        and for unbatchable types."""
        def compute(g: Graph) -> np.ndarray:
            index = {name: i for i, name in enumerate(self.names)}
            return np.array([index.get(t.name, -1) if t.batchable else -1 for t in g.types], dtype=np.int64)
        return graph.cached(("type_vocab", self.names), compute)


def state_types(encoding: str, state: State) -> State:
    """The ready types of a state (the actions it allows)."""
    return state[:-1] if encoding == "max" else state


def is_state(encoding: str, state: State) -> bool:
    """Whether `state` is one the frontier can make: distinct ready types, ascending for `set` and
    `max`, and for `max` a largest type that is ready."""
    ready = state_types(encoding, state)
    if not ready or len(set(ready)) != len(ready):
        return False
    if encoding != "sorted" and list(ready) != sorted(ready):
        return False
    return encoding != "max" or state[-1] in ready


def observation_size(encoding: str, num_types: int) -> int:
    return num_types if encoding == "set" else 2 * num_types


def observation(encoding: str, state: State, num_types: int) -> np.ndarray:
    """The network's input: which types are ready, and for `sorted` their rank
    (1 for the largest, falling by 1/V a place), for `max` which type is largest."""
    out = np.zeros(observation_size(encoding, num_types), dtype=np.float32)
    out[list(state_types(encoding, state))] = 1.0
    if encoding == "sorted":
        out[num_types + np.array(state, dtype=np.int64)] = 1.0 - np.arange(len(state)) / num_types
    elif encoding == "max":
        out[num_types + state[-1]] = 1.0
    return out


def action_mask(encoding: str, state: State, num_types: int) -> np.ndarray:
    mask = np.zeros(num_types, dtype=bool)
    mask[list(state_types(encoding, state))] = True
    return mask
