"""Materialise a model's parameters as torch tensors: given values, or drawn from their seeds."""

from __future__ import annotations

import torch

from ..spec.model import GIVEN, ModelSpec, ParamSpec


def init_param(p: ParamSpec) -> torch.Tensor:
    """Given values as they are; else drawn on the CPU in fp32, so every device gets the same numbers."""
    if p.init == GIVEN:
        return torch.tensor(p.values, dtype=torch.float32)
    g = torch.Generator().manual_seed(p.seed)
    if p.init == "zeros":
        return torch.zeros(p.shape)
    if p.init == "ones":
        return torch.ones(p.shape)
    if p.init == "normal":
        return torch.randn(p.shape, generator=g) * p.scale
    if p.init == "uniform":
        bound = p.scale
    else:  # xavier (Glorot) uniform over the last two dimensions
        fan_in, fan_out = (p.shape[-2], p.shape[-1]) if len(p.shape) >= 2 else (p.shape[0], p.shape[0])
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
    return (torch.rand(p.shape, generator=g) * 2 - 1) * bound


def init_weights(spec: ModelSpec, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return {name: init_param(p).to(device) for name, p in spec.params.items()}
