"""Bundled models written as plain PyTorch modules, the way a PyTorch user writes them.

Each module names and lays out its parameters its own way (`nn.Linear` stores
[out, in], `nn.LSTM` and `nn.LSTMCell` stack gates i, f, g, o in rows and keep
two biases); `configs/mappings/<model>.yaml` says how its state_dict becomes
the parameters of `configs/models/<model>.yaml`, for `edbc.checkpoint.import_weights`.
The benchmark's PyTorch baselines for these models are these modules, with
edbc's weights imported from them, so the two compute the same model.

`forward` takes encoded instances (token ids filled in) and returns the
readout rows in edbc's result order: a tree's root, a sentence's tokens, a
lattice's nodes after the start node, one instance after another.
`TreeLSTM.nodes` gives every node's rows instead, as edbc's readout moved to
`nodes` does (the training benchmark's loss at every node).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from ..spec.model import ModelSpec


class TreeLSTM(nn.Module):
    """configs/models/treelstm.yaml: the binary (N-ary, N = 2) TreeLSTM of Tai et al., run node by
    node. A leaf's gates i, o, u come from its word; an internal node's gates i, f_l, f_r, o, u from
    one linear layer over its children's states [h_l, h_r]."""

    def __init__(self, vocab: int, embed: int, hidden: int, classes: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.leaf = nn.Linear(embed, 3 * hidden)
        self.node = nn.Linear(2 * hidden, 5 * hidden)
        self.out = nn.Linear(hidden, classes)

    def states(self, tree) -> list[torch.Tensor]:
        """Each node's state h `[1, hidden]`, in node order (post-order: the root last)."""
        left, right = tree.left.tolist(), tree.right.tolist()
        # Leaves read only their word: all of them at once; then the internal nodes one by one.
        leaves = np.flatnonzero(tree.left < 0)
        words = torch.as_tensor(tree.tokens[leaves], dtype=torch.long, device=self.out.weight.device)
        i, o, u = torch.chunk(self.leaf(self.embedding(words)), 3, dim=1)
        leaf_c = torch.sigmoid(i) * torch.tanh(u)
        leaf_h = torch.sigmoid(o) * torch.tanh(leaf_c)
        h: list = [None] * len(left)
        c: list = [None] * len(left)
        for k, v in enumerate(leaves.tolist()):
            h[v], c[v] = leaf_h[k:k + 1], leaf_c[k:k + 1]
        for v in range(len(left)):
            if left[v] >= 0:
                a, b = left[v], right[v]
                i, f_l, f_r, o, u = torch.chunk(self.node(torch.cat([h[a], h[b]], dim=1)), 5, dim=1)
                c[v] = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(f_l) * c[a] + torch.sigmoid(f_r) * c[b]
                h[v] = torch.sigmoid(o) * torch.tanh(c[v])
        return h

    def tree(self, tree) -> torch.Tensor:
        """The root's log-probabilities `[1, classes]`."""
        return torch.log_softmax(self.out(self.states(tree)[-1]), dim=1)

    def forward(self, trees: list) -> torch.Tensor:
        return torch.cat([self.tree(t) for t in trees])

    def nodes(self, trees: list) -> torch.Tensor:
        """Every node's log-probabilities `[nodes, classes]`, tree by tree in node order: the rows of
        edbc's readout at `nodes` (`edbc.train.with_readout_at`), to train with a loss at every node."""
        return torch.log_softmax(self.out(torch.cat([h for t in trees for h in self.states(t)])), dim=1)


def _pack(token_lists: list, embedding: nn.Embedding):
    """Embedded sentences packed for an `nn.LSTM`, and their lengths."""
    device = embedding.weight.device
    lengths = torch.tensor([len(t) for t in token_lists])
    padded = pad_sequence([torch.as_tensor(t, dtype=torch.long, device=device) for t in token_lists],
                          batch_first=True)
    return pack_padded_sequence(embedding(padded), lengths, batch_first=True, enforce_sorted=False), lengths


def _valid(padded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rows of a [B, T, ...] tensor at valid positions, sequence by sequence."""
    mask = torch.arange(padded.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return padded[mask.to(padded.device)]


class BiLSTMTagger(nn.Module):
    """configs/models/bilstm_tagger.yaml: one bidirectional `nn.LSTM` over packed sentences, a tag
    layer over both directions' states."""

    def __init__(self, vocab: int, embed: int, hidden: int, tags: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, sentences: list) -> torch.Tensor:
        """Each token's tag log-probabilities `[tokens, tags]`, sentence by sentence."""
        packed, lengths = _pack([s.tokens for s in sentences], self.embedding)
        states, _ = self.lstm(packed)
        states, _ = pad_packed_sequence(states, batch_first=True)
        return torch.log_softmax(self.out(_valid(states, lengths)), dim=1)


class Seq2Seq(nn.Module):
    """configs/models/lstm_seq2seq.yaml: an `nn.LSTM` encoder and an `nn.LSTM` decoder started from
    its final state, over packed sentences (teacher forcing)."""

    def __init__(self, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.source_embedding = nn.Embedding(vocab, embed)
        self.target_embedding = nn.Embedding(vocab, embed)
        self.encoder = nn.LSTM(embed, hidden, batch_first=True)
        self.decoder = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, pairs: list) -> torch.Tensor:
        """Each target token's word log-probabilities `[tokens, vocab]`, pair by pair."""
        source, _ = _pack([p.source_tokens for p in pairs], self.source_embedding)
        _, state = self.encoder(source)
        target, lengths = _pack([p.target_tokens for p in pairs], self.target_embedding)
        states, _ = self.decoder(target, state)
        states, _ = pad_packed_sequence(states, batch_first=True)
        return torch.log_softmax(self.out(_valid(states, lengths)), dim=1)


class LatticeLSTM(nn.Module):
    """configs/models/lattice_lstm.yaml: an `nn.LSTMCell` per character arc, another per word arc,
    each from the state of the arc's source node; the word arcs entering a node are folded into
    its state one by one, character arc first, by a gate over [state so far, arc]."""

    def __init__(self, vocab: int, embed: int, hidden: int, tags: int):
        super().__init__()
        self.char_embedding = nn.Embedding(vocab, embed)
        self.word_embedding = nn.Embedding(vocab, embed)
        self.char_cell = nn.LSTMCell(embed, hidden)
        self.word_cell = nn.LSTMCell(embed, hidden)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, tags)

    def lattice(self, lat) -> torch.Tensor:
        """The states `[nodes - 1, hidden]` of nodes 1, 2, ... (node 0 starts from zeros)."""
        device = self.gate.weight.device
        zeros = torch.zeros(1, self.char_cell.hidden_size, device=device)
        h, c = [zeros] * lat.num_nodes, [zeros] * lat.num_nodes
        tokens = torch.as_tensor(lat.tokens, dtype=torch.long, device=device)
        src = lat.arc_src.tolist()
        # Arcs come by target node, each node's character arc first, then its word arcs.
        bounds = np.searchsorted(lat.arc_dst, np.arange(lat.num_nodes + 1)).tolist()
        for node in range(1, lat.num_nodes):
            first, end = bounds[node], bounds[node + 1]
            prev = src[first]
            acc_h, acc_c = self.char_cell(self.char_embedding(tokens[first:first + 1]), (h[prev], c[prev]))
            if end > first + 1:
                words = range(first + 1, end)
                arc_h, arc_c = self.word_cell(self.word_embedding(tokens[first + 1:end]),
                                              (torch.cat([h[src[a]] for a in words]),
                                               torch.cat([c[src[a]] for a in words])))
                for k in range(end - first - 1):
                    ah, ac = arc_h[k:k + 1], arc_c[k:k + 1]
                    g = torch.sigmoid(self.gate(torch.cat([acc_h, ah], dim=1)))
                    acc_h, acc_c = g * acc_h + (1 - g) * ah, g * acc_c + (1 - g) * ac
            h[node], c[node] = acc_h, acc_c
        return torch.cat(h[1:])

    def forward(self, lattices: list) -> torch.Tensor:
        """Each node's tag log-probabilities `[nodes, tags]` (all but the start node), lattice by lattice."""
        return torch.log_softmax(self.out(torch.cat([self.lattice(lat) for lat in lattices])), dim=1)


# Model -> its module class; the constructor's arguments are dimensions of the spec, by name.
TORCH_MODELS: dict[str, type[nn.Module]] = {
    "treelstm": TreeLSTM,
    "bilstm_tagger": BiLSTMTagger,
    "lstm_seq2seq": Seq2Seq,
    "lattice_lstm": LatticeLSTM,
}


def build_module(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """The module of `spec`'s model with `spec`'s dimensions, its weights drawn from `seed`
    (torch's global generator is left as it was)."""
    cls = TORCH_MODELS[spec.name]
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(*(spec.dims[n] for n in names))
