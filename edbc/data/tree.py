"""Trees: the PTB-bracket reader (SST, or any treebank with any number of children a node) and a
synthetic generator with SST's statistics.

A `Tree` stores its nodes in post-order (children before parents, the root
last) as numpy arrays, children as a CSR, so that a mini-batch's graph is built
by concatenation. SST's trees are binarised; `merge_same_label` makes n-ary
trees of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..errors import quoted
from .text import INT32_MAX, fits_int32, gamma_lengths, is_integer, read_records, zipf_words

_PTB_UNESCAPE = {"-LRB-": "(", "-RRB-": ")", "-LCB-": "{", "-RCB-": "}", "-LSB-": "[", "-RSB-": "]"}
# Only ASCII blanks separate tokens: SST words may hold a no-break space ("8\xa01/2").
_TOKEN = re.compile(r"[()]|[^ \t\r\n()]+")


@dataclass(frozen=True, eq=False)
class Tree:
    child_ptr: np.ndarray  # int64 [n + 1]: node v's children are child[child_ptr[v]:child_ptr[v + 1]]
    child: np.ndarray  # int32: children in their order in the text, each before its parent
    words: tuple[str | None, ...]  # the word of each leaf, None at internal nodes
    labels: np.ndarray  # int32 [n]: the node's label, -1 where it is not an integer
    tokens: np.ndarray | None = None  # int32 [n]: word ids after encoding, -1 at internal nodes
    origin: tuple[str | None, int | None] = (None, None)  # (path, line) for error messages
    columns: np.ndarray | None = None  # int32 [n]: where each node's bracket opens in its line (read trees)

    @property
    def num_nodes(self) -> int:
        return len(self.child_ptr) - 1

    @property
    def arity(self) -> np.ndarray:
        """Children per node (0 at leaves)."""
        return np.diff(self.child_ptr)

    @property
    def left(self) -> np.ndarray:
        """Binary trees: each node's first child, -1 at leaves."""
        return self._binary(0)

    @property
    def right(self) -> np.ndarray:
        """Binary trees: each node's second child, -1 at leaves."""
        return self._binary(1)

    def _binary(self, k: int) -> np.ndarray:
        if np.any(self.arity[self.arity > 0] != 2):
            raise ValueError("not a binary tree")
        out = np.full(self.num_nodes, -1, dtype=np.int32)
        internal = self.arity > 0
        out[internal] = self.child[self.child_ptr[:-1][internal] + k]
        return out

    def fail(self, message: str, node: int | None = None) -> DataError:
        path, line = self.origin
        column = None if node is None or self.columns is None else int(self.columns[node])
        return DataError(message, path=path, line=line, column=column)

    def token_fields(self) -> dict[str, list[str]]:
        return {"word": [w for w in self.words if w is not None]}

    def label_texts(self) -> list[str]:
        """The labels a label vocabulary is built from: every node's that is an integer."""
        return [str(k) for k in self.labels.tolist() if k >= 0]

    def encode(self, ids: dict[str, "callable"]) -> "Tree":
        word_id = ids["word"]
        tokens = np.array([-1 if w is None else word_id(w) for w in self.words], dtype=np.int32)
        return replace(self, tokens=tokens)

    def children(self) -> list[list[int]]:
        ptr, child = self.child_ptr.tolist(), self.child.tolist()
        return [child[ptr[v]:ptr[v + 1]] for v in range(self.num_nodes)]

    def depth(self) -> int:
        """Levels from the root to the deepest leaf (a lone leaf has depth 1)."""
        d = [1] * self.num_nodes
        for v, kids in enumerate(self.children()):  # post-order: children are final before their parent
            if kids:
                d[v] = 1 + max(d[u] for u in kids)
        return d[-1]

    def to_ptb(self) -> str:
        """PTB brackets; words are written escaped, so reading them back gives this tree. Iterative:
        trees may be deeper than Python's recursion limit."""
        escape = {v: k for k, v in _PTB_UNESCAPE.items()}
        children, labels = self.children(), self.labels.tolist()
        parts: list[str] = []
        stack: list[int | str] = [self.num_nodes - 1]  # nodes to render, and closing text
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                parts.append(item)
                continue
            label = str(labels[item]) if labels[item] >= 0 else "X"
            if not children[item]:
                word = escape.get(self.words[item], self.words[item].replace("/", "\\/"))
                parts.append(f"({label} {word})")
            else:
                parts.append(f"({label} ")
                stack.append(")")
                for k, u in enumerate(reversed(children[item])):
                    stack += [u] if k == 0 else [" ", u]
        return "".join(parts)


