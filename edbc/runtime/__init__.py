"""The runtime: batched execution of compiled mini-batches with torch, and the unbatched reference."""

from .executor import Executable, Runtime, resolve_device
from .kernels import Kernel

__all__ = ["Runtime", "Executable", "resolve_device", "Kernel"]
