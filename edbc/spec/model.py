"""Value types of a model spec: dimensions, parameters, cells, structure, readout.

A model is data: `load.load_model` parses and validates a YAML file into a
`ModelSpec`; nothing downstream needs the YAML again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .program import Program, Shape

INITS = ("xavier", "normal", "uniform", "zeros", "ones")  # the initialisers a YAML spec may name
GIVEN = "given"  # a parameter whose values come with the spec (e.g. an ONNX cell's initializers)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    shape: Shape
    init: str  # one of INITS, or GIVEN
    scale: float | None  # std for normal, bound for uniform
    seed: int
    values: np.ndarray | None = field(default=None, compare=False, repr=False)  # fp32, for GIVEN

    @staticmethod
    def given(name: str, values: np.ndarray) -> "ParamSpec":
        """A parameter with fixed values (copied to read-only fp32)."""
        values = np.array(values, dtype=np.float32)
        values.flags.writeable = False
        return ParamSpec(name, tuple(values.shape), GIVEN, None, 0, values)

    def canonical(self) -> list:
        out = [list(self.shape), self.init, self.scale, self.seed]
        if self.values is not None:
            # The values themselves define the model: a changed ONNX file changes the digest.
            out.append(hashlib.sha256(np.ascontiguousarray(self.values, dtype="<f4").tobytes()).hexdigest())
        return out


@dataclass(frozen=True, slots=True)
class VocabSpec:
    """How a token field's strings become ids: `size` ids, id 0 the unknown word."""

    field: str
    size: int
    build: str  # "frequency": the size-1 most frequent words of the data; "hash": crc32 buckets


@dataclass(frozen=True, slots=True)
class Source:
    """What feeds one cell input: a token field, a neighbour's output, or a set of neighbours' outputs
    reduced (`sum(children.h)`)."""

    kind: str  # "token" | "state" | "set"
    ref: str  # token field, neighbour name (e.g. "left", "prev", "node") or set name ("children")
    output: str | None = None  # the neighbour cell's output name, for kinds "state" and "set"
    reduce: str | None = None  # for kind "set": one of `ops.SET_REDUCTIONS`

    def __str__(self) -> str:
        if self.kind == "set":
            return f"{self.reduce}({self.ref}.{self.output})"
        return self.ref if self.output is None else f"{self.ref}.{self.output}"


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """A role of the structure (e.g. a tree's leaf) is filled by calls of one cell."""

    role: str
    cell: str
    bind: tuple[Source, ...]  # one per cell input, in the cell's input order
    at: str | None = None  # for the readout: which structure nodes it reads


@dataclass(frozen=True, eq=False)
class ModelSpec:
    name: str
    path: str | None
    seed: int
    dims: dict[str, int]
    vocabs: dict[str, VocabSpec]
    params: dict[str, ParamSpec]
    cells: dict[str, Program]
    kind: str
    roles: dict[str, RoleSpec]  # the structure's roles, the readout under "readout"
    options: dict[str, object] = field(default_factory=dict)  # kind-specific settings
    # Files the spec refers to (ONNX cells), by the path written in the spec; plans embed them.
    files: dict[str, bytes] = field(default_factory=dict)

    def canonical(self) -> dict:
        """Everything that defines the model, nothing about where it was read from."""
        return {
            "name": self.name,
            "seed": self.seed,
            "dims": self.dims,
            "vocabs": {k: [v.size, v.build] for k, v in self.vocabs.items()},
            "params": {k: p.canonical() for k, p in self.params.items()},
            "cells": {k: c.to_json() for k, c in self.cells.items()},
            "kind": self.kind,
            "roles": {k: [r.cell, [str(s) for s in r.bind], r.at] for k, r in self.roles.items()},
            "options": self.options,
        }

    @property
    def digest(self) -> str:
        return _digest(self.canonical())

    @property
    def shape_digest(self) -> str:
        """What a checkpoint must match: the model without how its parameters are initialised (a
        checkpoint brings their values), so that a changed `std` or seed keeps its checkpoints, and
        without where its readout reads (the same weights score a tree's root or every node)."""
        canonical = self.canonical()
        del canonical["seed"]
        canonical["params"] = {k: list(p.shape) for k, p in self.params.items()}
        canonical["roles"]["readout"][2] = None  # where the readout reads: training may read more places
        return _digest(canonical)

    @property
    def classes(self) -> int:
        """The width of the readout's first output: its classes, where it scores labels."""
        readout = self.cell_of("readout")
        return readout.values[readout.outputs[0]].shape[-1]

    def cell_of(self, role: str) -> Program:
        return self.cells[self.roles[role].cell]


def _digest(canonical: dict) -> str:
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
