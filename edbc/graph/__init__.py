"""The dataflow graph IR: build (cell level), lower (op level), verify, print."""

from .build import build_graph
from .ir import CELL, DAG, OP, Graph, NodeType
from .lower import graph_at, lower_to_ops
from .printer import format_graph
from .verify import verify_graph

__all__ = ["build_graph", "lower_to_ops", "graph_at", "verify_graph", "format_graph", "Graph", "NodeType",
           "CELL", "OP", "DAG"]
