"""The README's Use block runs as written, command after command, on a fresh checkout.

Each command runs in a scratch folder laid out like the repository's (configs, examples and scripts
linked, `../shared` beside it when it exists), so that what the commands write (out/, checkpoints,
a retrained policy) never touches the repository. Commands reading `../shared/data` are skipped
where it is absent, and so are those reading what a skipped command writes. The two that train for
minutes run with a budget appended (later options win):
they are checked to work as written, not to finish their full training here.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from click.testing import CliRunner

from edbc.cli import main
from edbc.settings import REPO_ROOT, SHARED_DATA

BUDGETS = {"train": ["--epochs", "1", "--limit", "64"], "train-policy": ["--timesteps", "1024", "--limit", "64"]}


def use_commands() -> list[list[str]]:
    """The Use block's commands, continuation lines joined, comments dropped."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("```sh\n", text.index("\n## Use\n")) + len("```sh\n")
    block = text[start:text.index("```", start)].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_every_command_of_the_use_block_runs_as_written(tmp_path, monkeypatch):
    work = tmp_path / "edbc"
    work.mkdir()
    for name in ("configs", "examples", "scripts"):
        (work / name).symlink_to(REPO_ROOT / name)
    have_data = SHARED_DATA.exists()
    if have_data:
        (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    monkeypatch.chdir(work)
    commands = use_commands()
    assert len(commands) >= 15 and all(c[0] in (".venv/bin/edbc", ".venv/bin/python") for c in commands)
    ran = 0
    missing: set[str] = set()  # what skipped commands would have written: the commands reading it skip too
    for command in commands:
        if not have_data and any("../shared/" in a or a in missing for a in command):
            missing.update(b for a, b in zip(command, command[1:]) if a in ("-o", "--output"))
            continue
        if command[0] == ".venv/bin/python":  # a script: in a process of its own
            done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (command, done.stderr)
        else:
            args = command[1:] + BUDGETS.get(command[1], [])
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, (command, result.output)
        ran += 1
    assert ran >= (len(commands) if have_data else 4)
    if have_data:  # the README shows `inspect`'s memory comparison of the plan the Use block compiled
        shown = memory_block()
        printed = CliRunner().invoke(main, ["inspect", "out/sst.plan"]).output.splitlines()
        assert shown == printed[printed.index(shown[0]):][:len(shown)]


def memory_block() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("```\n", text.index("`edbc inspect PLAN` compares the plan's memory mode")) + 4
    return text[start:text.index("```", start)].rstrip("\n").splitlines()
