"""Binary trees: the PTB-bracket reader (SST) and a synthetic generator with SST's statistics.

A `Tree` stores its nodes in post-order (children before parents, the root
last) as numpy arrays, so that a mini-batch's graph is built by concatenation.
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
    left: np.ndarray  # int32 [n]: left child of each node, -1 at leaves
    right: np.ndarray  # int32 [n]
    words: tuple[str | None, ...]  # the word of each leaf, None at internal nodes
    labels: np.ndarray  # int32 [n]: the node's label, -1 where it is not an integer
    tokens: np.ndarray | None = None  # int32 [n]: word ids after encoding, -1 at internal nodes

    @property
    def num_nodes(self) -> int:
        return len(self.left)

    def token_fields(self) -> dict[str, list[str]]:
        return {"word": [w for w in self.words if w is not None]}

    def label_texts(self) -> list[str]:
        """The labels a label vocabulary is built from: every node's that is an integer."""
        return [str(k) for k in self.labels.tolist() if k >= 0]

    def encode(self, ids: dict[str, "callable"]) -> "Tree":
        word_id = ids["word"]
        tokens = np.array([-1 if w is None else word_id(w) for w in self.words], dtype=np.int32)
        return replace(self, tokens=tokens)

    def depth(self) -> int:
        """Levels from the root to the deepest leaf (a lone leaf has depth 1)."""
        left, right = self.left.tolist(), self.right.tolist()
        d = [1] * self.num_nodes
        for v in range(self.num_nodes):  # post-order: children are final before their parent
            if left[v] >= 0:
                d[v] = 1 + max(d[left[v]], d[right[v]])
        return d[-1]

    def to_ptb(self) -> str:
        """PTB brackets; words are written escaped, so reading them back gives this tree. Iterative:
        trees may be deeper than Python's recursion limit."""
        escape = {v: k for k, v in _PTB_UNESCAPE.items()}
        left, right, labels = self.left.tolist(), self.right.tolist(), self.labels.tolist()
        parts: list[str] = []
        stack: list[int | str] = [self.num_nodes - 1]  # nodes to render, and closing text
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                parts.append(item)
                continue
            label = str(labels[item]) if labels[item] >= 0 else "X"
            if left[item] < 0:
                word = escape.get(self.words[item], self.words[item].replace("/", "\\/"))
                parts.append(f"({label} {word})")
            else:
                parts.append(f"({label} ")
                stack += [")", right[item], " ", left[item]]
        return "".join(parts)


def parse_ptb(line: str, path: str | None = None, lineno: int | None = None) -> Tree:
    """Parse one bracketed binary tree such as `(3 (2 An) (3 (4 fine) (2 film)))`."""

    def fail(message: str, pos: int) -> DataError:
        return DataError(message, path=path, line=lineno, column=pos + 1)

    tokens = [(m.group(), m.start()) for m in _TOKEN.finditer(line)]
    if not tokens:
        raise fail("empty tree; expected `(label word)` or `(label left right)`", 0)
    left: list[int] = []
    right: list[int] = []
    words: list[str | None] = []
    labels: list[int] = []
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
                _, label_value, _ = stack.pop()
                words.append(_PTB_UNESCAPE.get(word, word.replace("\\/", "/")))
                left.append(-1)
                right.append(-1)
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
            if len(children) != 2:
                raise fail(f"node with {len(children)} child{'ren' if len(children) != 1 else ''}; "
                           "binary trees expected (every internal node has exactly two)", open_pos)
            words.append(None)
            left.append(children[0])
            right.append(children[1])
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
    return Tree(np.array(left, dtype=np.int32), np.array(right, dtype=np.int32), tuple(words),
                np.array(labels, dtype=np.int32))


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
    """`n` seeded random binary trees with SST's size and depth statistics."""
    rng = np.random.default_rng(seed)
    trees = []
    while len(trees) < n:
        leaves = int(gamma_lengths(rng, 1, _LEAVES_MEAN, _LEAVES_STD, 2, 10 ** 6)[0])
        tree = _random_tree(leaves, rng)
        if tree.depth() <= _MAX_DEPTH:
            trees.append(tree)
    return trees


def _random_tree(leaves: int, rng: np.random.Generator) -> Tree:
    left: list[int] = []
    right: list[int] = []
    words: list[str | None] = []
    next_word = iter(zipf_words(rng, leaves, _LEXICON))

    def build(span: int) -> int:
        if span == 1:
            words.append(next(next_word))
            left.append(-1)
            right.append(-1)
            return len(words) - 1
        if rng.random() < _EDGE_SPLIT:
            k = 1 if rng.random() < 0.8 else span - 1
        else:
            k = int(rng.integers(1, span))
        a = build(k)
        b = build(span - k)
        words.append(None)
        left.append(a)
        right.append(b)
        return len(words) - 1

    build(leaves)
    labels = rng.integers(0, 5, size=len(words)).astype(np.int32)
    return Tree(np.array(left, dtype=np.int32), np.array(right, dtype=np.int32), tuple(words), labels)
