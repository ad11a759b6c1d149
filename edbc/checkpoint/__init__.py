"""Checkpoints: a model's weights with its vocabularies and label names, in one safetensors file."""

from .file import (Checkpoint, format_checkpoint, is_checkpoint, load_checkpoint, new_checkpoint, read_checkpoint,
                   save_checkpoint)

__all__ = ["Checkpoint", "format_checkpoint", "is_checkpoint", "load_checkpoint", "new_checkpoint",
           "read_checkpoint", "save_checkpoint"]
