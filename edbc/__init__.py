"""edbc: compile dynamic neural networks into batched execution plans, and run them."""

__version__ = "0.1.0"