def parse_ptb(line: str, path: str | None = None, lineno: int | None = None) -> Tree:
    """Parse one bracketed tree such as `(3 (2 An) (3 (4 fine) (2 film)))`; a node may have any
    number of children (a model that reads `left` and `right` checks for two when it builds graphs)."""

    def fail(message: str, pos: int) -> DataError:
        return DataError(message, path=path, line=lineno, column=pos + 1)

    tokens = [(m.group(), m.start()) for m in _TOKEN.finditer(line)]
    if not tokens:
        raise fail("empty tree; expected `(label word)` or `(label left right)`", 0)
    arity: list[int] = []
    child: list[int] = []
    words: list[str | None] = []
    labels: list[int] = []
    columns: list[int] = []
    # Each open bracket pushes [position, label, children]; closing it emits a node in post-order.
    stack: list[list] = []
    i = 0
    root_done = False
    while i < len(tokens):
        tok, pos = tokens[i]
        if root_done:
            raise fail(f"unexpected {tok!r} after the end of the tree", pos)
        if tok == "(":
            if i + 1 >= len(tokens) or tokens[i + 1][0] in "()":
                raise fail("expected a label after '('", pos)
            label, label_pos = tokens[i + 1]
            if is_integer(label) and not fits_int32(label):
                raise fail(f"label '{quoted(label)}' is out of range; expected an integer of at most "
                           f"{INT32_MAX}, or a label that is not a number", label_pos)
            stack.append([pos, int(label) if is_integer(label) else -1, []])
            i += 2
            if i < len(tokens) and tokens[i][0] not in "()":
                word, wpos = tokens[i]
                if i + 1 >= len(tokens) or tokens[i + 1][0] != ")":
                    at = tokens[i + 1][1] if i + 1 < len(tokens) else len(line.rstrip())
                    raise fail(f"expected ')' after the word {word!r}", at)
                open_pos, label_value, _ = stack.pop()
                columns.append(open_pos + 1)
                words.append(_PTB_UNESCAPE.get(word, word.replace("\\/", "/")))
                arity.append(0)
                labels.append(label_value)
                node = len(words) - 1
                i += 2
                if stack:
                    stack[-1][2].append(node)
                else:
                    root_done = True
            continue
        if tok == ")":
            if not stack:
                raise fail("unbalanced ')': no open bracket to close", pos)
            open_pos, label_value, children = stack.pop()
            if not children:
                raise fail("expected a word or a bracketed child after the label", open_pos)
            columns.append(open_pos + 1)
            words.append(None)
            arity.append(len(children))
            child += children
            labels.append(label_value)
            if stack:
                stack[-1][2].append(len(words) - 1)
            else:
                root_done = True
            i += 1
            continue
        raise fail(f"unexpected word {tok!r}; words stand right after a label, as in `(2 word)`", pos)
    if stack:
        raise fail(f"unbalanced '(': {len(stack)} bracket{'s' if len(stack) > 1 else ''} "
                   "not closed", stack[-1][0])
    return Tree(_ptr(arity), np.array(child, dtype=np.int32), tuple(words), np.array(labels, dtype=np.int32),
                origin=(path, lineno), columns=np.array(columns, dtype=np.int32))


def _ptr(arity: list[int]) -> np.ndarray:
    ptr = np.zeros(len(arity) + 1, dtype=np.int64)
    np.cumsum(arity, out=ptr[1:])
    return ptr


