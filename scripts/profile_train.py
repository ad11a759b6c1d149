"""Where edbc's training step goes, per mini-batch: the workloads of `edbc bench --train`, one edbc
configuration each, its step split into parts by timers wrapped around the runtime's functions (the
runtime itself is unchanged; the timers cost about 1 us a call).

    python scripts/profile_train.py [--models treelstm,bilstm_tagger] [--memory none] [--epochs 6]

Parts, in ms per mini-batch (median over the timed steps) and % of the step:

    forward   refresh            Runtime.refresh after each update: kernels rebound to the new weights
                                 (their stacked weights), folded tables remade where folded
              kernel replay      the cells' kernels, batch by batch, no autograd
              gathers, loop      the rest of Executable.run: index_select of gathered operands, dispatch
              loss               nll_loss over the results
    backward  outer autograd     loss.backward() outside the plan (nll, the plan node's bookkeeping)
              setup              derived tables made under autograd, kernels bound to leaves
              recompute          each batch's kernel run again with autograd on
              per-batch autograd torch.autograd.backward of each batch's outputs
              scatter, loop      the rest of Executable.backward: gradient arenas made, gathers again,
                                 input gradients added into the gradient arenas (views, index_add_),
                                 the Python of the batch loop
              leaves             the constants' gradients taken back to the weights (one backward)
              rebind             kernels bound to the plain weights again
    update    optimizer          SGD's step

Then `torch.profiler` over one more epoch: the self CPU time of torch's ops in groups (% of the
profiled time; the profiler's own cost inflates the many small calls).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from edbc.bench import train_suite  # noqa: E402
from edbc.bench.suite import full_minibatches  # noqa: E402
from edbc.runtime import executor, kernels  # noqa: E402
from edbc.train import loop  # noqa: E402

PARTS = [("forward", "refresh"), ("forward", "kernel replay"), ("forward", "gathers, loop"),
         ("forward", "loss"), ("backward", "outer autograd"), ("backward", "setup"), ("backward", "recompute"),
         ("backward", "per-batch autograd"), ("backward", "scatter, loop"), ("backward", "leaves"),
         ("backward", "rebind"), ("update", "optimizer")]


# torch.profiler event names by group; an event in none of them counts as "other".
OP_GROUPS = {
    "matmul (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm"),
    "elementwise, forward and backward": ("aten::mul", "aten::sigmoid", "aten::tanh", "aten::addcmul", "aten::add",
                                          "aten::sub", "aten::sigmoid_backward", "aten::tanh_backward",
                                          "aten::_log_softmax", "aten::_log_softmax_backward_data",
                                          "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::sum", "aten::neg",
                                          "aten::rsub", "aten::div"),
    "zero-filled gradients, accumulated (fill_, zeros, add_, copy_)": ("aten::fill_", "aten::zero_", "aten::zeros",
                                                                       "aten::add_", "aten::copy_", "aten::zeros_like"),
    "gathers and scatters (index_select, index_add_)": ("aten::index_select", "aten::index_add_",
                                                        "aten::scatter_add_", "aten::index_select_backward"),
    "views, allocation": ("aten::slice", "aten::as_strided", "aten::empty", "aten::t", "aten::transpose",
                          "aten::view", "aten::unflatten", "aten::expand", "aten::detach", "aten::select",
                          "aten::narrow", "aten::empty_strided", "aten::alias", "aten::_reshape_alias",
                          "aten::reshape", "aten::flatten", "aten::unsqueeze", "aten::cat", "aten::split",
                          "aten::chunk", "aten::stack", "aten::clone", "aten::empty_like", "aten::resize_",
                          "aten::slice_backward", "detach", "aten::_to_copy", "aten::to", "aten::result_type"),
}


def op_groups(events) -> dict[str, float]:
    """Self CPU time (s) per group; Python and autograd-engine frames (the plan function, backward
    nodes, AccumulateGrad) count as "Python, autograd engine"."""
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        name = e.key
        group = next((g for g, names in OP_GROUPS.items() if name in names), None)
        if group is None:
            python = ("_PlanFunction" in name or name.endswith("Backward0") or name.endswith("Backward1")
                      or "autograd::" in name or "AccumulateGrad" in name)
            group = "Python, autograd engine" if python else "other"
        groups[group] += e.self_cpu_time_total / 1e6
    return groups


class Timers:
    """Seconds per part of the current step; wrappers installed over the runtime's functions."""

    def __init__(self):
        self.step: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.in_backward = False
        self.autograd: list[float] = []  # durations of autograd.backward calls inside Executable.backward
        self.kernel_calls = 0

    def add(self, part: str, seconds: float) -> None:
        self.step[part] += seconds
        self.calls[part] += 1

    def install(self) -> None:
        t = self

        def timed(owner, name: str, part_of):
            original = getattr(owner, name)

            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    part = part_of(args, kwargs)
                    if part is not None:
                        t.add(part, time.perf_counter() - t0)
            setattr(owner, name, wrapper)
            return original

        timed(executor.Runtime, "refresh", lambda a, k: None if t.in_backward else "refresh")
        timed(executor.Runtime, "bound", lambda a, k: None if not t.in_backward else
              "bound" if len(a) > 1 or k else "rebind")
        timed(kernels.Kernel, "__call__", lambda a, k: "recompute" if torch.is_grad_enabled() else "kernel replay")
        timed(kernels.Kernel, "bind_leaves", lambda a, k: "bind")
        timed(kernels.Kernel, "bind", lambda a, k: "rebind" if t.in_backward else None)
        timed(executor.Executable, "run", lambda a, k: "run")
        timed(loop, "loss_of", lambda a, k: "loss")

        original_backward = executor.Executable._backward

        def plan_backward(self, grad, noises):
            t.in_backward = True
            t.autograd = []
            t0 = time.perf_counter()
            try:
                return original_backward(self, grad, noises)
            finally:
                t.add("plan backward", time.perf_counter() - t0)
                t.in_backward = False
                if t.autograd:  # the last call takes the constants' gradients back to the weights
                    t.add("leaves", t.autograd[-1])
                    t.add("per-batch autograd", sum(t.autograd[:-1]))
        executor.Executable._backward = plan_backward

        autograd_backward = torch.autograd.backward

        def backward(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return autograd_backward(*args, **kwargs)
            finally:
                if t.in_backward:
                    t.autograd.append(time.perf_counter() - t0)
        torch.autograd.backward = backward

    def parts(self, forward: float, backward: float, update: float) -> dict[str, float]:
        """The step's parts (seconds), the rests computed from the measured totals."""
        s = self.step
        plan = s["plan backward"]
        inside = s["bound"] + s["bind"] + s["recompute"] + s["per-batch autograd"] + s["leaves"] + s["rebind"]
        setup = s["bound"] + s["bind"]  # "scatter, loop" is what no timer inside the backward covers
        return {
            "refresh": s["refresh"], "kernel replay": s["kernel replay"],
            "gathers, loop": s["run"] - s["refresh"] - s["kernel replay"], "loss": s["loss"],
            "outer autograd": backward - plan, "setup": setup, "recompute": s["recompute"],
            "per-batch autograd": s["per-batch autograd"], "scatter, loop": plan - inside,
            "leaves": s["leaves"], "rebind": s["rebind"], "optimizer": update,
            "unattributed forward": forward - s["run"] - s["loss"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="treelstm,bilstm_tagger")
    parser.add_argument("--memory", default="none")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs after the warm-up")
    parser.add_argument("--max-minibatches", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    timers = Timers()
    timers.install()
    for w in train_suite.TRAIN_WORKLOADS:
        if w.model not in args.models.split(","):
            continue
        size = max(w.batch_sizes)
        s = train_suite.setup(w, size * args.max_minibatches)
        batches = full_minibatches(s.instances, size)[:args.max_minibatches]
        trainer = train_suite.EdbcTrainer(s.spec, s.ckpt, batches, None, args.memory, "cell")
        per_step: dict[str, list[float]] = defaultdict(list)
        calls = defaultdict(list)
        for _ in range(args.epochs):
            for index in range(len(trainer.batches)):
                _, executable, targets, _ = trainer.batches.get(index)
                timers.step.clear()
                timers.calls.clear()
                t0 = time.perf_counter()
                trainer.optimizer.zero_grad(set_to_none=True)
                loss = loop.loss_of(executable.forward(), targets)
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                trainer.optimizer.step()
                t3 = time.perf_counter()
                for part, seconds in timers.parts(t1 - t0, t2 - t1, t3 - t2).items():
                    per_step[part].append(seconds * 1e3)
                per_step["step"].append((t3 - t0) * 1e3)
                calls["recompute"].append(timers.calls["recompute"])
        step = statistics.median(per_step["step"])
        batches_per_step = statistics.median(calls["recompute"])
        print(f"\n{w.model} B={size}, {trainer.model.compiler.policy.name}+{args.memory}: "
              f"{step:.2f} ms a step (median of {len(per_step['step'])}), {batches_per_step:.0f} batches")
        print("| phase | part | ms / mini-batch | % of step | us / batch |")
        print("|---|---|---:|---:|---:|")
        for phase, part in PARTS + [("forward", "unattributed forward")]:
            ms = statistics.median(per_step[part])
            print(f"| {phase} | {part} | {ms:.2f} | {100 * ms / step:.0f} % | {1e3 * ms / batches_per_step:.0f} |")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            trainer.epoch()
        groups = op_groups(prof.key_averages())
        total = sum(groups.values())
        print("\n| torch.profiler group (self CPU) | % |\n|---|---:|")
        for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"| {group} | {100 * seconds / total:.0f} % |")
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
        print("top ops:", ", ".join(f"{e.key} {100 * e.self_cpu_time_total / 1e6 / total:.0f} % ({e.count} calls)"
                                    for e in top))


if __name__ == "__main__":
    main()
