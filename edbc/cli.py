"""The `edbc` command: a thin layer over `edbc.api`.

It parses flags, calls the API and prints. Every `EdbcError` becomes one
line `Error: ...` on stderr and the exit code of its class (see the README).

Importing it loads neither torch nor the compiler: the options' defaults and choices come from
`edbc.settings`, and a command imports `edbc.api` (and `edbc.distributed`) when it runs, so that
`edbc --help` and usage errors answer at once (0.1 s instead of 2 s).
"""

from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from typing import TYPE_CHECKING

import click

from .errors import EXIT_INTERRUPTED, EXIT_USAGE, EXIT_VERIFY, EdbcError, EdbcWarning, UsageError
from .settings import (CELL, CHECK_TOLERANCE, DEFAULT_BATCH_SIZE, DEFAULT_ENCODING, DEFAULT_THREADS, DUMPS, ENCODINGS,
                       GRANULARITIES, OPTIMIZERS, WARM_STARTS, PolicySettings, TrainSettings)

if TYPE_CHECKING:
    from . import api


_MAX_THREADS = 1024
# What every seeded generator takes (numpy's legacy seeding, which training uses, stops at 2^32 - 1).
SEED = click.IntRange(0, 2**32 - 1)


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so that atomic writes remove their temporary file.
    raise KeyboardInterrupt


class _Main(click.Group):
    def main(self, args=None, prog_name=None, **extra):
        signal.signal(signal.SIGTERM, _terminate)
        args = list(args) if args is not None else sys.argv[1:]
        failure = None
        try:
            with warnings.catch_warnings():
                _print_warnings_once()
                # The arguments as given are the context's object: `--nproc` runs them again in every rank.
                code = super().main(args, prog_name or "edbc", standalone_mode=False, obj=args, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            code = 0
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            code = EXIT_USAGE
        except EdbcError as e:
            failure, code = str(e), e.exit_code
        except (click.Abort, KeyboardInterrupt):
            failure, code = "interrupted", EXIT_INTERRUPTED
        # The command is over: a SIGTERM now (a launcher stopping a job's ranks) ends the process quietly.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if failure is not None:
            _fail(failure, code)
        sys.exit(code or 0)


def _print_warnings_once() -> None:
    """Inside `warnings.catch_warnings()`: each distinct `EdbcWarning` of this command becomes one line
    `Warning: ...` on stderr, the first time only; other warnings are shown as Python shows them."""
    seen: set[str] = set()
    python_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, EdbcWarning):
            python_show(message, category, filename, lineno, file, line)
        elif str(message) not in seen:
            from . import distributed

            seen.add(str(message))
            click.echo(f"Warning: {distributed.rank_label()}{message}", err=True)

    warnings.simplefilter("always", EdbcWarning)  # `show` keeps them to once, in every command run
    warnings.showwarning = show


def _fail(message: str, code: int) -> None:
    """Say what failed in one line, unless this is a rank that `--nproc` started: its launcher says it."""
    from . import distributed

    line = distributed.rank_label() + message
    if not distributed.hand_over(line, code):
        click.echo(f"Error: {line}", err=True)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edbc")
def main():
    """Compile dynamic neural networks into batched execution plans, and run them."""


def _set_threads(threads: int) -> None:
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if threads > _MAX_THREADS:  # torch takes a C int and overflows beyond it
        raise UsageError(f"--threads must be at most {_MAX_THREADS}, got {threads}")
    import torch

    torch.set_num_threads(threads)


_nproc_option = click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True, metavar="N",
                             help="Run as N processes on this machine, one job of torch.distributed "
                                  "(torchrun runs one on several machines; README: Several processes).")


def _as_job(nproc: int, hint: str = "") -> int | None:
    """With `--nproc N` (N > 1), this process starts the job's N ranks, each running this command, and
    returns the job's exit code; None when this process does the work (alone, or as a rank)."""
    from . import distributed

    if not distributed.launches(nproc):
        return None
    return distributed.launch(nproc, click.get_current_context().obj, hint)


