"""Hand-written PyTorch baselines: what a user would write without edbc.

Each reads the weights edbc draws for the same spec (`Runtime.weights`), so
outputs are compared before anything is timed. Tree models run one node at a
time with plain torch ops on one-row tensors; chain models use
`torch.nn.LSTM` over packed sequences, the usual way to batch them by hand.
Every `__call__` takes encoded instances and returns the readout rows in
edbc's result order.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence


class PerNodeTreeLSTM:
    """configs/models/treelstm.yaml, node by node."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.w = weights

    def tree(self, left, right, tokens) -> torch.Tensor:
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
            return torch.cat([self.tree(t.left.tolist(), t.right.tolist(), t.tokens.tolist()) for t in trees])


class PerNodeTreeGRU(PerNodeTreeLSTM):
    """configs/models/treegru.yaml, node by node."""

    def tree(self, left, right, tokens) -> torch.Tensor:
        w = self.w
        h: list = [None] * len(left)
        for v in range(len(left)):
            if left[v] < 0:
                h[v] = torch.tanh(w["E"][tokens[v]].unsqueeze(0) @ w["W_leaf"] + w["b_leaf"])
                continue
            a, b = h[left[v]], h[right[v]]
            z, r_l, r_r = torch.chunk(a @ w["U_l"] + b @ w["U_r"] + w["b_gate"], 3, dim=1)
            n = torch.tanh((torch.sigmoid(r_l) * a) @ w["V_l"] + (torch.sigmoid(r_r) * b) @ w["V_r"] + w["b_cand"])
            h[v] = n + torch.sigmoid(z) * (a + b - n)
        return torch.log_softmax(h[-1] @ w["W_out"] + w["b_out"], dim=1)


class PerNodeMVRNN(PerNodeTreeLSTM):
    """configs/models/mvrnn.yaml, node by node."""

    def tree(self, left, right, tokens) -> torch.Tensor:
        w = self.w
        n = w["W_l"].shape[0]
        vec: list = [None] * len(left)
        mat: list = [None] * len(left)
        for v in range(len(left)):
            if left[v] < 0:
                vec[v] = w["E"][tokens[v]]
                mat[v] = w["EM"][tokens[v]].reshape(n, n)
                continue
            a, b = left[v], right[v]
            vec[v] = torch.tanh((mat[b] @ vec[a]) @ w["W_l"] + (mat[a] @ vec[b]) @ w["W_r"] + w["b"])
            mat[v] = w["WM_l"] @ mat[a] + w["WM_r"] @ mat[b]
        return torch.log_softmax(vec[-1] @ w["W_out"] + w["b_out"], dim=0).unsqueeze(0)


def _lstm_gates_to_torch(weight: torch.Tensor) -> torch.Tensor:
    """Our gate columns (i, f, o, u) as torch.nn.LSTM's rows (i, f, g, o)."""
    i, f, o, u = torch.chunk(weight, 4, dim=-1)
    return torch.cat([i, f, u, o], dim=-1).T.contiguous()


def _set_lstm(lstm: torch.nn.LSTM, suffix: str, w_ih, w_hh, bias) -> None:
    getattr(lstm, f"weight_ih_l0{suffix}").copy_(_lstm_gates_to_torch(w_ih))
    getattr(lstm, f"weight_hh_l0{suffix}").copy_(_lstm_gates_to_torch(w_hh))
    getattr(lstm, f"bias_ih_l0{suffix}").copy_(_lstm_gates_to_torch(bias.unsqueeze(0)).squeeze(1))
    getattr(lstm, f"bias_hh_l0{suffix}").zero_()


def _pack(token_lists: list[torch.Tensor], table: torch.Tensor):
    lengths = torch.tensor([len(t) for t in token_lists])
    padded = pad_sequence(token_lists, batch_first=True)
    x = torch.nn.functional.embedding(padded, table)
    return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), lengths


def _valid(padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rows of a [B, T, ...] tensor at valid positions, sequence by sequence."""
    mask = torch.arange(padded.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return padded[mask]


class PackedBiLSTMTagger:
    """configs/models/bilstm_tagger.yaml with one bidirectional torch.nn.LSTM over packed sentences."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.w = weights
        hidden = weights["Uf"].shape[0]
        self.lstm = torch.nn.LSTM(weights["E"].shape[1], hidden, batch_first=True, bidirectional=True)
        with torch.no_grad():
            _set_lstm(self.lstm, "", weights["Wf"], weights["Uf"], weights["bf"])
            _set_lstm(self.lstm, "_reverse", weights["Wb"], weights["Ub"], weights["bb"])
        self.out = torch.cat([weights["O_f"], weights["O_b"]], dim=0)

    def __call__(self, sentences) -> torch.Tensor:
        with torch.no_grad():
            packed, lengths = _pack([torch.as_tensor(s.tokens, dtype=torch.long) for s in sentences], self.w["E"])
            states, _ = self.lstm(packed)
            states, _ = pad_packed_sequence(states, batch_first=True)
            return torch.log_softmax(_valid(states, lengths) @ self.out + self.w["b_out"], dim=1)


class PackedSeq2Seq:
    """configs/models/lstm_seq2seq.yaml with torch.nn.LSTM encoder and decoder over packed sentences."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.w = weights
        hidden = weights["Ue"].shape[0]
        self.encoder = torch.nn.LSTM(weights["E_src"].shape[1], hidden, batch_first=True)
        self.decoder = torch.nn.LSTM(weights["E_tgt"].shape[1], hidden, batch_first=True)
        with torch.no_grad():
            _set_lstm(self.encoder, "", weights["We"], weights["Ue"], weights["be"])
            _set_lstm(self.decoder, "", weights["Wd"], weights["Ud"], weights["bd"])

    def __call__(self, pairs) -> torch.Tensor:
        with torch.no_grad():
            src, _ = _pack([torch.as_tensor(p.source_tokens, dtype=torch.long) for p in pairs], self.w["E_src"])
            _, state = self.encoder(src)
            tgt, lengths = _pack([torch.as_tensor(p.target_tokens, dtype=torch.long) for p in pairs], self.w["E_tgt"])
            states, _ = self.decoder(tgt, state)
            states, _ = pad_packed_sequence(states, batch_first=True)
            return torch.log_softmax(_valid(states, lengths) @ self.w["W_out"] + self.w["b_out"], dim=1)


# Model -> (label, baseline class).
BASELINES = {
    "treelstm": ("PyTorch per node", PerNodeTreeLSTM),
    "treegru": ("PyTorch per node", PerNodeTreeGRU),
    "mvrnn": ("PyTorch per node", PerNodeMVRNN),
    "bilstm_tagger": ("torch.nn.LSTM packed", PackedBiLSTMTagger),
    "lstm_seq2seq": ("torch.nn.LSTM packed", PackedSeq2Seq),
}
