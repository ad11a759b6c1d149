"""One job, several processes: `edbc train` and `edbc run` on torch.distributed.

A job of N processes (ranks) is started by `--nproc N` on one machine (`launch`: torch's elastic
agent, as `torchrun --standalone` runs one) or by `torchrun` on one machine or several. Each rank
finds the others through what the launcher sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and
`join` makes the process group: gloo, with NCCL beside it for CUDA tensors. The rest of edbc sees a
`World`: this rank, how many there are, its shard of a list, and the few collectives edbc needs (a
sum, a gather). Every collective has a timeout, and a peer that dies closes its connections, so the
others notice at once: either way a rank raises a `DistributedError` rather than hang.

Errors: a rank records its error where its launcher looks (TORCHELASTIC_ERROR_FILE, which torchrun's
summary shows too). The ranks `launch` starts print none; `launch` prints one line for the job: the
error of the rank that failed first, with that error's exit code, or, for a rank killed by a signal,
a `DistributedError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from .artifact import write_atomic
from .errors import EXIT_DISTRIBUTED, EXIT_INTERRUPTED, DistributedError, EdbcError, UsageError, error_class
from .settings import LAUNCHED_VAR, dist_timeout_s

# What a rank adds to torch's error file: its exit code, so that `launch` exits with it.
_EXIT_CODE_KEY = "edbc_exit_code"


@dataclass(frozen=True)
class World:
    """The processes of a job as one of them sees it: rank `rank` of `size`."""

    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def bounds(self, n: int) -> list[int]:
        """Where each rank's shard of n items starts (and the last one ends): contiguous, in rank
        order, sizes differing by at most one; the same for the same n and size, always."""
        return [n * r // self.size for r in range(self.size + 1)]

    def shard(self, n: int) -> range:
        """This rank's shard of n items."""
        b = self.bounds(n)
        return range(b[self.rank], b[self.rank + 1])

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the ranks (the same shapes on every rank), flattened into one buffer
        for one all-reduce rather than one call per tensor."""
        if self.size == 1:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        _collective(dist.all_reduce, flat)
        return [piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def gather(self, tensor: torch.Tensor, everyone: bool) -> list[torch.Tensor] | None:
        """Every rank's 1-D CPU `tensor` (one dtype; lengths may differ), in rank order: on every rank,
        or on rank 0 only (None on the others)."""
        if self.size == 1:
            return [tensor]
        lengths = torch.zeros(self.size, dtype=torch.int64)
        lengths[self.rank] = len(tensor)
        _collective(dist.all_reduce, lengths)
        padded = torch.zeros(int(lengths.max()), dtype=tensor.dtype)
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)] if everyone or self.leader else None
        if everyone:
            _collective(dist.all_gather, parts, padded)
        else:
            _collective(dist.gather, padded, parts, 0)
        return None if parts is None else [p[:n] for p, n in zip(parts, lengths.tolist())]

    def gather_json(self, value, everyone: bool) -> list | None:
        """Every rank's JSON-able `value`, in rank order (on rank 0 only unless `everyone`)."""
        data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
        parts = self.gather(data, everyone)
        return None if parts is None else [json.loads(bytes(p.numpy())) for p in parts]

    def gather_rows(self, rows: list[torch.Tensor], shape: tuple[int, ...],
                    everyone: bool) -> list[list[torch.Tensor]] | None:
        """Every rank's instances' rows (instance i's: `rows[i]`, `[n_i, *shape]`, on the CPU), as one
        list per rank, in rank order (on rank 0 only unless `everyone`)."""
        if self.size == 1:
            return [list(rows)]
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        values = torch.cat([r.reshape(-1) for r in rows]) if rows else torch.zeros(0)
        all_counts, all_values = self.gather(counts, everyone), self.gather(values, everyone)
        if all_counts is None:
            return None
        return [list(v.reshape(-1, *shape).split(c.tolist())) for c, v in zip(all_counts, all_values)]

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.size > 1:
            _collective(dist.barrier)

    def agree(self, what: str, value: str) -> None:
        """Refuse a job whose ranks were given different `what` (`value`: what this rank has), such as
        other files at the same paths on other machines."""
        if self.size == 1:
            return
        mine = torch.frombuffer(bytearray(hashlib.sha256(value.encode()).digest()), dtype=torch.uint8)
        digests = self.gather(mine, everyone=True)
        odd = [r for r, d in enumerate(digests) if not torch.equal(d, digests[0])]
        if odd:
            raise DistributedError(f"rank {odd[0]} was given other {what} than rank 0; expected the same on every "
                                   "rank (on several machines: the same files at the same paths)")


SINGLE = World()


