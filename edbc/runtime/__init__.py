"""The runtime: batched execution of plans with torch, and the unbatched reference."""

from .executor import Executable, GatherStats, Runtime, resolve_device
from .kernels import OP_IMPLS, Kernel

__all__ = ["Runtime", "Executable", "GatherStats", "resolve_device", "OP_IMPLS", "Kernel"]
