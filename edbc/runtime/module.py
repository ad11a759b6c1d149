"""A runtime's weights as a `torch.nn.Module`, so that `torch.optim` trains them unchanged."""

from __future__ import annotations

import torch


class WeightsModule(torch.nn.Module):
    """The weights of a `Runtime` as `nn.Parameter`s, shared with it: what an optimizer updates in
    place is what the runtime's next run reads. Calling it on a prepared mini-batch (`Executable`)
    returns its results as a node of the autograd graph."""

    def __init__(self, runtime):
        super().__init__()
        # A list, not a ParameterDict: parameter names may hold dots (an ONNX cell's `node.W`).
        self.names = list(runtime.weights)
        self.weights = torch.nn.ParameterList()
        for name, w in runtime.weights.items():
            p = w if isinstance(w, torch.nn.Parameter) else torch.nn.Parameter(w.detach())
            self.weights.append(p)
            runtime.weights[name] = p

    def named_weights(self) -> dict[str, torch.nn.Parameter]:
        """The parameters by the spec's names."""
        return dict(zip(self.names, self.weights))

    def forward(self, executable) -> torch.Tensor:
        return executable.forward()