def _collective(fn, *args) -> None:
    try:
        fn(*args)
    except RuntimeError as e:  # gloo and NCCL: a peer closed its connections, or the timeout passed
        raise DistributedError(f"lost contact with the other processes ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    """The gist of a backend's message: its first sentence, without the C++ source location."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:200]


def from_environment() -> World:
    """This process's place in its job as its launcher's variables (RANK, WORLD_SIZE) say; a world of
    one without a launcher."""
    rank, size = os.environ.get("RANK", "0").strip(), os.environ.get("WORLD_SIZE", "1").strip()
    if not (rank.isascii() and rank.isdigit() and size.isascii() and size.isdigit()) or not int(rank) < int(size):
        raise UsageError(f"RANK={rank[:20]} and WORLD_SIZE={size[:20]}: expected whole numbers, 0 <= RANK < "
                         "WORLD_SIZE, as torchrun sets them")
    return World(int(rank), int(size))


def rank_label() -> str:
    """`rank R: ` in a job of several processes, for the lines a rank prints; empty alone."""
    try:
        world = from_environment()
    except UsageError:  # the error being said may be this one
        return ""
    return f"rank {world.rank}: " if world.size > 1 else ""


@contextmanager
def join(device: str = "cpu") -> Iterator[World]:
    """The job this process is a rank of, its process group made from the launcher's variables (and
    destroyed on the way out); the caller's if it made one; a world of one without a launcher."""
    if dist.is_available() and dist.is_initialized():
        yield World(dist.get_rank(), dist.get_world_size())
        return
    world = from_environment()
    if world.size == 1:
        yield world
        return
    if not dist.is_available():
        raise UsageError("this torch was built without torch.distributed; run one process")
    backend = "gloo"
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        local, gpus = os.environ.get("LOCAL_RANK", "0").strip(), torch.cuda.device_count()
        if not (local.isascii() and local.isdigit() and int(local) < gpus):
            raise UsageError(f"--device cuda: rank {world.rank} is local rank {local[:20]} and this machine has "
                             f"{gpus} GPU{'s' if gpus != 1 else ''}; expected one GPU per process on each machine")
        torch.cuda.set_device(int(local))  # "cuda" is then this rank's own GPU
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=dist_timeout_s()), rank=world.rank,
                                world_size=world.size)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"cannot join the other {world.size - 1} processes ({_first_line(e)}); expected them "
                               "all started, MASTER_ADDR and MASTER_PORT naming rank 0's machine, as torchrun "
                               "sets them") from None
    try:
        yield world
        # Leave together: a rank that exits closes its connections under the others (after a failure the
        # others learn of it at their next collective instead).
        world.barrier()
    finally:
        dist.destroy_process_group()


def launches(nproc: int) -> bool:
    """Whether `--nproc nproc` asks this process to start a job of that many ranks (rather than to do
    the work: alone, or as a rank that `launch` or torchrun started)."""
    if os.environ.get(LAUNCHED_VAR) == "1":
        return False  # a rank `launch` started: the --nproc it was given was the launcher's
    world = from_environment()
    if nproc > 1 and world.size > 1:
        raise UsageError(f"--nproc {nproc}: this process is already rank {world.rank} of a job of {world.size} "
                         "(torchrun); leave --nproc out")
    return nproc > 1


def hand_over(line: str, exit_code: int) -> bool:
    """Record a rank's error where its launcher looks. True when `launch` started this rank: `launch`
    then prints the job's one line, and the rank prints nothing."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    record = {"message": line, "timestamp": int(time.time()), _EXIT_CODE_KEY: exit_code}
    try:
        write_atomic(path, json.dumps(record).encode())
    except (EdbcError, OSError):
        return False  # unrecorded: say it here
    return os.environ.get(LAUNCHED_VAR) == "1"


def launch(nproc: int, argv: list[str], hint: str = "") -> int:
    """Run `python -m edbc ARGV` as ranks 0 to nproc - 1 of one job on this machine (loopback only),
    through torch's elastic agent, as `torchrun --standalone --nproc-per-node N -m edbc ARGV` would.

    Returns the job's exit code: 0, or that of a rank that said why itself (a failed `--check`).
    Raises the error of the rank that failed first, or a `DistributedError` naming a rank that a
    signal killed (`hint` appended: what to do next)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    before = os.environ.get(LAUNCHED_VAR)
    os.environ[LAUNCHED_VAR] = "1"  # the agent gives the ranks this process's environment
    logging.disable(logging.CRITICAL)  # the agent logs a failure at length; the error says it in one line
    try:
        with tempfile.TemporaryDirectory(prefix="edbc-ranks-") as logs:
            config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                                  rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                                  max_restarts=0, logs_specs=DefaultLogsSpecs(log_dir=logs))
            try:
                elastic_launch(config, sys.executable)("-m", "edbc", *argv)
            except ChildFailedError as e:
                return _first_failure(e.failures, nproc, hint)
            except SignalException:  # Ctrl-C or SIGTERM: the agent has stopped the ranks
                raise KeyboardInterrupt from None
    finally:
        logging.disable(logging.NOTSET)
        if before is None:
            del os.environ[LAUNCHED_VAR]
        else:
            os.environ[LAUNCHED_VAR] = before
    return 0


def _first_failure(failures: dict, nproc: int, hint: str) -> int:
    """The job's outcome from the ranks that failed (torch's `ProcessFailure`s by rank): the root cause
    first (a rank's own error, or death by a signal), then a rank that lost its peers, last one that
    the agent stopped after another's failure; the lowest rank among equals."""

    def code_of(failure) -> int | None:
        code = failure.error_file_data.get(_EXIT_CODE_KEY)
        return code if type(code) is int else None

    def kind(failure) -> int:
        code = code_of(failure)
        if code == EXIT_INTERRUPTED or (code is None and failure.exitcode in (-signal.SIGTERM, -signal.SIGINT)):
            return 3
        return 2 if code == EXIT_DISTRIBUTED else 1 if code is None else 0

    rank, failure = min(failures.items(), key=lambda item: (kind(item[1]), item[0]))
    code = code_of(failure)
    if kind(failure) == 3:
        how = failure.signal_name() if failure.exitcode < 0 else "interrupted"
        raise DistributedError(f"rank {rank} of {nproc} was stopped ({how}){hint}")
    if code is not None:
        raise error_class(code)(failure.message)
    if failure.exitcode > 0:
        return failure.exitcode  # it printed why (a failed --check), or its traceback (a bug in edbc)
    raise DistributedError(f"rank {rank} of {nproc} died ({failure.signal_name()}){hint}")
