"""The benchmark suite: each bundled model on its data, every policy, edbc end to end.

A workload is a model with its default data (real where `../shared/data` has it,
else synthetic with the same statistics) and batch size. `measure` times
whole mini-batches end to end — graph build + schedule + memory layout +
execution — after one warm-up pass, and reports medians.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..api import compile_batch, load_data, load_spec, minibatches
from ..runtime import Runtime
from ..schedule import lower_bound
from ..settings import MODELS_DIR, SHARED_DATA


@dataclass(frozen=True)
class Workload:
    model: str
    data: str | None  # path under ../shared/data, None for synthetic
    batch_size: int


# Held-out splits, as in the evaluation of method.md §5 (the tagger at B=32, as DyNet's figure).
WORKLOADS = (
    Workload("treelstm", "sst/test.txt", 64),
    Workload("treegru", "sst/test.txt", 64),
    Workload("mvrnn", "sst/test.txt", 64),
    Workload("bilstm_tagger", "wikiner/dev.txt", 32),
    Workload("lstm_seq2seq", None, 64),
    Workload("lattice_lstm", "lattice/test.txt", 64),
    Workload("lattice_gru", "lattice/test.txt", 64),
)


@dataclass
class Measurement:
    model: str
    data: str
    policy: str
    granularity: str
    batch_size: int
    minibatches: int
    batches: float  # per mini-batch, mean
    lower_bound: float
    ms: float  # median ms per mini-batch, end to end
    phases: dict[str, float]  # median ms of each phase


def full_minibatches(instances: list, size: int) -> list[list]:
    """Only full mini-batches, so that every sample times the same amount of work."""
    return [mb for mb in minibatches(instances, size) if len(mb) == size]


def load_workload(w: Workload, batch_size: int | None = None, max_minibatches: int | None = None):
    """The model, where its data came from, and its full mini-batches."""
    spec, _ = load_spec(MODELS_DIR / f"{w.model}.yaml")
    path = SHARED_DATA / w.data if w.data else None
    size = batch_size or w.batch_size
    real = path is not None and path.exists()
    data = load_data(spec, str(path) if real else None, limit=None if real else 8 * size)
    return spec, data.source, full_minibatches(data.instances, size)[:max_minibatches]


def measure(spec, source: str, batches: list, policy: str, granularity: str, runtime: Runtime,
            passes: int = 2) -> Measurement:
    def once(mb) -> dict[str, float]:
        phases: dict[str, float] = {}
        c = compile_batch(spec, mb, policy, granularity, timings=phases)
        t0 = time.perf_counter()
        runtime.prepare(c.graph, c.schedule, c.layout).run()
        phases["execute"] = time.perf_counter() - t0
        return phases

    for mb in batches:
        once(mb)
    samples = [once(mb) for _ in range(passes) for mb in batches]
    compiled = [compile_batch(spec, mb, policy, granularity) for mb in batches]
    return Measurement(
        model=spec.name, data=Path(source).name if source != "synthetic" else source, policy=policy,
        granularity=granularity, batch_size=len(batches[0]), minibatches=len(batches),
        batches=statistics.mean(c.schedule.num_batches for c in compiled),
        lower_bound=statistics.mean(lower_bound(c.graph) for c in compiled),
        ms=statistics.median(sum(s.values()) * 1e3 for s in samples),
        phases={k: statistics.median(s[k] * 1e3 for s in samples) for k in samples[0]},
    )