def _print_report(report: api.RunReport, source: str, as_json: bool) -> int:
    failed = report.check_passed is False
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        d = report.to_json()
        phases = ", ".join(f"{k} {v:.2f}" for k, v in d["phase_ms"].items())
        lines = [
            f"{report.model} on {source}: {report.num_instances} instances, batch size {report.batch_size}, "
            f"policy {report.policy} ({report.granularity} level), memory {report.memory}, "
            f"{report.device}, {report.threads} thread{'s' if report.threads != 1 else ''}"
            + (f", {d['processes']} processes" if d["processes"] > 1 else ""),
            f"  mini-batches       {report.num_minibatches}",
            f"  batches            {report.num_batches} (lower bound {report.lower_bound})",
            *([f"  FSM fallbacks      {report.fsm_fallbacks} (policy file {report.policy_digest[:12]})"]
              if report.policy_digest else []),
            f"  ms per mini-batch  {d['ms_per_minibatch']:.2f} (median; {phases})",
            f"  instances/s        {d['instances_per_s']:.0f}",
            f"  gathers            {report.gathers} ({report.gather_bytes / 2**20:.2f} MiB)",
            *([f"  pq planned         {report.planned} of {report.num_minibatches} mini-batches (planning the "
               "rest would cost more than it saves in one run; `edbc compile` plans every one)"]
              if report.memory == "pq" and report.planned < report.num_minibatches else []),
        ]
        if report.max_abs_error is not None:
            verdict = "failed" if failed else "passed"
            lines.append(f"  check              {verdict}: max |batched - reference| = "
                         f"{report.max_abs_error:.2e} (tolerance {CHECK_TOLERANCE:g})")
        click.echo("\n".join(lines))
    nonfinite = (f"outputs are not finite: {report.nonfinite_outputs} of {report.num_output_values} values "
                 "are NaN or infinite")
    if failed and (report.nonfinite_outputs or report.nonfinite_reference):
        click.echo(f"Error: {nonfinite} (in the reference: {report.nonfinite_reference}); expected finite results",
                   err=True)
    elif failed:
        click.echo(f"Error: batched results differ from the unbatched reference by {report.max_abs_error:.3g} "
                   f"(more than {CHECK_TOLERANCE:g})", err=True)
    elif report.nonfinite_outputs:
        click.echo(f"Warning: {nonfinite}; check the model's parameters and inputs", err=True)
    return EXIT_VERIFY if failed else 0


_model_options = [
    click.option("--data", metavar="PATH", help="Data file read with the model's structure reader "
                                                "(default: synthetic instances)."),
    click.option("--limit", type=int, metavar="N", help="Use at most N instances."),
    click.option("--batch-size", "-b", type=int, metavar="B", help=f"Mini-batch size (default {DEFAULT_BATCH_SIZE})."),
    click.option("--policy", metavar="NAME|PATH",
                 help="Batching policy: eager, depth, agenda, typewise, fsm (the model's shipped policy), "
                      "optimal (exact, small graphs), or a policy file. Default: fsm where a policy is "
                      "shipped for the model and granularity, else agenda."),
    click.option("--granularity", type=click.Choice(GRANULARITIES), help="Graph nodes are cell calls "
                                                                       "(cell, default) or primitive ops (op)."),
    click.option("--memory", metavar="MODE", help="Memory planning: pq (default: PQ-tree layout, operands "
                                                  "as views) or none (arenas in run order)."),
    click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of synthetic data."),
]


def model_options(fn):
    for option in reversed(_model_options):
        fn = option(fn)
    return fn


_device_option = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
_weights_option = click.option("--weights", metavar="CKPT",
                               help="Checkpoint (.safetensors from `edbc init`, `import-weights` or `train`): "
                                    "its weights, vocabularies and label names. Default: the spec's seeded "
                                    "initialisers and hashed vocabularies.")


