"""Hand-written PyTorch baselines: what a user would write without edbc.

The TreeLSTM, the BiLSTM tagger and the seq2seq model are the PyTorch modules
of `torch_models`; edbc runs the weights imported from their state_dicts
(`make_baseline`). The TreeGRU, the MV-RNN and the child-sum TreeLSTM read the weights edbc draws for
the same spec (`Runtime.weights`). Tree models run one node at a time with
plain torch ops on one-row tensors; chain models use `torch.nn.LSTM` over
packed sequences, the usual way to batch them by hand. Every baseline takes
encoded instances and returns the readout rows in edbc's result order.
"""

from __future__ import annotations

import torch

from ..checkpoint import import_weights, read_mapping
from ..settings import MAPPINGS_DIR
from ..spec.model import ModelSpec
from .torch_models import BiLSTMTagger, Seq2Seq, TreeLSTM, build_module


class _PerNode:
    """A tree model node by node, reading edbc's weights."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.w = weights

    def tree(self, children: list[list[int]], tokens: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, trees) -> torch.Tensor:
        return torch.cat([self.tree(t.children(), t.tokens.tolist()) for t in trees])


class PerNodeTreeGRU(_PerNode):
    """configs/models/treegru.yaml, node by node."""

    def tree(self, children, tokens) -> torch.Tensor:
        w = self.w
        h: list = [None] * len(children)
        for v, kids in enumerate(children):
            if not kids:
                h[v] = torch.tanh(w["E"][tokens[v]].unsqueeze(0) @ w["W_leaf"] + w["b_leaf"])
                continue
            a, b = (h[u] for u in kids)
            z, r_l, r_r = torch.chunk(a @ w["U_l"] + b @ w["U_r"] + w["b_gate"], 3, dim=1)
            n = torch.tanh((torch.sigmoid(r_l) * a) @ w["V_l"] + (torch.sigmoid(r_r) * b) @ w["V_r"] + w["b_cand"])
            h[v] = n + torch.sigmoid(z) * (a + b - n)
        return torch.log_softmax(h[-1] @ w["W_out"] + w["b_out"], dim=1)


class PerNodeMVRNN(_PerNode):
    """configs/models/mvrnn.yaml, node by node."""

    def tree(self, children, tokens) -> torch.Tensor:
        w = self.w
        n = w["W_l"].shape[0]
        vec: list = [None] * len(children)
        mat: list = [None] * len(children)
        for v, kids in enumerate(children):
            if not kids:
                vec[v] = w["E"][tokens[v]]
                mat[v] = w["EM"][tokens[v]].reshape(n, n)
                continue
            a, b = kids
            vec[v] = torch.tanh((mat[b] @ vec[a]) @ w["W_l"] + (mat[a] @ vec[b]) @ w["W_r"] + w["b"])
            mat[v] = w["WM_l"] @ mat[a] + w["WM_r"] @ mat[b]
        return torch.log_softmax(vec[-1] @ w["W_out"] + w["b_out"], dim=0).unsqueeze(0)


class PerNodeChildSumTreeLSTM(_PerNode):
    """configs/models/childsum_treelstm.yaml, node by node, as DGL's TreeLSTM tutorial writes it: a node
    sums its children's states, and each child's memory passes its own forget gate."""

    def tree(self, children, tokens) -> torch.Tensor:
        w = self.w
        h: list = [None] * len(children)
        c: list = [None] * len(children)
        for v, kids in enumerate(children):
            if kids:
                hs = torch.cat([h[u] for u in kids])
                fc = torch.sigmoid(hs @ w["U_f"] + w["b_f"]) * torch.cat([c[u] for u in kids])
                i, o, u = torch.chunk(hs.sum(0, keepdim=True) @ w["U_iou"] + w["b_iou"], 3, dim=1)
                c[v] = torch.sigmoid(i) * torch.tanh(u) + fc.sum(0, keepdim=True)
            else:
                i, o, u = torch.chunk(w["E"][tokens[v]].unsqueeze(0) @ w["W_leaf"] + w["b_leaf"], 3, dim=1)
                c[v] = torch.sigmoid(i) * torch.tanh(u)
            h[v] = torch.sigmoid(o) * torch.tanh(c[v])
        return torch.log_softmax(h[-1] @ w["W_out"] + w["b_out"], dim=1)


# Model -> (label, baseline): a PyTorch module of `torch_models` (its weights imported into edbc's
# through its mapping), or a class reading edbc's weights.
BASELINES = {
    "treelstm": ("PyTorch per node", TreeLSTM),
    "treegru": ("PyTorch per node", PerNodeTreeGRU),
    "mvrnn": ("PyTorch per node", PerNodeMVRNN),
    "childsum_treelstm": ("PyTorch per node", PerNodeChildSumTreeLSTM),
    "bilstm_tagger": ("torch.nn.LSTM packed", BiLSTMTagger),
    "lstm_seq2seq": ("torch.nn.LSTM packed", Seq2Seq),
}


def make_baseline(spec: ModelSpec, weights: dict[str, torch.Tensor], seed: int = 0):
    """The baseline of `spec`'s model as a function of encoded instances, computing the same model
    as `weights` (a runtime's parameters, on its device). A module baseline is built from `seed`
    and its state_dict imported into `weights`, replacing them (the runtime sees the change)."""
    _, baseline = BASELINES[spec.name]
    if not issubclass(baseline, torch.nn.Module):
        return baseline(weights)
    module = build_module(spec, seed)
    mapping = read_mapping(MAPPINGS_DIR / f"{spec.name}.yaml")
    imported = import_weights(spec, module.state_dict(), mapping, source=f"{baseline.__name__}.state_dict()")
    device = next(iter(weights.values())).device
    weights.update({name: value.to(device) for name, value in imported.items()})
    module.to(device).eval()

    def run(instances: list) -> torch.Tensor:
        with torch.no_grad():
            return module(instances)
    return run
