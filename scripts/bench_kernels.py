"""Cell kernels: the replayed internal schedule against running the cell op by op.

For each cell of a model and each batch size k, the time of one kernel call
that writes its outputs into arena rows, three ways: op by op (one torch call
per op, the cell unbatched inside, as before internal schedules existed),
replaying the internal schedule with the `none` layout (program order in every
internal batch) and with the `pq` layout. Timings interleave the variants in
short bursts and keep the fastest burst, so that other load on the machine
matters less. Prints a markdown table.

    python scripts/bench_kernels.py [--model treelstm] [--k 64,2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edbc.api import load_spec  # noqa: E402
from edbc.cell import compile_cell  # noqa: E402
from edbc.runtime import Runtime  # noqa: E402
from edbc.settings import MODELS_DIR  # noqa: E402


def best_us(fns: dict, bursts: int = 60, calls: int = 50) -> dict[str, float]:
    best = {name: float("inf") for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(bursts):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="treelstm")
    parser.add_argument("--k", default="64,2", help="batch sizes (cell calls per kernel call)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec, _ = load_spec(MODELS_DIR / f"{args.model}.yaml")
    shapes = {n: p.shape for n, p in spec.params.items()}

    print(f"{args.model}: one kernel call writing its outputs, microseconds (fastest burst), "
          f"{args.threads} thread(s)\n")
    print("| cell | k | internal batches | op by op | replay, none | replay, pq | pq vs op by op |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, program in spec.cells.items():
        runtime = Runtime(spec)  # binds each compiled cell's weights, derived tables included
        kernels = {"op by op": runtime.kernel(compile_cell(program, shapes, "none", batch_ops=False)),
                   "none": runtime.kernel(compile_cell(program, shapes, "none")),
                   "pq": runtime.kernel(compile_cell(program, shapes, "pq"))}
        steps = f"{len(kernels['pq'].plan.steps)} of {len(kernels['op by op'].plan.steps)} ops"
        for k in (int(x) for x in args.k.split(",")):
            g = torch.Generator().manual_seed(0)
            inputs = [torch.randint(0, 2, (k,), generator=g) if v.dtype == "token"
                      else torch.randn((k,) + v.shape, generator=g) for v in program.inputs]
            outs = [torch.empty((k,) + program.values[v].shape) for v in program.outputs]
            t = best_us({n: (lambda kern=kern: kern(inputs, outs)) for n, kern in kernels.items()})
            print(f"| {name} | {k} | {steps} | {t['op by op']:.1f} | {t['none']:.1f} | {t['pq']:.1f} "
                  f"| {t['op by op'] / t['pq']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
