"""Several processes, one job (torch.distributed, gloo, loopback): data-parallel training takes the
steps one process takes, a killed rank ends the job with one line and `--resume` continues, a sharded
`run` writes the file one process writes, and the launcher names the rank that failed first."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from edbc import api
from edbc.distributed import World, _first_failure
from edbc.errors import EXIT_DISTRIBUTED, EXIT_INPUT, EXIT_USAGE, DistributedError, InputError, error_class
from edbc.settings import REPO_ROOT
from edbc.train import TrainSettings
from edbc.train.loop import output_paths

from .conftest import TREELSTM
from .test_cli import edbc, one_line_error

# 36 synthetic trees: 3 held out, 33 to train in mini-batches of 8, 8, 8, 8 and 1 (a shard of 0 for
# rank 0), so 4 epochs are 20 steps. SGD: the adaptive optimizers turn rounding-level gradients
# (which another order of summation changes) into steps of up to the learning rate (README).
# The TreeLSTM with dropout: an instance's masks are its own, whichever rank runs it.
DROPOUT = Path(__file__).parent / "fixtures" / "treelstm_dropout.yaml"
TRAIN = ("--limit", 36, "-b", 8, "--optimizer", "sgd", "--lr", 0.5, "--seed", 5, "--policy", "agenda")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (edbc's default); two threads contend with them for the cores
    yield
    torch.set_num_threads(before)


def edbc_process(*args, wait: bool = True):
    """`python -m edbc ARGS` in a process of its own (the ranks print to its stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "edbc", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def _train_here(output, epochs: int, resume: bool = False, model=TREELSTM):
    settings = TrainSettings(epochs=epochs, batch_size=8, optimizer="sgd", lr=0.5, seed=5)
    return api.train_model(str(model), None, str(output), settings=settings, limit=36, resume=resume,
                           policy="agenda")


def test_shards_are_contiguous_balanced_and_in_order():
    for size in range(1, 5):
        for n in range(12):
            shards = [World(rank, size).shard(n) for rank in range(size)]
            assert [i for s in shards for i in s] == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_two_processes_take_the_steps_of_one(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    alone = _train_here(one, 4, model=DROPOUT)
    r = edbc_process("train", DROPOUT, *TRAIN, "--epochs", 4, "--nproc", 2, "--json", "-o", two)
    assert r.returncode == 0, r.stderr
    epochs = json.loads(r.stdout)["epochs"]  # rank 0's: one document
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    for ours, theirs in zip(epochs, alone):
        assert abs(ours["train_loss"] - theirs.train_loss) <= 1e-5
        assert ours["heldout"]["accuracy"] == theirs.heldout["accuracy"]
        assert ours["communicate_s"] > 0.0
    a, b = load_file(output_paths(str(one))["last"]), load_file(output_paths(str(two))["last"])
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-5
    start = api.load(DROPOUT).weights
    assert max((a[n] - start[n]).abs().max().item() for n in a) > 1e-2  # the 20 steps did something
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == [
        "two.last.safetensors", "two.metrics.jsonl", "two.resume.safetensors", "two.safetensors"]


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The process of `rank` among the launcher's children (Linux: /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_killed_rank_ends_the_job_in_one_line_and_resume_continues(tmp_path):
    out = tmp_path / "m.safetensors"
    paths = output_paths(str(out))
    job = edbc_process("train", TREELSTM, *TRAIN, "--epochs", 1000, "--nproc", 2, "-o", out, wait=False)
    try:
        deadline = time.monotonic() + 120
        pid = None
        while pid is None and job.poll() is None and time.monotonic() < deadline:
            pid = _rank_pid(job, 1)
        assert pid is not None, job.stderr.read() if job.poll() is not None else "no rank 1"
        while not Path(paths["metrics"]).exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # once epoch 1 is written, kill rank 1
        os.kill(pid, signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == EXIT_DISTRIBUTED, stderr
    lines = stderr.strip().splitlines()  # rank 0's epoch lines, then one error
    assert lines[-1] == ("Error: rank 1 of 2 died (SIGKILL); the files written so far are intact: run again with "
                         "--resume to continue"), stderr
    assert sum("Error" in line or "Traceback" in line for line in lines) == 1, stderr
    done = [json.loads(line)["epoch"] for line in Path(paths["metrics"]).read_text().splitlines()]
    assert done == list(range(1, len(done) + 1))
    assert load_file(paths["last"]) and load_file(paths["resume"])  # intact
    # Resumed by one process (any number works): it ends where an uninterrupted run ends.
    resumed = _train_here(out, done[-1] + 1, resume=True)
    assert [e.epoch for e in resumed] == list(range(1, done[-1] + 2))
    straight = tmp_path / "straight.safetensors"
    _train_here(straight, done[-1] + 1)
    a, b = load_file(paths["last"]), load_file(output_paths(str(straight))["last"])
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-5


def test_a_sharded_run_writes_the_file_one_process_writes(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    report, _ = api.run_target(str(TREELSTM), limit=40, batch_size=8, output=str(one), predict=True)
    r = edbc_process("run", TREELSTM, "--limit", 40, "-b", 8, "--output", two, "--predict", "--json",
                     "--nproc", 2)
    assert r.returncode == 0, r.stderr
    assert two.read_bytes() == one.read_bytes()  # every instance, in input order
    summed = json.loads(r.stdout)
    assert summed["processes"] == 2
    mine = report.to_json()
    for key in ("num_instances", "num_minibatches", "num_batches", "lower_bound", "gathers", "gather_bytes"):
        assert summed[key] == mine[key], key


def test_under_torchrun_each_rank_runs_its_shard(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    api.run_target(str(TREELSTM), limit=24, batch_size=8, output=str(one))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr", "127.0.0.1",
                        "--nproc-per-node", "2", "-m", "edbc", "run", str(TREELSTM), "--limit", "24", "-b", "8",
                        "--output", str(two)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(one)), load_file(str(two))
    assert torch.equal(a["outputs"], b["outputs"]) and torch.equal(a["offsets"], b["offsets"])


def test_bad_input_in_a_job_is_one_line_with_its_exit_code(tmp_path):
    r = edbc_process("run", TREELSTM, "--data", tmp_path / "missing.txt", "--nproc", 2)
    assert r.returncode == EXIT_INPUT, r.stderr
    lines = r.stderr.strip().splitlines()  # whichever rank failed first: both fail alike
    assert len(lines) == 1 and re.match(r"Error: rank [01]: .*missing\.txt", lines[0]), r.stderr


def test_launcher_variables_that_do_not_fit_are_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "x")
    one_line_error(edbc("run", "--limit", 4), EXIT_USAGE, "RANK=x and WORLD_SIZE=2: expected whole numbers")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    one_line_error(edbc("run", "--limit", 4), EXIT_DISTRIBUTED, "rank 1: cannot join the other 1 processes",
                   "MASTER_ADDR")
    one_line_error(edbc("run", "--limit", 4, "--nproc", 2), EXIT_USAGE, "already rank 1 of a job of 2")


def _failure(exitcode: int, code: int | None = None, message: str = ""):
    data = {"message": message, "edbc_exit_code": code} if code is not None else {"message": "<NONE>"}
    name = "SIGKILL" if exitcode == -9 else "SIGTERM" if exitcode == -15 else "<N/A>"
    return SimpleNamespace(exitcode=exitcode, error_file_data=data, message=message, signal_name=lambda: name)


def test_the_launcher_reports_the_root_cause_first():
    lost = _failure(EXIT_DISTRIBUTED, EXIT_DISTRIBUTED, "rank 0: lost contact with the other processes")
    stopped = _failure(-15)
    with pytest.raises(DistributedError, match=r"^rank 2 of 3 died \(SIGKILL\); hint$"):
        _first_failure({0: lost, 1: stopped, 2: _failure(-9)}, 3, "; hint")
    with pytest.raises(InputError, match="^rank 1: no such file$"):
        _first_failure({0: _failure(-9), 1: _failure(3, 3, "rank 1: no such file")}, 2, "")
    with pytest.raises(DistributedError, match="^rank 0: lost contact"):
        _first_failure({0: lost, 1: stopped}, 2, "")
    assert _first_failure({0: _failure(4), 1: stopped}, 2, "") == 4  # rank 0 printed why (a failed --check)
    recorded_then_stopped = _failure(-15, 3, "rank 0: no such file")  # the agent's SIGTERM came after its record
    with pytest.raises(InputError, match="^rank 0: no such file$"):
        _first_failure({0: recorded_then_stopped, 1: lost}, 2, "")
    with pytest.raises(DistributedError, match=r"^rank 1 of 2 was stopped \(SIGTERM\)$"):
        _first_failure({1: stopped}, 2, "")
    assert error_class(EXIT_INPUT) is InputError and error_class(EXIT_DISTRIBUTED) is DistributedError
