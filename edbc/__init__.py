"""edbc: compile dynamic neural networks into batched execution plans, and run them.

    model = edbc.load("configs/models/treelstm.yaml", weights="model.safetensors")
    scores = model.predict(["(3 (2 a) (3 (2 good) (2 film)))"])
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `edbc.load` is `edbc.api.load`, imported on first use: torch comes with a model, not with the package.
    if name == "load":
        from .api import load
        return load
    raise AttributeError(f"module 'edbc' has no attribute '{name}'")
