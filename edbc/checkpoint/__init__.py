"""Checkpoints: weights for a model spec, and importing them from PyTorch."""

from .imports import Expr, Mapping, import_weights, parse_mapping, read_mapping, read_state_dict

__all__ = ["Expr", "Mapping", "import_weights", "parse_mapping", "read_mapping", "read_state_dict"]
