"""Inputs: readers of real data sets and seeded synthetic generators, by structure kind."""

from __future__ import annotations

from ..errors import DataError
from .tree import Tree, parse_ptb, read_trees, synthetic_trees
from .vocab import Vocab, build_vocab, encode

# Structure kind -> reader(path, limit) and generator(n, seed).
READERS = {"tree": read_trees}
GENERATORS = {"tree": synthetic_trees}


def read_instances(kind: str, path: str, limit: int | None = None) -> list:
    if kind not in READERS:
        raise DataError(f"no reader for structure kind '{kind}'", path=path)
    return READERS[kind](path, limit)


def synthesize(kind: str, n: int, seed: int = 0) -> list:
    return GENERATORS[kind](n, seed)


__all__ = ["Tree", "parse_ptb", "read_trees", "synthetic_trees", "Vocab", "build_vocab", "encode",
           "read_instances", "synthesize", "READERS", "GENERATORS"]
