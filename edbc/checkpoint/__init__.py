"""Checkpoints: a model's weights with its vocabularies and label names, in one safetensors file;
and importing weights from a PyTorch state_dict."""

from .file import (Checkpoint, check_checkpoint, format_checkpoint, is_checkpoint, load_checkpoint, new_checkpoint,
                   read_checkpoint,
                   save_checkpoint)
from .imports import Expr, Mapping, import_weights, parse_mapping, read_mapping, read_state_dict

__all__ = ["Checkpoint", "check_checkpoint", "format_checkpoint", "is_checkpoint", "load_checkpoint", "new_checkpoint",
           "read_checkpoint", "save_checkpoint", "Expr", "Mapping", "import_weights", "parse_mapping",
           "read_mapping", "read_state_dict"]
