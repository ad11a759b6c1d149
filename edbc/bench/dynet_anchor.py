"""DyNet anchors: TreeLSTM, lattice LSTM and BiLSTM tagger written with DyNet's own API.

DyNet reads its autobatching setting once, at import, so each setting runs in
a process of its own:

    python -m edbc.bench.dynet_anchor --model treelstm --autobatch 1 --batch-size 64 \\
        --data ../shared/data/sst/test.txt --minibatches 8 --passes 2 --weights W.npz --dump OUT.npy

It times whole mini-batches — a new computation graph, its construction from
the instances, and the forward pass — as DyNet users run them, and prints one
JSON object. Weights come from the same spec as edbc's (passed as an .npz of
edbc's parameters), so the outputs it dumps for the first mini-batch can be
compared with edbc's.

With `--train` it times SGD steps instead (`edbc bench --train`), from an edbc
checkpoint (weights, vocabularies and label names), with a loss at every node:

    python -m edbc.bench.dynet_anchor --train --model treelstm --batch-size 25 \
        --data ../shared/data/sst/train.txt --limit 200 --minibatches 8 --passes 4 --checkpoint C.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

MODELS = ("treelstm", "lattice_lstm", "bilstm_tagger")


def _model_classes(dy):
    """The three models, defined once `dynet` is imported with its settings."""

    def split(g, parts: int, size: int):
        return [dy.pick_range(g, k * size, (k + 1) * size) for k in range(parts)]

    class Params:
        def __init__(self, weights: dict[str, np.ndarray], hidden: int):
            self.model = dy.ParameterCollection()
            self.hidden = hidden
            self.p = {}
            for name, value in weights.items():
                if name.startswith("E"):  # embedding tables: one row a token
                    self.p[name] = self.model.lookup_parameters_from_numpy(value)
                elif value.ndim == 2:  # our [in, out] is DyNet's [out, in]
                    self.p[name] = self.model.parameters_from_numpy(np.ascontiguousarray(value.T))
                else:
                    self.p[name] = self.model.parameters_from_numpy(value)

    def lstm_cell(e, W, U, b, x, h, c, hidden):
        terms = [e[b], e[W], x] + ([e[U], h] if h is not None else [])
        i, f, o, u = split(dy.affine_transform(terms), 4, hidden)
        c_new = dy.cmult(dy.logistic(i), dy.tanh(u))
        if c is not None:
            c_new = c_new + dy.cmult(dy.logistic(f), c)
        return dy.cmult(dy.logistic(o), dy.tanh(c_new)), c_new

    class TreeLSTM(Params):
        def run(self, trees, every_node: bool = False) -> list:
            """The root's log-probabilities of each tree; with `every_node`, every node's, in node order."""
            e, hid = self.p, self.hidden
            outs = []
            for t in trees:
                left, right, tokens = t.left.tolist(), t.right.tolist(), t.tokens.tolist()
                h: list = [None] * len(left)
                c: list = [None] * len(left)
                for v in range(len(left)):
                    if left[v] < 0:
                        x = dy.lookup(e["E"], tokens[v])
                        i, o, u = split(dy.affine_transform([e["b_leaf"], e["W_leaf"], x]), 3, hid)
                        c[v] = dy.cmult(dy.logistic(i), dy.tanh(u))
                    else:
                        a, b = left[v], right[v]
                        g = dy.affine_transform([e["b_node"], e["U_l"], h[a], e["U_r"], h[b]])
                        i, f_l, f_r, o, u = split(g, 5, hid)
                        c[v] = (dy.cmult(dy.logistic(i), dy.tanh(u)) + dy.cmult(dy.logistic(f_l), c[a])
                                + dy.cmult(dy.logistic(f_r), c[b]))
                    h[v] = dy.cmult(dy.logistic(o), dy.tanh(c[v]))
                outs += [dy.log_softmax(dy.affine_transform([e["b_out"], e["W_out"], h[v]]))
                         for v in (range(len(left)) if every_node else [len(left) - 1])]
            return outs

    class BiLSTMTagger(Params):
        def run(self, sentences, every_node: bool = True) -> list:  # a row per token, always
            e, hid = self.p, self.hidden
            outs = []
            for s in sentences:
                xs = [dy.lookup(e["E"], t) for t in s.tokens.tolist()]
                fwd, h, c = [], None, None
                for x in xs:
                    h, c = lstm_cell(e, "Wf", "Uf", "bf", x, h, c, hid)
                    fwd.append(h)
                bwd, h, c = [], None, None
                for x in reversed(xs):
                    h, c = lstm_cell(e, "Wb", "Ub", "bb", x, h, c, hid)
                    bwd.append(h)
                bwd.reverse()
                outs += [dy.log_softmax(dy.affine_transform([e["b_out"], e["O_f"], hf, e["O_b"], hb]))
                         for hf, hb in zip(fwd, bwd)]
            return outs

    class LatticeLSTM(Params):
        def run(self, lattices, every_node: bool = True) -> list:  # a row per node but the start, always
            e, hid = self.p, self.hidden
            outs = []
            for lat in lattices:
                h: list = [None] * lat.num_nodes
                c: list = [None] * lat.num_nodes
                arcs = list(zip(lat.arc_src.tolist(), lat.arc_dst.tolist(), lat.arc_char.tolist(),
                                lat.tokens.tolist()))
                k = 0
                for node in range(1, lat.num_nodes):
                    while k < len(arcs) and arcs[k][1] == node:  # character arc first, then words
                        src, _, is_char, token = arcs[k]
                        table, W, U, b = ("Ec", "Wc", "Uc", "bc") if is_char else ("Ew", "Ww", "Uw", "bw")
                        ah, ac = lstm_cell(e, W, U, b, dy.lookup(e[table], token), h[src], c[src], hid)
                        if h[node] is None:
                            h[node], c[node] = ah, ac
                        else:
                            g = dy.logistic(dy.affine_transform([e["b_g"], e["G_acc"], h[node], e["G_arc"], ah]))
                            c[node] = ac + dy.cmult(g, c[node] - ac)
                            h[node] = ah + dy.cmult(g, h[node] - ah)
                        k += 1
                    outs.append(dy.log_softmax(dy.affine_transform([e["b_out"], e["W_out"], h[node]])))
            return outs

    return {"treelstm": TreeLSTM, "bilstm_tagger": BiLSTMTagger, "lattice_lstm": LatticeLSTM}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--autobatch", type=int, default=1, help="0 none, 1 agenda, 2 depth")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--data", default=None, help="data file (default: synthetic instances)")
    parser.add_argument("--limit", type=int, default=None, help="instances to read or generate")
    parser.add_argument("--minibatches", type=int, default=8)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--weights", help=".npz of edbc's parameters for the model (forward)")
    parser.add_argument("--dump", default=None, help="write the first mini-batch's outputs here (.npy)")
    parser.add_argument("--train", action="store_true", help="time SGD steps instead of forward passes")
    parser.add_argument("--checkpoint", help="with --train: an edbc checkpoint (weights, vocabularies, labels)")
    parser.add_argument("--lr", type=float, default=0.05, help="with --train: SGD's learning rate")
    parser.add_argument("--serve", action="store_true",
                        help="with --train: after the warm-up epoch, train one epoch per line read on stdin")
    args = parser.parse_args()
    if (args.checkpoint if args.train else args.weights) is None:
        parser.error("--train needs --checkpoint" if args.train else "--weights is required")

    import dynet_config
    dynet_config.set(mem=1024, random_seed=1, autobatch=args.autobatch)
    import dynet as dy

    (train if args.train else forward)(args, dy)


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def forward(args, dy) -> None:
    """Time forward passes of whole mini-batches; print one JSON object."""
    from ..api import load_data, load_spec
    from .suite import full_minibatches
    from ..settings import MODELS_DIR

    spec, _ = load_spec(MODELS_DIR / f"{args.model}.yaml")
    data = load_data(spec, args.data, args.limit)
    batches = full_minibatches(data.instances, args.batch_size)[: args.minibatches]
    with np.load(args.weights) as f:
        net = _model_classes(dy)[args.model]({k: f[k] for k in f.files}, spec.dims["hidden"])

    def once(mb) -> list:
        dy.renew_cg()
        outs = net.run(mb)
        dy.forward(outs)
        return outs

    if args.dump:
        np.save(args.dump, np.stack([o.npvalue() for o in once(batches[0])]))
    for mb in batches:
        once(mb)
    times = []
    for _ in range(args.passes):
        for mb in batches:
            t0 = time.perf_counter()
            once(mb)
            times.append((time.perf_counter() - t0) * 1e3)
    _emit({"model": args.model, "autobatch": args.autobatch, "batch_size": args.batch_size,
           "minibatches": len(batches), "samples": len(times), "ms": statistics.median(times)})


def train(args, dy) -> None:
    """Time SGD steps: per mini-batch a new graph, the model's rows at every node (a tree's readout moved
    to its nodes, as edbc trains it), the mean negative log-likelihood of the labelled rows (the summed
    loss over the mini-batch, over its row count: the loss edbc and the PyTorch modules train on),
    `backward()` and `SimpleSGDTrainer.update()`. The first epoch warms up; its first loss (before any
    update) is reported, to compare with the other systems'. Each step's ms are [forward (graph
    building included), backward, update]. With `--serve` the timed epochs are asked for on stdin, one
    line each, and answered with a JSON line each, so that a caller can interleave them with others."""
    from ..api import load_data, load_spec
    from ..checkpoint import read_checkpoint
    from ..settings import MODELS_DIR
    from ..train import readout_targets, with_readout_at
    from .suite import full_minibatches

    spec = with_readout_at(load_spec(MODELS_DIR / f"{args.model}.yaml")[0], "nodes")
    ckpt = read_checkpoint(args.checkpoint)
    data = load_data(spec, args.data, args.limit, vocabs=ckpt.vocabs)
    batches = full_minibatches(data.instances, args.batch_size)[: args.minibatches]
    targets = [np.concatenate(readout_targets(spec, mb, ckpt.labels)).tolist() for mb in batches]
    net = _model_classes(dy)[args.model]({k: v.numpy() for k, v in ckpt.weights.items()}, spec.dims["hidden"])
    trainer = dy.SimpleSGDTrainer(net.model, learning_rate=args.lr)
    trainer.set_clip_threshold(0)  # plain SGD, as torch.optim.SGD's (DyNet clips gradients at norm 5 by default)

    def step(mb, ys: list[int]) -> tuple[float, list[float]]:
        t0 = time.perf_counter()
        dy.renew_cg()
        outs = net.run(mb, every_node=True)
        if len(outs) != len(ys):
            raise RuntimeError(f"{len(outs)} rows, {len(ys)} targets")
        rows = [-dy.pick(o, y) for o, y in zip(outs, ys) if y >= 0]
        loss = dy.esum(rows) * (1.0 / len(rows))
        value = loss.value()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        trainer.update()
        t3 = time.perf_counter()
        return value, [(t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3]

    def epoch() -> list[tuple[float, list[float]]]:
        return [step(mb, ys) for mb, ys in zip(batches, targets)]

    first = epoch()
    _emit({"ready": True, "first_loss": first[0][0], "minibatches": len(batches)})
    if args.serve:
        for _ in sys.stdin:
            _emit({"steps": [ms for _, ms in epoch()]})
        return
    steps = [ms for _ in range(args.passes) for _, ms in epoch()]
    _emit({"model": args.model, "autobatch": args.autobatch, "batch_size": args.batch_size,
           "minibatches": len(batches), "samples": len(steps), "ms": statistics.median(sum(s) for s in steps),
           "phases_ms": {k: statistics.median(s[i] for s in steps) for i, k in enumerate(PHASES)}})


PHASES = ("forward", "backward", "update")  # what each training step's ms are, in order


if __name__ == "__main__":
    main()