@main.command()
@click.argument("target", required=False, metavar="[MODEL|PLAN]")
@model_options
@_weights_option
@click.option("--output", metavar="FILE", help="Write every instance's results in input order, atomically: "
                                               ".jsonl (one object per instance) or .safetensors.")
@click.option("--predict", is_flag=True, help="With --output: also the argmax label names.")
@_device_option
@click.option("--check", is_flag=True, help="Compare with the unbatched reference (max abs error <= 1e-4).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--threads", type=int, default=DEFAULT_THREADS, show_default=True, help="Torch CPU threads.")
@click.option("--verify", is_flag=True, help="Run the IR verifiers between passes.")
@_nproc_option
def run(target, data, limit, batch_size, policy, granularity, memory, seed, weights, output, predict, device, check,
        as_json, threads, verify, nproc):
    """Compile and execute mini-batches of MODEL (default: the bundled TreeLSTM on synthetic
    trees), or execute a compiled PLAN."""
    from . import api, distributed

    code = _as_job(nproc)
    if code is not None:
        return code
    _set_threads(threads)
    report, source = api.run_target(target, data, limit, batch_size, policy, granularity, memory, seed, device,
                                    check, verify, weights, output, predict)
    if not distributed.from_environment().leader:
        return 0  # rank 0 reports for every rank
    code = _print_report(report, source, as_json)
    if output is not None:
        click.echo(f"wrote {output}: {report.num_instances} instances", err=True)
    return code


@main.command()
@click.argument("model", required=False)
@click.option("--data", metavar="PATH", help="Training data: the vocabularies and label names are built from it "
                                             "(default: synthetic instances).")
@click.option("--limit", type=int, metavar="N", help="Use at most N instances.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of synthetic data.")
@click.option("--output", "-o", required=True, metavar="CKPT", help="Checkpoint to write (.safetensors, atomically).")
def init(model, data, limit, seed, output):
    """Make a checkpoint of MODEL (default: the bundled TreeLSTM): vocabularies and label names from
    training data, initial weights from the spec's initialisers."""
    from . import api

    ckpt = api.init_checkpoint(model, output, data, limit, seed)
    vocabs = ", ".join(f"{name} {'hashed' if v.hashed else f'{len(v.words) + 1} ids'}" for name, v in ckpt.vocabs.items())
    click.echo(f"wrote {output}: {ckpt.model}, {len(ckpt.weights)} parameters, vocabularies {vocabs or 'none'}, "
               f"{len(ckpt.labels)} labels", err=True)


@main.command(name="import-weights")
@click.argument("model")
@click.argument("state_dict", metavar="STATE_DICT")
@click.option("--map", "mapping", metavar="MAP.yaml", help="Where each parameter comes from: renames, sums, "
                                                          "concatenations, chunks, transposes (default: by name).")
@click.option("--data", metavar="PATH", help="Training data: vocabularies and label names built from it, as "
                                             "`edbc init` builds them.")
@click.option("--vocab", "vocabs", multiple=True, metavar="FIELD=FILE",
              help="A token field's vocabulary: one word a line, the word on line i has id i (0: unknown).")
@click.option("--labels", "labels", metavar="FILE", help="Label names, one a line, class 0 first.")
@click.option("--limit", type=int, metavar="N", help="Use at most N instances of --data.")
@click.option("--output", "-o", required=True, metavar="CKPT", help="Checkpoint to write (.safetensors, atomically).")
def import_weights(model, state_dict, mapping, data, vocabs, labels, limit, output):
    """Make a checkpoint of MODEL from a PyTorch STATE_DICT (torch.save'd, read weights-only; or
    .safetensors)."""
    from . import api

    files = {}
    for entry in vocabs:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--vocab {entry}: expected FIELD=FILE")
        files[name] = path
    ckpt = api.import_checkpoint(model, state_dict, output, mapping, data, files, labels, limit)
    click.echo(f"wrote {output}: {ckpt.model}, {len(ckpt.weights)} parameters from {state_dict}, "
               f"{len(ckpt.labels)} labels", err=True)


