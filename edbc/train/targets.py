"""Targets and metrics: the class ids a readout's rows should score, and how well they do.

A readout reads some of a structure's nodes (`readout.at`); `split_by_instance`
gives each instance's rows in node order. `readout_targets` gives each
instance's class ids aligned with those rows (-1 where a row has no label), by
a rule per structure kind:

    tree     root: the root's label;  nodes: every node's, post-order (root last)
    chain    nodes: every token's tag
    lattice  nodes: every node's tag but node 0's (the start node);  last: the last node's

`evaluate` scores log-probability rows against such targets: loss and accuracy
over the labelled rows, and the figures each kind is judged by (SST root and
binary accuracy, CoNLL entity F1, lattice node accuracy).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from ..errors import DataError, UsageError, quoted
from ..spec.model import ModelSpec
from ..spec.structure import KINDS, readout_role

NO_LABEL = -1
SST_LABELS = ("0", "1", "2", "3", "4")  # SST's fine-grained sentiments; 2 is neutral
OUTSIDE = "O"  # the tag of tokens outside every entity


def with_readout_at(spec: ModelSpec, at: str) -> ModelSpec:
    """`spec` with its readout reading at `at` (e.g. a tree's `nodes` instead of its `root`, to train
    on every node's label). The readout's bindings must name neighbours that exist there."""
    kind = KINDS[spec.kind]
    places = dict(kind.readout_at)
    if at not in places:
        raise UsageError(f"readout at '{quoted(at)}': not a place of a {spec.kind}; expected one of: "
                         f"{', '.join(places)}")
    readout = spec.roles["readout"]
    if readout.at == at:
        return spec
    role = readout_role(kind, at)
    for source in readout.bind:
        if source.kind == "state" and role.neighbor_roles(source.ref) is None:
            raise UsageError(f"readout at '{at}': the readout binds '{source}', but at {at} its neighbours "
                             f"are: {role.describe_neighbors()}")
    return replace(spec, roles={**spec.roles, "readout": replace(readout, at=at)})


# ----------------------------------------------------------------------------------------------
# Targets

def readout_targets(spec: ModelSpec, instances: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    """Per instance, the int64 class ids (indices into `labels`) of its readout rows, in the order
    `split_by_instance` gives them; -1 where a row has no label. A label missing from `labels` is a
    `DataError`; a structure kind whose data has no labels (seq2seq, dag) a `UsageError`."""
    rule = TARGET_RULES.get(spec.kind)
    if rule is None:
        raise UsageError(f"model '{spec.name}': the data of a {spec.kind} carries no labels to train or "
                         f"evaluate against; labelled kinds are: {', '.join(TARGET_RULES)}")
    at = spec.roles["readout"].at
    if at not in rule:
        raise UsageError(f"model '{spec.name}': its readout reads at '{at}', where a {spec.kind}'s data has "
                         f"no labels; labels are read at: {', '.join(rule)}")
    return rule[at](instances, labels)


def _class_table(values: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    """The class id of each of `values` (integers, -1 for none) by its text's place in `labels`."""
    ids = {name: k for k, name in enumerate(labels)}
    return np.array([NO_LABEL if v < 0 else _class_id(ids, str(v), labels) for v in values.tolist()],
                    dtype=np.int64)


def _class_id(ids: dict[str, int], text: str, labels: tuple[str, ...]) -> int:
    k = ids.get(text)
    if k is None:
        shown = ", ".join(quoted(name, 20) for name in labels[:20]) + (", ..." if len(labels) > 20 else "")
        raise DataError(f"label '{quoted(text)}' is not one of the model's {len(labels)} labels; expected one "
                        f"of: {shown}")
    return k


def _integer_targets(values: np.ndarray, sizes: np.ndarray, labels: tuple[str, ...]) -> list[np.ndarray]:
    """Integer labels (tree labels, lattice tags; -1: none) mapped to class ids through their few
    distinct values, and cut into instances of `sizes` rows."""
    if len(sizes) == 0:
        return []
    distinct, inverse = np.unique(values, return_inverse=True)
    ids = _class_table(distinct, labels)[inverse.reshape(-1)]
    return np.split(ids, np.cumsum(sizes)[:-1])


def _tree_root(trees: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    roots = np.array([t.labels[-1] for t in trees], dtype=np.int64)
    return _integer_targets(roots, np.ones(len(trees), dtype=np.int64), labels)


def _tree_nodes(trees: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    values = np.concatenate([t.labels for t in trees]).astype(np.int64) if trees else np.zeros(0, np.int64)
    return _integer_targets(values, np.array([t.num_nodes for t in trees], dtype=np.int64), labels)


def _chain_nodes(seqs: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    ids = {name: k for k, name in enumerate(labels)}
    out = []
    for s in seqs:
        if s.tags is None:
            out.append(np.full(s.num_nodes, NO_LABEL, dtype=np.int64))
            continue
        row = [ids.get(t, NO_LABEL) for t in s.tags]
        if NO_LABEL in row:
            _class_id(ids, s.tags[row.index(NO_LABEL)], labels)  # raises, naming the tag
        out.append(np.array(row, dtype=np.int64))
    return out


def _lattice_nodes(lattices: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    # The start node has no readout row (nothing enters it), hence no target.
    values = np.concatenate([lat.tags[1:] for lat in lattices]).astype(np.int64) if lattices else np.zeros(0, np.int64)
    return _integer_targets(values, np.array([lat.num_nodes - 1 for lat in lattices], dtype=np.int64), labels)


def _lattice_last(lattices: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    values = np.array([lat.tags[-1] for lat in lattices], dtype=np.int64)
    return _integer_targets(values, np.ones(len(lattices), dtype=np.int64), labels)


TargetRule = Callable[[list, tuple], list]
# Structure kind -> readout `at` -> the targets of its rows. Kinds and places not listed have no labels
# (a chain's `ends` reads one row per sequence, its tags label tokens).
TARGET_RULES: dict[str, dict[str, TargetRule]] = {
    "tree": {"root": _tree_root, "nodes": _tree_nodes},
    "chain": {"nodes": _chain_nodes},
    "lattice": {"nodes": _lattice_nodes, "last": _lattice_last},
}


# ----------------------------------------------------------------------------------------------
# Metrics

def evaluate(spec: ModelSpec, instances: list, rows: list[torch.Tensor], targets: list[np.ndarray],
             labels: tuple[str, ...]) -> dict[str, float | int]:
    """Score per-instance log-probability rows (`rows[i]`: instance i's, `[n_i, classes]`, as
    `split_by_instance` gives them) against `targets` (`readout_targets`).

    Returns a flat dict: `loss` (mean negative log-likelihood) and `accuracy` over the labelled
    rows, counts `instances`, `rows`, `labelled_rows`, and by kind:

    - tree: `root_accuracy` (fine-grained, the root's row); at nodes also `node_accuracy`; with the
      SST labels "0".."4", `binary_root_accuracy` over the `binary_roots` roots not labelled neutral.
    - chain: `token_accuracy`; where the labels are tags (an "O", or B-/I- prefixes) `precision`,
      `recall` and `f1` of entities (CoNLL: a maximal run of one non-O type, B- starting a new one;
      correct when span and type match), with counts `gold_entities`, `predicted_entities`.
    - lattice: `node_accuracy`.

    A ratio whose denominator is 0 is left out (entity precision, recall and F1 are 0 then, as in
    conlleval). Data without a single labelled row is a `DataError`.
    """
    if not (len(instances) == len(rows) == len(targets)):
        raise ValueError(f"{len(instances)} instances, {len(rows)} row blocks and {len(targets)} target "
                         "arrays; expected one of each per instance")
    counts = np.array([len(r) for r in rows], dtype=np.int64)
    bad = [i for i, (r, t) in enumerate(zip(rows, targets)) if len(r) != len(t)]
    if bad:
        i = bad[0]
        raise ValueError(f"instance {i} has {len(rows[i])} rows but {len(targets[i])} targets")
    # Scores only: no gradient, on the CPU where the targets are.
    scores = (torch.cat([r.detach().reshape(len(r), -1) for r in rows]).cpu().float() if rows
              else torch.zeros(0, len(labels)))
    if scores.shape[1] != len(labels):
        raise UsageError(f"the readout gives {scores.shape[1]} values a row; expected one score per label "
                         f"({len(labels)})")
    gold = torch.from_numpy(np.concatenate(targets).astype(np.int64)) if targets else torch.zeros(0, dtype=torch.int64)
    labelled = gold >= 0
    if not bool(labelled.any()):
        raise DataError(f"none of the {len(instances)} instances' {len(gold)} readout rows has a label; "
                        "scoring needs labelled data")
    pred = scores.argmax(dim=1)
    correct = (pred == gold) & labelled
    picked = scores[labelled].gather(1, gold[labelled].unsqueeze(1)).squeeze(1)
    accuracy = float(correct.sum()) / int(labelled.sum())
    out: dict[str, float | int] = {
        "loss": float(-picked.double().mean()),
        "accuracy": accuracy,
        "instances": len(instances),
        "rows": len(gold),
        "labelled_rows": int(labelled.sum()),
    }
    rule = METRIC_RULES.get(spec.kind)
    if rule is not None:
        out.update(rule(_Scored(spec.roles["readout"].at, labels, scores, gold, pred, counts)))
    return out


class _Scored:
    """What the per-kind metrics read: all instances' rows concatenated, and where instances begin."""

    def __init__(self, at: str, labels: tuple[str, ...], scores: torch.Tensor, gold: torch.Tensor,
                 pred: torch.Tensor, counts: np.ndarray):
        self.at, self.labels, self.scores, self.gold, self.pred = at, labels, scores, gold, pred
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.counts = counts

    def accuracy_over(self, index: torch.Tensor) -> tuple[float | None, int]:
        gold, pred = self.gold[index], self.pred[index]
        keep = gold >= 0
        n = int(keep.sum())
        return (float((pred[keep] == gold[keep]).sum()) / n if n else None), n


def _ratio(out: dict, name: str, value: float | None) -> None:
    if value is not None:
        out[name] = value


def _tree_metrics(s: _Scored) -> dict:
    out: dict = {}
    # The root is an instance's last row: its only one at the root, the last in post-order at nodes.
    roots = torch.from_numpy(s.offsets[1:][s.counts > 0] - 1)
    _ratio(out, "root_accuracy", s.accuracy_over(roots)[0])
    if s.at == "nodes":
        _ratio(out, "node_accuracy", s.accuracy_over(torch.arange(len(s.gold)))[0])
    if tuple(s.labels) == SST_LABELS:
        out.update(_binary_roots(s.scores[roots], s.gold[roots]))
    return out


def _binary_roots(scores: torch.Tensor, gold: torch.Tensor) -> dict:
    """SST's binary task read off a fine-grained model: neutral (2) and unlabelled roots are left out;
    0-1 are negative, 3-4 positive, and the model says positive when p(3) + p(4) > p(0) + p(1)."""
    keep = (gold >= 0) & (gold != 2)
    n = int(keep.sum())
    out: dict = {"binary_roots": n}
    if n:
        s = scores[keep].double()
        positive = torch.logsumexp(s[:, [3, 4]], dim=1) > torch.logsumexp(s[:, [0, 1]], dim=1)
        out["binary_root_accuracy"] = float((positive == (gold[keep] >= 3)).sum()) / n
    return out


def _chain_metrics(s: _Scored) -> dict:
    out: dict = {"token_accuracy": s.accuracy_over(torch.arange(len(s.gold)))[0]}
    types = _entity_types(s.labels)
    if types is None:
        return out
    keep = (s.gold >= 0).numpy()
    # Instances start over at their first labelled row (an instance's tags are all there or none).
    starts = np.zeros(len(keep), dtype=bool)
    starts[s.offsets[:-1][s.counts > 0]] = True
    first = starts[keep]
    gold = _entities(s.gold.numpy()[keep], first, *types)
    pred = _entities(s.pred.numpy()[keep], first, *types)
    right = len(gold & pred)
    precision = right / len(pred) if pred else 0.0
    recall = right / len(gold) if gold else 0.0
    out.update(precision=precision, recall=recall,
               f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
               gold_entities=len(gold), predicted_entities=len(pred))
    return out


def _entity_types(labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per class: its entity type's id (-1 for O) and whether it begins an entity (B-); None when the
    labels are not tags (no O, no B-/I- prefix), as a model's class numbers are not."""
    if OUTSIDE not in labels and not any(name[:2] in ("B-", "I-") for name in labels):
        return None
    names: dict[str, int] = {}
    etype = np.array([NO_LABEL if name == OUTSIDE else names.setdefault(
        name[2:] if name[:2] in ("B-", "I-") else name, len(names)) for name in labels], dtype=np.int64)
    begins = np.array([name.startswith("B-") for name in labels], dtype=bool)
    return etype, begins


def _entities(classes: np.ndarray, first: np.ndarray, etype: np.ndarray, begins: np.ndarray) -> set:
    """The entities of a tag sequence (concatenated instances, `first` marking where each begins), as
    (start, end, type) with `end` inclusive: maximal runs of one type, a B- tag starting a new run."""
    t = etype[classes]
    inside = t >= 0
    prev = np.concatenate([[NO_LABEL], t[:-1]])
    start = inside & (first | begins[classes] | (t != prev))
    cont = inside & ~start  # continues the entity of the token before it
    end = inside & ~np.concatenate([cont[1:], [False]])
    s, e = np.flatnonzero(start), np.flatnonzero(end)
    return set(zip(s.tolist(), e.tolist(), t[s].tolist()))


def _lattice_metrics(s: _Scored) -> dict:
    return {"node_accuracy": s.accuracy_over(torch.arange(len(s.gold)))[0]}


# Structure kind -> the figures it is judged by, beside loss and accuracy.
METRIC_RULES: dict[str, Callable[[_Scored], dict]] = {
    "tree": _tree_metrics,
    "chain": _chain_metrics,
    "lattice": _lattice_metrics,
}
