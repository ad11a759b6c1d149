"""Memory planning: buffer layout from consecutive-ones constraints."""

from .layout import Layout, format_layout, verify_layout
from .planner import PLANNERS

__all__ = ["Layout", "PLANNERS", "verify_layout", "format_layout"]