@main.command(name="compile")
@click.argument("model")
@model_options
@_weights_option
@click.option("--output", "-o", required=True, metavar="PLAN", help="Plan file to write (atomically).")
@click.option("--dump-after", metavar="PASS",
              help="Print the IR after this pass (the first mini-batch's, and each cell's). The passes: "
                   "README, How it is built; an unknown name gets their list.")
def compile_cmd(model, data, limit, batch_size, policy, granularity, memory, seed, weights, output, dump_after):
    """Compile mini-batches of MODEL into a plan file (the IR verifiers run after every pass). With
    --weights, the tokens are the checkpoint's ids and the plan runs with that checkpoint only."""
    from . import api

    options = api.CompileOptions(policy, granularity or CELL, memory or api.CompileOptions.memory)
    plan = api.compile_to_file(model, output, data, limit, batch_size, options, seed, dump_after, click.echo,
                               weights)
    batches = sum(b.schedule.num_batches for b in plan.batches)
    click.echo(f"wrote {output}: {len(plan.batches)} mini-batches, {plan.num_instances} instances, "
               f"{batches} batches", err=True)


@main.command()
@click.argument("plan_path", metavar="PLAN|CKPT")
@click.option("--dump", type=click.Choice(DUMPS),
              help="Print one IR in full: a mini-batch's graph, schedule or layout, or the compiled cells.")
@click.option("--minibatch", type=int, default=0, show_default=True, help="Which mini-batch --dump prints.")
@click.option("--weights", metavar="CKPT", help="Check that the plan runs with this checkpoint, and summarise it.")
def inspect(plan_path, dump, minibatch, weights):
    """Summarise a plan: nodes, types, batches against the lower bound, sizes, gathers with
    and without memory planning; or a checkpoint: model, parameters, vocabularies, labels."""
    from . import api

    click.echo(api.inspect(plan_path, dump, minibatch, weights))


@main.command(name="schedule")
@click.argument("graph_files", nargs=-1, required=True, metavar="GRAPH_FILE...")
@click.option("--policy", default="agenda", show_default=True, metavar="NAME|PATH",
              help="eager, depth, agenda, typewise, optimal, or a policy file trained with "
                   "`edbc train-policy --graphs`.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a `graphs` list.")
def schedule_cmd(graph_files, policy, as_json):
    """Schedule bare typed DAGs (text: N, then `type n_args args...` a line; type 0 unbatchable)."""
    from . import api

    result = api.schedule_files(list(graph_files), policy)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    for r in result["graphs"]:
        fallbacks = f", {r['fsm_fallbacks']} FSM fallbacks" if result["policy_digest"] else ""
        click.echo(f"{r['file']}: {r['num_nodes']} nodes, {r['num_batches']} batches "
                   f"(lower bound {r['lower_bound']}) with {result['policy']}{fallbacks}")


class _ProgressBar:
    """One line on stderr, redrawn in place; silent when stderr is not a terminal."""

    def __init__(self, label: str):
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int, best: float | None) -> None:
        if not self.enabled:
            return
        filled = int(24 * min(done / total, 1.0))
        best_text = f", best {best:.3f}x lower bound" if best is not None else ""
        click.echo(f"\r{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total} steps{best_text}, "
                   f"{time.perf_counter() - self.start:.0f} s ", nl=False, err=True)

    def close(self) -> None:
        if self.enabled:
            click.echo(err=True)


@main.command(name="train-policy")
@click.argument("inputs", nargs=-1, metavar="[MODEL | --graphs FILE...]")
@click.option("--graphs", "dag_files", is_flag=True, help="The arguments are bare typed DAG files, not a model.")
@click.option("--data", metavar="PATH", help="Training data, read with the model's structure reader "
                                             "(default: synthetic instances).")
