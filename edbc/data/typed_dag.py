"""Bare typed DAGs: a plain text format for studying policies without a model.

    N                     number of nodes
    type n_args a_1 ... a_n   one line per node; arguments are earlier node numbers (0-based)

Type 0 marks an unbatchable node. The result is a `Graph` of granularity "dag".
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..graph.ir import DAG, Graph, NodeType, csr_ptr
from ..inputs import out_of_memory, read_input_text
from ..errors import quoted
from .text import INT32_MAX, fits_int32, is_integer

# The graph holds a type for every id up to the largest one used, so ids are bounded: a type id of
# 2e9 would build 2e9 types. (Ids may exceed the node count: a graph need not use every type.)
MAX_TYPE = 65_535


def parse_typed_dag(text: str, path: str | None = None) -> Graph:
    lines = text.splitlines()

    def fail(lineno: int, message: str):
        raise DataError(message, path=path, line=lineno)

    body = [(i, line.split()) for i, line in enumerate(lines, start=1)]
    body = [(i, f) for i, f in body if f]
    if not body:
        raise DataError("empty graph file; expected the node count on the first line", path=path)
    first_line, first = body[0]
    if len(first) != 1 or not fits_int32(first[0]) or int(first[0]) < 0:
        fail(first_line, f"expected the node count (one integer from 0 to {INT32_MAX}), "
                         f"got '{quoted(' '.join(first))}'")
    n = int(first[0])
    rows = body[1:]
    if len(rows) != n:
        where = rows[n][0] if len(rows) > n else (rows[-1][0] if rows else first_line)
        fail(where, f"the header says {n} nodes but {len(rows)} node lines follow")
    types = np.empty(n, dtype=np.int64)
    counts = np.empty(n, dtype=np.int64)
    args: list[int] = []
    for v, (lineno, f) in enumerate(rows):
        if not all(is_integer(x) for x in f):
            fail(lineno, f"node {v}: expected integers `type n_args arg...`, got '{quoted(' '.join(f))}'")
        if not all(fits_int32(x) for x in f):
            fail(lineno, f"node {v}: '{quoted(' '.join(f))}' holds an integer beyond {INT32_MAX}")
        vals = [int(x) for x in f]
        if len(vals) < 2:
            fail(lineno, f"node {v}: expected `type n_args arg...`")
        t, k = vals[0], vals[1]
        if t < 0:
            fail(lineno, f"node {v}: type {t} is negative; types are integers >= 0 (0 = unbatchable)")
        if t > MAX_TYPE:
            fail(lineno, f"node {v}: type {t} is out of range; types are integers from 0 (unbatchable) "
                         f"to {MAX_TYPE}")
        if k < 0 or len(vals) - 2 != k:
            fail(lineno, f"node {v}: n_args is {k} but {len(vals) - 2} arguments follow")
        for a in vals[2:]:
            if a < 0:
                fail(lineno, f"node {v}: argument {a} is negative; arguments are node numbers")
            if a >= v:
                fail(lineno, f"node {v}: argument {a} is not an earlier node; arguments must refer "
                             "to earlier lines")
        types[v] = t
        counts[v] = k
        args.extend(vals[2:])
    num_types = int(types.max()) + 1 if n else 1
    node_types = tuple(NodeType(f"t{k}", None, batchable=k != 0) for k in range(num_types))
    return Graph(DAG, node_types, types, csr_ptr(counts), np.array(args, dtype=np.int64),
                 np.zeros(len(args)), np.zeros(n + 1), np.zeros(0), np.zeros(n), 1,
                 np.zeros(0), np.zeros(0))


def read_typed_dag(path: str) -> Graph:
    text = read_input_text(path, "graph", DataError)
    try:
        return parse_typed_dag(text, path)
    except MemoryError:
        raise out_of_memory(path) from None


def format_typed_dag(graph: Graph) -> str:
    lines = [str(graph.num_nodes)]
    for v in range(graph.num_nodes):
        a = [u for u, _ in graph.args(v)]
        lines.append(" ".join(map(str, [graph.node_type[v], len(a), *a])))
    return "\n".join(lines) + "\n"