def merge_same_label(tree: Tree, max_children: int = 4) -> Tree:
    """An n-ary tree from a binarised one: an internal child whose label equals its parent's is
    replaced by its own children, as long as the parent then has at most `max_children`. SST's
    trees (no unary chains: every leaf carries its label) then have 2 to `max_children` children
    a node. Nodes keep post-order; merged nodes are dropped."""
    kids = tree.children()
    labels = tree.labels.tolist()
    merged = [list(k) for k in kids]
    for v, k in enumerate(kids):  # post-order: a child's merges are done before its parent's
        out: list[int] = []
        for j, u in enumerate(k):
            rest = len(k) - j - 1
            if merged[u] and labels[u] == labels[v] and len(out) + len(merged[u]) + rest <= max_children:
                out += merged[u]
                merged[u] = None  # dropped: its parent took its children
            else:
                out.append(u)
        merged[v] = out
    keep = [v for v in range(tree.num_nodes) if merged[v] is not None]
    new_id = {v: i for i, v in enumerate(keep)}
    arity = [len(merged[v]) for v in keep]
    child = [new_id[u] for v in keep for u in merged[v]]
    tokens = None if tree.tokens is None else tree.tokens[keep]
    columns = None if tree.columns is None else tree.columns[keep]
    return Tree(_ptr(arity), np.array(child, dtype=np.int32), tuple(tree.words[v] for v in keep),
                tree.labels[keep], tokens, tree.origin, columns)


def read_trees(path: str | Path, limit: int | None = None) -> list[Tree]:
    """Read one tree a line; blank lines are skipped."""
    return read_records(str(path), parse_ptb, limit, "no trees in the file; expected one bracketed tree a line")


# Synthetic trees. SST (train/dev/test): 37.3 nodes a tree (sd 18.6), so 19.1 leaves (sd 9.3),
# depth 10.9 (sd 3.7), at most 30. A split puts a single word on one side with probability
# 0.55 (English parses lean to one side), else a uniform split point.
_LEAVES_MEAN, _LEAVES_STD = 19.1, 9.3
_EDGE_SPLIT = 0.55
_MAX_DEPTH = 30
_LEXICON = 16_000  # word types, Zipf-distributed


def synthetic_trees(n: int, seed: int = 0, spec=None) -> list[Tree]:
    """`n` seeded random binary trees with SST's size and depth statistics; n-ary ones (merged as
    `merge_same_label` merges SST's) for a spec that reads a node's children as a set."""
    rng = np.random.default_rng(seed)
    nary = spec is not None and any(s.kind == "set" for r in spec.roles.values() for s in r.bind)
    trees = []
    while len(trees) < n:
        leaves = int(gamma_lengths(rng, 1, _LEAVES_MEAN, _LEAVES_STD, 2, 10 ** 6)[0])
        tree = _random_tree(leaves, rng)
        if tree.depth() <= _MAX_DEPTH:
            trees.append(merge_same_label(_inherit_labels(tree, rng)) if nary else tree)
    return trees


# SST's labels run in families: merged as `merge_same_label` does, its test trees have 2, 3 and 4
# children at 53 %, 22 % and 25 % of internal nodes (depth 7.3). An internal node taking its
# parent's label with this probability gives synthetic trees 54 %, 24 %, 22 % (depth 7.4).
_INHERIT_LABEL = 0.4


def _inherit_labels(tree: Tree, rng: np.random.Generator) -> Tree:
    labels = tree.labels.copy()
    kids = tree.children()
    for v in range(tree.num_nodes - 1, -1, -1):  # parents before children
        for u in kids[v]:
            if kids[u] and rng.random() < _INHERIT_LABEL:
                labels[u] = labels[v]
    return replace(tree, labels=labels)


def _random_tree(leaves: int, rng: np.random.Generator) -> Tree:
    arity: list[int] = []
    child: list[int] = []
    words: list[str | None] = []
    next_word = iter(zipf_words(rng, leaves, _LEXICON))

    def build(span: int) -> int:
        if span == 1:
            words.append(next(next_word))
            arity.append(0)
            return len(words) - 1
        if rng.random() < _EDGE_SPLIT:
            k = 1 if rng.random() < 0.8 else span - 1
        else:
            k = int(rng.integers(1, span))
        a = build(k)
        b = build(span - k)
        words.append(None)
        arity.append(2)
        child.extend((a, b))
        return len(words) - 1

    build(leaves)
    labels = rng.integers(0, 5, size=len(words)).astype(np.int32)
    return Tree(_ptr(arity), np.array(child, dtype=np.int32), tuple(words), labels)