@click.option("--heldout", metavar="PATH", multiple=True,
              help="Held-out data that scores the tables (with --graphs: typed DAG files, repeatable). "
                   "Default: the last 10% of the training instances; with --graphs, the training graphs.")
@click.option("--limit", type=int, metavar="N", help="Use at most N training instances (synthetic: how many).")
@click.option("--batch-size", "-b", type=int, default=DEFAULT_BATCH_SIZE, show_default=True,
              help="Mini-batch size of the training graphs.")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default=CELL, show_default=True)
@click.option("--encoding", type=click.Choice(ENCODINGS), default=DEFAULT_ENCODING, show_default=True,
              help="Frontier state: types by ready count (sorted), the set of types, or the set plus the "
                   "largest.")
@click.option("--timesteps", type=int, default=PolicySettings().timesteps, show_default=True,
              help="Environment steps to train for (fewer when the early stop is reached).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds sampling, environments and network.")
@click.option("--warm-start", type=click.Choice(WARM_STARTS), default=PolicySettings().warm_start, show_default=True,
              help="imitate: start from the heuristics' tables (imitated, searched, cloned into the network); "
                   "none: PPO from a random network.")
@click.option("--search", type=int, metavar="N",
              help="Rollout tries improving the imitated table on the training graphs (default: 48 at cell "
                   "level and for typed DAGs, 0 at op level, where it did not pay).")
@click.option("--allow-worse", is_flag=True,
              help="Write the policy even when it needs more held-out batches than the best heuristic.")
@click.option("--eval-every", type=int, default=PolicySettings().eval_every, show_default=True, metavar="K",
              help="PPO updates between greedy evaluations of the distilled table on the held-out graphs.")
@click.option("--checkpoint", metavar="PATH", help="Checkpoint written after every evaluation "
                                                   "(default: OUTPUT with .ckpt for .json).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted run.")
@click.option("--envs", type=click.IntRange(1, 256), metavar="N",
              help=f"Step N environments, each in a subprocess of its own (stable-baselines3's SubprocVecEnv). "
                   f"Default: {PolicySettings().n_envs} environments in this process, faster on a few cores.")
@click.option("--output", "-o", required=True, metavar="POLICY", help="Policy file to write (atomically).")
def train_policy(inputs, dag_files, data, heldout, limit, batch_size, granularity, encoding, timesteps, seed,
                 warm_start, search, allow_worse, eval_every, checkpoint, resume, envs, output):
    """Train the FSM batching policy of MODEL (default: the bundled TreeLSTM): imitate the heuristics,
    improve with search and reinforcement learning, distil it into a table and write the policy file;
    refuse (exit 9) a policy worse than the best heuristic on the held-out graphs."""
    from . import api

    settings = PolicySettings(encoding=encoding, timesteps=timesteps, seed=seed, eval_every=eval_every,
                              n_envs=envs or PolicySettings().n_envs, warm_start=warm_start, search=search)
    bar = _ProgressBar("training")
    try:
        policy = api.train_policy(list(inputs), output, dag_files, data, list(heldout), limit, batch_size,
                                  granularity, settings, checkpoint, resume, bar, envs is not None, allow_worse)
    finally:
        bar.close()
    f = policy.figures["heldout"]
    baselines = ", ".join(f"{k} {v}" for k, v in f["baselines"].items())
    scored = "held-out batches  " if f["held_out"] else "training batches  "  # no --heldout: say so
    click.echo(f"wrote {output}: {policy.model} at {policy.granularity} level, {len(policy.fsm.table)} states "
               f"({policy.fsm.encoding} encoding), {policy.training['timesteps_trained']} timesteps, "
               f"best table from {policy.figures['best_from']}\n"
               f"  {scored} {f['batches']} (lower bound {f['lower_bound']}, {f['ratio']:.3f}x; "
               f"{baselines}), {f['fallbacks']} FSM fallbacks over {f['graphs']} graphs")


