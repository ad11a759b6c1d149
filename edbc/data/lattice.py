"""Lattices (lattice models): the character/word lattice format of ../shared/data/README.md.

    N                          number of lattices, alone on its line
    then for each lattice:
    L                          number of nodes, alone on its line
    t_0 ... t_{L-1}            one tag per node, on one line
    L lines, line i:           n_arcs from_1 id_1 from_2 id_2 ...

Arc (from, id) enters node i from node `from` < i. With from = i-1 it is the
character arc (exactly one per node i >= 1) and `id` a character id; otherwise
a word arc and `id` a word id. Node 0 has no arcs. Arcs are kept in the order
the builder folds them: by target node, character arc first, then word arcs
as listed.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace

import numpy as np

from ..errors import DataError
from ..errors import quoted
from ..inputs import out_of_memory
from .text import INT32_MAX, fits_int32, gamma_lengths, is_integer, read_lines, zipf_words

_FIELD = re.compile(r"\S+")


@dataclass(frozen=True, eq=False)
class Lattice:
    num_nodes: int
    tags: np.ndarray  # int32 [num_nodes]
    arc_src: np.ndarray  # int32 [arcs]
    arc_dst: np.ndarray  # int32 [arcs], non-decreasing
    arc_char: np.ndarray  # bool [arcs]: character arc (from dst-1), else word arc
    labels: tuple[str, ...]  # each arc's id as written
    tokens: np.ndarray | None = None  # int32 [arcs] after encoding (char or word vocabulary)

    def token_fields(self) -> dict[str, list[str]]:
        return {"char": [label for label, c in zip(self.labels, self.arc_char) if c],
                "word": [label for label, c in zip(self.labels, self.arc_char) if not c]}

    def label_texts(self) -> list[str]:
        return [str(t) for t in self.tags.tolist()]

    def encode(self, ids: dict) -> "Lattice":
        char_id, word_id = ids["char"], ids["word"]
        tokens = [char_id(label) if c else word_id(label) for label, c in zip(self.labels, self.arc_char.tolist())]
        return replace(self, tokens=np.array(tokens, dtype=np.int32))


class _Cursor:
    """Integers of a file with their positions, read in order with line discipline."""

    def __init__(self, path: str | None, text: str | None = None):
        """The integers of the file at `path`, or of `text` (`path` then only names it in errors)."""
        self.path = path
        self.fields: list[tuple[str, int, int]] = []
        lineno = None
        lines = read_lines(path) if text is None else io.StringIO(text, newline=None)
        try:
            for lineno, line in enumerate(lines, start=1):
                self.fields.extend((m.group(), lineno, m.start() + 1) for m in _FIELD.finditer(line))
        except MemoryError:
            self.fields = []
            raise out_of_memory(path, lineno) from None
        self.pos = 0

    def fail(self, message: str, at: int | None = None) -> DataError:
        at = self.pos if at is None else at
        if at < len(self.fields):
            _, line, col = self.fields[at]
            return DataError(message, path=self.path, line=line, column=col)
        last = self.fields[-1][1] if self.fields else None
        return DataError(f"truncated: {message}", path=self.path, line=last)

    def integer(self, what: str, minimum: int = 0) -> int:
        if self.pos >= len(self.fields):
            raise self.fail(f"expected {what}, the file ends")
        text = self.fields[self.pos][0]
        if not is_integer(text):
            raise self.fail(f"expected {what} (an integer), got '{quoted(text)}'")
        if not fits_int32(text):
            raise self.fail(f"{what} is {quoted(text)}, out of range; expected at most {INT32_MAX}")
        value = int(text)
        if value < minimum:
            raise self.fail(f"{what} is {value}; expected at least {minimum}")
        self.pos += 1
        return value

    def line(self, at: int) -> int:
        return self.fields[at][1]

    def end_of_line(self, start: int, what: str) -> None:
        """Everything from `start` up to here is one line, and nothing else is on it."""
        if self.pos > start and self.line(self.pos - 1) != self.line(start):
            raise self.fail(f"{what} continues onto the next line; fewer values than its count", self.pos - 1)
        if self.pos < len(self.fields) and self.line(self.pos) == self.line(start):
            raise self.fail(f"{what} has more values on its line than its count")


def read_lattices(path: str, limit: int | None = None) -> list[Lattice]:
    c = _Cursor(path)
    if not c.fields:
        raise DataError("empty file; expected the number of lattices on the first line", path=path)
    start = c.pos
    count = c.integer("the number of lattices")
    c.end_of_line(start, "the lattice count")
    out = []
    for k in range(count):
        if limit is not None and len(out) >= limit:
            return out
        out.append(_lattice(c, k))
    if c.pos < len(c.fields):
        raise c.fail(f"extra data after the {count} lattices the first line announces")
    if not out:
        raise DataError("no lattices in the file", path=path)
    return out


def parse_lattice(text: str, path: str | None = None) -> Lattice:
    """One lattice given on its own, without the count line: its node count, tag line and arc lines."""
    c = _Cursor(path, text)
    if not c.fields:
        raise DataError("empty lattice; expected its node count, its tags and one arc line a node", path=path)
    lattice = _lattice(c, 0)
    if c.pos < len(c.fields):
        raise c.fail("extra data after the lattice")
    return lattice


def _lattice(c: _Cursor, k: int) -> Lattice:
    start = c.pos
    n = c.integer(f"the node count of lattice {k}", minimum=2)
    c.end_of_line(start, f"lattice {k}'s node count")
    start = c.pos
    tags = [c.integer(f"tag {i} of lattice {k}") for i in range(n)]
    c.end_of_line(start, f"lattice {k}'s tag line")
    src, dst, char, labels = [], [], [], []
    for i in range(n):
        start = c.pos
        arcs = c.integer(f"the arc count of node {i} of lattice {k}")
        if i == 0 and arcs:
            raise c.fail(f"lattice {k}: node 0 has {arcs} arcs; the start node has none", start)
        node_arcs = []
        for _ in range(arcs):
            at = c.pos
            if at < len(c.fields) and c.line(at) != c.line(start):
                raise c.fail(f"lattice {k}, node {i}: its line holds fewer arcs than its count {arcs}", start)
            origin = c.integer(f"an arc's source node (lattice {k}, node {i})")
            if origin >= i:
                raise c.fail(f"lattice {k}: an arc into node {i} comes from node {origin}; arcs must "
                             "come from an earlier node", at)
            label = c.fields[c.pos][0] if c.pos < len(c.fields) else ""
            c.integer(f"an arc's id (lattice {k}, node {i})")
            node_arcs.append((origin, label))
        c.end_of_line(start, f"lattice {k}, node {i}")
        chars = [a for a in node_arcs if a[0] == i - 1]
        if i and len(chars) != 1:
            raise c.fail(f"lattice {k}: node {i} has {len(chars)} character arcs (from node {i - 1}); "
                         "expected exactly one", start)
        for origin, label in chars + [a for a in node_arcs if a[0] != i - 1]:
            src.append(origin)
            dst.append(i)
            char.append(origin == i - 1)
            labels.append(label)
    return Lattice(n, np.array(tags, dtype=np.int32), np.array(src, dtype=np.int32),
                   np.array(dst, dtype=np.int32), np.array(char, dtype=bool), tuple(labels))


def format_lattices(lattices: list[Lattice]) -> str:
    """The file format, so that synthetic lattices can be written and read back."""
    lines = [str(len(lattices))]
    for lat in lattices:
        lines.append(str(lat.num_nodes))
        lines.append(" ".join(map(str, lat.tags.tolist())))
        for i in range(lat.num_nodes):
            arcs = [(s, label) for s, d, label in zip(lat.arc_src.tolist(), lat.arc_dst.tolist(), lat.labels) if d == i]
            lines.append(" ".join([str(len(arcs))] + [f"{s} {label}" for s, label in arcs]))
    return "\n".join(lines) + "\n"


# Lattice train/dev/test: 44 nodes a lattice (sd 28, up to 211); besides its character arc a
# node has 0/1/2/3/4 word arcs entering with frequencies 52/43/4.8/0.6/0.03 %; word arcs span
# 2 characters 86 % of the time, 3: 11 %, 4: 2 %, 5 and more: 0.6 %. About 2,200 character
# ids and 10,000 word ids occur.
_NODES_MEAN, _NODES_STD, _NODES_MAX = 44.1, 27.7, 220
_WORD_ARCS_P = np.array([0.519, 0.427, 0.048, 0.0057, 0.0003])
_SPAN_P = {2: 0.861, 3: 0.112, 4: 0.021, 5: 0.0046, 6: 0.0011, 7: 0.0002, 8: 0.0002}
_CHARS, _WORDS = 2_200, 10_000


def synthetic_lattices(n: int, seed: int = 0, spec=None) -> list[Lattice]:
    rng = np.random.default_rng(seed)
    p_arcs = _WORD_ARCS_P / _WORD_ARCS_P.sum()
    spans = np.array(list(_SPAN_P))
    p_span = np.array(list(_SPAN_P.values()))
    out = []
    for nodes in gamma_lengths(rng, n, _NODES_MEAN, _NODES_STD, 2, _NODES_MAX).tolist():
        src, dst, char = [], [], []
        for i in range(1, nodes):
            src.append(i - 1)
            dst.append(i)
            char.append(True)
            allowed = spans <= i
            if not allowed.any():
                continue
            k = min(int(rng.choice(len(p_arcs), p=p_arcs)), int(allowed.sum()))
            if k:
                p = p_span[allowed] / p_span[allowed].sum()
                for s in rng.choice(spans[allowed], size=k, replace=False, p=p).tolist():
                    src.append(i - s)
                    dst.append(i)
                    char.append(False)
        char_arr = np.array(char, dtype=bool)
        chars = iter(zipf_words(rng, int(char_arr.sum()), _CHARS, ""))
        words = iter(zipf_words(rng, int((~char_arr).sum()), _WORDS, ""))
        labels = tuple(next(chars) if c else next(words) for c in char)
        tags = np.full(nodes, 3, dtype=np.int32)
        tags[0] = 0
        out.append(Lattice(nodes, tags, np.array(src, dtype=np.int32), np.array(dst, dtype=np.int32),
                           char_arr, labels))
    return out
