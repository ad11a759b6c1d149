"""Batching schedules: policies over the graph IR, the lower bound, a verifier and a printer."""

from .analysis import depth, lower_bound
from .frontier import frontier
from .ir import Schedule, format_schedule, verify_schedule
from .policies import POLICIES, schedule

__all__ = ["POLICIES", "schedule", "Schedule", "verify_schedule", "format_schedule", "lower_bound",
           "depth", "frontier"]
