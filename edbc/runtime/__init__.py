"""The runtime: batched execution of plans with torch, and the unbatched reference."""

from .executor import Executable, Runtime, resolve_device
from .kernels import OP_IMPLS, Kernel

__all__ = ["Runtime", "Executable", "resolve_device", "OP_IMPLS", "Kernel"]