def _dims(sets: tuple[str, ...]) -> dict[str, int]:
    """`--set dims.NAME=N` options as {NAME: N}."""
    out = {}
    for entry in sets:
        key, sep, value = entry.partition("=")
        name = key.removeprefix("dims.")
        if not sep or not key.startswith("dims.") or not name or not value.isdigit():
            raise UsageError(f"--set {entry}: expected dims.NAME=N with N an integer of at least 0")
        out[name] = int(value)
    return out


_set_option = click.option("--set", "sets", multiple=True, metavar="dims.NAME=N",
                           help="Set a dimension of the spec (e.g. dims.vocab=20000); recorded in the checkpoint.")


@main.command(name="train")
@click.argument("model", required=False)
@click.option("--data", metavar="PATH", help="Training data (default: synthetic instances).")
@click.option("--heldout", metavar="PATH", help="Held-out data that picks the best checkpoint "
                                                "(default: the last 10% of the training data).")
@_weights_option
@click.option("--epochs", type=int, default=TrainSettings().epochs, show_default=True)
@click.option("--batch-size", "-b", type=int, default=TrainSettings().batch_size, show_default=True)
@click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default=TrainSettings().optimizer,
              show_default=True)
@click.option("--lr", type=float, default=TrainSettings().lr, show_default=True, help="Learning rate.")
@click.option("--weight-decay", type=float, default=TrainSettings().weight_decay, show_default=True)
@click.option("--loss-at", metavar="PLACE", help="Where the loss reads labels: the readout's places of the "
                                                "structure (root or nodes for a tree; default: the spec's).")
@click.option("--limit", type=int, metavar="N", help="Use at most N training instances.")
@click.option("--policy", metavar="NAME|PATH", help="Batching policy (default as for `edbc run`).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds the mini-batches and their order.")
@_set_option
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (every epoch) on stdout.")
@click.option("--threads", type=int, default=DEFAULT_THREADS, show_default=True, help="Torch CPU threads.")
@_device_option
@_nproc_option
@click.option("--output", "-o", required=True, metavar="CKPT", help="Best checkpoint (.safetensors, atomically).")
def train_cmd(model, data, heldout, weights, epochs, batch_size, optimizer, lr, weight_decay, loss_at, limit,
              policy, seed, sets, resume, as_json, threads, device, nproc, output):
    """Train MODEL (default: the bundled TreeLSTM) through compiled plans; keep the best checkpoint
    by held-out accuracy, the last one, its metrics and what --resume needs beside OUTPUT."""
    from tqdm import tqdm

    from . import api, distributed

    code = _as_job(nproc, "; the files written so far are intact: run again with --resume to continue")
    if code is not None:
        return code
    _set_threads(threads)
    settings = TrainSettings(epochs, batch_size, optimizer, lr, weight_decay, seed, loss_at)
    job = distributed.from_environment()
    leader = job.leader  # rank 0 prints for every rank
    bar = tqdm(total=0, unit="batch", disable=not (leader and sys.stderr.isatty()), leave=False, file=sys.stderr)

    def on_step(epoch, step, steps, loss):
        if step == 1:
            bar.reset(total=steps)
            bar.set_description(f"epoch {epoch}")
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def on_epoch(e, improved):
        if as_json or not leader:
            return
        figures = ", ".join(f"{k} {v:.4f}" for k, v in e.heldout.items() if k.endswith("accuracy") or k == "f1")
        bar.write(f"epoch {e.epoch}: train loss {e.train_loss:.4f}, held-out {figures}, {e.instances_per_s:.0f} "
                  f"instances/s, compile {e.compile_s:.1f} s, execute {e.execute_s:.1f} s"
                  + (f" (all-reduce {e.communicate_s:.1f} s)" if job.size > 1 else "")
                  + (" (best)" if improved else ""), file=sys.stderr)

    try:
        epochs_done = api.train_model(model, data, output, heldout, weights, settings, _dims(sets), limit, resume,
                                      policy, on_step, on_epoch, device)
    finally:
        bar.close()
    if not leader:
        return 0
    if as_json:
        click.echo(json.dumps({"output": output, "epochs": [vars(e) for e in epochs_done]}, sort_keys=True))
    else:
        click.echo(f"wrote {output}", err=True)


