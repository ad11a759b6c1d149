"""Training through compiled plans: targets of a readout's rows, and the metrics a model is judged by."""

from .targets import evaluate, readout_targets, with_readout_at

__all__ = ["evaluate", "readout_targets", "with_readout_at"]
