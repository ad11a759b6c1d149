"""Predictions out: every instance's readout in input order, as JSON lines or safetensors.

`.jsonl`: one object per instance, `{"index": i, "<readout output>": ...}`: one row
(a list of numbers) where the readout reads one node per instance (`at: root`),
else a list of rows, one per node it reads (a token, a lattice node) in node
order. Non-finite numbers are written as null (JSON has no NaN). With
`predict`, `"label"` (or `"labels"`, one per row) holds the argmax's name from
the label vocabulary.

`.safetensors`: `outputs` `[rows, ...]` (every instance's rows, concatenated in
input order), `offsets` int64 `[instances + 1]` (instance i's rows are
`offsets[i]:offsets[i+1]`), with `predict` `predictions` int64 `[rows]`; the
metadata names the format, the model, the readout and the labels (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .artifact import check_output, write_atomic
from .errors import UsageError
from .graph.ir import Graph
from .spec.model import ModelSpec

SUFFIXES = (".jsonl", ".safetensors")
FORMAT = "edbc.outputs"
VERSION = "1.0"


def check_output_path(path: str, inputs: Iterable[str | None]) -> None:
    """Before any work: an output edbc can write, of a format it knows, over none of the inputs."""
    if Path(path).suffix not in SUFFIXES:
        raise UsageError(f"--output: unknown format '{Path(path).suffix or path}'; expected a file ending in "
                         f"{' or '.join(SUFFIXES)}", path=path)
    check_output(path, inputs)


def instance_order(graph: Graph) -> tuple[np.ndarray, list[int]]:
    """The results (graph order) grouped by instance, each instance's in node order: the result
    rows in that order, and where each instance's rows start (and the last ends)."""
    owner = graph.instance[graph.out_node]
    order = np.argsort(owner, kind="stable")
    return order, np.searchsorted(owner[order], np.arange(graph.num_instances + 1)).tolist()


def split_by_instance(graph: Graph, results: torch.Tensor) -> list[torch.Tensor]:
    """A mini-batch's results (graph order) as one tensor of rows per instance, in node order."""
    order, bounds = instance_order(graph)
    rows = results[torch.as_tensor(order, device=results.device)].cpu()
    return [rows[bounds[i]:bounds[i + 1]] for i in range(graph.num_instances)]


def readout_name(spec: ModelSpec) -> str:
    readout = spec.cell_of("readout")
    return readout.values[readout.outputs[0]].name


def readout_shape(spec: ModelSpec) -> tuple[int, ...]:
    """The shape of one result row (a vector of class scores, usually)."""
    readout = spec.cell_of("readout")
    return tuple(readout.values[readout.outputs[0]].shape)


def _one_row(spec: ModelSpec) -> bool:
    return spec.roles["readout"].at == "root"


def write_outputs(path: str, spec: ModelSpec, rows: list[torch.Tensor], labels: tuple[str, ...], predict: bool,
                  inputs: Iterable[str | None] = ()) -> None:
    """Write every instance's rows (`rows[i]`: instance i's) to `path`, atomically."""
    if Path(path).suffix == ".safetensors":
        data = _safetensors(spec, rows, labels, predict)
    else:
        data = _jsonl(spec, rows, labels, predict)
    write_atomic(path, data, inputs)


def _jsonl(spec: ModelSpec, rows: list[torch.Tensor], labels: tuple[str, ...], predict: bool) -> bytes:
    name = readout_name(spec)
    one = _one_row(spec)
    lines = []
    for i, r in enumerate(rows):
        values = r.numpy()
        # %.9g keeps every float32 exactly; JSON has no NaN or infinity.
        text = np.char.mod("%.9g", values.reshape(len(values), -1)) if values.size else np.zeros((len(values), 0))
        text = np.where(np.isfinite(values.reshape(len(values), -1)), text, "null")
        row_texts = ["[" + ",".join(t) + "]" for t in text.tolist()]
        shown = row_texts[0] if one and len(row_texts) == 1 else "[" + ",".join(row_texts) + "]"
        line = f'{{"index":{i},{json.dumps(name)}:{shown}'
        if predict:
            names = [labels[k] for k in _argmax(r).tolist()]
            line += f',"label":{json.dumps(names[0])}' if one and len(names) == 1 else f',"labels":{json.dumps(names)}'
        lines.append(line + "}\n")
    return "".join(lines).encode()


def _safetensors(spec: ModelSpec, rows: list[torch.Tensor], labels: tuple[str, ...], predict: bool) -> bytes:
    from safetensors.torch import save

    counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    outputs = torch.cat(rows) if rows else torch.zeros(0)
    tensors = {"outputs": outputs.contiguous(), "offsets": offsets}
    if predict:
        tensors["predictions"] = _argmax(outputs)
    metadata = {"format": FORMAT, "version": VERSION, "model": spec.name, "readout": readout_name(spec),
                "labels": json.dumps(list(labels), ensure_ascii=False)}
    return save(tensors, metadata)


def _argmax(rows: torch.Tensor) -> torch.Tensor:
    """Each row's best class (a NaN row gives whichever torch picks)."""
    return rows.reshape(len(rows), -1).argmax(dim=1) if len(rows) else torch.zeros(0, dtype=torch.int64)
