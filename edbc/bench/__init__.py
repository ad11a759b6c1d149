"""Benchmarks: edbc against hand-written baselines on the same instances and weights."""
