"""Plan files: compiled mini-batches (graph, schedule, layout), saved and loaded."""

from .plan import CompiledBatch, Plan, format_plan, load_plan, save_plan, verify_plan

__all__ = ["CompiledBatch", "Plan", "format_plan", "load_plan", "save_plan", "verify_plan"]
