"""Training through compiled plans: targets of a readout's rows, the metrics a model is judged by,
and the loop of `edbc train` / `edbc eval`."""

from .loop import OPTIMIZERS, Batches, Epoch, TrainSettings, score, train
from .targets import evaluate, readout_targets, with_readout_at

__all__ = ["evaluate", "readout_targets", "with_readout_at", "OPTIMIZERS", "Batches", "Epoch", "TrainSettings",
           "score", "train"]
