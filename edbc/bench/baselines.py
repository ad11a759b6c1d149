"""Hand-written PyTorch baselines: what a user would write without edbc.

`PerNodeTreeLSTM` runs the binary TreeLSTM of `configs/models/treelstm.yaml`
one tree node at a time with plain torch ops on one-row tensors, reading the
same weights as edbc, so outputs can be compared as well as timed.
"""

from __future__ import annotations

import torch


class PerNodeTreeLSTM:
    def __init__(self, weights: dict[str, torch.Tensor]):
        self.w = weights

    def tree(self, left, right, tokens) -> torch.Tensor:
        """Root log-probabilities `[1, classes]` of one tree given in post-order."""
        w = self.w
        h: list = [None] * len(left)
        c: list = [None] * len(left)
        for v in range(len(left)):
            if left[v] < 0:
                x = w["E"][tokens[v]].unsqueeze(0)
                i, o, u = torch.chunk(x @ w["W_leaf"] + w["b_leaf"], 3, dim=1)
                c[v] = torch.sigmoid(i) * torch.tanh(u)
            else:
                a, b = left[v], right[v]
                gates = h[a] @ w["U_l"] + h[b] @ w["U_r"] + w["b_node"]
                i, f_l, f_r, o, u = torch.chunk(gates, 5, dim=1)
                c[v] = (torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(f_l) * c[a]
                        + torch.sigmoid(f_r) * c[b])
            h[v] = torch.sigmoid(o) * torch.tanh(c[v])
        return torch.log_softmax(h[-1] @ w["W_out"] + w["b_out"], dim=1)

    def __call__(self, trees) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.tree(t.left.tolist(), t.right.tolist(), t.tokens.tolist())
                              for t in trees])