@main.command(name="eval")
@click.argument("model", required=False)
@click.option("--weights", required=True, metavar="CKPT", help="The checkpoint to score.")
@click.option("--data", metavar="PATH", help="Labelled data (default: synthetic instances).")
@click.option("--limit", type=int, metavar="N", help="Use at most N instances.")
@click.option("--batch-size", "-b", type=int, default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--threads", type=int, default=DEFAULT_THREADS, show_default=True, help="Torch CPU threads.")
@_device_option
def eval_cmd(model, weights, data, limit, batch_size, as_json, threads, device):
    """Score a checkpoint of MODEL on labelled data: loss and accuracies (for trees at the root and
    at every node, and binary at the root with neutral removed; for tags, entity F1)."""
    from . import api

    _set_threads(threads)
    figures = api.eval_model(model, weights, data, limit, batch_size, device=device)
    if as_json:
        click.echo(json.dumps(figures, sort_keys=True))
    else:
        click.echo("\n".join(f"{k:<22} {v:.4f}" if isinstance(v, float) else f"{k:<22} {v}"
                             for k, v in figures.items()))


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


@main.command()
@click.option("--models", default=None,
              help="Comma-separated models (default: the eight benchmark models; with --train, treelstm and "
                   "bilstm_tagger).")
@click.option("--batch-sizes", default=None,
              help="Comma-separated batch sizes (default: 1,32,64,128; with --train, 25,64 for treelstm and 32 "
                   "for bilstm_tagger).")
@click.option("--policies", default=None,
              help="Comma-separated policies (default: all but optimal; with --train, the model's default: fsm "
                   "where the shipped policy fits the spec, else typewise).")
@click.option("--memory", "memories", default=None, help="Comma-separated memory modes (default: all).")
@click.option("--samples", type=int, default=20, show_default=True,
              help="Timed mini-batches (with --train, training steps) per configuration.")
@click.option("--max-minibatches", type=int, default=8, show_default=True,
              help="Distinct mini-batches per workload (samples cycle over them; with --train, one epoch).")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default=CELL, show_default=True)
@click.option("--threads", type=int, default=DEFAULT_THREADS, show_default=True, help="Torch CPU threads.")
@click.option("--dynet/--no-dynet", default=True, show_default=True, help="Time the DyNet anchors where installed.")
@click.option("--train", "training", is_flag=True,
              help="Time training steps (forward + backward + SGD) instead: train_results.{json,md}, "
                   "train_throughput.png.")
@click.option("--out", "out_dir", default="benchmarks", show_default=True, metavar="DIR",
              help="Where results.json, results.md and throughput.png go (with --train: train_results.json, "
                   "train_results.md, train_throughput.png).")
def bench(models, batch_sizes, policies, memories, samples, max_minibatches, granularity, threads, dynet, training,
          out_dir):
    """Benchmark edbc against DyNet and PyTorch baselines; write a table, JSON and a plot."""
    from .bench.suite import run_bench
    from .bench.train_suite import run_train_bench

    _set_threads(threads)

    def progress(row):
        click.echo(f"{row.model:>14} B={row.batch_size:<4} {row.system:<20} {row.policy:<9} {row.memory:<5} "
                   f"{row.ms:9.2f} ms", err=True)

    run = run_train_bench if training else run_bench
    click.echo(run(_csv(models) if models else None, batch_sizes, _csv(policies) if policies else None,
                   _csv(memories) if memories else None, samples, max_minibatches, granularity, threads, dynet,
                   out_dir, progress))
