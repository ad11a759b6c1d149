"""Export the binary TreeLSTM internal cell as ONNX: configs/cells/treelstm_node.onnx.

A developer tool, not part of edbc's runtime (which needs only the `onnx`
package to import the file): it needs torch and `onnxscript` (`pip install -e .[onnx]`), which
`torch.onnx.export` uses to write the graph. Run from the repository root:

    .venv/bin/python scripts/export_onnx_cell.py [--hidden 128] [--seed 0] [-o PATH]

The module computes what the `node` cell of configs/models/treelstm.yaml
computes; its weights are drawn from `--seed`, so the file is the same on
every run. configs/models/treelstm_onnx.yaml uses it.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "configs" / "cells" / "treelstm_node.onnx"


class TreeLSTMNode(nn.Module):
    """Binary TreeLSTM internal node (Tai et al., 2015): children (h_l, c_l), (h_r, c_r) -> (h, c)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.U_l = nn.Linear(hidden, 5 * hidden)  # its bias is the cell's bias
        self.U_r = nn.Linear(hidden, 5 * hidden, bias=False)

    def forward(self, h_l, c_l, h_r, c_r):
        i, f_l, f_r, o, u = torch.chunk(self.U_l(h_l) + self.U_r(h_r), 5, dim=-1)
        c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(f_l) * c_l + torch.sigmoid(f_r) * c_r
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def export(path: Path, hidden: int, seed: int) -> None:
    torch.manual_seed(seed)
    module = TreeLSTMNode(hidden).eval()
    example = tuple(torch.zeros(2, hidden) for _ in range(4))
    batch = torch.export.Dim("batch")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(module, example, str(path), dynamo=True, verbose=False,
                          input_names=["h_l", "c_l", "h_r", "c_r"], output_names=["h", "c"],
                          dynamic_shapes=tuple({0: batch} for _ in range(4)), external_data=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args()
    logging.getLogger("torch").setLevel(logging.ERROR)
    export(args.output, args.hidden, args.seed)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
