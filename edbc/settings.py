"""Settings that come from the environment or the checkout, in one place."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError, quoted

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("EDBC_CONFIG_DIR", REPO_ROOT / "configs"))
MODELS_DIR = CONFIG_DIR / "models"
DEFAULT_MODEL = MODELS_DIR / "treelstm.yaml"
# How the state_dicts of the PyTorch modules of edbc.bench.torch_models map to the bundled models.
MAPPINGS_DIR = CONFIG_DIR / "mappings"
# Shipped policy files, `<model>.policy.json` (cell level) and `<model>.op.policy.json`.
PLANS_DIR = Path(os.environ.get("EDBC_PLANS_DIR", REPO_ROOT / "plans"))
# Real data sets live beside the checkout and are read by path, never copied in.
SHARED_DATA = Path(os.environ.get("EDBC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
# Its data sets by structure kind: (training, held-out, test) files under SHARED_DATA, None where a
# set lacks the split (WikiNER has one file, kept for evaluation). The benchmarks, the scripts that
# train the shipped policies and the tests all read this table.
SHARED_SPLITS = {
    "tree": ("sst/train.txt", "sst/dev.txt", "sst/test.txt"),
    "lattice": ("lattice/train.txt", "lattice/dev.txt", "lattice/test.txt"),
    "chain": (None, None, "wikiner/dev.txt"),
}
NO_SPLITS = (None, None, None)

CHECK_TOLERANCE = 1e-4  # max |batched - reference| accepted by --check, in fp32
DEFAULT_SYNTHETIC_INSTANCES = 256  # instances generated when no --data is given
DEFAULT_BATCH_SIZE = 64
DEFAULT_MEMORY = "pq"  # memory planning mode of `run` and `compile`
DEFAULT_THREADS = 1  # torch threads; timings are comparable to single-threaded DyNet
MEMORY_LIMIT_VAR = "EDBC_MEMORY_LIMIT"  # memory the runtime may assume available (default: what the device reports)
MAX_INPUT_BYTES_VAR = "EDBC_MAX_INPUT_BYTES"  # the largest file edbc reads
DEFAULT_MAX_INPUT_BYTES = 2**30


def memory_limit() -> int | None:
    """`EDBC_MEMORY_LIMIT` in bytes, or None when unset."""
    return _env_bytes(MEMORY_LIMIT_VAR)


def max_input_bytes() -> int:
    limit = _env_bytes(MAX_INPUT_BYTES_VAR)
    return DEFAULT_MAX_INPUT_BYTES if limit is None else limit


def _env_bytes(name: str) -> int | None:
    """A positive byte count from the environment, read when needed so that a bad value is a
    usage error with one line, not a failure at import."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < 1:
        raise UsageError(f"must be a positive whole number of bytes (at most 19 digits), got '{quoted(text)}'",
                         path=name)
    return int(text)
